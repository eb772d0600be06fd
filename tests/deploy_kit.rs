//! Checks the deploy kit under deploy/: manifests parse and agree with each other and with ekko.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ekko::metrics::Metrics;
use ekko::policy::{self, Policy};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

/// The uid and gid that the Dockerfile creates and Kubernetes runs as.
const EKKO_UID: u64 = 10001;

/// Manifests under deploy/kubernetes, one resource each.
const KUBERNETES_FILES: &[&str] = &[
    "configmap.yaml",
    "deployment.yaml",
    "pdb.yaml",
    "pvc.yaml",
    "service.yaml",
];

/// Alerts that an operator of ekko needs, by the condition each one watches.
const REQUIRED_ALERTS: &[&str] = &[
    "EkkoLoopDetected",
    "EkkoQuarantineGrowing",
    "EkkoUpstreamErrors",
    "EkkoFailingOpen",
    "EkkoCacheHitRatioLow",
    "EkkoSnapshotWritesFailing",
];

/// Panels that the dashboard must show.
const REQUIRED_PANELS: &[&str] = &[
    "Notifications by decision",
    "Suppression ratio",
    "Upstream latency p99",
    "Quarantined entities",
    "Cache hit ratio",
    "Cache bytes",
];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(relative))
        .unwrap_or_else(|error| panic!("{relative} is not valid YAML: {error}"))
}

fn kubernetes(file: &str) -> Value {
    yaml(&format!("deploy/kubernetes/{file}"))
}

/// Looks up `pointer` (RFC 6901) in `value` and panics with the file's name when it is absent.
fn at<'v>(value: &'v Value, pointer: &str, file: &str) -> &'v Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{file} has no {pointer}"))
}

fn text_at<'v>(value: &'v Value, pointer: &str, file: &str) -> &'v str {
    at(value, pointer, file)
        .as_str()
        .unwrap_or_else(|| panic!("{file}: {pointer} is not a string"))
}

fn policy_text_from_configmap() -> String {
    let configmap = kubernetes("configmap.yaml");
    text_at(&configmap, "/data/policy.yaml", "configmap.yaml").to_owned()
}

fn ekko_container() -> Value {
    let deployment = kubernetes("deployment.yaml");
    let containers = at(
        &deployment,
        "/spec/template/spec/containers",
        "deployment.yaml",
    );
    containers
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "ekko"))
        .cloned()
        .expect("deployment.yaml has a container named ekko")
}

/// Names of the container's environment variables.
fn container_env_names(container: &Value) -> BTreeSet<String> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|var| var["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses the ConfigMap's policy with exactly the Deployment's environment variables set.
fn configmap_policy() -> Policy {
    let names = container_env_names(&ekko_container());
    let env = |name: &str| names.contains(name).then(|| "test-value".to_owned());
    policy::parse(&policy_text_from_configmap(), &env)
        .unwrap_or_else(|errors| panic!("the ConfigMap's policy is invalid:\n{errors}"))
}

fn compose_policy() -> Policy {
    policy::parse(&read("deploy/compose/policy.yaml"), &|_| None)
        .unwrap_or_else(|errors| panic!("deploy/compose/policy.yaml is invalid:\n{errors}"))
}

/// Resolves a probe's named port to the container port number.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|port| port["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("the ekko container has no port named {name}"))
}

/// Parses a compose or systemd duration written in whole seconds, such as `45s`.
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| {
            panic!("expected a duration in whole seconds such as `45s`, got `{text}`")
        })
}

