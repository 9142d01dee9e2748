//! # mesh-notify-bench
//!
//! Reproducible figures for mesh-notify, from one command, against a loopback
//! Gotify-compatible sink that this program starts itself:
//!
//! 1. `dispatch`: a plain reqwest keep-alive POST loop vs `Dispatcher::dispatch`
//!    through the Gotify provider, at c=1 and c=64;
//! 2. `failover`: extra latency when the primary refuses connections, answers 503,
//!    or hangs (before and after its circuit breaker opens);
//! 3. `outbox`: SQLite enqueue throughput (durable one-at-a-time and batched), Redis
//!    when available, and draining a 100,000-entry backlog after recovery;
//! 4. `memory`: RSS at rest, with 100,000 queued entries, and under c=64 load.
//!
//! ```text
//! cargo run --release -p mesh-notify-bench -- [all|dispatch|failover|outbox|memory]... [--quick] [--json FILE]
//! ```
//!
//! It prints one markdown table (figure, value, ratio, target, result). `--quick`
//! runs tiny sizes in a few seconds as a CI smoke test: it never judges timings, but
//! exits non-zero when a scenario fails to run. See `docs/benchmarks.md`.

mod affinity;
mod load;
mod report;
mod scenarios;
mod sink;

use std::path::PathBuf;
use std::process::ExitCode;

use report::{status_kib, Report};
use scenarios::{Bench, BenchError, Sizes};
use sink::Sink;

const SCENARIOS: [&str; 6] = ["dispatch", "failover", "outbox", "serve", "scale", "memory"];

/// The order scenarios run in (memory first, see `run`).
const RUN_ORDER: [&str; 6] = ["memory", "dispatch", "failover", "outbox", "serve", "scale"];

const USAGE: &str =
    "usage: mesh-notify-bench [all|dispatch|failover|outbox|serve|scale|memory]... [--quick] [--pin] [--json FILE]

  all        every scenario (the default)
  dispatch   reqwest baseline vs Dispatcher::dispatch, c=1 and c=64
  failover   primary refused / 503 / hung before and after its breaker opens
  outbox     SQLite enqueue (durable, batched), Redis (REDIS_URL), backlog drain
  serve      mesh-notify serve (POST /message, durable) → sink vs raw client, c=64
  scale      1/2/3 instances sharing one Redis outbox, sink latency 20 ms (REDIS_URL)
  memory     RSS at rest, with queued entries, under c=64 load
  --quick    tiny sizes (seconds): a smoke run, figures not meaningful
  --pin      dispatch: sink process on the last core, client on the others
  --json F   also write the report as JSON to F";

#[derive(Debug)]
struct Args {
    scenarios: Vec<&'static str>,
    quick: bool,
    pin: bool,
    json: Option<PathBuf>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut scenarios = Vec::new();
    let mut quick = false;
    let mut pin = false;
    let mut json = None;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => quick = true,
            "--pin" => pin = true,
            "--json" => {
                let f = args.next().ok_or("--json needs a file name")?;
                json = Some(PathBuf::from(f));
            }
            "all" => scenarios.extend(SCENARIOS),
            other => match SCENARIOS.iter().find(|s| **s == other) {
                Some(s) => scenarios.push(*s),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(SCENARIOS);
    }
    // Run in the canonical order, each once.
    let scenarios = SCENARIOS
        .into_iter()
        .filter(|s| scenarios.contains(s))
        .collect();
    Ok(Some(Args {
        scenarios,
        quick,
        pin,
        json,
    }))
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(sink::SERVE_SINK_ARG) {
        return sink::serve_sink_main();
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mesh-notify-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(report) => {
            print!("{}", report.markdown());
            if let Some(path) = &args.json {
                let written = serde_json::to_string_pretty(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|j| std::fs::write(path, j + "\n").map_err(|e| e.to_string()));
                if let Err(e) = written {
                    eprintln!("mesh-notify-bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-notify-bench: benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(name: &str, threads: usize) -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup {
            scenario: "start",
            reason: format!("cannot start the {name} runtime: {e}"),
        })
}

fn run(args: &Args) -> Result<Report, BenchError> {
    let mut report = Report::new(
        args.quick,
        args.scenarios.iter().map(|s| s.to_string()).collect(),
    );
    let cores = report.machine.cores;
    // Client and sink get separate runtimes, each as wide as the machine: they
    // share the cores the way two processes would.
    let sink_rt = runtime("bench-sink", cores)?;
    let client_rt = runtime("bench-client", cores)?;
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let result = client_rt.block_on(async {
        let sink = Sink::start(sink_rt.handle().clone()).await?;
        let mut bench = Bench {
            sizes,
            sink_rt: sink_rt.handle().clone(),
            sink,
            pin: args.pin,
            rss_at_rest_kib: status_kib("VmRSS"),
            notes: Vec::new(),
        };
        // Memory runs first, while the heap is still small (the allocator keeps what
        // later scenarios used); the table lists scenarios in the usual order.
        let mut by_scenario = Vec::new();
        for s in RUN_ORDER.iter().filter(|s| args.scenarios.contains(s)) {
            eprintln!("mesh-notify-bench: running {s}...");
            let r = match *s {
                "dispatch" => scenarios::dispatch(&mut bench).await?,
                "failover" => scenarios::failover(&mut bench).await?,
                "outbox" => scenarios::outbox(&mut bench).await?,
                "serve" => scenarios::serve(&mut bench).await?,
                "scale" => scenarios::scale(&mut bench).await?,
                _ => scenarios::memory(&mut bench).await?,
            };
            by_scenario.push((*s, r));
        }
        let mut rows = Vec::new();
        for s in SCENARIOS {
            if let Some((_, r)) = by_scenario.iter_mut().find(|(name, _)| *name == s) {
                rows.append(r);
            }
        }
        Ok::<_, BenchError>((rows, bench.notes))
    });
    // Hung handlers sleep on the sink runtime: do not wait for them.
    client_rt.shutdown_background();
    sink_rt.shutdown_background();
    let (rows, notes) = result?;
    report.rows = rows;
    report.notes = notes;
    report.notes.push(format!(
        "dispatch: the sink is a separate process. failover, outbox, memory: client and sink run in this one process on separate Tokio runtimes of {cores} threads each, sharing the cores (these scenarios switch the sink's modes and count its deliveries; their figures are ratios against a baseline on the same sink)."
    ));
    report.machine.load_at_end = report::load_average();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_every_scenario_in_order() {
        let a = parse(&["--quick"]).unwrap().unwrap();
        assert_eq!(a.scenarios, SCENARIOS);
        assert!(a.quick);
        let a = parse(&["memory", "dispatch", "memory", "--json", "out.json"])
            .unwrap()
            .unwrap();
        assert_eq!(a.scenarios, ["dispatch", "memory"]);
        assert_eq!(a.json, Some(PathBuf::from("out.json")));
    }

    #[test]
    fn rejects_unknown_arguments() {
        assert!(parse(&["fast"]).unwrap_err().contains("fast"));
        assert!(parse(&["--json"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }
}
