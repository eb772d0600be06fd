//! The admin listener's bearer token over real sockets on 127.0.0.1: which paths need it,
//! the 401 responses, `metrics_open`, policy validation, and that no log line shows it.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use harness::{Ekko, HttpClient, MockServer};
use http::Request;
use http_body_util::Full;

const EKKO: &str = env!("CARGO_BIN_EXE_ekko");
const TOKEN: &str = "s3cret-admin-token-0123456789";

fn policy(queue: &str, admin: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
notifications:
  - name: hr
    match: {{ path: "/events" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
admin: {admin}
"#
    )
}

fn request(method: &str, url: &str, authorization: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

async fn get(ekko: &Ekko, path: &str, authorization: Option<&str>) -> harness::Answer {
    let url = format!("{}{path}", ekko.admin);
    HttpClient::default()
        .send(request("GET", &url, authorization))
        .await
}

#[tokio::test]
async fn admin_paths_need_bearer_token() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), &format!("{{ token: \"{TOKEN}\" }}"))).await;
    let bearer = format!("Bearer {TOKEN}");
    let lowercase = format!("bearer {TOKEN}");

    let missing = get(&ekko, "/admin/quarantine", None).await;
    let wrong = get(
        &ekko,
        "/admin/quarantine",
        Some("Bearer wrong-token-0123456789"),
    )
    .await;
    let basic = get(&ekko, "/admin/quarantine", Some("Basic dXNlcjpwYXNz")).await;
    let prefix = get(
        &ekko,
        "/admin/quarantine",
        Some(&bearer[..bearer.len() - 1]),
    )
    .await;
    let right = get(&ekko, "/admin/quarantine", Some(&bearer)).await;
    let any_case = get(&ekko, "/admin/cache", Some(&lowercase)).await;
    let unknown = get(&ekko, "/admin/nothing", None).await;

    assert_eq!(missing.status, 401);
    let challenge = missing.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(missing.json()["error"], "unauthorized");
    assert_eq!(wrong.status, 401);
    let challenge = wrong.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(!wrong.text().contains("wrong-token"), "{}", wrong.text());
    assert_eq!(basic.status, 401);
    assert_eq!(prefix.status, 401, "a prefix of the token is not the token");
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(any_case.status, 200, "the scheme name is case-insensitive");
    assert_eq!(
        unknown.status, 401,
        "unknown paths do not reveal the endpoint list"
    );
}

#[tokio::test]
async fn writes_need_bearer_token() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), &format!("{{ token: \"{TOKEN}\" }}"))).await;
    let client = HttpClient::default();
    let bearer = format!("Bearer {TOKEN}");

    let reload = client
        .send(request(
            "POST",
            &format!("{}/admin/reload", ekko.admin),
            None,
        ))
        .await;
    let purge_url = format!("{}/admin/cache/purge?entity=x", ekko.admin);
    let purge = client.send(request("POST", &purge_url, None)).await;
    let purge_with_token = client
        .send(request("POST", &purge_url, Some(&bearer)))
        .await;

    assert_eq!(reload.status, 401);
    assert_eq!(purge.status, 401);
    assert_eq!(purge_with_token.status, 200, "{}", purge_with_token.text());
}

#[tokio::test]
async fn probes_and_metrics_open_by_default() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), &format!("{{ token: \"{TOKEN}\" }}"))).await;

    let healthz = get(&ekko, "/healthz", None).await;
    let readyz = get(&ekko, "/readyz", None).await;
    let metrics = get(&ekko, "/metrics", None).await;

    assert_eq!(healthz.status, 200);
    assert_eq!(readyz.status, 200);
    assert_eq!(metrics.status, 200);
}

#[tokio::test]
async fn metrics_closed_without_metrics_open() {
    let queue = MockServer::accepting().await;
    let admin = format!("{{ token: \"{TOKEN}\", metrics_open: false }}");
    let ekko = Ekko::start(&policy(&queue.url(), &admin)).await;

    let without = get(&ekko, "/metrics", None).await;
    let with = get(&ekko, "/metrics", Some(&format!("Bearer {TOKEN}"))).await;
    let healthz = get(&ekko, "/healthz", None).await;

    assert_eq!(without.status, 401);
    assert_eq!(with.status, 200);
    assert!(with.text().contains("ekko_build_info"));
    assert_eq!(healthz.status, 200);
}

