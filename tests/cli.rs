//! The `ekko` binary: `check`, `fingerprint`, and `serve` with a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const EKKO: &str = env!("CARGO_BIN_EXE_ekko");

fn ekko(args: &[&str]) -> std::process::Output {
    Command::new(EKKO)
        .args(args)
        .env("EKKO_HR_TOKEN", "test-token")
        .env("HR_API_TOKEN", "test-token")
        .env("MQ_AUTH", "Z3Vlc3Q6Z3Vlc3Q=")
        .env("SINK_TOKEN", "test-token")
        .env("EKKO_AMQP_PASSWORD", "test-password")
        .output()
        .expect("ekko runs")
}

#[test]
fn check_accepts_bundled_examples() {
    for entry in std::fs::read_dir("deploy/examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let output = ekko(&["check", "--policy", path.to_str().unwrap()]);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{}: {stdout}", path.display());
            assert!(stdout.contains("is valid"), "{stdout}");
        }
    }
}

#[test]
fn check_lists_every_problem_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "upstreams:\n  mq: { url: \"http://127.0.0.1:1\", timeout: 5 }\nnotifications:\n  - name: hr\n    match: { path: \"/e\" }\n    upstream: nope\n    format: cloudevents\n    entity: \"p/{subject}\"\n    ttl: 5m\n",
    )
    .unwrap();

    let output = ekko(&["check", "--policy", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert!(!output.status.success());
    assert!(stdout.contains("policy line 2"), "{stdout}");
    assert!(stdout.contains("policy line 6"), "{stdout}");
    assert!(stdout.contains("policy line 9"), "{stdout}");
}

#[test]
fn fingerprint_prints_canonical_form_and_removed_fields() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("person.json");
    std::fs::write(
        &input,
        r#"{"name":"Ola","id":"1001","meta":{"version":"W/\"3\"","lastModified":"x"}}"#,
    )
    .unwrap();

    let output = ekko(&[
        "fingerprint",
        "--policy",
        "deploy/examples/hr-person.yaml",
        "--route",
        "hr-person",
        input.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(r#"canonical: {"id":"1001","meta":{},"name":"Ola"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("removed: /meta/lastModified /meta/version"),
        "{stdout}"
    );
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("blake3: "))
        .unwrap();
    assert_eq!(hash.len(), 64);
}

#[test]
fn sigterm_after_sighup_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nstate: {{ snapshot: \"{}\" }}\nupstreams:\n  mq: {{ url: \"http://127.0.0.1:9\" }}\nnotifications:\n  - name: hr\n    match: {{ path: \"/e\" }}\n    upstream: mq\n    format: cloudevents\n    entity: \"p/{{subject}}\"\n",
            snapshot.display()
        ),
    )
    .unwrap();

    let mut child = Command::new(EKKO)
        .args(["serve", "--policy", policy.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ekko listening"));
    assert!(listening.is_some(), "ekko did not report its listeners");

    // SIGHUP must not stop ekko: operators send it out of habit to reload.
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let warned = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("SIGHUP received"));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();

    assert!(hangup.success());
    assert!(warned.is_some(), "no SIGHUP warning; log: {rest:?}");
    assert!(killed.success());
    assert!(status.success(), "exit status {status:?}; log: {rest:?}");
    assert!(
        Path::new(&snapshot).exists(),
        "no snapshot written; log: {rest:?}"
    );
}

#[test]
fn readme_policies_are_valid() {
    for readme in ["README.md", "README.nb.md"] {
        let text = std::fs::read_to_string(readme).unwrap();
        let start = text.find("```yaml\n").expect("README has a yaml block") + 8;
        let end = start + text[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, &text[start..end]).unwrap();

        let output = ekko(&["check", "--policy", path.to_str().unwrap()]);

        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{readme}: {stdout}");
    }
}
