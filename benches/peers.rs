//! Side-by-side benchmark of ekko against nginx and Varnish on 127.0.0.1; see
//! docs/benchmarks.md for the scenarios, the fairness rules and the command.

#[path = "peers/herd.rs"]
mod herd;
#[path = "peers/load.rs"]
mod load;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/servers.rs"]
mod servers;
#[path = "peers/upstream.rs"]
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd::{ChangeSignal, HerdSettings};
use load::{HttpClient, Script, WrkRun};
use report::{HerdRow, MemoryRow, ScenarioResult, Series, Target};
use servers::{Kind, Server, Setup};
use upstream::Upstream;

const USAGE: &str = "\
usage: cargo bench --bench peers -- [--smoke] [--scenario all|s1,s2,...] [--seconds N]
                                    [--repeats N] [--connections N] [--entities N]
  --smoke        ekko only, about 2 s per scenario, S6 with 10,000 entities (for CI)
  --scenario     scenarios to run, comma-separated: s1 ... s6 (default all)
  --seconds      length of each measured run in seconds (default 10)
  --repeats      measured runs per server (default 3)
  --connections  wrk connections (default 64)
  --entities     entities that S6 fills (default 1000000)";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    smoke: bool,
    scenarios: Vec<String>,
    seconds: u64,
    repeats: usize,
    connections: u32,
    entities: u64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            smoke: false,
            scenarios: ["s1", "s2", "s3", "s4", "s5", "s6"]
                .map(String::from)
                .to_vec(),
            seconds: 10,
            repeats: 3,
            connections: 64,
            entities: 1_000_000,
        };
        let mut explicit_entities = false;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let mut value = |name: &str| {
                iter.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--smoke" => options.smoke = true,
                "--scenario" => options.scenarios = parse_scenarios(&value("--scenario")?)?,
                "--seconds" => options.seconds = parse_number(&value("--seconds")?, arg)?,
                "--repeats" => options.repeats = parse_number(&value("--repeats")?, arg)?,
                "--connections" => {
                    options.connections = parse_number(&value("--connections")?, arg)?;
                }
                "--entities" => {
                    options.entities = parse_number(&value("--entities")?, arg)?;
                    explicit_entities = true;
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if options.smoke {
            options.seconds = 2;
            options.repeats = 1;
            if !explicit_entities {
                options.entities = 10_000;
            }
        }
        Ok(options)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }

    /// Lists the servers that a scenario compares, which is ekko alone in smoke mode.
    fn servers(&self, peers: &[Kind]) -> Vec<Kind> {
        let mut kinds = vec![Kind::Ekko];
        if !self.smoke {
            kinds.extend_from_slice(peers);
        }
        kinds
    }
}

fn parse_scenarios(text: &str) -> Result<Vec<String>, String> {
    if text == "all" {
        return Ok(["s1", "s2", "s3", "s4", "s5", "s6"]
            .map(String::from)
            .to_vec());
    }
    let mut scenarios = Vec::new();
    for name in text.split(',') {
        let name = name.trim().to_lowercase();
        if !["s1", "s2", "s3", "s4", "s5", "s6"].contains(&name.as_str()) {
            return Err(format!("unknown scenario `{name}`; use s1 to s6 or all"));
        }
        scenarios.push(name);
    }
    Ok(scenarios)
}

