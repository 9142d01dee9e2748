//! Headless Chromium for the web client's tests: a `chromedriver` child process
//! on a free loopback port (killed with its browsers on drop) and one WebDriver
//! session per simulated person, each with its own profile, fake camera and
//! microphone.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver`
//! packages (`scripts/test` installs them). When they are missing the tests fail
//! and say so; they never pass without a browser.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long any one thing may take in the browser before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Desktop and phone viewports.
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

/// Serialises the browser tests of one test binary: two Chromium sessions each
/// are already a lot for a two-core machine.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The Chromium binary: `MESH_TEST_CHROMIUM`, else `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("MESH_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()))
        .or_else(|| find_in_path("chromium"));
    match path {
        Some(p) => p,
        None => missing("chromium"),
    }
}

fn missing(what: &str) -> ! {
    let ci = if std::env::var_os("CI").is_some() {
        " (CI: .ci/run runs scripts/test, which installs them)"
    } else {
        ""
    };
    panic!(
        "{what} is not installed: the web client's browser tests need Debian's `chromium` and \
         `chromium-driver` packages. Run `scripts/test` (it installs them) or \
         `apt-get install chromium chromium-driver`{ci}"
    );
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    pub url: String,
    profiles: tempfile::TempDir,
}

impl Driver {
    pub async fn start() -> Self {
        let binary = find_in_path("chromedriver").unwrap_or_else(|| missing("chromedriver"));
        chromium();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("port").port()
        };
        let profiles = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profiles.path().join("chromedriver.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: dropping the driver ends its browsers too.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(r) = ready {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {}",
                driver.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new browser (own profile), with the window at `size`.
    pub async fn browser(&self, name: &str, base: &str, size: (u32, u32)) -> Browser {
        let profile = self.profiles.path().join(name);
        std::fs::create_dir_all(&profile).expect("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    // Host candidates on loopback, not mDNS names nobody resolves.
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    "--allow-loopback-in-peer-connection",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--password-store=basic",
                    format!("--window-size={},{}", size.0, size.1),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps: Capabilities = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        let b = Browser {
            client,
            base: base.to_string(),
            name: name.to_string(),
        };
        // The window size of headless Chromium is the viewport's outer size.
        b.client
            .set_window_size(size.0, size.1)
            .await
            .expect("window size");
        b
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = i32::try_from(self.child.id()).unwrap_or(0);
        if pgid > 0 {
            // SAFETY: kill(2) on the process group this driver started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /session/{id}/se/log {"type": "browser"}`: chromedriver's console log.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.into()),
        )
    }
}

/// One person's browser.
pub struct Browser {
    pub client: Client,
    pub base: String,
    pub name: String,
}

impl Browser {
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{}", self.base, path))
            .await
            .unwrap_or_else(|e| panic!("{}: goto {path}: {e}", self.name));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Polls `expr` (a JS expression) until it is truthy; fails after [`DEADLINE`]
    /// with `what`.
    pub async fn wait_js(&self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let script = format!("return ({expr}) || null;");
        loop {
            let v = self.js(&script).await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if Instant::now() >= deadline {
                let state = self
                    .js("return document.body.dataset.screen + ' ws=' + document.body.dataset.ws + ' notice=' + document.getElementById('notice').textContent;")
                    .await;
                panic!(
                    "{}: timed out waiting for {what} ({expr}); page: {state}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` matches a visible element.
    pub async fn wait_visible(&self, css: &str) {
        let sel = serde_json::to_string(css).expect("selector");
        self.wait_js(
            &format!("{css} visible"),
            &format!("(() => {{ const e = document.querySelector({sel}); return e && e.offsetParent !== null; }})()"),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        self.wait_visible(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: find {css}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {css}: {e}", self.name));
    }

    pub async fn fill(&self, css: &str, text: &str) {
        self.wait_visible(css).await;
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: find {css}: {e}", self.name));
        e.clear().await.expect("clear");
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: type into {css}: {e}", self.name));
    }

    /// Sets a file input to `path`.
    pub async fn choose_file(&self, css: &str, path: &Path) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: find {css}: {e}", self.name));
        e.send_keys(&path.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("{}: choose file: {e}", self.name));
    }

    /// The texts of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let sel = serde_json::to_string(css).expect("selector");
        let v = self
            .js(&format!(
                "return Array.from(document.querySelectorAll({sel}), e => e.textContent);"
            ))
            .await;
        serde_json::from_value(v).expect("strings")
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Console entries of level SEVERE since the last call (errors, failed
    /// loads, CSP violations, uncaught exceptions), except those `expected`
    /// matches.
    pub async fn console_errors(&self, expected: &[&str]) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|e| panic!("{}: browser log: {e}", self.name));
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| !expected.iter().any(|x| m.contains(x)))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts that the console has no unexpected error.
    pub async fn assert_no_console_errors(&self, screen: &str, expected: &[&str]) {
        let errors = self.console_errors(expected).await;
        assert!(
            errors.is_empty(),
            "{}: console errors on {screen}: {errors:#?}",
            self.name
        );
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Where the README's screenshots go.
pub fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
}