#[test]
fn kubernetes_manifests_parse_with_kinds() {
    let mut kinds = BTreeSet::new();
    for file in KUBERNETES_FILES {
        let manifest = kubernetes(file);
        assert!(
            manifest["apiVersion"].is_string(),
            "{file} has no apiVersion"
        );
        assert!(
            manifest["metadata"]["name"].is_string(),
            "{file} has no metadata.name"
        );
        kinds.insert(text_at(&manifest, "/kind", file).to_owned());
    }
    let expected: BTreeSet<String> = [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(kinds, expected);
}

#[test]
fn configmap_policy_validates_with_deployment_env() {
    let policy = configmap_policy();
    assert_eq!(policy.notifications.len(), 1);
}

#[test]
fn configmap_policy_needs_deployment_secret() {
    let problems = policy::parse(&policy_text_from_configmap(), &|_| None)
        .expect_err("the policy references a variable that only the Deployment sets");
    assert!(
        problems.to_string().contains("EKKO_HR_TOKEN"),
        "unexpected problems: {problems}"
    );
}

#[test]
fn configmap_admin_listener_is_reachable() {
    let policy = configmap_policy();
    assert!(
        policy.admin_listen.ip().is_unspecified(),
        "probes reach the pod IP, so admin_listen must bind all interfaces, got {}",
        policy.admin_listen
    );
    assert!(policy.listen.ip().is_unspecified());
}

#[test]
fn deployment_probes_use_admin_port() {
    let policy = configmap_policy();
    let container = ekko_container();
    let probes = [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ];
    for (probe, path) in probes {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        let port = get["port"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} should name its port"));
        assert_eq!(
            container_port(&container, port),
            u64::from(policy.admin_listen.port()),
            "{probe} must reach the policy's admin_listen"
        );
    }
    assert_eq!(
        container_port(&container, "http"),
        u64::from(policy.listen.port())
    );
}

#[test]
fn deployment_runs_locked_down() {
    let deployment = kubernetes("deployment.yaml");
    let pod = at(&deployment, "/spec/template/spec", "deployment.yaml");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], EKKO_UID);
    assert_eq!(pod["securityContext"]["fsGroup"], EKKO_UID);

    let container = ekko_container();
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
}

#[test]
fn snapshot_lives_on_state_volume() {
    let policy = configmap_policy();
    let snapshot = policy
        .state
        .snapshot
        .expect("the policy sets state.snapshot");
    let container = ekko_container();
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|mounts| mounts.iter().find(|m| m["name"] == "state"))
        .expect("the ekko container mounts the state volume");
    let mount_path = text_at(mount, "/mountPath", "deployment.yaml");
    assert!(
        snapshot.starts_with(mount_path),
        "snapshot {} is outside the state volume {mount_path}",
        snapshot.display()
    );

    let deployment = kubernetes("deployment.yaml");
    let volumes = at(
        &deployment,
        "/spec/template/spec/volumes",
        "deployment.yaml",
    );
    let state = volumes
        .as_array()
        .and_then(|list| list.iter().find(|v| v["name"] == "state"))
        .expect("deployment.yaml defines the state volume");
    let claim = kubernetes("pvc.yaml");
    assert_eq!(
        state["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
}

#[test]
fn termination_grace_exceeds_shutdown_grace() {
    let policy = configmap_policy();
    let deployment = kubernetes("deployment.yaml");
    let grace = at(
        &deployment,
        "/spec/template/spec/terminationGracePeriodSeconds",
        "deployment.yaml",
    )
    .as_u64()
    .expect("terminationGracePeriodSeconds is a number");
    assert!(
        Duration::from_secs(grace) > policy.shutdown_grace,
        "the kubelet kills ekko after {grace}s, before its shutdown_grace of {:?} ends",
        policy.shutdown_grace
    );
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
}

#[test]
fn service_and_budget_select_ekko_pods() {
    let deployment = kubernetes("deployment.yaml");
    let pod_labels = at(
        &deployment,
        "/spec/template/metadata/labels",
        "deployment.yaml",
    );
    let service = kubernetes("service.yaml");
    let budget = kubernetes("pdb.yaml");
    let selectors = [
        at(&service, "/spec/selector", "service.yaml"),
        at(&budget, "/spec/selector/matchLabels", "pdb.yaml"),
        at(&deployment, "/spec/selector/matchLabels", "deployment.yaml"),
    ];
    for selector in selectors {
        for (key, value) in selector.as_object().expect("a selector is a mapping") {
            assert_eq!(&pod_labels[key], value, "selector label {key}");
        }
    }

    let container = ekko_container();
    let ports = service["spec"]["ports"].as_array().expect("service ports");
    for port in ports {
        let target = text_at(port, "/targetPort", "service.yaml");
        assert_eq!(
            target, "http",
            "the Service exposes only the public listener"
        );
        assert_eq!(port["port"], container_port(&container, target));
    }
}

#[test]
fn compose_policy_listens_for_other_containers() {
    let policy = compose_policy();
    assert!(policy.admin_listen.ip().is_unspecified());
    assert!(policy.listen.ip().is_unspecified());
    let mq = &policy.upstreams["mq"];
    assert_eq!(mq.authority.host(), "rabbitmq");
}

#[test]
fn compose_stack_has_services_and_files() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_object().expect("services mapping");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["ekko", "grafana", "prometheus", "rabbitmq"])
    );

    for (service, definition) in services {
        let Some(volumes) = definition["volumes"].as_array() else {
            continue;
        };
        for volume in volumes {
            let spec = volume.as_str().expect("short volume syntax");
            let Some(source) = spec.split(':').next().filter(|s| s.starts_with("./")) else {
                continue;
            };
            let path = repo_path("deploy").join(source);
            assert!(
                path.exists(),
                "service {service} mounts {source}, which does not exist"
            );
        }
    }
}

