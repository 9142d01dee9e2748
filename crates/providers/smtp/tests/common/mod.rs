//! Starts `tests/smtp_server.py` (a real aiosmtpd server) as a child process and
//! reads what it received.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// A message the server accepted.
#[derive(Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub auth_login: Option<String>,
    pub tls: bool,
    /// The client's port: the same value for two messages means one reused connection.
    pub peer_port: Option<u64>,
    pub raw: Vec<u8>,
}

/// The running server; killed (and waited for) on drop.
pub struct SmtpServer {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py")
}

/// Whether python3 with aiosmtpd is available. Under `CI=true` its absence is a
/// test failure; elsewhere the caller skips, loudly.
pub fn aiosmtpd_available() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let status = AVAILABLE.get_or_init(|| {
        match Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Ok(()),
            Ok(_) => Err(
                "python3 is installed but aiosmtpd is not (python3 -m pip install aiosmtpd)".into(),
            ),
            Err(e) => Err(format!("python3 cannot be run: {e}")),
        }
    });
    match status {
        Ok(()) => true,
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "the SMTP tests need a real SMTP server: {why}. scripts/test installs it."
            );
            // Written to stderr directly: libtest captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! SKIPPING SMTP TEST: {why}. Install it (scripts/test does) to run the SMTP tests. !!!!!\n"
            );
            false
        }
    }
}

impl SmtpServer {
    /// Starts the server with extra arguments (`--mode`, `--auth`, `--tls-cert`...).
    /// `None` when aiosmtpd is unavailable outside CI (the test should return).
    pub fn start(args: &[&str]) -> Option<SmtpServer> {
        if !aiosmtpd_available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("python3")
            .arg(script())
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 tests/smtp_server.py");
        let stdin = child.stdin.take().expect("child stdin");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port from smtp_server.py");
        let port = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("smtp_server.py did not print its port (got {line:?}, exit {status:?})");
            }
        };
        Some(SmtpServer {
            child,
            _stdin: stdin,
            port,
            dir,
        })
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        let mut metas: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read the server's output dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        metas.sort();
        metas
            .into_iter()
            .map(|meta| {
                let v: Value = serde_json::from_slice(&std::fs::read(&meta).expect("read .json"))
                    .expect("json");
                let raw = std::fs::read(meta.with_extension("eml")).expect("read .eml");
                Received {
                    mail_from: v["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                    auth_login: v["auth_login"].as_str().map(String::from),
                    tls: v["tls"].as_bool().unwrap_or(false),
                    peer_port: v["peer_port"].as_u64(),
                    raw,
                }
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
