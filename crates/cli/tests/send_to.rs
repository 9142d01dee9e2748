//! `mesh-notify send --to KIND:ADDRESS`: the seed's Test 1 for every provider,
//! against the loopback fakes (Gotify, FCM, APNs over TLS) and a real SMTP server
//! (aiosmtpd), printing one line per device.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use mesh_notify_testkit::gotify::FakeGotify;
use mesh_notify_testkit::push::PushFakes;

const APNS_TOKEN_A: &str = "4f1a0c9e7d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4";
const APNS_TOKEN_B: &str = "9b8a7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

async fn run(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-notify"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("GOTIFY_URL")
        .env_remove("GOTIFY_TOKEN")
        .env_remove("MESH_NOTIFY_CONFIG")
        .env("LOG_LEVEL", "warn");
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

const SEND: [&str; 5] = ["send", "--title", "Test 1", "--message", "Hello"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_gotify_fcm_and_apns_prints_one_line_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let gotify = FakeGotify::start(&[("AgotifyAppTok1", 3)]).await.unwrap();
    let push = PushFakes::start(dir.path()).await.unwrap();
    let fcm = &push.fcm;
    fcm.unregister("fcm-old-phone");
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\npath = \"{outbox}\"\n[providers.gotify]\nurl = \"{gotify}\"\n{push}",
            outbox = dir.path().join("outbox.sqlite3").display(),
            gotify = gotify.url(),
            push = push.providers_toml(),
        ),
    )
    .unwrap();

    // Each kind alone.
    let out = run(
        &config,
        &[&SEND[..], &["--to", "gotify:AgotifyAppTok1"]].concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gotify gotify …Tok1: delivered"),
        "{stdout}"
    );
    assert!(stdout.contains("delivered"), "{stdout}");
    assert_eq!(gotify.messages().len(), 1);
    assert!(
        !stdout.contains("AgotifyAppTok1"),
        "the token is never printed"
    );

    let out = run(
        &config,
        &[&SEND[..], &["--to", "fcm:fcm-new-phone"]].concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("fcm fcm …hone: delivered"), "{stdout}");
    assert_eq!(fcm.messages().len(), 1);

    let out = run(
        &config,
        &[&SEND[..], &["--to", &format!("apns:{APNS_TOKEN_A}")]].concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("apns apns …a3b4: delivered"), "{stdout}");

    // Several devices at once: one line each, the dead one says why.
    let out = run(
        &config,
        &[
            &SEND[..],
            &[
                "--to",
                "fcm:fcm-new-phone",
                "--to",
                "fcm:fcm-old-phone",
                "--to",
                &format!("apns:{APNS_TOKEN_B}"),
            ],
        ]
        .concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "one device failed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("fcm fcm …hone: delivered"), "{stdout}");
    assert!(
        stdout.contains("fcm fcm …hone: not delivered [recipient_gone]")
            || stdout.contains("not delivered [recipient gone]"),
        "{stdout}"
    );
    assert!(stdout.contains("apns apns …b8a9: delivered"), "{stdout}");
    assert_eq!(fcm.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_provider_that_is_not_configured_says_which_key_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\npath = \"{}\"\n",
            dir.path().join("o.sqlite3").display()
        ),
    )
    .unwrap();
    let out = run(&config, &[&SEND[..], &["--to", "fcm:tok"]].concat()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("[providers.fcm]"), "{stderr}");
    let out = run(&config, &[&SEND[..], &["--to", "pager:123"]].concat()).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown address kind `pager`"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_email_through_a_real_smtp_server() {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "aiosmtpd is required under CI (scripts/test installs it)"
        );
        eprintln!("SKIPPED: aiosmtpd not installed (run scripts/test)");
        return;
    }
    let port = free_port();
    let mut smtp = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for it to listen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "aiosmtpd did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\npath = \"{}\"\n[providers.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"mesh@example.com\"\n",
            dir.path().join("o.sqlite3").display()
        ),
    )
    .unwrap();
    let out = run(
        &config,
        &[&SEND[..], &["--to", "email:bob@example.com"]].concat(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    let _ = smtp.kill();
    let mut printed = String::new();
    if let Some(mut o) = smtp.stdout.take() {
        let _ = o.read_to_string(&mut printed);
    }
    let _ = smtp.wait();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("smtp email ….com: delivered"), "{stdout}");
    assert!(
        printed.contains("bob@example.com"),
        "the SMTP server got it: {printed}"
    );
}
