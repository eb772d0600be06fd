//! Prometheus registry and every metric family, with bounded label values.
//!
//! Labels carry route and upstream names from the policy and small fixed sets of
//! outcomes; never an entity id or a URL, so series stay bounded by the policy's size.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `route` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name from the policy.
    pub route: String,
}

/// `route` and `decision` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Route name from the policy.
    pub route: String,
    /// `forwarded`, `duplicate`, `unchanged`, `held`, `rejected`, `busy` or `upstream_error`.
    pub decision: &'static str,
}

/// `route` and `result` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Route name from the policy.
    pub route: String,
    /// A fixed outcome name.
    pub result: &'static str,
}

/// `route` and `reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Route name from the policy.
    pub route: String,
    /// A fixed reason name.
    pub reason: &'static str,
}

/// `route` and `kind` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Route name from the policy.
    pub route: String,
    /// `oscillation` or `hops`.
    pub kind: &'static str,
}

/// `route` and `outcome` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeRouteLabels {
    /// Route name from the policy.
    pub route: String,
    /// `delivered`, `unchanged`, `empty` or `retry`.
    pub outcome: &'static str,
}

/// `route` and `status` labels of cache requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheStatusLabels {
    /// Lookup route name from the policy.
    pub route: String,
    /// `hit`, `stale`, `miss`, `collapsed`, `bypass` or `not_modified`.
    pub status: &'static str,
}

/// `upstream` and `code` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamCodeLabels {
    /// Upstream name from the policy.
    pub upstream: String,
    /// HTTP status code, or `timeout` / `connect_error` / `error`.
    pub code: String,
}

/// `upstream` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream name from the policy.
    pub upstream: String,
}

/// `upstream` and `outcome` labels of AMQP publishes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AmqpOutcomeLabels {
    /// Upstream name from the policy.
    pub upstream: String,
    /// `confirmed`, `nacked`, `returned`, `unconnected`, `timeout` or `failed`.
    pub outcome: &'static str,
}

/// `result` label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`; `ok` or `rejected` for policy reloads.
    pub result: &'static str,
}

/// `version` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s: a suppressed notification takes microseconds, a slow upstream seconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric family ekko exports, registered under the `ekko_` prefix.
pub struct Metrics {
    registry: Registry,
    /// `ekko_notifications_total{route,decision}`.
    pub notifications: Family<DecisionLabels, Counter>,
    /// `ekko_notification_duration_seconds{route}`.
    pub notification_duration: HistogramFamily<RouteLabels>,
    /// `ekko_upstream_requests_total{upstream,code}`.
    pub upstream_requests: Family<UpstreamCodeLabels, Counter>,
    /// `ekko_upstream_duration_seconds{upstream}`.
    pub upstream_duration: HistogramFamily<UpstreamLabels>,
    /// `ekko_fingerprint_lookups_total{route,result}`.
    pub fingerprint_lookups: Family<ResultLabels, Counter>,
    /// `ekko_fail_open_total{route,reason}`: forwarded because no decision could be made.
    pub fail_open: Family<ReasonLabels, Counter>,
    /// `ekko_shadow_decisions_total{route,decision}`: what shadow routes would have done.
    pub shadow_decisions: Family<DecisionLabels, Counter>,
    /// `ekko_state_entities`: entities with a remembered fingerprint.
    pub state_entities: Gauge,
    /// `ekko_state_evictions_total`: entities dropped by the `max_entities` bound.
    pub state_evictions: Counter,
    /// `ekko_snapshot_writes_total{result}`.
    pub snapshot_writes: Family<OutcomeLabels, Counter>,
    /// `ekko_loop_detections_total{route,kind}`: entities quarantined, by cause.
    pub loop_detections: Family<KindLabels, Counter>,
    /// `ekko_quarantined_entities{route}`.
    pub quarantined_entities: Family<RouteLabels, Gauge>,
    /// `ekko_loop_releases_total{route,outcome}`.
    pub loop_releases: Family<OutcomeRouteLabels, Counter>,
    /// `ekko_cache_requests_total{route,status}`.
    pub cache_requests: Family<CacheStatusLabels, Counter>,
    /// `ekko_cache_bytes`.
    pub cache_bytes: Gauge,
    /// `ekko_cache_entries`.
    pub cache_entries: Gauge,
    /// `ekko_cache_evictions_total`.
    pub cache_evictions: Counter,
    /// `ekko_cache_invalidations_total{route}`: entities invalidated by a change.
    pub cache_invalidations: Family<RouteLabels, Counter>,
    /// `ekko_policy_reloads_total{result}`: policy reloads applied (`ok`) or rejected.
    pub policy_reloads: Family<OutcomeLabels, Counter>,
    /// `ekko_amqp_connected{upstream}`: 1 while the AMQP upstream's connection is open.
    pub amqp_connected: Family<UpstreamLabels, Gauge>,
    /// `ekko_amqp_publishes_total{upstream,outcome}`: AMQP messages by publish outcome.
    pub amqp_publishes: Family<AmqpOutcomeLabels, Counter>,
    /// `ekko_amqp_reconnects_total{upstream}`: connections opened again after a loss or a
    /// settings change.
    pub amqp_reconnects: Family<UpstreamLabels, Counter>,
}

