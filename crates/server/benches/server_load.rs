//! mesh-server load benchmark (issue 5, "Performance").
//!
//! ```sh
//! cargo bench -p mesh-server --bench server_load                 # full run
//! cargo bench -p mesh-server --bench server_load -- --quick      # CI smoke run
//! cargo bench -p mesh-server --bench server_load -- --json out.json
//! ```
//!
//! Three scenarios, one run, one markdown table:
//!
//! * **rss**: resident memory of an in-process server, idle and with many connected,
//!   authenticated WebSocket clients. The clients run in a *child process* (this
//!   same binary, `--child-clients`), so the server's process holds only the server
//!   side of each socket. Baseline in the same run: the same child clients against
//!   a trivial tokio-tungstenite echo server in another child (`--child-echo`).
//! * **logins**: resident memory of a server (alone in a child process,
//!   `--child-logins`) after many password logins: argon2 needs 19 MiB per hash,
//!   which must not pile up (target: at most idle + 64 MiB after 1,000 logins).
//! * **chat**: chat broadcast latency to present members of a room with many absent
//!   members (every message queues one notification per absent member), with the
//!   fake Gotify answering normally vs hung (never answering; provider timeout 5 s),
//!   repetitions interleaved, medians reported.
//!
//! Loopback only, free ports, every wait bounded. Exit status 0 when every scenario
//! ran (whatever the figures), 1 when one failed to run, 2 on bad arguments.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use figment::providers::{Format, Toml};
use figment::Figment;
use futures_util::stream::{SplitStream, StreamExt};
use futures_util::SinkExt;
use mesh_notify::Config;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};
use mesh_server::ServerHandle;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type BenchResult<T> = Result<T, String>;

const APP_TOKEN: &str = "bench-app-token";
const PASSWORD: &str = "bench-password-123";

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    absent: usize,
    present: usize,
    messages: usize,
    warmup: usize,
    reps: usize,
    pace: Duration,
    hung_timeout: Duration,
    connections: usize,
    conn_users: usize,
    logins: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            absent: 100,
            present: 5,
            messages: 300,
            warmup: 20,
            reps: 3,
            pace: Duration::from_millis(10),
            hung_timeout: Duration::from_secs(5),
            connections: 1000,
            conn_users: 10,
            logins: 1000,
        }
    }

    fn quick() -> Self {
        Self {
            absent: 10,
            present: 2,
            messages: 30,
            warmup: 5,
            reps: 1,
            pace: Duration::from_millis(5),
            hung_timeout: Duration::from_secs(1),
            connections: 50,
            conn_users: 2,
            logins: 50,
        }
    }
}

struct Opts {
    quick: bool,
    json: Option<String>,
    /// Only this scenario (`rss`, `logins`, `chat`, `instances`).
    only: Option<String>,
}

impl Opts {
    fn runs(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == scenario)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child-clients") => return exit(child_clients(&args[1..])),
        Some("--child-echo") => return exit(child_echo()),
        Some("--child-logins") => return exit(child_logins(&args[1..])),
        _ => {}
    }
    let mut opts = Opts {
        quick: false,
        json: None,
        only: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => match it.next() {
                Some(s) if ["rss", "logins", "chat", "instances"].contains(&s.as_str()) => {
                    opts.only = Some(s)
                }
                other => {
                    eprintln!("--only needs one of rss, logins, chat, instances (got {other:?})");
                    return ExitCode::from(2);
                }
            },
            "--json" => match it.next() {
                Some(f) => opts.json = Some(f),
                None => {
                    eprintln!("--json needs a file name");
                    return ExitCode::from(2);
                }
            },
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other:?}; usage: server_load [--quick] [--only SCENARIO] [--json FILE]");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the Tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(opts))
}

fn exit(r: BenchResult<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("child failed: {e}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------- report

struct Row {
    figure: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
    target: String,
    /// `Some(true)` pass, `Some(false)` short, `None` no target.
    pass: Option<bool>,
}

impl Row {
    fn info(figure: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            figure: figure.into(),
            value,
            unit,
            ratio: None,
            target: String::new(),
            pass: None,
        }
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.2} ms"),
        "KiB" => format!("{v:.1} KiB"),
        "MiB" => format!("{v:.1} MiB"),
        "" => format!("{v:.0}"),
        "/s" => format!("{v:.0}/s"),
        u => format!("{v:.2} {u}"),
    }
}

