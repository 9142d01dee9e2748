//! `mesh-server user add`: accounts created on the command line (the way in when
//! `server.registration = "closed"`), with the checks of `/api/register`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;

/// Runs `mesh-server user add ARGS` in `dir` with `stdin`: (success, stdout + stderr).
fn user_add(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MESH_NOTIFY_SERVER__DATA_DIR", dir.join("data"))
        .args(["user", "add"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-server runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("mesh-server exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_creates_accounts_that_log_in_while_registration_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = user_add(
        dir.path(),
        &["alice", "--display-name", "Alice"],
        "pw-alice-secret\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("user alice created"), "{out}");
    assert!(
        !out.contains("pw-alice-secret"),
        "the password is never echoed: {out}"
    );
    // The same checks as /api/register, naming the field.
    let (ok, out) = user_add(dir.path(), &["ALICE"], "another-password\n");
    assert!(!ok && out.contains("taken"), "{out}");
    let (ok, out) = user_add(dir.path(), &["bob"], "short\n");
    assert!(!ok && out.contains("password"), "{out}");
    let (ok, out) = user_add(dir.path(), &["b b"], "long-enough-pw\n");
    assert!(!ok && out.contains("username"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "the data directory is private");
    }

    // The server on that data directory, registration closed: Alice logs in.
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let fig = figment(
        &gotify.url(),
        &dir.path().join("data"),
        "[server]\nregistration = \"closed\"",
    );
    let server = start(&fig).await;
    let api = Api::new(&server);
    let (status, body) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "alice", "password": "pw-alice-secret"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["display_name"], "Alice");
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": "mallory", "password": "long-enough-pw"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("registration_closed"))
    );
    server.shutdown().await.unwrap();
}
