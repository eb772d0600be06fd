//! AMQP 0-9-1 upstreams: one supervised connection each, publishes with publisher confirms.

mod connection;
mod exchanges;
pub mod message;
mod publish;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use connection::{ConnectionSettings, Supervisor};
pub use publish::{Outgoing, PublishError, Published};

use crate::metrics::{Metrics, UpstreamLabels};
use crate::policy::Policy;

/// The AMQP upstreams of the policy in force, each with its connection supervisor.
///
/// Clones share the supervisors. The last clone that drops a supervisor stops its task and
/// closes its connection, so a gateway replaced by a reload keeps its connections until its
/// in-flight requests finish.
#[derive(Clone, Default)]
pub struct AmqpUpstreams {
    supervisors: BTreeMap<String, Arc<Supervisor>>,
}

impl AmqpUpstreams {
    /// Starts a supervisor for every AMQP upstream of `policy`.
    pub fn start(policy: &Policy, metrics: &Arc<Metrics>) -> Self {
        Self::default().with_policy(policy, metrics)
    }

    /// Returns the supervisors for a reloaded policy: an upstream whose settings are
    /// unchanged keeps its live connection, and a new or changed one gets a new supervisor,
    /// which connects in the background. Removed upstreams show as disconnected in
    /// `ekko_amqp_connected`.
    pub fn with_policy(&self, policy: &Policy, metrics: &Arc<Metrics>) -> Self {
        let mut supervisors = BTreeMap::new();
        for upstream in policy.upstreams.values() {
            let Some(amqp) = &upstream.amqp else {
                continue;
            };
            let settings = ConnectionSettings {
                amqp: amqp.clone(),
                connect_timeout: upstream.connect_timeout,
            };
            let supervisor = match self.supervisors.get(&upstream.name) {
                Some(current) if *current.settings() == settings => current.clone(),
                current => {
                    if current.is_some() {
                        tracing::info!(upstream = %upstream.name, "amqp upstream settings changed; opening a new connection");
                    }
                    let replacing = current.is_some();
                    Arc::new(Supervisor::start(
                        upstream,
                        amqp,
                        metrics.clone(),
                        replacing,
                    ))
                }
            };
            supervisors.insert(upstream.name.clone(), supervisor);
        }
        for removed in self
            .supervisors
            .keys()
            .filter(|name| !supervisors.contains_key(*name))
        {
            metrics
                .amqp_connected
                .get_or_create(&UpstreamLabels {
                    upstream: removed.clone(),
                })
                .set(0);
        }
        Self { supervisors }
    }

    /// Returns the supervisor of the AMQP upstream `name`, or `None` for an HTTP upstream.
    pub fn get(&self, name: &str) -> Option<&Arc<Supervisor>> {
        self.supervisors.get(name)
    }

    /// Returns the names of the AMQP upstreams that are not connected, sorted.
    pub fn disconnected(&self) -> Vec<&str> {
        self.supervisors
            .values()
            .filter(|supervisor| !supervisor.connected())
            .map(|supervisor| supervisor.upstream())
            .collect()
    }
}