async fn run(opts: Opts) -> ExitCode {
    let sizes = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let load_start = loadavg();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut failed = Vec::new();

    let nofile = raise_nofile_limit();
    notes.push(nofile.clone());

    // Memory first, while the heap is small.
    eprintln!("rss: {} connections...", sizes.connections);
    match if opts.runs("rss") {
        rss_scenario(&sizes).await
    } else {
        Ok((vec![], vec![]))
    } {
        Ok((r, n)) => {
            rows.extend(r);
            notes.extend(n);
        }
        Err(e) => failed.push(format!("rss: {e}")),
    }
    eprintln!(
        "logins: {} logins in a fresh server process...",
        sizes.logins
    );
    match if opts.runs("logins") {
        logins_scenario(&sizes).await
    } else {
        Ok((vec![], vec![]))
    } {
        Ok((r, n)) => {
            rows.extend(r);
            notes.extend(n);
        }
        Err(e) => failed.push(format!("logins: {e}")),
    }
    eprintln!(
        "chat: {} present, {} absent, {} messages x {} repetitions per case...",
        sizes.present, sizes.absent, sizes.messages, sizes.reps
    );
    match if opts.runs("chat") {
        chat_scenario(&sizes).await
    } else {
        Ok((vec![], vec![]))
    } {
        Ok((r, n)) => {
            rows.extend(r);
            notes.extend(n);
        }
        Err(e) => failed.push(format!("chat: {e}")),
    }

    eprintln!("instances: chat on PostgreSQL + Redis with 1 and 2 mesh-server instances...");
    match if opts.runs("instances") {
        instances_scenario(&sizes).await
    } else {
        Ok((vec![], vec![]))
    } {
        Ok((r, n)) => {
            rows.extend(r);
            notes.extend(n);
        }
        Err(e) => failed.push(format!("instances: {e}")),
    }

    let load_end = loadavg();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory_mib = meminfo_total_mib();
    let date = utc_now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mesh-server load benchmark, {date}{}",
        if opts.quick {
            " (QUICK RUN: tiny sizes, timings not judged)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "machine: {cores} cores, {memory_mib} MiB memory; load average {load_start} at start, {load_end} at end; {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(out, "| figure | value | ratio | target | result |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for r in &rows {
        let result = match (opts.quick, r.pass) {
            (_, None) => "",
            (true, Some(_)) => "not judged",
            (false, Some(true)) => "pass",
            (false, Some(false)) => "short",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.figure,
            fmt_value(r.value, r.unit),
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.target,
            result
        );
    }
    let _ = writeln!(out);
    for n in &notes {
        let _ = writeln!(out, "- {n}");
    }
    for f in &failed {
        let _ = writeln!(out, "- FAILED TO RUN: {f}");
    }
    println!("{out}");

    if let Some(path) = &opts.json {
        let doc = json!({
            "date": date,
            "quick": opts.quick,
            "machine": {"cores": cores, "memory_mib": memory_mib, "load_start": load_start, "load_end": load_end},
            "sizes": format!("{sizes:?}"),
            "rows": rows.iter().map(|r| json!({
                "figure": r.figure, "value": r.value, "unit": r.unit, "ratio": r.ratio,
                "target": r.target, "pass": if opts.quick { None } else { r.pass },
            })).collect::<Vec<_>>(),
            "notes": notes,
            "failed": failed,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::from(1);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

// ---------------------------------------------------------------- logins

/// Runs the logins measurement in a child process (a heap of its own).
async fn logins_scenario(sizes: &Sizes) -> BenchResult<(Vec<Row>, Vec<String>)> {
    let n = sizes.logins;
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut child = Command::new(exe)
        .arg("--child-logins")
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn logins child: {e}"))?;
    let stdout = child.stdout.take().ok_or("child stdout")?;
    let line = match read_line(stdout, Duration::from_secs(600)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("logins child: {e}"));
        }
    };
    wait_child(&mut child, "logins child").await?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("logins child said {line:?}: {e}"))?;
    let kib = |k: &str| {
        v[k].as_u64()
            .ok_or(format!("logins child: no {k} in {line}"))
    };
    let (idle, after, secs) = (
        kib("idle_kib")?,
        kib("after_kib")?,
        v["secs"].as_f64().unwrap_or(0.0),
    );
    let added_mib = after.saturating_sub(idle) as f64 / 1024.0;
    let rows = vec![
        Row {
            figure: format!("server RSS added by {n} password logins (8 at a time)"),
            value: added_mib,
            unit: "MiB",
            ratio: None,
            target: "<= 64 MiB over idle".into(),
            pass: Some(added_mib <= 64.0),
        },
        Row::info(
            format!("{n} logins, throughput"),
            if secs > 0.0 { n as f64 / secs } else { 0.0 },
            "logins/s",
        ),
    ];
    let notes = vec![format!(
        "logins: a server alone in a child process (this binary, --child-logins), default hashing settings (2 argon2 threads, each reusing one 19 MiB working memory); VmRSS {:.1} MiB idle, {:.1} MiB after one registration and {n} logins of that user, 8 concurrent, in {secs:.1} s",
        idle as f64 / 1024.0,
        after as f64 / 1024.0,
    )];
    Ok((rows, notes))
}

/// `--child-logins N`: starts a server, registers one user, logs in N times (8 at a
/// time), prints `{"idle_kib", "after_kib", "secs"}`.
fn child_logins(args: &[String]) -> BenchResult<()> {
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: --child-logins N")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
            .await
            .map_err(|e| format!("fake gotify: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let figment = bench_figment(&gotify.url(), dir.path(), Duration::from_secs(5));
        let server = start_server(&figment).await?;
        let api = Api::new(server.addr())?;
        let (status, _) = api
            .call(reqwest::Method::GET, "/health", None, None)
            .await?;
        if status != 200 {
            return Err(format!("/health answered {status}"));
        }
        let idle = vmrss_kib()?;
        api.register("login-user").await?;
        let started = Instant::now();
        let results: Vec<BenchResult<User>> = futures_util::stream::iter(0..n)
            .map(|_| api.login("login-user"))
            .buffer_unordered(8)
            .collect()
            .await;
        let secs = started.elapsed().as_secs_f64();
        results.into_iter().collect::<BenchResult<Vec<User>>>()?;
        let after = vmrss_kib()?;
        stop_server(server, Duration::from_secs(20)).await?;
        println!(
            "{}",
            json!({"idle_kib": idle, "after_kib": after, "secs": secs})
        );
        Ok(())
    })
}

// ---------------------------------------------------------------- machine

fn vmrss_kib() -> BenchResult<u64> {
    let s = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn meminfo_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM UTC` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Raises the soft open-files limit to the hard limit (the RSS scenario holds one
/// socket per connection in the server process and one in each child). Returns a
/// note for the report.
fn raise_nofile_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return format!(
            "open files limit: getrlimit failed ({})",
            std::io::Error::last_os_error()
        );
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return format!(
                "open files limit: soft {before}, raising to {} failed ({})",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
        format!(
            "open files limit: soft limit raised from {before} to the hard limit {}",
            lim.rlim_max
        )
    } else {
        format!("open files limit: {before} (soft = hard)")
    }
}

// ---------------------------------------------------------------- server

fn bench_figment(gotify_url: &str, data_dir: &Path, timeout: Duration) -> Figment {
    let toml = format!(
        r#"
timeout = "{timeout}ms"
[retry]
attempts_per_provider = 1
[providers.gotify]
url = "{gotify_url}"
token = "{APP_TOKEN}"
[routes]
chat = ["gotify"]
call = ["gotify"]
file = ["gotify"]
# Invitations (system pushes, sent while setting up) go to the log: the
# measured chat notifications are the only traffic to Gotify.
system = ["log"]
[breaker]
failure_threshold = 0
[server]
data_dir = "{dir}"
messages_per_second = 100000.0
message_burst = 100000
admin_bind = "127.0.0.1:0"
# The rss scenario opens many WebSockets per user.
max_connections_per_user = 100000
# Every bench user registers from this one address.
registrations_per_address = 1000000
# Coalescing off: every message queues one push per absent member, the
# heaviest delivery load a message can make (with the default 5 s window a
# room's pushes merge and the server delivers far less).
coalesce_window = "0s"
"#,
        timeout = timeout.as_millis(),
        dir = data_dir.display()
    );
    Figment::from(Toml::string(&toml))
}

async fn start_server(figment: &Figment) -> BenchResult<ServerHandle> {
    let config = Config::from_figment(figment).map_err(|e| format!("config: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    mesh_server::start(config, figment, Some(listener))
        .await
        .map_err(|e| format!("server start: {e}"))
}

async fn stop_server(server: ServerHandle, within: Duration) -> BenchResult<()> {
    match tokio::time::timeout(within, server.shutdown()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server shutdown: {e}")),
        Err(_) => Err(format!("server did not stop within {within:?}")),
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

struct User {
    token: String,
}

impl Api {
    fn new(addr: SocketAddr) -> BenchResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self {
            base: format!("http://{addr}"),
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> BenchResult<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
        want: u16,
    ) -> BenchResult<Value> {
        let (status, v) = self.call(method, path, token, Some(body)).await?;
        if status == want {
            Ok(v)
        } else {
            Err(format!("{path}: HTTP {status} (wanted {want}): {v}"))
        }
    }

    async fn register(&self, username: &str) -> BenchResult<()> {
        self.expect(
            reqwest::Method::POST,
            "/api/register",
            None,
            json!({"username": username, "password": PASSWORD}),
            201,
        )
        .await
        .map(drop)
    }

    async fn login(&self, username: &str) -> BenchResult<User> {
        let v = self
            .expect(
                reqwest::Method::POST,
                "/api/login",
                None,
                json!({"username": username, "password": PASSWORD}),
                200,
            )
            .await?;
        Ok(User {
            token: v["token"].as_str().ok_or("login: no token")?.to_string(),
        })
    }

    async fn create_room(&self, owner: &User, name: &str) -> BenchResult<i64> {
        let v = self
            .expect(
                reqwest::Method::POST,
                "/api/rooms",
                Some(&owner.token),
                json!({"name": name}),
                201,
            )
            .await?;
        v["room"]["id"].as_i64().ok_or_else(|| "no room id".into())
    }

    /// `by` invites `username`, who accepts with `invitee`'s session: a member.
    async fn invite(
        &self,
        by: &User,
        room: i64,
        username: &str,
        invitee: &User,
    ) -> BenchResult<()> {
        let v = self
            .expect(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/invite"),
                Some(&by.token),
                json!({"username": username}),
                201,
            )
            .await?;
        let id = v["invite"]["id"].as_i64().ok_or("invite: no id")?;
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/invites/{id}/accept"),
                Some(&invitee.token),
                None,
            )
            .await?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!("accept invitation {id}: HTTP {status}: {v}"))
        }
    }

    /// `mesh_server_ws_connections` from the admin listener's `/metrics`, if exported.
    async fn ws_connections_gauge(&self, admin: Option<SocketAddr>) -> Option<f64> {
        let resp = self
            .http
            .get(format!("http://{}/metrics", admin?))
            .send()
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("mesh_server_ws_connections "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Registers users concurrently (bounded: the server hashes passwords with argon2
/// one at a time under its database lock anyway).
async fn register_all(api: &Api, names: &[String]) -> BenchResult<()> {
    let results: Vec<BenchResult<()>> = futures_util::stream::iter(names.iter())
        .map(|n| api.register(n))
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn ws_connect(url: &str, token: Option<&str>) -> BenchResult<Ws> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("ws request: {e}"))?;
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|e| format!("ws header: {e}"))?;
        req.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| format!("ws connect to {url}: no answer within 10 s"))?
    .map_err(|e| format!("ws connect to {url}: {e}"))?;
    Ok(ws)
}

/// Sends one text frame and waits (10 s) for a text reply matching `ok`.
async fn ws_round_trip(ws: &mut Ws, frame: String, ok: impl Fn(&str) -> bool) -> BenchResult<()> {
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("ws send: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("no reply within 10 s".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("ws read: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().contains("\"type\":\"error\"") {
                    return Err(format!("error event: {}", t.as_str()));
                }
                if ok(t.as_str()) {
                    return Ok(());
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed: {c:?}")),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn join_frame(room: i64) -> String {
    json!({"type": "room.join", "room_id": room}).to_string()
}

fn is_join_ack(t: &str) -> bool {
    serde_json::from_str::<Value>(t)
        .map(|v| v["type"] == "ack" && v["for"] == "room.join")
        .unwrap_or(false)
}

// ---------------------------------------------------------------- rss

async fn rss_scenario(sizes: &Sizes) -> BenchResult<(Vec<Row>, Vec<String>)> {
    let n = sizes.connections;
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .map_err(|e| format!("fake gotify: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let figment = bench_figment(&gotify.url(), dir.path(), Duration::from_secs(5));

    let before = vmrss_kib()?;
    let server = start_server(&figment).await?;
    let api = Api::new(server.addr())?;
    let (status, _) = api
        .call(reqwest::Method::GET, "/health", None, None)
        .await?;
    if status != 200 {
        return Err(format!("/health answered {status}"));
    }
    let idle = vmrss_kib()?;

    // A handful of users, many connections each (a user may have several).
    let names: Vec<String> = (0..sizes.conn_users).map(|i| format!("conn{i}")).collect();
    register_all(&api, &names).await?;
    let mut users = Vec::new();
    for name in &names {
        users.push(api.login(name).await?);
    }
    let owner = users.first().ok_or("no users")?;
    let room = api.create_room(owner, "rss").await?;
    for (name, user) in names.iter().zip(&users).skip(1) {
        api.invite(owner, room, name, user).await?;
    }
    let ws_url = format!("ws://{}/ws", server.addr());
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let pre = vmrss_kib()?;

    let mut clients = ClientsChild::spawn(&ws_url, n, Some(room), &tokens).await?;
    let with = vmrss_kib()?;
    let gauge = api.ws_connections_gauge(server.admin_addr()).await;
    clients.finish().await?;
    stop_server(server, Duration::from_secs(20)).await?;
    drop(gotify);

    // Baseline: the same clients against a trivial echo WebSocket server.
    let mut echo = EchoChild::spawn().await?;
    let echo_url = format!("ws://{}/", echo.addr);
    let mut echo_clients = ClientsChild::spawn(&echo_url, n, None, &[]).await?;
    let echo_with = echo.measure().await?;
    echo_clients.finish().await?;
    echo.finish().await?;

    let nf = n as f64;
    let server_per_conn = (with.saturating_sub(pre)) as f64 / nf;
    let echo_per_conn = (echo_with.saturating_sub(echo.rss_listening)) as f64 / nf;
    let client_per_conn = (clients.rss_connected.saturating_sub(clients.rss_start)) as f64 / nf;
    let rows = vec![
        Row::info(
            "server idle RSS (delta after start)",
            (idle.saturating_sub(before)) as f64 / 1024.0,
            "MiB",
        ),
        Row::info(
            format!(
                "server RSS added by registering (8 at a time) and logging in {} users",
                sizes.conn_users
            ),
            (pre.saturating_sub(idle)) as f64 / 1024.0,
            "MiB",
        ),
        Row::info(
            format!("server RSS added by {n} connected WebSockets"),
            (with.saturating_sub(pre)) as f64 / 1024.0,
            "MiB",
        ),
        Row {
            figure: "server RSS per WebSocket connection".into(),
            value: server_per_conn,
            unit: "KiB",
            ratio: (echo_per_conn > 0.0).then(|| server_per_conn / echo_per_conn),
            target: "ratio vs trivial echo server (info)".into(),
            pass: None,
        },
        Row::info(
            "baseline: trivial tokio-tungstenite echo server, RSS per connection",
            echo_per_conn,
            "KiB",
        ),
        Row::info(
            "client side (child process), RSS per connection",
            client_per_conn,
            "KiB",
        ),
    ];
    let mut notes = vec![
        format!(
            "rss: {n} WebSocket connections from {} users ({} connections per user; a user may have several), each authenticated by its bearer token and joined to one room (join ack awaited, so the server holds each connection's state); the server's /metrics gauge `mesh_server_ws_connections` read {}",
            sizes.conn_users,
            n.div_ceil(sizes.conn_users.max(1)),
            gauge.map(|g| format!("{g:.0}")).unwrap_or_else(|| "n/a".into())
        ),
        format!(
            "rss: the clients run in a child process (this binary, --child-clients), so the server process's VmRSS holds only the server side; per connection = (VmRSS with the connections - VmRSS after registering the users) / {n}. Process VmRSS: {:.1} MiB before start, {:.1} MiB idle, {:.1} MiB after the users' registration, {:.1} MiB with the connections",
            before as f64 / 1024.0,
            idle as f64 / 1024.0,
            pre as f64 / 1024.0,
            with as f64 / 1024.0
        ),
        "rss: the baseline echo server (tokio-tungstenite accept + one task per connection echoing text frames) runs in another child process, measured the same way; it is a floor for any WebSocket server on this stack, not a target".into(),
    ];
    if gauge.is_some_and(|g| g < nf) {
        notes.push(format!(
            "rss: WARNING the server counted fewer than {n} connections"
        ));
    }
    Ok((rows, notes))
}

/// A child process holding WebSocket clients.
struct ClientsChild {
    child: Child,
    stdin: Option<ChildStdin>,
    rss_start: u64,
    rss_connected: u64,
}

impl ClientsChild {
    async fn spawn(url: &str, n: usize, room: Option<i64>, tokens: &[String]) -> BenchResult<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--child-clients").arg(url).arg(n.to_string());
        if let Some(r) = room {
            cmd.arg(r.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn clients child: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("child stdin")?;
        // Tokens go through stdin, not the command line.
        writeln!(stdin, "{}", tokens.join(",")).map_err(|e| format!("child stdin: {e}"))?;
        stdin.flush().map_err(|e| format!("child stdin: {e}"))?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        let line = read_line(stdout, Duration::from_secs(120)).await;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("clients child: {e}"));
            }
        };
        let mut parts = line.split_whitespace();
        let (Some("ready"), Some(a), Some(b)) = (parts.next(), parts.next(), parts.next()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("clients child said {line:?}"));
        };
        Ok(Self {
            child,
            stdin: Some(stdin),
            rss_start: a.parse().unwrap_or(0),
            rss_connected: b.parse().unwrap_or(0),
        })
    }

    /// Closes stdin (the child closes its connections and exits) and waits.
    async fn finish(&mut self) -> BenchResult<()> {
        self.stdin.take();
        wait_child(&mut self.child, "clients").await
    }
}

impl Drop for ClientsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child process running a trivial echo WebSocket server.
struct EchoChild {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    addr: String,
    rss_listening: u64,
}

impl EchoChild {
    async fn spawn() -> BenchResult<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--child-echo")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn echo child: {e}"))?;
        let stdin = child.stdin.take().ok_or("child stdin")?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        let (line, stdout) = read_line_keep(stdout, Duration::from_secs(30)).await?;
        let mut parts = line.split_whitespace();
        let (Some("listening"), Some(addr), Some(rss)) = (parts.next(), parts.next(), parts.next())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("echo child said {line:?}"));
        };
        Ok(Self {
            addr: addr.to_string(),
            rss_listening: rss.parse().unwrap_or(0),
            child,
            stdin: Some(stdin),
            stdout: Some(stdout),
        })
    }

    async fn measure(&mut self) -> BenchResult<u64> {
        let stdin = self.stdin.as_mut().ok_or("echo stdin closed")?;
        writeln!(stdin, "measure").map_err(|e| format!("echo stdin: {e}"))?;
        stdin.flush().map_err(|e| format!("echo stdin: {e}"))?;
        let stdout = self.stdout.take().ok_or("echo stdout")?;
        let (line, stdout) = read_line_keep(stdout, Duration::from_secs(30)).await?;
        self.stdout = Some(stdout);
        line.strip_prefix("rss ")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("echo child said {line:?}"))
    }

    async fn finish(&mut self) -> BenchResult<()> {
        self.stdin.take();
        wait_child(&mut self.child, "echo").await
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn read_line(stdout: ChildStdout, within: Duration) -> BenchResult<String> {
    read_line_keep(stdout, within).await.map(|(l, _)| l)
}

/// Reads one line from a child's stdout on the blocking pool, bounded by `within`.
async fn read_line_keep(
    stdout: ChildStdout,
    within: Duration,
) -> BenchResult<(String, ChildStdout)> {
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let r = reader.read_line(&mut line);
        (r, line, reader.into_inner())
    });
    match tokio::time::timeout(within, task).await {
        Err(_) => Err(format!("no answer from the child within {within:?}")),
        Ok(Err(e)) => Err(format!("reader task: {e}")),
        Ok(Ok((Err(e), _, _))) => Err(format!("child stdout: {e}")),
        Ok(Ok((Ok(0), _, _))) => Err("child exited without answering".into()),
        Ok(Ok((Ok(_), line, out))) => Ok((line.trim().to_string(), out)),
    }
}

async fn wait_child(child: &mut Child, what: &str) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("{what} child exited with {s}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} child did not exit within 30 s"));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(format!("{what} child: {e}")),
        }
    }
}

/// Child: `--child-clients URL N [ROOM]`, tokens (comma-separated) on the first
/// stdin line. Opens N connections (tokens round-robin), sends one frame on each
/// (room.join, or a text to echo) and awaits the reply, prints
/// `ready <rss before> <rss after>` (KiB), then holds them until stdin closes.
fn child_clients(args: &[String]) -> BenchResult<()> {
    let url = args.first().ok_or("missing URL")?.clone();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or("missing count")?;
    let room: Option<i64> = args.get(2).and_then(|s| s.parse().ok());
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    let tokens: Vec<String> = line
        .trim()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let rss_start = vmrss_kib()?;
    let conns = rt.block_on(async {
        let results: Vec<BenchResult<Ws>> = futures_util::stream::iter(0..n)
            .map(|i| {
                let url = url.clone();
                let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].clone());
                async move {
                    let mut ws = ws_connect(&url, token.as_deref()).await?;
                    match room {
                        Some(r) => ws_round_trip(&mut ws, join_frame(r), is_join_ack).await?,
                        None => {
                            ws_round_trip(&mut ws, format!("hello {i}"), |t| {
                                t == format!("hello {i}")
                            })
                            .await?
                        }
                    }
                    Ok(ws)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect::<BenchResult<Vec<Ws>>>()
    })?;
    let rss_connected = vmrss_kib()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {rss_start} {rss_connected}").map_err(|e| format!("stdout: {e}"))?;
    stdout.flush().map_err(|e| format!("stdout: {e}"))?;
    // Hold the connections until the parent closes stdin.
    let mut rest = String::new();
    while stdin.read_line(&mut rest).map(|r| r > 0).unwrap_or(false) {
        rest.clear();
    }
    rt.block_on(async {
        let closes = conns.into_iter().map(|mut ws| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        });
        futures_util::future::join_all(closes).await;
    });
    Ok(())
}

/// Child: `--child-echo`. A trivial tokio-tungstenite echo server; prints
/// `listening <addr> <rss>`, answers `rss <kib>` to each `measure` stdin line, exits
/// when stdin closes.
fn child_echo() -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("addr: {e}"))?;
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let rss = vmrss_kib()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {addr} {rss}").map_err(|e| format!("stdout: {e}"))?;
    stdout.flush().map_err(|e| format!("stdout: {e}"))?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    while stdin.read_line(&mut line).map(|r| r > 0).unwrap_or(false) {
        if line.trim() == "measure" {
            writeln!(stdout, "rss {}", vmrss_kib()?).map_err(|e| format!("stdout: {e}"))?;
            stdout.flush().map_err(|e| format!("stdout: {e}"))?;
        }
        line.clear();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

// ---------------------------------------------------------------- chat

struct CaseResult {
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    queued: usize,
    gotify_requests: usize,
    outbox_pending_after: u64,
    setup: Duration,
    /// From the first message sent to the last acknowledged.
    run: Duration,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One chat case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Same room and load without absent members: nothing is queued.
    Reference,
    /// Absent members, Gotify answers normally.
    Healthy,
    /// Absent members, Gotify accepts and never answers.
    Hung,
    /// No server: the dispatcher alone (same configuration, its own SQLite outbox)
    /// gets the same notifications at the same pace, and the same fake Gotify
    /// answers. The baseline for the server's delivery rate.
    Dispatcher,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Reference => "reference",
            Case::Healthy => "healthy",
            Case::Hung => "hung",
            Case::Dispatcher => "dispatcher",
        }
    }
}

async fn chat_scenario(sizes: &Sizes) -> BenchResult<(Vec<Row>, Vec<String>)> {
    let mut reference = Vec::new();
    let mut healthy = Vec::new();
    let mut hung = Vec::new();
    let mut alone = Vec::new();
    // Interleaved, so drift in the machine's load hits every case alike.
    for rep in 0..sizes.reps {
        for case in [Case::Reference, Case::Healthy, Case::Hung, Case::Dispatcher] {
            let label = case.label();
            let r = if case == Case::Dispatcher {
                dispatcher_case(sizes).await
            } else {
                chat_case(sizes, case).await
            }
            .map_err(|e| format!("{label} case, repetition {}: {e}", rep + 1))?;
            if case == Case::Dispatcher {
                eprintln!(
                    "  {label:10} rep {}: {:.0} deliveries/s ({} Gotify requests in {:.2} s, {} queued)",
                    rep + 1,
                    r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9),
                    r.gotify_requests,
                    r.run.as_secs_f64(),
                    r.queued
                );
            } else {
                eprintln!(
                "  {label:10} rep {}: p50 {:.2} ms, p99 {:.2} ms ({} samples, Gotify requests during the run {}, setup {:.1} s)",
                rep + 1,
                r.p50_ms,
                r.p99_ms,
                r.samples,
                r.gotify_requests,
                r.setup.as_secs_f64()
            );
            }
            match case {
                Case::Dispatcher => alone.push(r),
                Case::Reference => reference.push(r),
                Case::Healthy => healthy.push(r),
                Case::Hung => {
                    if r.gotify_requests == 0 {
                        return Err("hung case: the workers never reached the hung Gotify".into());
                    }
                    hung.push(r)
                }
            }
        }
    }
    let med = |v: &[CaseResult], f: fn(&CaseResult) -> f64| median(v.iter().map(f).collect());
    let (r50, r99) = (med(&reference, |r| r.p50_ms), med(&reference, |r| r.p99_ms));
    let (h50, h99) = (med(&healthy, |r| r.p50_ms), med(&healthy, |r| r.p99_ms));
    let (g50, g99) = (med(&hung, |r| r.p50_ms), med(&hung, |r| r.p99_ms));
    let ratio99 = g99 / h99;
    let ab = sizes.absent;
    let delivered = med(&healthy, |r| {
        r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9)
    });
    let queued_rate = med(&healthy, |r| {
        r.queued as f64 / r.run.as_secs_f64().max(1e-9)
    });
    let alone_rate = med(&alone, |r| {
        r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9)
    });
    let delivery_ratio = delivered / alone_rate.max(1e-9);
    let p50_ratio = h50 / r50;
    let p99_ratio = h99 / r99;
    let rows = vec![
        Row::info(
            format!("baseline: dispatcher alone, deliveries/s at the same pace ({ab} per message interval)"),
            alone_rate,
            "/s",
        ),
        Row {
            figure: format!(
                "server-side deliveries/s while chatting, {ab} absent members, Gotify healthy"
            ),
            value: delivered,
            unit: "/s",
            ratio: Some(delivery_ratio),
            target: ">= 0.5x dispatcher alone".into(),
            pass: Some(delivery_ratio >= 0.5),
        },
        Row::info(
            "rate queued by the chat (absent members x messages / s)",
            queued_rate,
            "/s",
        ),
        Row::info(
            "chat broadcast p50, reference: no absent members",
            r50,
            "ms",
        ),
        Row::info(
            "chat broadcast p99, reference: no absent members",
            r99,
            "ms",
        ),
        Row {
            figure: format!("chat broadcast p50, {ab} absent members, Gotify healthy"),
            value: h50,
            unit: "ms",
            ratio: Some(p50_ratio),
            target: "<= 2x reference p50".into(),
            pass: Some(p50_ratio <= 2.0),
        },
        Row {
            figure: format!("chat broadcast p99, {ab} absent members, Gotify healthy"),
            value: h99,
            unit: "ms",
            ratio: Some(p99_ratio),
            target: "<= 3x reference p99".into(),
            pass: Some(p99_ratio <= 3.0),
        },
        Row {
            figure: format!("chat broadcast p50, {ab} absent members, Gotify hung"),
            value: g50,
            unit: "ms",
            ratio: Some(g50 / h50),
            target: "ratio vs healthy (info)".into(),
            pass: None,
        },
        Row {
            figure: format!("chat broadcast p99, {ab} absent members, Gotify hung"),
            value: g99,
            unit: "ms",
            ratio: Some(ratio99),
            target: "<= 1.2x healthy p99".into(),
            pass: Some(ratio99 <= 1.2),
        },
    ];
    let list = |v: &[CaseResult], f: fn(&CaseResult) -> String| {
        v.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    let p50s = |v: &[CaseResult]| list(v, |r| format!("{:.2}", r.p50_ms));
    let p99s = |v: &[CaseResult]| list(v, |r| format!("{:.2}", r.p99_ms));
    let reqs = |v: &[CaseResult]| list(v, |r| r.gotify_requests.to_string());
    let pend = |v: &[CaseResult]| list(v, |r| r.outbox_pending_after.to_string());
    let notes = vec![
        format!(
            "chat: baseline 'dispatcher alone': no server; mesh_notify's dispatcher built from the same configuration (same provider timeout, retry, breaker, queue defaults) with its own SQLite outbox file, fed by `Dispatcher::submit` with {ab} chat notifications every {} ms ({} times, like the chat's messages) while its workers run, delivering to the same fake Gotify (in-process, like the server's). Deliveries/s = Gotify requests between the first submit and the last one acknowledged, the server's figure counts the same window of its own run. Per repetition: [{}]",
            sizes.pace.as_millis(),
            sizes.messages,
            list(&alone, |r| format!("{:.0}", r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9))),
        ),
        format!(
            "chat: one room, 1 sender + {} present members (one WebSocket each, joined) + {} absent members (registered, invited, accepted over HTTP, never connected); the sender sends {} messages {} ms apart, the first {} are warm-up and not counted; latency = sender's send to `chat.message` arriving at each present member ({} samples per repetition); each message queues {} chat notifications (one `push_fanout` row in the message's transaction, expanded right after; coalescing off: `server.coalesce_window = \"0s\"`, the heaviest load). Reference: the same without absent members",
            sizes.present,
            sizes.absent,
            sizes.messages,
            sizes.pace.as_millis(),
            sizes.warmup,
            healthy.first().map(|r| r.samples).unwrap_or(0),
            healthy.first().map(|r| r.queued / sizes.messages.max(1)).unwrap_or(0),
        ),
        format!(
            "chat: {} repetitions per case, interleaved (reference, healthy, hung, ...), fresh data dir, server and fake Gotify each; figures are medians of the per-repetition percentiles. p50 per repetition: reference [{}], healthy [{}], hung [{}]; p99 per repetition: reference [{}], healthy [{}], hung [{}]",
            sizes.reps,
            p50s(&reference),
            p50s(&healthy),
            p50s(&hung),
            p99s(&reference),
            p99s(&healthy),
            p99s(&hung)
        ),
        format!(
            "chat: provider timeout {} s, retry.attempts_per_provider = 1, breaker disabled (every queued notification goes to Gotify), delivery workers at the queue defaults; route chat = [gotify]. Gotify requests during a repetition: healthy [{}], hung [{}]; still to deliver at the end (fan-out backlog + outbox pending): healthy [{}], hung [{}]",
            sizes.hung_timeout.as_secs_f64(),
            reqs(&healthy),
            reqs(&hung),
            pend(&healthy),
            pend(&hung),
        ),
    ];
    Ok((rows, notes))
}

async fn chat_case(sizes: &Sizes, case: Case) -> BenchResult<CaseResult> {
    let setup_start = Instant::now();
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .map_err(|e| format!("fake gotify: {e}"))?;
    if case == Case::Hung {
        gotify.set_mode(Mode::Hang);
    }
    let absent = if case == Case::Reference {
        0
    } else {
        sizes.absent
    };
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let server = start_server(&bench_figment(
        &gotify.url(),
        dir.path(),
        sizes.hung_timeout,
    ))
    .await?;
    let result = chat_measure(sizes, absent, &server, &gotify, setup_start).await;
    // With a hung Gotify the workers finish their batch at the provider timeout.
    let stopped = stop_server(server, sizes.hung_timeout * 2 + Duration::from_secs(10)).await;
    let r = result?;
    stopped?;
    Ok(r)
}

/// The baseline: the dispatcher alone gets the chat case's notifications at the
/// chat case's pace and delivers them to the same kind of fake Gotify.
async fn dispatcher_case(sizes: &Sizes) -> BenchResult<CaseResult> {
    let setup_start = Instant::now();
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .map_err(|e| format!("fake gotify: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let figment = bench_figment(&gotify.url(), dir.path(), sizes.hung_timeout);
    let config = Config::from_figment(&figment).map_err(|e| format!("config: {e}"))?;
    let path = dir.path().join("outbox.db");
    let outbox =
        tokio::task::spawn_blocking(move || mesh_notify_outbox_sqlite::SqliteOutbox::open(&path))
            .await
            .map_err(|e| format!("outbox task: {e}"))?
            .map_err(|e| format!("outbox: {e}"))?;
    let dispatcher = std::sync::Arc::new(
        config
            .dispatcher_builder(&figment)
            .map_err(|e| format!("dispatcher: {e}"))?
            .outbox(std::sync::Arc::new(outbox))
            .build()
            .map_err(|e| format!("dispatcher: {e}"))?,
    );
    let workers = dispatcher.start_workers();
    let composer = config.composer_for(config.language);
    let room = mesh_notify_core::Room::new("1", "load");
    let setup = setup_start.elapsed();

    let n = sizes.messages;
    let absent = sizes.absent;
    let requests_before = gotify.requests();
    let run_start = Instant::now();
    let mut tick = tokio::time::interval(sizes.pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batches = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let text = format!("load message {i}: the quick brown fox jumps over the lazy dog");
        let batch: Vec<_> = (0..absent)
            .map(|a| {
                let recipient =
                    mesh_notify_core::Recipient::new((a + 2).to_string(), format!("absent{a}"));
                composer.chat("sender", &room, recipient, &text)
            })
            .collect();
        let d = std::sync::Arc::clone(&dispatcher);
        // Like a chat message: the batch is queued as one unit, and the next
        // message does not wait for it.
        batches.push(tokio::spawn(async move {
            let queued =
                futures_util::future::join_all(batch.into_iter().map(|x| d.submit(x))).await;
            queued
                .into_iter()
                .find_map(Result::err)
                .map_or(Ok(()), |e| Err(format!("submit: {e}")))
        }));
    }
    for b in batches {
        b.await.map_err(|e| format!("submit task: {e}"))??;
    }
    let run = run_start.elapsed();
    let gotify_requests = gotify.requests().saturating_sub(requests_before);
    let outbox_pending_after = match dispatcher.outbox() {
        Some(o) => o.stats().await.map(|s| s.pending).unwrap_or(0),
        None => 0,
    };
    workers.shutdown().await;
    Ok(CaseResult {
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        samples: 0,
        queued: n * absent,
        gotify_requests,
        outbox_pending_after,
        setup,
        run,
    })
}

async fn chat_measure(
    sizes: &Sizes,
    absent: usize,
    server: &ServerHandle,
    gotify: &FakeGotify,
    setup_start: Instant,
) -> BenchResult<CaseResult> {
    chat_measure_on(sizes, absent, &[server], gotify, setup_start).await
}

/// [`chat_measure`] with the sender on the first server and the present members'
/// WebSockets spread over `servers` in turn (several instances).
async fn chat_measure_on(
    sizes: &Sizes,
    absent: usize,
    servers: &[&ServerHandle],
    gotify: &FakeGotify,
    setup_start: Instant,
) -> BenchResult<CaseResult> {
    let server = *servers.first().ok_or("no server")?;
    let api = Api::new(server.addr())?;
    let mut present_names = vec!["sender".to_string()];
    present_names.extend((0..sizes.present).map(|i| format!("present{i}")));
    let absent_names: Vec<String> = (0..absent).map(|i| format!("absent{i}")).collect();
    register_all(&api, &present_names).await?;
    register_all(&api, &absent_names).await?;
    let mut users = Vec::new();
    for n in &present_names {
        users.push(api.login(n).await?);
    }
    // Absent members log in once to accept their invitation, and never connect.
    let absent_users: Vec<BenchResult<User>> = futures_util::stream::iter(absent_names.iter())
        .map(|n| api.login(n))
        .buffered(8)
        .collect()
        .await;
    let absent_users = absent_users
        .into_iter()
        .collect::<BenchResult<Vec<User>>>()?;
    let sender = users.first().ok_or("no sender")?;
    let room = api.create_room(sender, "load").await?;
    let members: Vec<(&String, &User)> = present_names
        .iter()
        .zip(&users)
        .skip(1)
        .chain(absent_names.iter().zip(&absent_users))
        .collect();
    let invites: Vec<BenchResult<()>> = futures_util::stream::iter(members)
        .map(|(n, u)| api.invite(sender, room, n, u))
        .buffer_unordered(8)
        .collect()
        .await;
    invites.into_iter().collect::<BenchResult<()>>()?;

    let url = format!("ws://{}/ws", server.addr());
    let n = sizes.messages;
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("ws://{}/ws", s.addr()))
        .collect();
    let deadline = tokio::time::Instant::now()
        + sizes.pace * u32::try_from(n).unwrap_or(u32::MAX)
        + Duration::from_secs(60);
    let mut readers = Vec::new();
    for (i, u) in users.iter().skip(1).enumerate() {
        // Member i on server (i + 1) mod N: with 2 instances, half the members
        // are on the sender's instance and half on the other.
        let member_url = &urls[(i + 1) % urls.len()];
        let mut ws = ws_connect(member_url, Some(&u.token)).await?;
        ws_round_trip(&mut ws, join_frame(room), is_join_ack).await?;
        let (_sink, stream) = ws.split();
        readers.push(tokio::spawn(member_reader(stream, n, deadline)));
    }
    let mut ws = ws_connect(&url, Some(&sender.token)).await?;
    ws_round_trip(&mut ws, join_frame(room), is_join_ack).await?;
    let (mut sink, stream) = ws.split();
    let acks = tokio::spawn(sender_reader(stream, n, deadline));
    let requests_before = gotify.requests();
    let setup = setup_start.elapsed();

    let mut sent = Vec::with_capacity(n);
    let run_start = Instant::now();
    let mut tick = tokio::time::interval(sizes.pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..n {
        tick.tick().await;
        let frame = json!({
            "type": "chat.message.send", "room_id": room,
            "text": format!("load message {i}: the quick brown fox jumps over the lazy dog"),
            "client_id": format!("m{i}"),
        })
        .to_string();
        sent.push(Instant::now());
        sink.send(Message::text(frame))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let (ok, first_error) = acks.await.map_err(|e| format!("sender reader: {e}"))?;
    if let Some(e) = first_error {
        return Err(format!("sender got an error event: {e}"));
    }
    if ok != n {
        return Err(format!("sender got {ok} acks for {n} messages"));
    }
    let run = run_start.elapsed();
    let mut lat = Vec::new();
    for r in readers {
        let got = r.await.map_err(|e| format!("member reader: {e}"))??;
        for (i, at) in got.into_iter().enumerate().skip(sizes.warmup) {
            let at = at.ok_or_else(|| format!("message {i} never reached a present member"))?;
            lat.push(at.saturating_duration_since(sent[i]).as_secs_f64() * 1000.0);
        }
    }
    let gotify_requests = gotify.requests().saturating_sub(requests_before);
    // Still to deliver: the members not yet fanned out, then the outbox.
    // Several instances share one database: its backlog, counted once.
    let fanout_backlog = server.fanout_backlog().await.unwrap_or(0);
    let outbox_pending_after = fanout_backlog
        + match server.dispatcher().outbox() {
            Some(o) => o.stats().await.map(|s| s.pending).unwrap_or(0),
            None => 0,
        };
    let _ = sink.close().await;
    lat.sort_by(f64::total_cmp);
    Ok(CaseResult {
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        samples: lat.len(),
        queued: n * absent,
        gotify_requests,
        outbox_pending_after,
        setup,
        run,
    })
}

/// Records when each `chat.message` (by client id `m{i}`) arrives.
async fn member_reader(
    mut stream: SplitStream<Ws>,
    n: usize,
    deadline: tokio::time::Instant,
) -> BenchResult<Vec<Option<Instant>>> {
    let mut got = vec![None; n];
    let mut count = 0;
    while count < n {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(format!(
                    "member got {count} of {n} messages before the deadline"
                ))
            }
            Ok(None) => return Err("member connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("member read: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(t) = msg else { continue };
        let at = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        if v["type"] != "chat.message" {
            continue;
        }
        let idx = v["message"]["client_id"]
            .as_str()
            .and_then(|c| c.strip_prefix('m'))
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(i) = idx.filter(|i| *i < n) {
            if got[i].is_none() {
                got[i] = Some(at);
                count += 1;
            }
        }
    }
    Ok(got)
}

/// Drains the sender's socket; counts chat acks, keeps the first error event.
async fn sender_reader(
    mut stream: SplitStream<Ws>,
    n: usize,
    deadline: tokio::time::Instant,
) -> (usize, Option<String>) {
    let mut ok = 0;
    while ok < n {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        if v["type"] == "error" {
            return (ok, Some(v.to_string()));
        }
        if v["type"] == "ack" && v["for"] == "chat.message.send" {
            ok += 1;
        }
    }
    (ok, None)
}

// ---------------------------------------------------------------- instances

/// An environment variable naming a server this scenario needs.
fn service_url(vars: &[&str]) -> Option<String> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
}

/// A new database on the PostgreSQL server at `admin`: its URL.
async fn fresh_database(admin: &str) -> BenchResult<String> {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("postgres {admin}: {e}"))?;
    tokio::spawn(conn);
    let name = format!(
        "mesh_bench_{}",
        mesh_notify::core::NotificationId::new()
            .to_string()
            .replace('-', "")
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| format!("create database: {e}"))?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or("the PostgreSQL URL names no database")?;
    Ok(format!("{base}/{name}"))
}

/// The chat case (healthy Gotify, absent members) with `n` instances on one
/// PostgreSQL database and one Redis.
async fn instances_case(
    sizes: &Sizes,
    n: usize,
    admin: &str,
    redis: &str,
) -> BenchResult<CaseResult> {
    let setup_start = Instant::now();
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .map_err(|e| format!("fake gotify: {e}"))?;
    let database = fresh_database(admin).await?;
    let prefix = format!("bench-{}", mesh_notify::core::NotificationId::new());
    let extra = format!(
        "[server]\ndatabase = \"postgres\"\ndatabase_url = \"{database}\"\n\
         [outbox]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n"
    );
    let mut dirs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let fig = bench_figment(&gotify.url(), dir.path(), sizes.hung_timeout)
            .merge(Toml::string(&extra));
        servers.push(start_server(&fig).await?);
        dirs.push(dir);
    }
    let refs: Vec<&ServerHandle> = servers.iter().collect();
    let result = chat_measure_on(sizes, sizes.absent, &refs, &gotify, setup_start).await;
    let mut stopped = Ok(());
    for s in servers {
        let r = stop_server(s, sizes.hung_timeout * 2 + Duration::from_secs(10)).await;
        if stopped.is_ok() {
            stopped = r;
        }
    }
    let r = result?;
    stopped?;
    Ok(r)
}

async fn instances_scenario(sizes: &Sizes) -> BenchResult<(Vec<Row>, Vec<String>)> {
    let admin = service_url(&["MESH_BENCH_POSTGRES_URL", "MESH_TEST_POSTGRES_URL"]);
    let redis = service_url(&["REDIS_URL"]);
    let (Some(admin), Some(redis)) = (admin, redis) else {
        return Ok((
            vec![Row {
                figure: "chat on PostgreSQL + Redis, 1 and 2 instances".into(),
                value: f64::NAN,
                unit: "",
                ratio: None,
                target: "skipped (MESH_BENCH_POSTGRES_URL or REDIS_URL not set)".into(),
                pass: None,
            }],
            vec!["instances: skipped: set MESH_BENCH_POSTGRES_URL (a PostgreSQL server where databases may be created) and REDIS_URL".into()],
        ));
    };
    let mut by_n: [Vec<CaseResult>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..sizes.reps {
        for n in [1, 2] {
            let r = instances_case(sizes, n, &admin, &redis)
                .await
                .map_err(|e| format!("{n} instance(s), repetition {}: {e}", rep + 1))?;
            eprintln!(
                "  {n} instance(s) rep {}: p50 {:.2} ms, p99 {:.2} ms, {:.0} deliveries/s ({} Gotify requests)",
                rep + 1,
                r.p50_ms,
                r.p99_ms,
                r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9),
                r.gotify_requests
            );
            by_n[n - 1].push(r);
        }
    }
    let med = |v: &[CaseResult], f: fn(&CaseResult) -> f64| median(v.iter().map(f).collect());
    let rate = |r: &CaseResult| r.gotify_requests as f64 / r.run.as_secs_f64().max(1e-9);
    let ab = sizes.absent;
    let mut rows = Vec::new();
    let one_rate = med(&by_n[0], rate);
    for (i, results) in by_n.iter().enumerate() {
        let n = i + 1;
        rows.push(Row::info(
            format!(
                "instances on PostgreSQL + Redis: chat broadcast p50, {n} instance(s), {ab} absent"
            ),
            med(results, |r| r.p50_ms),
            "ms",
        ));
        rows.push(Row::info(
            format!(
                "instances on PostgreSQL + Redis: chat broadcast p99, {n} instance(s), {ab} absent"
            ),
            med(results, |r| r.p99_ms),
            "ms",
        ));
        let d = med(results, rate);
        rows.push(Row {
            figure: format!("instances on PostgreSQL + Redis: deliveries/s, {n} instance(s)"),
            value: d,
            unit: "/s",
            ratio: (n > 1).then(|| d / one_rate.max(1e-9)),
            target: if n > 1 {
                "ratio vs 1 instance (info)".into()
            } else {
                String::new()
            },
            pass: None,
        });
    }
    let pend: Vec<String> = by_n
        .iter()
        .flatten()
        .map(|r| r.outbox_pending_after.to_string())
        .collect();
    let notes = vec![format!(
        "instances: the chat case with Gotify healthy ({ab} absent members, {} present, {} messages {} ms apart), on one PostgreSQL database (a fresh one per repetition) and one Redis (outbox, presence, events) shared by 1 or 2 in-process mesh-server instances; the sender on instance 1, present members alternating between the instances, so with 2 every message crosses Redis pub/sub to half of them; all on this machine's 2 cores with PostgreSQL, Redis and the fake Gotify: a measure of the cost of sharing, not of scaling (the scale-out of delivery alone is the mesh-notify bench's `scale`). {} repetitions interleaved, medians; still to deliver at the end: [{}]",
        sizes.present,
        sizes.messages,
        sizes.pace.as_millis(),
        sizes.reps,
        pend.join(", ")
    )];
    Ok((rows, notes))
}