fn parse_number<T: std::str::FromStr>(text: &str, name: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{name} must be a whole number, got `{text}`"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --bench '*'` runs every bench target without `--bench`; this one needs
    // servers and wrk, so it only runs under `cargo bench` (or benches/peers.sh).
    if !args.iter().any(|a| a == "--bench") {
        println!("peers: skipped; run it with `cargo bench --bench peers` or benches/peers.sh");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("peers: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    pin_to_load_cpu();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("peers: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Pins this process (the upstream and the harness) to the load generator's CPU, so that
/// CPU 0 is left to the server under test. Threads started later inherit the affinity.
fn pin_to_load_cpu() {
    let pid = std::process::id().to_string();
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", load::LOAD_CPU, &pid])
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(pinned, Ok(status) if status.success()) {
        eprintln!("peers: taskset failed; the harness runs unpinned");
    }
}

/// State shared by every scenario.
struct Bench {
    options: Options,
    upstream: Arc<Upstream>,
    setup: Setup,
    client: HttpClient,
    /// Messages about runs that had errors or did not measure what they should.
    problems: Vec<String>,
    /// Distinguishes the data of one run from every earlier run.
    run_id: String,
}

async fn run(options: Options) -> Result<bool, String> {
    let upstream = Arc::new(Upstream::default());
    let upstream_addr = upstream::serve(upstream.clone())
        .await
        .map_err(|e| format!("cannot start the upstream: {e}"))?;
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-peers");
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let mut bench = Bench {
        setup: Setup {
            upstream: upstream_addr,
            dir: out_dir.join("run"),
            max_entities: options.entities.max(1_000_000),
            peer_ttl_secs: 300,
        },
        options,
        upstream,
        client: HttpClient::new(),
        problems: Vec::new(),
        run_id: started.to_string(),
    };

    let markdown = run_scenarios(&mut bench).await?;
    println!("{markdown}");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let results_file = out_dir.join("results.md");
    std::fs::write(&results_file, &markdown)
        .map_err(|e| format!("cannot write {}: {e}", results_file.display()))?;
    eprintln!("peers: results written to {}", results_file.display());
    for problem in &bench.problems {
        eprintln!("peers: FAILED: {problem}");
    }
    Ok(bench.problems.is_empty())
}

async fn run_scenarios(bench: &mut Bench) -> Result<String, String> {
    let mut loads = Vec::new();
    let mut herd_rows = Vec::new();
    let mut memory = None;
    if bench.options.wants("s1") {
        loads.push(s1_forwarded(bench).await?);
    }
    if bench.options.wants("s2") {
        loads.push(s2_suppressed(bench).await?);
    }
    if bench.options.wants("s3") {
        loads.push(s3_hot_entity(bench).await?);
    }
    if bench.options.wants("s4") {
        loads.push(s4_zipf(bench).await?);
    }
    if bench.options.wants("s5") {
        herd_rows = s5_herd(bench).await?;
    }
    if bench.options.wants("s6") {
        memory = Some(s6_memory(bench).await?);
    }
    Ok(render(bench, &loads, &herd_rows, memory.as_ref()))
}

fn render(
    bench: &Bench,
    loads: &[ScenarioResult],
    herd_rows: &[HerdRow],
    memory: Option<&MemoryRow>,
) -> String {
    let options = &bench.options;
    let mut out = format!(
        "## Results ({}; {} s per run, {} measured run(s) per server after a discarded warm-up, \
         {} wrk connections)\n\n",
        if options.smoke { "smoke" } else { "full" },
        options.seconds,
        options.repeats,
        options.connections
    );
    if !loads.is_empty() {
        out.push_str(&report::load_table(loads));
        out.push('\n');
    }
    if !herd_rows.is_empty() {
        out.push_str("S5, the herd:\n\n");
        out.push_str(&report::herd_table(herd_rows));
        out.push('\n');
    }
    if let Some(row) = memory {
        out.push_str("S6, fingerprint memory:\n\n");
        out.push_str(&report::memory_table(row));
        out.push('\n');
    }
    // Smoke runs are too short and too small for the targets to mean anything.
    let targets = targets(loads, herd_rows, memory);
    if !options.smoke && !targets.is_empty() {
        out.push_str("Targets:\n\n");
        out.push_str(&report::target_list(&targets));
    }
    out
}

fn targets(
    loads: &[ScenarioResult],
    herd_rows: &[HerdRow],
    memory: Option<&MemoryRow>,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for result in loads {
        let minimums: &[(Kind, f64)] = match result.id {
            "S1" => &[(Kind::NginxPass, 1.0)],
            "S2" => &[(Kind::NginxPass, 2.0)],
            _ => &[(Kind::Varnish, 1.0), (Kind::NginxCache, 1.2)],
        };
        for (kind, minimum) in minimums {
            targets.extend(report::throughput_target(result, *kind, *minimum));
        }
    }
    if let Some(row) = herd_rows.iter().find(|r| r.kind == Kind::Ekko) {
        let fetches = row.result.fetches_per_change();
        targets.push(Target {
            name: "S5 ekko makes exactly 1 source fetch per change".to_owned(),
            measured: format!("{fetches:.2} per change, {} stale", row.result.stale),
            met: row.result.fetches == u64::from(row.result.changes) && row.result.stale == 0,
        });
    }
    if let Some(row) = memory {
        let bytes = row.bytes_per_entity();
        targets.push(Target {
            name: "S6 ≤ 128 B per entity".to_owned(),
            measured: format!("{bytes:.0} B per entity"),
            met: bytes <= 128.0,
        });
    }
    targets
}

/// Upstream request counts that a scenario's measured runs must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Every notification forwarded: upstream POSTs at least 99% of the requests.
    AllForwarded,
    /// Every notification suppressed: no upstream POST.
    NoneForwarded,
    /// Cache hits: upstream GETs at most 1% of the requests.
    CacheHits,
}

/// A load scenario driven by wrk.
struct LoadScenario {
    id: &'static str,
    title: &'static str,
    script: Script,
    peers: &'static [Kind],
    expect: Expect,
    /// Arguments for the script's `init`, given the run's id.
    args: fn(&str) -> Vec<String>,
}

async fn s1_forwarded(bench: &mut Bench) -> Result<ScenarioResult, String> {
    let scenario = LoadScenario {
        id: "S1",
        title: "forwarded notifications",
        script: Script::Forward,
        peers: &[Kind::NginxPass],
        expect: Expect::AllForwarded,
        args: |run| vec![run.to_owned()],
    };
    run_load(bench, &scenario, false).await
}

async fn s2_suppressed(bench: &mut Bench) -> Result<ScenarioResult, String> {
    let scenario = LoadScenario {
        id: "S2",
        title: "suppressed notifications",
        script: Script::Suppress,
        peers: &[Kind::NginxPass],
        expect: Expect::NoneForwarded,
        args: |_| Vec::new(),
    };
    run_load(bench, &scenario, false).await
}

async fn s3_hot_entity(bench: &mut Bench) -> Result<ScenarioResult, String> {
    let scenario = LoadScenario {
        id: "S3",
        title: "cache hits, one entity",
        script: Script::Hot,
        peers: &[Kind::Varnish, Kind::NginxCache],
        expect: Expect::CacheHits,
        args: |_| Vec::new(),
    };
    run_load(bench, &scenario, false).await
}

async fn s4_zipf(bench: &mut Bench) -> Result<ScenarioResult, String> {
    let scenario = LoadScenario {
        id: "S4",
        title: "cache hits, 10,000 entities, Zipf 1.0",
        script: Script::Zipf,
        peers: &[Kind::Varnish, Kind::NginxCache],
        expect: Expect::CacheHits,
        args: |_| vec!["10000".to_owned(), "1.0".to_owned()],
    };
    run_load(bench, &scenario, true).await
}

/// Starts the scenario's servers, runs a discarded warm-up on each, then the measured runs
/// interleaved (ekko, peer, ..., ekko, peer, ...), and stops the servers.
async fn run_load(
    bench: &mut Bench,
    scenario: &LoadScenario,
    prefill: bool,
) -> Result<ScenarioResult, String> {
    eprintln!("peers: {} {}", scenario.id, scenario.title);
    let kinds = bench.options.servers(scenario.peers);
    let servers = start_all(&kinds, &bench.setup)?;
    let outcome = measure_load(bench, scenario, prefill, &servers).await;
    for server in servers {
        server.stop();
    }
    let mut series = outcome?;
    let ekko = series.remove(0);
    Ok(ScenarioResult {
        id: scenario.id,
        title: scenario.title,
        ekko,
        peers: series,
    })
}

fn start_all(kinds: &[Kind], setup: &Setup) -> Result<Vec<Server>, String> {
    let mut servers = Vec::new();
    for kind in kinds {
        match Server::start(*kind, setup) {
            Ok(server) => servers.push(server),
            Err(error) => {
                for server in servers {
                    server.stop();
                }
                return Err(error.to_string());
            }
        }
    }
    Ok(servers)
}

async fn measure_load(
    bench: &mut Bench,
    scenario: &LoadScenario,
    prefill: bool,
    servers: &[Server],
) -> Result<Vec<Series>, String> {
    let script = scenario
        .script
        .write(&bench.setup.dir)
        .map_err(|e| format!("cannot write the wrk script: {e}"))?;
    let warm_up = Duration::from_secs(bench.options.seconds.clamp(1, 5));
    let measured = Duration::from_secs(bench.options.seconds);
    for server in servers {
        if prefill {
            let failures = load::prefill(&bench.client, server.addr, 10_000, 64).await;
            if failures > 0 {
                bench.problems.push(format!(
                    "{}: {failures} prefill reads through {} failed",
                    scenario.id,
                    server.kind.label()
                ));
            }
        }
        let args = (scenario.args)(&format!("{}-warm", bench.run_id));
        let run = WrkRun {
            script: &script,
            connections: bench.options.connections,
            duration: warm_up,
            args,
        };
        load::run_wrk(server, &run)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut series: Vec<Series> = servers
        .iter()
        .map(|s| Series {
            kind: s.kind,
            samples: Vec::new(),
        })
        .collect();
    for repeat in 0..bench.options.repeats {
        for (index, server) in servers.iter().enumerate() {
            let args = (scenario.args)(&format!("{}-{repeat}", bench.run_id));
            let run = WrkRun {
                script: &script,
                connections: bench.options.connections,
                duration: measured,
                args,
            };
            let sample = measure_run(bench, scenario, server, &run).await?;
            series[index].samples.push(sample);
        }
    }
    Ok(series)
}

/// Runs wrk once and measures the server's CPU time and the upstream's counts around it.
async fn measure_run(
    bench: &mut Bench,
    scenario: &LoadScenario,
    server: &Server,
    run: &WrkRun<'_>,
) -> Result<report::Sample, String> {
    let posts_before = bench.upstream.posts();
    let gets_before = bench.upstream.gets();
    let cpu_before = server.cpu_seconds();
    let wrk = load::run_wrk(server, run)
        .await
        .map_err(|e| e.to_string())?;
    let cpu = server.cpu_seconds() - cpu_before;
    let posts = bench.upstream.posts() - posts_before;
    let gets = bench.upstream.gets() - gets_before;

    let errors = wrk.status_errors + wrk.socket_errors;
    let label = server.kind.label();
    if errors > 0 {
        bench.problems.push(format!(
            "{} {label}: {} responses with status 400 or more and {} socket errors",
            scenario.id, wrk.status_errors, wrk.socket_errors
        ));
    }
    if wrk.requests == 0 {
        bench.problems.push(format!(
            "{} {label}: no request completed; server log:\n{}",
            scenario.id,
            server.log_tail()
        ));
    }
    if let Some(problem) = check_upstream(scenario.expect, server.kind, wrk.requests, posts, gets) {
        bench
            .problems
            .push(format!("{} {label}: {problem}", scenario.id));
    }
    Ok(report::Sample {
        requests_per_second: wrk.requests_per_second(),
        p50_ms: wrk.p50_us as f64 / 1000.0,
        p99_ms: wrk.p99_us as f64 / 1000.0,
        errors,
        cpu_per_1000: cpu / (wrk.requests.max(1) as f64) * 1000.0,
    })
}

/// Checks that a run measured what its scenario claims; returns the problem if not.
fn check_upstream(
    expect: Expect,
    kind: Kind,
    requests: u64,
    posts: u64,
    gets: u64,
) -> Option<String> {
    match expect {
        Expect::AllForwarded if posts * 100 < requests * 99 => Some(format!(
            "only {posts} of {requests} notifications reached the upstream; every one should"
        )),
        Expect::NoneForwarded if kind == Kind::Ekko && posts > 0 => Some(format!(
            "{posts} of {requests} unchanged notifications were forwarded; none should be"
        )),
        Expect::CacheHits if gets * 100 > requests => Some(format!(
            "{gets} of {requests} reads reached the source; the cache should answer them"
        )),
        _ => None,
    }
}

/// Lists the servers and change signals that S5 compares, which is ekko alone in smoke mode.
fn herd_variants(smoke: bool) -> Vec<(Kind, ChangeSignal, &'static str)> {
    let mut variants = vec![(Kind::Ekko, ChangeSignal::Notification, "notification")];
    if !smoke {
        // nginx has no purge row: Debian's cache purge module crashes its worker.
        variants.push((Kind::NginxCache, ChangeSignal::TtlOnly, "TTL 1 s"));
        variants.push((Kind::Varnish, ChangeSignal::TtlOnly, "TTL 1 s"));
        variants.push((Kind::Varnish, ChangeSignal::Purge, "TTL 1 s + PURGE"));
    }
    variants
}

async fn s5_herd(bench: &mut Bench) -> Result<Vec<HerdRow>, String> {
    eprintln!("peers: S5 the herd");
    let settings = HerdSettings {
        changes: if bench.options.smoke { 4 } else { 12 },
        consumers: 100,
        interval: Duration::from_millis(250),
    };
    bench.upstream.set_get_latency(Duration::from_millis(50));
    let mut setup = bench.setup.clone();
    // The peers learn of a change only when their copy expires (or is purged).
    setup.peer_ttl_secs = 1;

    let mut rows = Vec::new();
    for (kind, signal, label) in herd_variants(bench.options.smoke) {
        let server = Server::start(kind, &setup).map_err(|e| e.to_string())?;
        let result = herd::run(
            &bench.client,
            &bench.upstream,
            server.addr,
            signal,
            settings,
        )
        .await;
        server.stop();
        if result.errors > 0 {
            bench.problems.push(format!(
                "S5 {} ({label}): {} failed requests",
                kind.label(),
                result.errors
            ));
        }
        if kind == Kind::Ekko && result.stale > 0 {
            bench.problems.push(format!(
                "S5 ekko served {} stale answers after notifications",
                result.stale
            ));
        }
        rows.push(HerdRow {
            kind,
            signal: label,
            result,
            consumers: settings.consumers,
        });
    }
    bench.upstream.set_get_latency(Duration::ZERO);
    Ok(rows)
}

async fn s6_memory(bench: &mut Bench) -> Result<MemoryRow, String> {
    let entities = bench.options.entities;
    eprintln!("peers: S6 fingerprint memory, {entities} entities");
    let server = Server::start(Kind::Ekko, &bench.setup).map_err(|e| e.to_string())?;
    // A first batch opens the connections and warms the allocator, so that the baseline
    // contains everything except the per-entity state.
    let warm_run = format!("{}-warm", bench.run_id);
    let warm_failures = load::fill_entities(&bench.client, server.addr, &warm_run, 1_000, 64).await;
    let rss_before = server.rss_bytes();
    let failures =
        load::fill_entities(&bench.client, server.addr, &bench.run_id, entities, 64).await;
    let rss_after = server.rss_bytes();
    server.stop();
    if warm_failures + failures > 0 {
        bench.problems.push(format!(
            "S6: {} notifications failed",
            warm_failures + failures
        ));
    }
    Ok(MemoryRow {
        entities,
        rss_before,
        rss_after,
    })
}