#[test]
fn compose_ekko_mounts_policy_and_state() {
    let compose = yaml("deploy/docker-compose.yml");
    let ekko = &compose["services"]["ekko"];
    let volumes: Vec<&str> = ekko["volumes"]
        .as_array()
        .expect("ekko volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(volumes.contains(&"./compose/policy.yaml:/etc/ekko/policy.yaml:ro"));
    assert!(volumes.iter().any(|v| v.ends_with(":/var/lib/ekko")));
    assert_eq!(ekko["build"]["dockerfile"], "deploy/Dockerfile");

    let stop = seconds(text_at(ekko, "/stop_grace_period", "docker-compose.yml"));
    assert!(Duration::from_secs(stop) > compose_policy().shutdown_grace);
}

#[test]
fn prometheus_scrapes_compose_admin_port() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let rule_files = config["rule_files"].as_array().expect("rule_files list");
    assert_eq!(rule_files, &vec![Value::from("ekko-rules.yml")]);

    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|job| job["job_name"] == "ekko")
        .expect("a scrape job named ekko");
    assert_eq!(job["metrics_path"], "/metrics");
    let target = text_at(job, "/static_configs/0/targets/0", "prometheus.yml");
    let admin = compose_policy().admin_listen;
    assert_eq!(target, format!("ekko:{}", admin.port()));
}

fn alert_rules() -> Vec<Value> {
    let rules = yaml("deploy/prometheus/ekko-rules.yml");
    rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| rule["alert"].is_string())
        .collect()
}

#[test]
fn alert_rules_are_complete() {
    let rules = alert_rules();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap_or_default();
        assert!(rule["for"].is_string(), "{name} has no `for`");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name} has severity `{severity}`"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{name} summary");
        assert!(
            rule["annotations"]["description"].is_string(),
            "{name} description"
        );
    }
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(names.contains(required), "alert {required} is missing");
    }
}

/// Metric names (`ekko_...`) that appear in `text`, with histogram series suffixes removed.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("ekko_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Families that ekko exports, from the `# TYPE` lines of its Prometheus text.
fn exported_families() -> BTreeSet<String> {
    Metrics::new()
        .encode_prometheus()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/ekko-dashboard.json"))
        .expect("the dashboard is valid JSON")
}

