//! Policy reload: re-reads the policy file and swaps in a gateway for the new routes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use http::StatusCode;
use serde_json::json;

use crate::metrics::{Metrics, OutcomeLabels};
use crate::notify::{DroppedState, Gateway};
use crate::policy::{self, AdminConfig, Policy, Problem};

/// The policy in force and the gateway compiled from it, replaced whole by a reload.
///
/// A request clones the current gateway's `Arc` when it starts, so it finishes on the
/// routes it started with while later requests see the new ones.
pub struct Live {
    gateway: RwLock<Arc<Gateway>>,
    admin: RwLock<Arc<AdminConfig>>,
    /// The policy in force, with the keys that need a restart at their startup values.
    /// Its lock also makes reloads run one at a time.
    applied: Mutex<Policy>,
    source: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

/// Result of a policy reload.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The new policy is in force, except for the keys listed in `needs_restart`.
    Applied(Applied),
    /// The policy file is invalid; the old policy stays in force.
    Rejected(Vec<Problem>),
    /// ekko was started from a policy value and not from a file, so there is nothing to
    /// re-read.
    NoPolicyFile,
}

/// A reload that took effect.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Number of notification routes now in force.
    pub notifications: usize,
    /// Number of lookup routes now in force.
    pub lookups: usize,
    /// Changed keys that keep their old values until ekko restarts, such as `listen`.
    pub needs_restart: Vec<&'static str>,
    /// Routes that are no longer in the policy but still have quarantined entities, with
    /// their counts. Those entities are held until the route returns or an operator
    /// releases them.
    pub orphaned_quarantines: Vec<(String, i64)>,
    /// State dropped because the routes that used it left the policy.
    pub dropped: DroppedState,
}

impl ReloadOutcome {
    /// Returns the HTTP status for `POST /admin/reload`: 200 applied, 400 rejected, 409 without a
    /// policy file.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Applied(_) => StatusCode::OK,
            Self::Rejected(_) => StatusCode::BAD_REQUEST,
            Self::NoPolicyFile => StatusCode::CONFLICT,
        }
    }

    /// Builds the JSON body for `POST /admin/reload`. Problem messages never contain the value of
    /// a substituted variable, because the policy parser leaves them out.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Applied(applied) => {
                let orphaned: Vec<_> = applied
                    .orphaned_quarantines
                    .iter()
                    .map(|(route, count)| json!({ "route": route, "quarantined": count }))
                    .collect();
                json!({
                    "result": "ok",
                    "notifications": applied.notifications,
                    "lookups": applied.lookups,
                    "needs_restart": applied.needs_restart,
                    "orphaned_quarantines": orphaned,
                    "dropped": {
                        "fingerprints": applied.dropped.fingerprints,
                        "cache_entries": applied.dropped.cache_entries,
                    },
                })
            }
            Self::Rejected(problems) => {
                let problems: Vec<_> = problems
                    .iter()
                    .map(|p| json!({ "line": p.line, "key": p.key, "message": p.message }))
                    .collect();
                json!({
                    "result": "rejected",
                    "error": "policy_invalid",
                    "message": "the policy file is invalid, so the policy in force stays; fix the problems and reload again",
                    "problems": problems,
                })
            }
            Self::NoPolicyFile => json!({
                "result": "rejected",
                "error": "no_policy_file",
                "message": "this ekko was started from a policy value, not a file, so there is nothing to reload",
            }),
        }
    }
}

