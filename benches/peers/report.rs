//! Medians, ratios and the Markdown tables of the results.

use std::fmt::Write as _;

use crate::herd::HerdResult;
use crate::servers::Kind;

/// One measured run of one server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Completed requests per second.
    pub requests_per_second: f64,
    /// Median latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Responses with status 400 or more, plus socket errors.
    pub errors: u64,
    /// CPU seconds of the server per 1,000 completed requests.
    pub cpu_per_1000: f64,
}

/// Median, minimum and maximum of a list of values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// Computes the spread of `values`, which is all zero when `values` is empty.
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 0 {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// All measured runs of one server in one scenario.
#[derive(Debug, Clone)]
pub struct Series {
    /// The server.
    pub kind: Kind,
    /// Its runs, warm-up excluded.
    pub samples: Vec<Sample>,
}

impl Series {
    fn spread(&self, field: fn(&Sample) -> f64) -> Spread {
        let values: Vec<f64> = self.samples.iter().map(field).collect();
        Spread::of(&values)
    }

    /// Errors over all runs.
    pub fn errors(&self) -> u64 {
        self.samples.iter().map(|s| s.errors).sum()
    }

    /// Median requests per second.
    pub fn median_rps(&self) -> f64 {
        self.spread(|s| s.requests_per_second).median
    }
}

/// One load scenario's results: ekko's series and each peer's.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Short id such as `S1`.
    pub id: &'static str,
    /// Description of what the scenario measures.
    pub title: &'static str,
    /// ekko's runs.
    pub ekko: Series,
    /// Each peer's runs.
    pub peers: Vec<Series>,
}

/// S5's outcome for one server and change signal.
#[derive(Debug, Clone)]
pub struct HerdRow {
    /// The server.
    pub kind: Kind,
    /// Change signal that the server received.
    pub signal: &'static str,
    /// Counts of what the consumers saw.
    pub result: HerdResult,
    /// Consumers per change.
    pub consumers: u32,
}

/// S6's outcome.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRow {
    /// Entities whose fingerprint ekko holds.
    pub entities: u64,
    /// ekko's resident set size before the fill, in bytes.
    pub rss_before: u64,
    /// ekko's resident set size after the fill, in bytes.
    pub rss_after: u64,
}

impl MemoryRow {
    /// Resident memory growth per entity, in bytes.
    pub fn bytes_per_entity(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.entities.max(1) as f64
    }
}

fn ratio(ekko: f64, peer: f64) -> String {
    if peer > 0.0 {
        format!("{:.2}", ekko / peer)
    } else {
        "n/a".to_owned()
    }
}

fn with_commas(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn rps_cell(series: &Series) -> String {
    let spread = series.spread(|s| s.requests_per_second);
    format!(
        "{} ({}–{})",
        with_commas(spread.median),
        with_commas(spread.min),
        with_commas(spread.max)
    )
}

fn pair_cell(ekko: &Series, peer: &Series, field: fn(&Sample) -> f64, digits: usize) -> String {
    let own = ekko.spread(field).median;
    let other = peer.spread(field).median;
    format!("{own:.digits$} / {other:.digits$} ({})", ratio(own, other))
}

/// Renders the load scenarios as a Markdown table, one row per (scenario, peer).
pub fn load_table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | peer | ekko req/s, median (min–max) | peer req/s, median (min–max) \
         | req/s ekko/peer | p50 ms ekko / peer (ratio) | p99 ms ekko / peer (ratio) \
         | errors ekko / peer | CPU-s per 1,000 req ekko / peer (ratio) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for result in results {
        if result.peers.is_empty() {
            let _ = writeln!(
                out,
                "| {} {} | none | {} | | | {:.2} | {:.2} | {} | {:.4} |",
                result.id,
                result.title,
                rps_cell(&result.ekko),
                result.ekko.spread(|s| s.p50_ms).median,
                result.ekko.spread(|s| s.p99_ms).median,
                result.ekko.errors(),
                result.ekko.spread(|s| s.cpu_per_1000).median,
            );
        }
        for peer in &result.peers {
            let _ = writeln!(
                out,
                "| {} {} | {} | {} | {} | **{}** | {} | {} | {} / {} | {} |",
                result.id,
                result.title,
                peer.kind.label(),
                rps_cell(&result.ekko),
                rps_cell(peer),
                ratio(result.ekko.median_rps(), peer.median_rps()),
                pair_cell(&result.ekko, peer, |s| s.p50_ms, 2),
                pair_cell(&result.ekko, peer, |s| s.p99_ms, 2),
                result.ekko.errors(),
                peer.errors(),
                pair_cell(&result.ekko, peer, |s| s.cpu_per_1000, 4),
            );
        }
    }
    out
}

/// Renders S5 as a Markdown table.
pub fn herd_table(rows: &[HerdRow]) -> String {
    let mut out = String::from(
        "| server | change signal | changes | source fetches per change | stale responses | errors |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in rows {
        let result = &row.result;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} of {} | {} |",
            row.kind.label(),
            row.signal,
            result.changes,
            result.fetches_per_change(),
            result.stale,
            u64::from(result.changes) * u64::from(row.consumers),
            result.errors,
        );
    }
    out
}

/// Renders S6 as a Markdown table.
pub fn memory_table(row: &MemoryRow) -> String {
    format!(
        "| entities | ekko RSS before | ekko RSS after | bytes per entity |\n\
         |---|---|---|---|\n\
         | {} | {:.1} MiB | {:.1} MiB | {:.0} |\n",
        with_commas(row.entities as f64),
        row.rss_before as f64 / 1_048_576.0,
        row.rss_after as f64 / 1_048_576.0,
        row.bytes_per_entity(),
    )
}

/// A target and whether the run met it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The target, such as `S2 ≥ 2× nginx proxy_pass`.
    pub name: String,
    /// The measured value, as text.
    pub measured: String,
    /// Whether the measured value meets the target.
    pub met: bool,
}

/// Renders the targets as a Markdown list.
pub fn target_list(targets: &[Target]) -> String {
    let mut out = String::new();
    for target in targets {
        let verdict = if target.met { "met" } else { "missed" };
        let _ = writeln!(out, "- {}: {} ({verdict})", target.name, target.measured);
    }
    out
}

/// Checks a load scenario's throughput ratio against `minimum` for the peer `kind`.
pub fn throughput_target(result: &ScenarioResult, kind: Kind, minimum: f64) -> Option<Target> {
    let peer = result.peers.iter().find(|p| p.kind == kind)?;
    let value = result.ekko.median_rps() / peer.median_rps().max(f64::MIN_POSITIVE);
    Some(Target {
        name: format!("{} req/s ≥ {minimum}× {}", result.id, kind.label()),
        measured: format!("{value:.2}×"),
        met: value >= minimum,
    })
}