fn dashboard_expressions() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .expect("dashboard panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn rules_and_dashboard_use_exported_metrics() {
    let exported = exported_families();
    assert!(exported.contains("ekko_notifications_total"));

    let sources = [
        ("ekko-rules.yml", read("deploy/prometheus/ekko-rules.yml")),
        ("ekko-dashboard.json", dashboard_expressions().join("\n")),
    ];
    for (file, text) in sources {
        let used = metric_names_in(&text);
        assert!(!used.is_empty(), "{file} uses no ekko metric");
        for name in used {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which ekko does not export"
            );
        }
    }
}

#[test]
fn dashboard_has_required_panels() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for required in REQUIRED_PANELS {
        assert!(titles.contains(required), "panel {required} is missing");
    }
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
    }
    let latency = dashboard_expressions()
        .into_iter()
        .find(|expr| expr.contains("ekko_upstream_duration_seconds_bucket"))
        .expect("a panel reads the upstream latency histogram");
    assert!(latency.starts_with("histogram_quantile(0.99,"));
}

#[test]
fn grafana_provisioning_points_at_dashboard() {
    let provider = yaml("deploy/grafana/provisioning/dashboards/ekko.yml");
    let folder = text_at(
        &provider,
        "/providers/0/options/path",
        "dashboards/ekko.yml",
    );
    let compose = yaml("deploy/docker-compose.yml");
    let mounts = compose["services"]["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes");
    let dashboard_mount = format!("./grafana/ekko-dashboard.json:{folder}/ekko-dashboard.json:ro");
    assert!(mounts.iter().any(|m| m == dashboard_mount.as_str()));

    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasources["datasources"][0]["type"], "prometheus");
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );
}

/// Reads the Dockerfile's instructions with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