impl Live {
    /// Wraps the startup gateway and the policy it was built from; `source` is the policy
    /// file that reloads re-read.
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        policy: Policy,
        source: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            gateway: RwLock::new(gateway),
            admin: RwLock::new(Arc::new(policy.admin.clone())),
            applied: Mutex::new(policy),
            source,
            metrics,
        }
    }

    /// The gateway for a request that starts now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The admin listener's settings in force.
    pub fn admin(&self) -> Arc<AdminConfig> {
        self.admin.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the policy file and applies it, off the async threads; logs and counts the
    /// outcome.
    pub async fn reload(self: &Arc<Self>) -> ReloadOutcome {
        let live = self.clone();
        tokio::task::spawn_blocking(move || live.reload_blocking())
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "policy reload task failed; the policy in force stays");
                ReloadOutcome::Rejected(vec![Problem {
                    line: 0,
                    key: String::new(),
                    message: "the reload task failed; see ekko's log".to_owned(),
                }])
            })
    }

    fn reload_blocking(&self) -> ReloadOutcome {
        let Some(path) = &self.source else {
            tracing::warn!("policy reload requested, but ekko was started without a policy file");
            return ReloadOutcome::NoPolicyFile;
        };
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match policy::load(path) {
            Ok(loaded) => self.apply(&mut applied, loaded),
            Err(errors) => ReloadOutcome::Rejected(errors.0),
        };
        self.record(path, &outcome);
        outcome
    }

    /// Builds the gateway for `loaded` and swaps it in; the keys that need a restart keep
    /// the values in force.
    fn apply(&self, applied: &mut Policy, mut loaded: Policy) -> ReloadOutcome {
        let needs_restart = keep_restart_keys(applied, &mut loaded);
        let current = self.gateway();
        let gateway = match current.with_policy(&loaded) {
            Ok(gateway) => gateway,
            Err(error) => {
                return ReloadOutcome::Rejected(vec![Problem {
                    line: 0,
                    key: String::new(),
                    message: format!("a fingerprint mask cannot be compiled: {error}"),
                }])
            }
        };
        gateway.update_quarantine_gauge();
        let dropped = gateway.drop_removed_routes_state(&current);
        let orphaned = orphaned_quarantines(&gateway, &loaded);
        *self.gateway.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gateway);
        *self.admin.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded.admin.clone());
        let outcome = Applied {
            notifications: loaded.notifications.len(),
            lookups: loaded.lookups.len(),
            needs_restart,
            orphaned_quarantines: orphaned,
            dropped,
        };
        *applied = loaded;
        ReloadOutcome::Applied(outcome)
    }

    /// Logs the outcome and counts it in `ekko_policy_reloads_total`.
    fn record(&self, path: &std::path::Path, outcome: &ReloadOutcome) {
        let result = match outcome {
            ReloadOutcome::Applied(applied) => {
                log_applied(path, applied);
                "ok"
            }
            ReloadOutcome::Rejected(problems) => {
                for problem in problems {
                    tracing::error!(line = problem.line, key = %problem.key, problem = %problem.message, "invalid policy");
                }
                tracing::error!(path = %path.display(), problems = problems.len(), "policy reload rejected; the policy in force stays");
                "rejected"
            }
            ReloadOutcome::NoPolicyFile => return,
        };
        self.metrics
            .policy_reloads
            .get_or_create(&OutcomeLabels { result })
            .inc();
    }
}

fn log_applied(path: &std::path::Path, applied: &Applied) {
    for key in &applied.needs_restart {
        tracing::warn!(
            key,
            "policy key changed, but the change needs a restart; the old value stays in force"
        );
    }
    for (route, count) in &applied.orphaned_quarantines {
        tracing::warn!(route = %route, quarantined = count, "route removed from the policy still has quarantined entities; they stay held until the route returns or an operator releases them");
    }
    tracing::info!(
        path = %path.display(),
        notifications = applied.notifications,
        lookups = applied.lookups,
        dropped_fingerprints = applied.dropped.fingerprints,
        dropped_cache_entries = applied.dropped.cache_entries,
        "policy reloaded"
    );
}

/// Copies into `loaded` the values in force of the keys that only take effect at startup:
/// the bound listeners, the drain time, the state tables and snapshot, and the cache size.
/// Returns the keys whose values differed.
fn keep_restart_keys(applied: &Policy, loaded: &mut Policy) -> Vec<&'static str> {
    let (old, new) = (&applied.state, &loaded.state);
    let checks = [
        ("listen", applied.listen != loaded.listen),
        ("admin_listen", applied.admin_listen != loaded.admin_listen),
        (
            "shutdown_grace",
            applied.shutdown_grace != loaded.shutdown_grace,
        ),
        ("state.max_entities", old.max_entities != new.max_entities),
        (
            "state.max_event_ids",
            old.max_event_ids != new.max_event_ids,
        ),
        ("state.max_traces", old.max_traces != new.max_traces),
        (
            "state.max_quarantined",
            old.max_quarantined != new.max_quarantined,
        ),
        ("state.snapshot", old.snapshot != new.snapshot),
        (
            "state.snapshot_interval",
            old.snapshot_interval != new.snapshot_interval,
        ),
        (
            "cache.max_bytes",
            applied.cache.max_bytes != loaded.cache.max_bytes,
        ),
    ];
    loaded.listen = applied.listen;
    loaded.admin_listen = applied.admin_listen;
    loaded.shutdown_grace = applied.shutdown_grace;
    loaded.state = applied.state.clone();
    loaded.cache = applied.cache.clone();
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

/// Routes with quarantined entities that `policy` no longer has, sorted by name.
fn orphaned_quarantines(gateway: &Gateway, policy: &Policy) -> Vec<(String, i64)> {
    let mut orphaned: Vec<_> = gateway
        .guard()
        .quarantined_per_route()
        .into_iter()
        .filter(|(route, count)| {
            *count > 0 && !policy.notifications.iter().any(|r| &r.name == route)
        })
        .collect();
    orphaned.sort();
    orphaned
}
