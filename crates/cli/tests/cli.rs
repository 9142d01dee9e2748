//! The `mesh-notify` binary end to end against the loopback fake Gotify.

use std::process::{Command, Output};

use mesh_notify_testkit::gotify::{FakeGotify, TokenSource};

const TOKEN: &str = "AcliSecretTok77";

/// Each test gets its own outbox file, so tests never share queued state.
fn outbox_env(dir: &tempfile::TempDir) -> (&'static str, String) {
    (
        "MESH_NOTIFY_OUTBOX__PATH",
        dir.path().join("outbox.sqlite3").display().to_string(),
    )
}

async fn run(args: &[&str], envs: &[(&str, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![outbox_env(&dir)];
    all.extend(envs.iter().cloned());
    run_in(args, &all).await
}

fn command(args: &[&str], envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-notify"));
    cmd.args(args)
        .env_remove("GOTIFY_URL")
        .env_remove("GOTIFY_TOKEN")
        .env_remove("MESH_NOTIFY_CONFIG")
        .env_remove("RUST_LOG")
        .env("LOG_LEVEL", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

async fn run_in(args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = command(args, envs);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const SEND: &[&str] = &[
    "send",
    "--kind",
    "chat",
    "--title",
    "Test",
    "--message",
    "Bonjour",
    "--priority",
    "8",
    "--room",
    "r1",
];

#[tokio::test]
async fn send_delivers_exactly_one_message_through_gotify() {
    let fake = FakeGotify::start(&[(TOKEN, 4)]).await.unwrap();
    let out = run(
        SEND,
        &[("GOTIFY_URL", fake.url()), ("GOTIFY_TOKEN", TOKEN.into())],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("delivered by gotify (message id 1)"),
        "{stdout}"
    );
    assert!(stderr.contains("Gotify configured: "), "{stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    let msgs = fake.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].token_source, TokenSource::Header);
    assert_eq!(msgs[0].priority, Some(8));
    assert_eq!(
        msgs[0].extras["client::notification"]["click"]["url"],
        "mesh://room/r1"
    );
}

#[tokio::test]
async fn a_wrong_token_fails_saying_so_without_printing_it() {
    let fake = FakeGotify::start(&[(TOKEN, 4)]).await.unwrap();
    let out = run(
        SEND,
        &[
            ("GOTIFY_URL", fake.url()),
            ("GOTIFY_TOKEN", "WrongTokenXYZ".into()),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("token was refused"), "{stderr}");
    assert!(!stdout.contains("WrongTokenXYZ") && !stderr.contains("WrongTokenXYZ"));
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn with_gotify_down_it_queues_for_gotify_instead_of_the_log_and_says_so() {
    let mut fake = FakeGotify::start(&[(TOKEN, 4)]).await.unwrap();
    let url = fake.url();
    fake.stop();
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        outbox_env(&dir),
        ("GOTIFY_URL", url.clone()),
        ("GOTIFY_TOKEN", TOKEN.to_string()),
    ];
    let out = run_in(SEND, &envs).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "not delivered: {stdout}\n{stderr}");
    assert!(!stdout.contains("delivered by log"), "{stdout}");
    assert!(
        stderr.contains("gotify (try 1) failed [transient]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("log skipped: log only: waiting for a real provider"),
        "{stderr}"
    );
    assert!(stderr.contains("queued in the outbox"), "{stderr}");
    // It is in the outbox, waiting for Gotify.
    let out = run_in(&["outbox", "stats"], &envs).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("pending: 1"), "{stdout}");
}

#[tokio::test]
async fn with_nothing_configured_it_warns_and_uses_the_log() {
    let out = run(SEND, &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Gotify not configured - notifications disabled"),
        "{stderr}"
    );
    assert!(stdout.contains("delivered by log"), "{stdout}");
}

#[tokio::test]
async fn an_out_of_range_priority_is_refused() {
    let out = run(
        &["send", "--title", "t", "--message", "m", "--priority", "11"],
        &[],
    )
    .await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--priority") && stderr.contains("out of range"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_config_redacts_secrets_and_reports_bad_files() {
    let out = run(
        &["check-config"],
        &[
            ("GOTIFY_URL", "https://push.example.com".into()),
            ("GOTIFY_TOKEN", TOKEN.into()),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gotify enabled: url=https://push.example.com/"),
        "{stdout}"
    );
    assert!(stdout.contains("chat: gotify -> log"), "{stdout}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "timeout = \"soon\"\n").unwrap();
    let out = run(&["check-config", "--config", bad.to_str().unwrap()], &[]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("timeout") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn when_everything_is_down_send_queues_and_run_delivers_later() {
    let mut fake = FakeGotify::start(&[(TOKEN, 4)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        outbox_env(&dir),
        ("GOTIFY_URL", fake.url()),
        ("GOTIFY_TOKEN", TOKEN.to_string()),
        ("MESH_NOTIFY_ROUTES__CHAT", "[\"gotify\"]".to_string()),
        ("MESH_NOTIFY_QUEUE__INITIAL_BACKOFF", "50ms".to_string()),
        ("MESH_NOTIFY_QUEUE__POLL_INTERVAL", "50ms".to_string()),
    ];
    fake.stop();
    let out = run_in(SEND, &env).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("queued in the outbox"), "{stderr}");

    let out = run_in(&["outbox", "stats"], &env).await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("pending: 1"), "{stdout}");
    let out = run_in(&["outbox", "list"], &env).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("chat") && stdout.contains("Test"),
        "{stdout}"
    );

    fake.restart().await.unwrap();
    let mut child = command(&["run"], &env).spawn().unwrap();
    let start = std::time::Instant::now();
    while fake.messages().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "run never delivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(fake.messages()[0].message, "Bonjour");
    let out = run_in(&["outbox", "stats"], &env).await;
    assert!(text(&out).0.contains("pending: 0"), "{}", text(&out).0);
}

#[tokio::test]
async fn inspecting_finds_mesh_servers_outbox_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    // No outbox yet where the configuration points: a clear error, nothing created.
    let mut cmd = command(&["outbox", "stats"], &[]);
    cmd.current_dir(dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no outbox at `data/mesh.sqlite3`"),
        "{stderr}"
    );
    assert!(stderr.contains("MESH_NOTIFY_OUTBOX__PATH"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
    // With a [server] data_dir, the CLI looks where mesh-server keeps it.
    let config = dir.path().join("mesh.toml");
    std::fs::write(&config, "[server]\ndata_dir = \"srv\"\n").unwrap();
    let cfg = config.display().to_string();
    let mut cmd = command(&["--config", &cfg, "check-config"], &[]);
    cmd.current_dir(dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("outbox: sqlite srv/mesh.sqlite3"),
        "{stdout}"
    );
}