#[tokio::test]
async fn no_token_leaves_admin_open() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "{ metrics_open: false }")).await;

    let quarantine = get(&ekko, "/admin/quarantine", None).await;
    let metrics = get(&ekko, "/metrics", None).await;

    assert_eq!(quarantine.status, 200);
    assert_eq!(metrics.status, 200);
}

#[test]
fn token_comes_from_variable() {
    let text = policy("http://127.0.0.1:9", "{ token: \"${EKKO_ADMIN_TOKEN}\" }");
    let env = |name: &str| (name == "EKKO_ADMIN_TOKEN").then(|| TOKEN.to_owned());

    let parsed = ekko::policy::parse(&text, &env).unwrap();
    let token = parsed.admin.token.expect("token is set");

    assert!(token.verify(TOKEN.as_bytes()));
    assert!(!token.verify(b"s3cret-admin-token-012345678"));
    assert!(!format!("{token:?}").contains(TOKEN));
    assert!(parsed.admin.metrics_open);
}

#[test]
fn bad_tokens_are_rejected_unshown() {
    let cases = [
        ("short-token", "at least 16 characters"),
        ("has a space in the token value", "RFC 6750"),
        ("1234567890123456789", "must be a string"),
    ];
    for (token, expected) in cases {
        let quoted = if token.starts_with('1') {
            token.to_owned()
        } else {
            format!("\"{token}\"")
        };
        let text = policy("http://127.0.0.1:9", &format!("{{ token: {quoted} }}"));

        let errors = ekko::policy::parse(&text, &|_| None)
            .unwrap_err()
            .to_string();

        assert!(errors.contains("`admin.token`"), "{errors}");
        assert!(errors.contains(expected), "{token}: {errors}");
        assert!(!errors.contains(token), "the token is shown: {errors}");
    }
}

#[test]
fn unknown_admin_key_is_rejected() {
    let text = policy("http://127.0.0.1:9", "{ tokn: \"x\" }");

    let errors = ekko::policy::parse(&text, &|_| None)
        .unwrap_err()
        .to_string();

    assert!(errors.contains("tokn"), "{errors}");
}

#[tokio::test]
async fn token_never_appears_in_logs() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
        policy(&queue.url(), "{ token: \"${EKKO_ADMIN_TOKEN}\" }")
    );
    std::fs::write(&file, text).unwrap();
    let wrong = "presented-wrong-value-0123456789";

    let mut child = Command::new(EKKO)
        .args(["serve", "--policy", file.to_str().unwrap()])
        .env("EKKO_LOG", "debug")
        .env("EKKO_ADMIN_TOKEN", TOKEN)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log: Vec<String> = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let listening = line.contains("ekko listening");
        log.push(line);
        if listening {
            break;
        }
    }
    let listening = log.last().cloned().unwrap_or_default();
    let start = listening.find("admin_addr=").expect("admin address logged") + 11;
    let admin = format!(
        "http://{}",
        listening[start..].split_whitespace().next().unwrap()
    );
    let client = HttpClient::default();
    let bearer = format!("Bearer {TOKEN}");
    let wrong_bearer = format!("Bearer {wrong}");

    let right = client
        .send(request(
            "GET",
            &format!("{admin}/admin/quarantine"),
            Some(&bearer),
        ))
        .await;
    let rejected = client
        .send(request(
            "GET",
            &format!("{admin}/admin/quarantine"),
            Some(&wrong_bearer),
        ))
        .await;
    let reload = client
        .send(request(
            "POST",
            &format!("{admin}/admin/reload"),
            Some(&bearer),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    log.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();

    assert_eq!(right.status, 200);
    assert_eq!(rejected.status, 401);
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert!(killed.success());
    assert!(status.success(), "{log:?}");
    let all = log.join("\n");
    assert!(
        all.contains("admin request rejected"),
        "debug lines missing: {all}"
    );
    assert!(all.contains("policy reloaded"), "{all}");
    assert!(!all.contains(TOKEN), "the token is logged: {all}");
    assert!(!all.contains(wrong), "the presented value is logged: {all}");
}
