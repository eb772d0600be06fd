//! Policy reload over real sockets on 127.0.0.1: `POST /admin/reload`, SIGHUP through the
//! binary, rejected policies, keys that need a restart, and reloads under load.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ekko::server::ReloadOutcome;
use harness::{cloudevent, HttpClient, MockServer, Reply, SourceApi, CE_JSON};
use http::Request;
use http_body_util::Full;
use serde_json::json;

const EKKO: &str = env!("CARGO_BIN_EXE_ekko");

/// Builds a notification route in YAML; `ignore` lists the JSON pointers of its mask.
fn route(name: &str, path: &str, ignore: &str) -> String {
    format!(
        r#"
  - name: {name}
    match: {{ path: "{path}" }}
    upstream: mq
    format: cloudevents
    entity: "{name}/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: [{ignore}]
"#
    )
}

fn policy(queue: &str, routes: &[String]) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstreams:\n  mq: {{ url: \"{queue}\" }}\nnotifications:{}",
        routes.concat()
    )
}

/// ekko started in-process from a policy file that the test rewrites.
struct Served {
    _dir: tempfile::TempDir,
    file: PathBuf,
    running: ekko::server::Running,
    base: String,
    admin: String,
}

impl Served {
    async fn start(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, text).unwrap();
        let policy = ekko::policy::load(&file).unwrap_or_else(|e| panic!("invalid:\n{e}"));
        let running = ekko::server::start_with_policy_file(policy, file.clone())
            .await
            .expect("ekko starts");
        Self {
            base: format!("http://{}", running.public_addr),
            admin: format!("http://{}", running.admin_addr),
            _dir: dir,
            file,
            running,
        }
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.file, text).unwrap();
    }

    async fn reload(&self, client: &HttpClient) -> harness::Answer {
        let request = Request::post(format!("{}/admin/reload", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.send(request).await
    }

    async fn notify(&self, client: &HttpClient, path: &str, id: &str, subject: &str) -> String {
        self.notify_data(
            client,
            path,
            id,
            subject,
            json!({ "name": "Ola", "meta": { "at": id } }),
        )
        .await
    }

    async fn notify_data(
        &self,
        client: &HttpClient,
        path: &str,
        id: &str,
        subject: &str,
        data: serde_json::Value,
    ) -> String {
        let url = format!("{}{path}", self.base);
        let answer = client
            .post(&url, CE_JSON, cloudevent(id, subject, data))
            .await;
        answer.decision().to_owned()
    }

    async fn metric(&self, client: &HttpClient, series: &str) -> f64 {
        let text = client.get(&format!("{}/metrics", self.admin)).await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }
}

#[tokio::test]
async fn reload_switches_routes_keeps_fingerprints() {
    let queue = MockServer::accepting().await;
    let hr = route("hr", "/hr", r#""/meta""#);
    let before = policy(&queue.url(), &[hr.clone(), route("crm", "/crm", "")]);
    let after = policy(
        &queue.url(),
        &[
            hr,
            route("crm", "/crm", r#""/meta""#),
            route("erp", "/erp", ""),
        ],
    );
    let ekko = Served::start(&before).await;
    let client = HttpClient::default();

    let hr_first = ekko.notify(&client, "/hr", "1", "p1").await;
    let crm_first = ekko.notify(&client, "/crm", "2", "c1").await;
    let erp_before = ekko.notify(&client, "/erp", "3", "e1").await;
    ekko.rewrite(&after);
    let reload = ekko.reload(&client).await;
    let hr_after = ekko.notify(&client, "/hr", "4", "p1").await;
    let crm_changed_mask = ekko.notify(&client, "/crm", "5", "c1").await;
    let crm_masked = ekko.notify(&client, "/crm", "6", "c1").await;
    let erp_after = ekko.notify(&client, "/erp", "7", "e1").await;

    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(reload.json()["result"], "ok");
    assert_eq!(reload.json()["notifications"], 3);
    assert_eq!(reload.json()["needs_restart"], json!([]));
    assert_eq!(hr_first, "forwarded");
    assert_eq!(crm_first, "forwarded");
    assert_eq!(erp_before, "rejected", "no route before the reload");
    assert_eq!(hr_after, "unchanged", "fingerprints survive the reload");
    assert_eq!(
        crm_changed_mask, "forwarded",
        "a changed mask passes the next notification once"
    );
    assert_eq!(crm_masked, "unchanged", "the new mask ignores /meta");
    assert_eq!(erp_after, "forwarded", "the new route answers");
    let reloads = r#"ekko_policy_reloads_total{result="ok"}"#;
    assert_eq!(ekko.metric(&client, reloads).await, 1.0);
}

#[tokio::test]
async fn invalid_policy_is_rejected_with_problems() {
    let queue = MockServer::accepting().await;
    let good = policy(&queue.url(), &[route("hr", "/hr", r#""/meta""#)]);
    let ekko = Served::start(&good).await;
    let client = HttpClient::default();
    let first = ekko.notify(&client, "/hr", "1", "p1").await;

    let broken = good.replace("upstream: mq", "upstream: nope").replace(
        "format: cloudevents",
        "format: cloudevents\n    duplicate_window: 30",
    );
    ekko.rewrite(&broken);
    let reload = ekko.reload(&client).await;
    let after = ekko.notify(&client, "/hr", "2", "p1").await;

    assert_eq!(reload.status, 400, "{}", reload.text());
    let body = reload.json();
    assert_eq!(body["result"], "rejected");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    assert!(problems.iter().all(|p| p["line"].as_u64().unwrap() > 0));
    let messages = body["problems"].to_string();
    assert!(messages.contains("unknown upstream `nope`"), "{messages}");
    assert!(messages.contains("duplicate_window"), "{messages}");
    assert_eq!(first, "forwarded");
    assert_eq!(after, "unchanged", "the old routes and state stay in force");
    let rejected = r#"ekko_policy_reloads_total{result="rejected"}"#;
    assert_eq!(ekko.metric(&client, rejected).await, 1.0);
}

#[tokio::test]
async fn missing_policy_file_is_rejected() {
    let queue = MockServer::accepting().await;
    let ekko = Served::start(&policy(&queue.url(), &[route("hr", "/hr", "")])).await;
    let client = HttpClient::default();

    std::fs::remove_file(&ekko.file).unwrap();
    let outcome = ekko.running.reload().await;
    let after = ekko.notify(&client, "/hr", "1", "p1").await;

    let ReloadOutcome::Rejected(problems) = &outcome else {
        panic!("a missing file was applied: {outcome:?}");
    };
    assert_eq!(outcome.status(), 400);
    assert!(
        problems[0].message.contains("cannot read policy file"),
        "{problems:?}"
    );
    assert_eq!(after, "forwarded");
}

#[tokio::test]
async fn startup_only_keys_need_restart() {
    let queue = MockServer::accepting().await;
    let routes = [route("hr", "/hr", "")];
    let ekko = Served::start(&policy(&queue.url(), &routes)).await;
    let client = HttpClient::default();

    let moved = policy(&queue.url(), &routes)
        .replace("listen: 127.0.0.1:0\nadmin", "listen: 127.0.0.2:0\nadmin")
        + "cache: { max_bytes: 1MiB }\nstate: { max_entities: 10 }\n";
    ekko.rewrite(&moved);
    let reload = ekko.reload(&client).await;
    let after = ekko.notify(&client, "/hr", "1", "p1").await;

    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(
        reload.json()["needs_restart"],
        json!(["listen", "state.max_entities", "cache.max_bytes"])
    );
    assert_eq!(after, "forwarded", "the old listener still serves");
}

#[tokio::test]
async fn reload_without_policy_file_conflicts() {
    let queue = MockServer::accepting().await;
    let ekko = harness::Ekko::start(&route_policy_tail(&queue.url())).await;

    let request = Request::post(format!("{}/admin/reload", ekko.admin))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = HttpClient::default().send(request).await;

    assert_eq!(answer.status, 409);
    assert_eq!(answer.json()["error"], "no_policy_file");
}

/// Builds the policy without listeners, because the harness adds its own.
fn route_policy_tail(queue: &str) -> String {
    format!(
        "upstreams:\n  mq: {{ url: \"{queue}\" }}\nnotifications:{}",
        route("hr", "/hr", "")
    )
}

#[tokio::test]
async fn cached_lookups_survive_reload() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("7", json!({ "name": "Ola" }));
    let lookups = "lookups:\n  - name: persons\n    match: { path: \"/persons/{id}\" }\n    upstream: api\n    entity: \"hr/{id}\"\n";
    let text = format!(
        "{}\n{lookups}",
        policy(&queue.url(), &[route("hr", "/hr", "")]).replace(
            "upstreams:\n",
            &format!(
                "upstreams:\n  api: {{ url: \"{}\" }}\n",
                source.server.url()
            )
        )
    );
    let ekko = Served::start(&text).await;
    let client = HttpClient::default();
    let url = format!("{}/persons/7", ekko.base);

    let first = client.get(&url).await;
    ekko.rewrite(&text.replace("/hr\"", "/hr2\""));
    let reload = ekko.reload(&client).await;
    let second = client.get(&url).await;

    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(first.json()["name"], "Ola");
    let status = second.headers["cache-status"].to_str().unwrap();
    assert!(status.starts_with("ekko; hit"), "{status}");
    assert_eq!(source.server.count(), 1, "the cached entry was served");
}

#[tokio::test]
async fn removed_routes_drop_their_state() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("7", json!({ "name": "Ola" }));
    let lookups = "lookups:\n  - name: persons\n    match: { path: \"/persons/{id}\" }\n    upstream: api\n    entity: \"hr/{id}\"\n";
    let with_api = |routes: &[String]| {
        policy(&queue.url(), routes).replace(
            "upstreams:\n",
            &format!(
                "upstreams:\n  api: {{ url: \"{}\" }}\n",
                source.server.url()
            ),
        )
    };
    let hr = route("hr", "/hr", r#""/meta""#);
    let before = format!(
        "{}\n{lookups}",
        with_api(&[hr.clone(), route("crm", "/crm", "")])
    );
    let after = with_api(&[hr]);
    let ekko = Served::start(&before).await;
    let client = HttpClient::default();
    assert_eq!(ekko.notify(&client, "/hr", "1", "p1").await, "forwarded");
    assert_eq!(ekko.notify(&client, "/crm", "2", "c1").await, "forwarded");
    assert_eq!(
        client.get(&format!("{}/persons/7", ekko.base)).await.status,
        200
    );

    ekko.rewrite(&after);
    let reload = ekko.reload(&client).await;

    assert_eq!(reload.status, 200, "{}", reload.text());
    let dropped = &reload.json()["dropped"];
    assert_eq!(dropped["fingerprints"], 1, "crm's fingerprint: {dropped}");
    assert_eq!(dropped["cache_entries"], 1, "the persons entry: {dropped}");
    assert_eq!(
        ekko.notify(&client, "/hr", "3", "p1").await,
        "unchanged",
        "the route that stayed keeps its fingerprints"
    );
    assert_eq!(ekko.metric(&client, "ekko_cache_entries").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    // A short delay keeps notifications in flight while the gateway is swapped.
    let queue =
        MockServer::start(|_| Reply::Delay(Duration::from_millis(2), 200, "{}".into())).await;
    let plain = policy(&queue.url(), &[route("hr", "/hr", "")]);
    let masked = policy(
        &queue.url(),
        &[route("hr", "/hr", r#""/meta""#), route("erp", "/erp", "")],
    );
    let ekko = Arc::new(Served::start(&plain).await);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));

    let sender = tokio::spawn({
        let (ekko, stop, sent) = (ekko.clone(), stop.clone(), sent.clone());
        async move {
            let client = HttpClient::default();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let url = format!("{}/hr", ekko.base);
                let data = json!({ "n": n % 7, "meta": { "at": n } });
                let body = cloudevent(&n.to_string(), &format!("p{}", n % 5), data);
                let answer = client.post(&url, CE_JSON, body).await;
                if !answer.status.is_success() {
                    failures.push((n, answer.status, answer.text()));
                }
            }
            failures
        }
    });
    let client = HttpClient::default();
    let mut statuses = Vec::new();
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        ekko.rewrite(if round % 2 == 0 { &masked } else { &plain });
        statuses.push(ekko.reload(&client).await.status);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = sender.await.unwrap();

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        sent.load(Ordering::Relaxed) > 20,
        "too few requests to tell"
    );
    let reloads = r#"ekko_policy_reloads_total{result="ok"}"#;
    assert_eq!(ekko.metric(&client, reloads).await, 10.0);
}

/// The `ekko` binary with its standard error read line by line on a thread.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Binary {
    fn spawn(policy: &Path) -> Self {
        let mut child = Command::new(EKKO)
            .args(["serve", "--policy", policy.to_str().unwrap()])
            .env("EKKO_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits up to 10 s for a log line that contains `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("ekko logged no line with `{text}` within 10 s");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} failed");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name=` in a text log line.
fn log_field(line: &str, name: &str) -> String {
    let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    line[start..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn sighup_reloads_policy_file() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&queue.url(), &[route("hr", "/hr", "")])).unwrap();
    let binary = Binary::spawn(&file);
    let listening = binary.wait_for("ekko listening");
    let base = format!("http://{}", log_field(&listening, "public_addr"));
    let client = HttpClient::default();
    let notify = |path: &str, id: &str| {
        let url = format!("{base}{path}");
        let body = cloudevent(id, "p1", json!({ "name": "Ola" }));
        let client = client.clone();
        async move { client.post(&url, CE_JSON, body).await.status }
    };

    let before = notify("/erp", "1").await;
    let routes = [route("hr", "/hr", ""), route("erp", "/erp", "")];
    std::fs::write(&file, policy(&queue.url(), &routes)).unwrap();
    binary.signal("-HUP");
    binary.wait_for("policy reloaded");
    let after = notify("/erp", "2").await;
    let old_route = notify("/hr", "3").await;
    binary.signal("-TERM");
    binary.wait_for("ekko stopped");

    assert_eq!(before, 404);
    assert_eq!(after, 200, "the new route answers after SIGHUP");
    assert_eq!(old_route, 200);
}