fn dockerfile_instruction(keyword: &str) -> Vec<String> {
    let prefix = format!("{keyword} ");
    dockerfile_instructions()
        .into_iter()
        .filter_map(|i| i.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let from = dockerfile_instruction("FROM");
    assert_eq!(from, ["rust:1-bookworm AS builder", "debian:bookworm-slim"]);
    let build = dockerfile_instruction("RUN").join("\n");
    assert!(build.contains("cargo build --release --locked"));
    assert!(build.contains("--uid 10001"));

    assert_eq!(dockerfile_instruction("USER"), ["10001:10001"]);
    assert_eq!(dockerfile_instruction("VOLUME"), ["/var/lib/ekko"]);
    assert_eq!(dockerfile_instruction("EXPOSE"), ["8080 9090"]);
    assert_eq!(dockerfile_instruction("ENTRYPOINT"), [r#"["ekko"]"#]);
    assert_eq!(
        dockerfile_instruction("CMD"),
        [r#"["serve", "--policy", "/etc/ekko/policy.yaml"]"#]
    );
    assert_eq!(dockerfile_instruction("HEALTHCHECK").len(), 1);
}

/// Extracts the HEALTHCHECK's exec-form command as program and arguments.
fn healthcheck_command() -> Vec<String> {
    let healthcheck = dockerfile_instruction("HEALTHCHECK").remove(0);
    let (_, command) = healthcheck
        .split_once(" CMD ")
        .expect("HEALTHCHECK uses CMD");
    serde_json::from_str(command.trim()).expect("HEALTHCHECK CMD is in exec (JSON) form")
}

async fn run_healthcheck(port: u16) -> Output {
    let command = healthcheck_command();
    let mut process = tokio::process::Command::new(&command[0]);
    process
        .args(&command[1..])
        .env("HEALTHCHECK_PORT", port.to_string());
    tokio::time::timeout(Duration::from_secs(10), process.output())
        .await
        .expect("the health check finishes within 10 s")
        .expect("bash runs")
}

fn loopback_policy() -> Policy {
    let text = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstreams:
  mq: { url: "http://127.0.0.1:9" }
notifications:
  - name: hr-person
    match: { path: "/api/exchanges/{vhost}/hr/publish" }
    upstream: mq
    format: rabbitmq-publish
    pointers: { subject: /personId }
    entity: "hr/person/{subject}"
"#;
    policy::parse(text, &|_| None).expect("the loopback policy is valid")
}

#[tokio::test]
async fn healthcheck_passes_only_on_admin_healthz() {
    let running = ekko::server::start(loopback_policy())
        .await
        .expect("ekko starts on loopback");
    let admin = running.admin_addr.port();
    let public = running.public_addr.port();

    let healthy = run_healthcheck(admin).await;
    assert!(
        healthy.status.success(),
        "health check failed against the admin listener: {}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let wrong_listener = run_healthcheck(public).await;
    assert!(
        !wrong_listener.status.success(),
        "the public listener has no /healthz, so the check must fail there"
    );

    running.shutdown().await.expect("ekko stops cleanly");
    let stopped = run_healthcheck(admin).await;
    assert!(!stopped.status.success(), "nothing listens after shutdown");
}

/// Reads the systemd unit's `Key=value` settings in order.
fn unit_settings() -> Vec<(String, String)> {
    read("deploy/systemd/ekko.service")
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn unit_setting(key: &str) -> Option<String> {
    unit_settings()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value)
}

#[test]
fn systemd_unit_reloads_with_sighup() {
    assert_eq!(
        unit_setting("ExecStart").as_deref(),
        Some("/usr/local/bin/ekko serve --policy /etc/ekko/policy.yaml")
    );
    assert_eq!(
        unit_setting("ExecReload").as_deref(),
        Some("/bin/kill -HUP $MAINPID")
    );
    assert_eq!(unit_setting("KillSignal").as_deref(), Some("SIGTERM"));
    assert_eq!(unit_setting("StateDirectory").as_deref(), Some("ekko"));

    let stop = seconds(&unit_setting("TimeoutStopSec").expect("TimeoutStopSec is set"));
    let default_grace = loopback_policy().shutdown_grace;
    assert!(Duration::from_secs(stop) > default_grace);
}

#[test]
fn systemd_unit_is_hardened() {
    let expected = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
    ];
    for (key, value) in expected {
        assert_eq!(unit_setting(key).as_deref(), Some(value), "{key}");
    }
    let user = unit_setting("DynamicUser").or_else(|| unit_setting("User"));
    assert!(user.is_some(), "the unit must not run as root");
}

fn run_promtool(args: &[&str]) {
    let output = Command::new(PROMTOOL)
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .expect("promtool starts");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn promtool_accepts_prometheus_config() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    run_promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
}

#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn promtool_accepts_alert_rules() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    run_promtool(&["check", "rules", "deploy/prometheus/ekko-rules.yml"]);
}

#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn promtool_rule_unit_tests_pass() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    run_promtool(&["test", "rules", "deploy/prometheus/ekko-rules.test.yml"]);
}

/// Replaces Grafana's variables with values that PromQL accepts.
fn expand_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn promtool_parses_dashboard_queries() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    // promtool has no command that checks a bare expression, so each panel query becomes a
    // recording rule and `promtool check rules` parses it.
    let rules: Vec<Value> = dashboard_expressions()
        .iter()
        .enumerate()
        .map(|(index, expr)| {
            serde_json::json!({
                "record": format!("ekko:dashboard_query_{index}"),
                "expr": expand_grafana_variables(expr),
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().expect("temporary directory");
    // JSON is YAML, so promtool reads the file as it is.
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, file.to_string()).expect("write the rules file");
    run_promtool(&["check", "rules", path.to_str().expect("UTF-8 path")]);
}

#[test]
#[ignore = "needs systemd-analyze; run by .ci/run"]
fn systemd_analyze_verifies_unit() {
    if !support::require_server(SYSTEMD_ANALYZE, "systemd-analyze") {
        return;
    }
    // `verify` requires ExecStart's program to exist, so the copy points at the test build
    // of ekko in place of /usr/local/bin/ekko.
    let unit = read("deploy/systemd/ekko.service")
        .replace("/usr/local/bin/ekko", env!("CARGO_BIN_EXE_ekko"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("ekko.service");
    std::fs::write(&path, unit).expect("write the unit copy");
    let output = Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze starts");
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "systemd-analyze verify reported:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
