//! One long-lived AMQP connection per upstream, with a confirm-mode channel, kept up in the
//! background with doubling reconnect delays.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;

use crate::metrics::{Metrics, UpstreamLabels};
use crate::policy::{AmqpConfig, UpstreamConfig};

/// Interval at which a live connection's state is checked, so a lost connection is noticed
/// within this time even when no message is being published.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// The settings a supervisor was started with. A reload keeps the connection only when
/// they are unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSettings {
    /// The upstream's AMQP settings.
    pub amqp: AmqpConfig,
    /// Limit on the TCP connect and the AMQP handshake together.
    pub connect_timeout: Duration,
}

/// State shared by the supervisor handle and its background task.
struct Shared {
    upstream: String,
    channel: Mutex<Option<Channel>>,
    connected: AtomicBool,
    /// Delay before the next reconnect attempt, in milliseconds, for `Retry-After`.
    retry_delay_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn set_channel(&self, channel: Option<Channel>) {
        let connected = channel.is_some();
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = channel;
        self.connected.store(connected, Ordering::Release);
        self.metrics
            .amqp_connected
            .get_or_create(&UpstreamLabels {
                upstream: self.upstream.clone(),
            })
            .set(i64::from(connected));
    }
}

/// Keeps one connection and one confirm-mode channel open to an AMQP upstream.
///
/// A background task connects, watches the connection, and after a loss reconnects with a
/// delay that starts at `reconnect_min` and doubles up to `reconnect_max`, without jitter.
/// Dropping the handle stops the task and closes the connection.
pub struct Supervisor {
    settings: ConnectionSettings,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Supervisor {
    /// Starts the background task for `upstream`, which must be an AMQP upstream. Without
    /// a Tokio runtime nothing is started and the upstream stays disconnected.
    ///
    /// With `replacing`, the supervisor takes over from one with other settings, so its
    /// first connection counts in `ekko_amqp_reconnects_total` too.
    pub fn start(
        upstream: &UpstreamConfig,
        amqp: &AmqpConfig,
        metrics: Arc<Metrics>,
        replacing: bool,
    ) -> Self {
        let settings = ConnectionSettings {
            amqp: amqp.clone(),
            connect_timeout: upstream.connect_timeout,
        };
        let shared = Arc::new(Shared {
            upstream: upstream.name.clone(),
            channel: Mutex::new(None),
            connected: AtomicBool::new(false),
            retry_delay_ms: AtomicU64::new(duration_ms(amqp.reconnect_min)),
            metrics,
        });
        shared.set_channel(None);
        let (stop, stopped) = watch::channel(false);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = supervise(shared.clone(), settings.clone(), stopped, replacing);
                runtime.spawn(task);
            }
            Err(_) => {
                tracing::error!(upstream = %upstream.name, "no Tokio runtime; the amqp upstream stays disconnected");
            }
        }
        Self {
            settings,
            shared,
            stop,
        }
    }

    /// Returns the upstream's name.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Returns the settings the connection was opened with.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }

    /// Returns whether the connection and its confirm-mode channel are open.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Returns the delay until the next reconnect attempt, at least one second, as a
    /// `Retry-After` value for producers.
    pub fn retry_after(&self) -> Duration {
        let delay = Duration::from_millis(self.shared.retry_delay_ms.load(Ordering::Relaxed));
        delay.max(Duration::from_secs(1))
    }

    /// Returns the open confirm-mode channel, or `None` while disconnected.
    pub(super) fn channel(&self) -> Option<Channel> {
        if !self.connected() {
            return None;
        }
        self.shared
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Returns the shared metrics, for the publish counters.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Connects, watches and reconnects until `stopped` flips.
async fn supervise(
    shared: Arc<Shared>,
    settings: ConnectionSettings,
    mut stopped: watch::Receiver<bool>,
    replacing: bool,
) {
    let amqp = &settings.amqp;
    let mut delay = amqp.reconnect_min;
    let mut failures: u64 = 0;
    let mut connections = u64::from(replacing);
    loop {
        let attempt = tokio::time::timeout(settings.connect_timeout, open(&settings));
        let opened = tokio::select! {
            opened = attempt => opened,
            _ = stopped.changed() => return,
        };
        match opened {
            Ok(Ok((connection, channel))) => {
                connections += 1;
                if connections > 1 {
                    shared
                        .metrics
                        .amqp_reconnects
                        .get_or_create(&UpstreamLabels {
                            upstream: shared.upstream.clone(),
                        })
                        .inc();
                }
                tracing::info!(upstream = %shared.upstream, host = %amqp.host, port = amqp.port, after_failures = failures, "amqp connection open");
                (delay, failures) = (amqp.reconnect_min, 0);
                shared
                    .retry_delay_ms
                    .store(duration_ms(delay), Ordering::Relaxed);
                shared.set_channel(Some(channel.clone()));
                let stop = watch_connection(&connection, &channel, &mut stopped).await;
                shared.set_channel(None);
                let _ = connection
                    .close(200, "ekko closes the connection".into())
                    .await;
                if stop {
                    return;
                }
                tracing::warn!(upstream = %shared.upstream, "amqp connection lost; reconnecting");
            }
            outcome => {
                failures += 1;
                let reason = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no connection within {:?}", settings.connect_timeout),
                };
                // The first failure of an outage is a warning; repeats are logged at debug
                // level so that a long outage does not flood the log.
                if failures == 1 {
                    tracing::warn!(upstream = %shared.upstream, %reason, retry_in = ?delay, "amqp connect failed; retrying with doubling delays");
                } else {
                    tracing::debug!(upstream = %shared.upstream, %reason, failures, retry_in = ?delay, "amqp connect failed again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.changed() => return,
                }
                delay = (delay * 2).min(amqp.reconnect_max);
                shared
                    .retry_delay_ms
                    .store(duration_ms(delay), Ordering::Relaxed);
            }
        }
    }
}

/// Waits until the connection or channel is no longer open (returns false) or the
/// supervisor stops (returns true).
async fn watch_connection(
    connection: &Connection,
    channel: &Channel,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !connection.status().connected() || !channel.status().connected() {
                    return false;
                }
            }
            _ = stopped.changed() => return true,
        }
    }
}

/// Opens the connection and a channel in confirm mode (RabbitMQ publisher confirms).
async fn open(settings: &ConnectionSettings) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect_uri(
        broker_uri(settings),
        ConnectionProperties::default().with_connection_name("ekko".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// Builds the broker URI from the settings; the password goes into the structure only,
/// never into a string that could be logged.
fn broker_uri(settings: &ConnectionSettings) -> AMQPUri {
    let amqp = &settings.amqp;
    AMQPUri {
        scheme: AMQPScheme::AMQP,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: amqp.username.clone(),
                password: amqp.password.expose().to_owned(),
            },
            host: amqp.host.clone(),
            port: amqp.port,
        },
        vhost: amqp.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(u16::try_from(amqp.heartbeat.as_secs()).unwrap_or(u16::MAX)),
            connection_timeout: Some(duration_ms(settings.connect_timeout)),
            ..AMQPQueryString::default()
        },
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
