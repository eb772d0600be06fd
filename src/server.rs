//! Listeners, policy reload, the snapshot task and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::guard::{guard_path, held_path, GuardSnapshotError, LoopGuard};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::notify::Gateway;
use crate::policy::Policy;
use crate::state::{SnapshotError, StateStore};

mod reload;

pub use reload::{Applied, Live, ReloadOutcome};

/// Time a client gets to send the request head (30 s), against slow-header attacks.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Failure to start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; check that the port is free and the address is local"
    )]
    Bind {
        /// The address from the policy.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The snapshot directory does not exist.
    #[error("snapshot directory {0} does not exist; create it or change `state.snapshot`")]
    SnapshotDir(PathBuf),
    /// The state snapshot could not be written.
    #[error("snapshot failed: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The guard snapshot could not be written.
    #[error("guard snapshot failed: {0}")]
    GuardSnapshot(#[from] GuardSnapshotError),
    /// The routes could not be compiled.
    #[error("policy cannot be compiled: {0}")]
    Compile(String),
}

/// A running ekko: its bound addresses and the handle to stop it.
pub struct Running {
    /// Address of the public listener (useful with port 0).
    pub public_addr: SocketAddr,
    /// Address of the admin listener.
    pub admin_addr: SocketAddr,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    live: Arc<Live>,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Re-reads the policy file, as SIGHUP and `POST /admin/reload` do, and applies it
    /// unless it is invalid. The outcome is logged and counted before it is returned.
    pub async fn reload(&self) -> ReloadOutcome {
        self.live.reload().await
    }

    /// Stops accepting, drains in-flight requests within `shutdown_grace`, writes the
    /// final snapshot and returns its outcome.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        self.task
            .await
            .unwrap_or_else(|e| Err(ServeError::Compile(format!("server task failed: {e}"))))
    }
}

/// Loads the snapshots, binds both listeners and starts serving. A reload reports that
/// there is no policy file; use [`start_with_policy_file`] to allow reloads.
pub async fn start(policy: Policy) -> Result<Running, ServeError> {
    launch(policy, None).await
}

/// Starts like [`start`]; SIGHUP handling and `POST /admin/reload` re-read `path`, the
/// file that `policy` was loaded from.
pub async fn start_with_policy_file(policy: Policy, path: PathBuf) -> Result<Running, ServeError> {
    launch(policy, Some(path)).await
}

async fn launch(policy: Policy, source: Option<PathBuf>) -> Result<Running, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(load_state(&policy)?);
    metrics.state_entities.set(state.entities.len() as i64);
    let guard = Arc::new(load_guard(&policy));
    let gateway = Gateway::new(&policy, state.clone(), guard.clone(), metrics.clone())
        .map_err(|e| ServeError::Compile(e.to_string()))?;
    // Quarantines loaded from the guard snapshot show in the gauge from the start.
    gateway.update_quarantine_gauge();
    let (listen, admin_listen) = (policy.listen, policy.admin_listen);
    let (grace, routes) = (policy.shutdown_grace, policy.notifications.len());
    let (snapshot_path, snapshot_interval) = (
        policy.state.snapshot.clone(),
        policy.state.snapshot_interval,
    );
    let live = Arc::new(Live::new(
        Arc::new(gateway),
        policy,
        source,
        metrics.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));

    let public = bind(listen).await?;
    let admin_listener = bind(admin_listen).await?;
    let public_addr = local_addr(&public, listen)?;
    let admin_addr = local_addr(&admin_listener, admin_listen)?;
    tracing::info!(%public_addr, %admin_addr, routes, "ekko listening");

    let (stop, stopped) = watch::channel(false);
    let public_task = tokio::spawn(serve_public(public, live.clone(), stopped.clone(), grace));
    // The admin listener outlives the public one, so /readyz returns 503 during the drain.
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        live: live.clone(),
    };
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin, admin_stopped, grace));
    let release_task = tokio::spawn(release_loop(live.clone(), stopped.clone()));
    let snapshots = Arc::new(Snapshots {
        state,
        guard,
        path: snapshot_path,
        metrics: metrics.clone(),
    });
    let snapshot_task = tokio::spawn(snapshot_loop(snapshots.clone(), snapshot_interval, stopped));
    ready.store(true, Ordering::Release);

    let task = tokio::spawn(async move {
        let _ = public_task.await;
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        let _ = release_task.await;
        let _ = snapshot_task.await;
        snapshots.save_final().await
    });
    Ok(Running {
        public_addr,
        admin_addr,
        metrics,
        live,
        ready,
        stop,
        task,
    })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves producers and consumers; each request runs on the gateway current at its start.
async fn serve_public(
    listener: TcpListener,
    live: Arc<Live>,
    stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    accept_loop(listener, stopped, grace, move |req, peer| {
        let gateway = live.gateway();
        // Reads run inline: they commit nothing, and a task per read costs cache hits
        // about 7 % of their throughput. A notification route may match GET or HEAD too,
        // and its requests commit, so they are not reads.
        let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && !gateway.is_notification(req.method(), req.uri().path());
        async move {
            if read {
                return gateway.handle(req, peer).await;
            }
            // Any other request runs as its own task, so a producer that disconnects
            // mid-forward drops only the handle and the forward is still committed.
            // Without it the upstream would have the change while ekko forgot it, and the
            // next identical notification would be forwarded a second time.
            let task = tokio::spawn(async move { gateway.handle(req, peer).await });
            task.await.unwrap_or_else(|error| task_failed(&error))
        }
    })
    .await
}

