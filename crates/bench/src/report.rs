//! The results table (markdown and JSON), the machine description, and small
//! measurement helpers (percentiles, medians, RSS from `/proc/self/status`).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Meets the target.
    Pass,
    /// Misses the target.
    Short,
    /// No target: for information.
    Info,
    /// Not measured (the reason is in the value).
    Skipped,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Short => "short",
            Verdict::Info => "info",
            Verdict::Skipped => "skipped",
        }
    }

    /// `Pass` when `ok`, else `Short`.
    pub fn from_ok(ok: bool) -> Self {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Short
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario it belongs to (`dispatch`, `failover`, `outbox`, `memory`).
    pub scenario: &'static str,
    /// What is measured.
    pub figure: String,
    /// Human-readable value.
    pub value: String,
    /// The headline number, for tools.
    pub number: Option<f64>,
    /// Its unit (`notifications/s`, `us`, `MB`, ...).
    pub unit: &'static str,
    /// Ratio to the reference figure, when the target is a ratio.
    pub ratio: Option<f64>,
    /// The target, in words.
    pub target: String,
    /// Pass / short / info / skipped.
    pub verdict: Verdict,
}

impl Row {
    /// An informational row.
    pub fn info(
        scenario: &'static str,
        figure: impl Into<String>,
        value: String,
        number: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            scenario,
            figure: figure.into(),
            value,
            number: Some(number),
            unit,
            ratio: None,
            target: "—".into(),
            verdict: Verdict::Info,
        }
    }

    /// Sets the target and verdict.
    pub fn target(mut self, target: impl Into<String>, ok: bool) -> Self {
        self.target = target.into();
        self.verdict = Verdict::from_ok(ok);
        self
    }

    /// Sets the ratio.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    /// A row that could not be measured.
    pub fn skipped(
        scenario: &'static str,
        figure: impl Into<String>,
        why: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            scenario,
            figure: figure.into(),
            value: why.into(),
            number: None,
            unit: "",
            ratio: None,
            target: target.into(),
            verdict: Verdict::Skipped,
        }
    }
}

/// Where and when the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    /// `MemTotal` from `/proc/meminfo`, in MiB.
    pub memory_mib: Option<u64>,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// 1-minute load average when the run started (other processes' load).
    pub load_at_start: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_at_end: Option<f64>,
}

impl Machine {
    /// Reads the machine description now (load at end is filled in later).
    pub fn probe() -> Self {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| kb_field(&s, "MemTotal:"))
            .map(|kb| kb / 1024);
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            cpu,
            kernel,
            load_at_start: load_average(),
            load_at_end: None,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{} cores", self.cores);
        if let Some(m) = self.memory_mib {
            let _ = write!(s, ", {:.1} GiB RAM", m as f64 / 1024.0);
        }
        if let Some(c) = &self.cpu {
            let _ = write!(s, ", {c}");
        }
        if let Some(k) = &self.kernel {
            let _ = write!(s, ", Linux {k}");
        }
        match (self.load_at_start, self.load_at_end) {
            (Some(a), Some(b)) => {
                let _ = write!(s, "; load average {a:.2} at start, {b:.2} at end");
            }
            (Some(a), None) => {
                let _ = write!(s, "; load average {a:.2} at start");
            }
            _ => {}
        }
        s
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    kb_field(&text, &format!("{key}:"))
}

/// Resets the peak RSS (`VmHWM`) to the current RSS; `false` when the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RFC 1123 date of the run.
    pub date: String,
    /// Whether `--quick` sizes were used (figures are then not meaningful).
    pub quick: bool,
    /// Scenarios run.
    pub scenarios: Vec<String>,
    /// Machine.
    pub machine: Machine,
    /// Settings that shape the figures.
    pub notes: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

impl Report {
    /// A report dated now.
    pub fn new(quick: bool, scenarios: Vec<String>) -> Self {
        Self {
            date: httpdate::fmt_http_date(SystemTime::now()),
            quick,
            scenarios,
            machine: Machine::probe(),
            notes: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// The markdown output.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "mesh-notify benchmark, {}", self.date);
        let _ = writeln!(out, "Machine: {}", self.machine.describe());
        if self.quick {
            let _ = writeln!(
                out,
                "QUICK RUN (tiny sizes, smoke test only: figures are not meaningful)"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| figure | value | ratio | target | result |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r
                .ratio
                .map_or_else(|| "—".to_string(), |x| format!("{x:.2}×"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.figure,
                r.value,
                ratio,
                r.target,
                r.verdict.as_str()
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// Latency distribution of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean.
    pub mean: Duration,
}

/// Percentiles of `samples` (nanoseconds); sorts in place.
pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        Duration::from_nanos(samples[i])
    };
    let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        mean: Duration::from_nanos(u64::try_from(sum / samples.len() as u128).unwrap_or(u64::MAX)),
    }
}

/// Median of `xs` (0 when empty).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Median of durations.
pub fn median_duration(xs: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(
        &xs.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

/// `12,345` style.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `123 µs` / `1.23 ms` / `1.23 s`.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_sample() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50, Duration::from_nanos(50));
        assert_eq!(p.p99, Duration::from_nanos(99));
        assert_eq!(p.mean, Duration::from_nanos(50));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn status_fields_parse() {
        assert_eq!(
            kb_field("VmHWM:\t  1234 kB\nVmRSS:\t 99 kB\n", "VmRSS:"),
            Some(99)
        );
        assert!(status_kib("VmRSS").is_some_and(|k| k > 0));
    }
}
