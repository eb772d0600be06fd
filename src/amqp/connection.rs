//! One long-lived AMQP connection per upstream, with a confirm-mode channel, kept up in the
//! background with doubling reconnect delays.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::exchanges::KnownExchanges;

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

/// An open connection with its confirm-mode channel. The channel may be closed by the
/// broker while the connection stays open, until the supervisor replaces it.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Arc<Connection>,
    pub(super) channel: Channel,
}

/// State shared by the supervisor handle and its background task.
struct Shared {
    upstream: String,
    /// The open connection and channel, or `None` while disconnected.
    link: watch::Sender<Option<Link>>,
    connected: AtomicBool,
    /// Delay before the next reconnect attempt, in milliseconds, for `Retry-After`.
    retry_delay_ms: AtomicU64,
    /// Wakes the background task when a publish finds the channel closed.
    channel_closed: Notify,
    exchanges: KnownExchanges,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn set_link(&self, link: Option<Link>) {
        let connected = link.is_some();
        self.link.send_replace(link);
        self.connected.store(connected, Ordering::Release);
        self.metrics
            .amqp_connected
            .get_or_create(&UpstreamLabels {
                upstream: self.upstream.clone(),
            })
            .set(i64::from(connected));
    }

    /// Hands out a reopened channel on the same connection, leaving `connected` true.
    fn replace_channel(&self, channel: Channel) {
        self.link.send_modify(|link| {
            if let Some(link) = link {
                link.channel = channel;
            }
        });
    }
}

/// Keeps one connection and one confirm-mode channel open to an AMQP upstream.
///
/// A background task connects, watches the connection, and after a loss reconnects with a
/// delay that starts at `reconnect_min` and doubles up to `reconnect_max`, without jitter.
/// When the broker closes only the channel, the task opens a new one on the same
/// connection. Dropping the handle stops the task and closes the connection.
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
            link: watch::Sender::new(None),
            connected: AtomicBool::new(false),
            retry_delay_ms: AtomicU64::new(duration_ms(amqp.reconnect_min)),
            channel_closed: Notify::new(),
            exchanges: KnownExchanges::new(),
            metrics,
        });
        shared.set_link(None);
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

    /// Returns whether the connection is open. A channel that the broker closed and that
    /// is being reopened on the open connection does not make this false.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Returns the delay until the next reconnect attempt, at least one second, as a
    /// `Retry-After` value for producers.
    pub fn retry_after(&self) -> Duration {
        let delay = Duration::from_millis(self.shared.retry_delay_ms.load(Ordering::Relaxed));
        delay.max(Duration::from_secs(1))
    }

    /// Returns the open connection and an open confirm-mode channel on it. When the broker
    /// has closed the channel, this wakes the background task to reopen it and waits for
    /// the new one until `deadline`. Returns `None` while disconnected, when the connection
    /// is lost while waiting, or at the deadline.
    pub(super) async fn open_link(&self, deadline: Instant) -> Option<Link> {
        let mut links = self.shared.link.subscribe();
        loop {
            let link = links.borrow_and_update().clone()?;
            if link.channel.status().connected() {
                return Some(link);
            }
            self.shared.channel_closed.notify_one();
            match tokio::time::timeout_at(deadline, links.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Returns the open connection, or `None` while disconnected.
    pub(super) fn connection(&self) -> Option<Arc<Connection>> {
        let link = self.shared.link.borrow();
        link.as_ref().map(|link| link.connection.clone())
    }

    /// Returns whether the connection is open, whatever the state of its channel.
    pub(super) fn connection_open(&self) -> bool {
        self.connection()
            .is_some_and(|connection| connection.status().connected())
    }

    /// Wakes the background task to check the channel and reopen it if the broker closed it.
    pub(super) fn report_channel_closed(&self) {
        self.shared.channel_closed.notify_one();
    }

    /// Returns the exchange names known to exist on the broker.
    pub(super) fn exchanges(&self) -> &KnownExchanges {
        &self.shared.exchanges
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
                let connection = Arc::new(connection);
                shared.exchanges.clear();
                shared.set_link(Some(Link {
                    connection: connection.clone(),
                    channel,
                }));
                let stop = keep_open(&shared, &settings, &connection, &mut stopped).await;
                shared.set_link(None);
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

/// Watches the connection until it is lost (returns false) or the supervisor stops (returns
/// true). A channel that the broker closed on the open connection, for example after a
/// publish to a deleted exchange, is replaced at once: readiness stays up, and no reconnect
/// is counted.
async fn keep_open(
    shared: &Shared,
    settings: &ConnectionSettings,
    connection: &Connection,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.channel_closed.notified() => {}
            _ = stopped.changed() => return true,
        }
        if !connection.status().connected() {
            return false;
        }
        let closed = shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(|link| !link.channel.status().connected());
        if !closed {
            continue;
        }
        let reopened = tokio::time::timeout(settings.connect_timeout, open_channel(connection));
        match reopened.await {
            Ok(Ok(channel)) => {
                shared.replace_channel(channel);
                tracing::info!(upstream = %shared.upstream, "amqp channel closed by the broker; reopened it on the same connection");
            }
            Ok(Err(error)) => {
                tracing::warn!(upstream = %shared.upstream, %error, "amqp channel reopen failed; reconnecting");
                return false;
            }
            Err(_) => {
                tracing::warn!(upstream = %shared.upstream, timeout = ?settings.connect_timeout, "amqp channel reopen timed out; reconnecting");
                return false;
            }
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
    let channel = open_channel(&connection).await?;
    Ok((connection, channel))
}

/// Opens a channel and puts it in confirm mode before anyone can publish on it.
async fn open_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
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