/// Returns a 500 response for a request whose task panicked. The panic hook has already
/// printed the panic.
fn task_failed(error: &tokio::task::JoinError) -> Response<Full<Bytes>> {
    tracing::error!(%error, "request handling failed");
    crate::notify::json_response(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({
            "error": "internal",
            "message": "ekko failed while handling this request; retry it, and report the error in ekko's log if it repeats",
        }),
    )
}

async fn serve_admin(
    listener: TcpListener,
    admin: Admin,
    stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    let admin = Arc::new(admin);
    accept_loop(listener, stopped, grace, move |req, _| {
        let admin = admin.clone();
        async move { admin.handle(req).await }
    })
    .await
}

/// How often quarantines are checked for release (1 s).
const RELEASE_TICK: Duration = Duration::from_secs(1);

/// Releases quarantined entities whose time has come, once per tick, until shutdown, with
/// the routes of the gateway current at each tick.
async fn release_loop(live: Arc<Live>, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RELEASE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                live.gateway().release_due().await;
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Runs until `signal` completes, then shuts down gracefully. Reloads report that there is
/// no policy file; the binary serves through [`start_with_policy_file`] instead.
pub async fn serve(policy: Policy, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
    let running = start(policy).await?;
    signal.await;
    tracing::info!("shutdown requested; draining in-flight requests");
    let result = running.shutdown().await;
    tracing::info!("ekko stopped");
    result
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn load_state(policy: &Policy) -> Result<StateStore, ServeError> {
    let limits = &policy.state;
    let Some(path) = &limits.snapshot else {
        return Ok(StateStore::new(limits.max_entities, limits.max_event_ids));
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(ServeError::SnapshotDir(dir.to_path_buf()));
    }
    match StateStore::load(path, limits.max_entities, limits.max_event_ids) {
        Ok((state, stats)) => {
            tracing::info!(path = %path.display(), entities = stats.entities, events = stats.events, "snapshot loaded");
            Ok(state)
        }
        Err(SnapshotError::Missing { .. }) => {
            tracing::info!(path = %path.display(), "no snapshot yet; starting empty");
            Ok(StateStore::new(limits.max_entities, limits.max_event_ids))
        }
        Err(error) => {
            tracing::warn!(%error, "snapshot unusable; starting empty, so unchanged entities are forwarded once more");
            Ok(StateStore::new(limits.max_entities, limits.max_event_ids))
        }
    }
}

/// The state and guard snapshot files and what they are written from.
struct Snapshots {
    state: Arc<StateStore>,
    guard: Arc<LoopGuard>,
    path: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl Snapshots {
    /// Writes the state snapshot and the guard snapshot beside it, off the async threads.
    async fn save(&self) -> Result<(), ServeError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let (state, guard) = (self.state.clone(), self.guard.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<(), ServeError> {
            state.save(&path)?;
            guard.save(&guard_path(&path))?;
            guard.save_held(&held_path(&path))?;
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(ServeError::Compile(format!("snapshot task failed: {e}"))));
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .snapshot_writes
            .get_or_create(&OutcomeLabels { result: label })
            .inc();
        result
    }

    async fn save_final(&self) -> Result<(), ServeError> {
        self.save().await?;
        if let Some(path) = &self.path {
            tracing::info!(path = %path.display(), entities = self.state.entities.len(), "final snapshot written");
        }
        Ok(())
    }
}

async fn snapshot_loop(
    snapshots: Arc<Snapshots>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    if snapshots.path.is_none() {
        return;
    }
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(error) = snapshots.save().await {
                    tracing::error!(%error, "periodic snapshot failed; state since the last good snapshot would be lost on a crash");
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Loads the guard snapshot beside the state snapshot; a missing or unusable one starts empty.
fn load_guard(policy: &Policy) -> LoopGuard {
    let mut guard = LoopGuard::new(&policy.state);
    let Some(path) = &policy.state.snapshot else {
        return guard;
    };
    let records = guard_path(path);
    match guard.load(&records) {
        Ok(count) => {
            tracing::info!(path = %records.display(), records = count, "guard snapshot loaded")
        }
        Err(GuardSnapshotError::Missing(_)) => {}
        Err(error) => {
            tracing::warn!(%error, "guard snapshot unusable; starting without damping history")
        }
    }
    let held = held_path(path);
    match guard.load_held(&held) {
        Ok(count) => {
            tracing::info!(path = %held.display(), quarantined = count, "held notifications loaded")
        }
        Err(GuardSnapshotError::Missing(_)) => {}
        Err(error) => {
            tracing::error!(%error, "held notifications unusable; their latest states are not delivered")
        }
    }
    guard
}

/// Accepts connections until `stopped` flips, then waits at most `grace` for open
/// connections to finish their in-flight requests.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(%error, "accept failed; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "grace period over; closing remaining connections"
        );
    }
}