impl Metrics {
    /// Creates and registers every family; `ekko_build_info` is set from the crate version.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ekko");
        let metrics = Self {
            notifications: Family::default(),
            notification_duration: Family::new_with_constructor(latency_histogram),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            fingerprint_lookups: Family::default(),
            fail_open: Family::default(),
            shadow_decisions: Family::default(),
            state_entities: Gauge::default(),
            state_evictions: Counter::default(),
            snapshot_writes: Family::default(),
            loop_detections: Family::default(),
            quarantined_entities: Family::default(),
            loop_releases: Family::default(),
            cache_requests: Family::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_evictions: Counter::default(),
            cache_invalidations: Family::default(),
            policy_reloads: Family::default(),
            amqp_connected: Family::default(),
            amqp_publishes: Family::default(),
            amqp_reconnects: Family::default(),
            registry: Registry::default(),
        };
        metrics.register(&mut registry);
        Self {
            registry,
            ..metrics
        }
    }

    fn register(&self, registry: &mut Registry) {
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "ekko version; the value is always 1",
            build_info,
        );
        registry.register(
            "notifications",
            "Notifications by route and decision",
            self.notifications.clone(),
        );
        registry.register(
            "notification_duration_seconds",
            "Time from request to response for notifications",
            self.notification_duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests to upstreams by status code or failure",
            self.upstream_requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Upstream request time, including the response body",
            self.upstream_duration.clone(),
        );
        registry.register(
            "fingerprint_lookups",
            "Source API lookups made to fingerprint an entity, by result",
            self.fingerprint_lookups.clone(),
        );
        registry.register(
            "fail_open",
            "Notifications forwarded because no decision could be made, by reason",
            self.fail_open.clone(),
        );
        registry.register(
            "shadow_decisions",
            "Decisions that shadow routes would have made",
            self.shadow_decisions.clone(),
        );
        registry.register(
            "state_entities",
            "Entities with a remembered fingerprint",
            self.state_entities.clone(),
        );
        registry.register(
            "state_evictions",
            "Entities evicted by the max_entities bound",
            self.state_evictions.clone(),
        );
        registry.register(
            "snapshot_writes",
            "State snapshot writes by result",
            self.snapshot_writes.clone(),
        );
        registry.register(
            "loop_detections",
            "Entities quarantined by the loop guard, by cause",
            self.loop_detections.clone(),
        );
        registry.register(
            "quarantined_entities",
            "Entities currently quarantined",
            self.quarantined_entities.clone(),
        );
        registry.register(
            "loop_releases",
            "Quarantine releases by outcome",
            self.loop_releases.clone(),
        );
        registry.register(
            "cache_requests",
            "Lookup requests by cache status",
            self.cache_requests.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by the lookup cache",
            self.cache_bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries in the lookup cache",
            self.cache_entries.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cache entries evicted by the max_bytes bound",
            self.cache_evictions.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Entities whose cache entries a change invalidated",
            self.cache_invalidations.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads by result: ok, or rejected with the old policy kept",
            self.policy_reloads.clone(),
        );
        registry.register(
            "amqp_connected",
            "1 while the AMQP upstream's connection and confirm channel are open, else 0",
            self.amqp_connected.clone(),
        );
        registry.register(
            "amqp_publishes",
            "AMQP messages by publish outcome",
            self.amqp_publishes.clone(),
        );
        registry.register(
            "amqp_reconnects",
            "AMQP connections opened again after a loss or a settings change",
            self.amqp_reconnects.clone(),
        );
    }

    /// Encodes every family in the OpenMetrics 1.0 text format.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Encodes every family in the Prometheus text format 0.0.4, for scrapers and tools
    /// (such as `promtool check metrics`) that do not negotiate OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode_openmetrics())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: counter families are named with
/// their `_total` suffix, and `# UNIT` and `# EOF` lines are dropped.
fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_help: Option<&str> = None;
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let renamed = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(help) = pending_help.take() {
                let text = help.splitn(4, ' ').nth(3).unwrap_or("");
                out.push_str(&format!("# HELP {renamed} {text}\n"));
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_suffix_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics
            .notifications
            .get_or_create(&DecisionLabels {
                route: "hr".into(),
                decision: "unchanged",
            })
            .inc();
        let text = metrics.encode_prometheus();
        assert!(text.contains("# TYPE ekko_notifications_total counter\n"));
        assert!(text.contains("ekko_notifications_total{route=\"hr\",decision=\"unchanged\"} 1\n"));
        assert!(text.contains("ekko_build_info{version=\""));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_text_ends_with_eof() {
        let text = Metrics::new().encode_openmetrics();
        assert!(text.ends_with("# EOF\n"));
    }
}
