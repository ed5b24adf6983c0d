//! CPU and latency measurement shared by `sotto-loadgen` and the RabbitMQ
//! driver in `relay/benches/compare` (which includes this file by path), so
//! that both systems are measured by the same code.

use std::time::Duration;

use hdrhistogram::Histogram;

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`
/// (clock ticks of 1/100 s, the Linux x86 default).
pub(crate) fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU used by the measured server and by this process between two points.
#[derive(Clone, Copy)]
pub(crate) struct CpuMark {
    server: Option<f64>,
    own: Option<f64>,
    /// How the report names the server and this process.
    names: (&'static str, &'static str),
}

impl CpuMark {
    pub(crate) fn now(server: Option<u32>, names: (&'static str, &'static str)) -> Self {
        Self {
            server: server.and_then(|p| cpu_secs(&p.to_string())),
            own: cpu_secs("self"),
            names,
        }
    }

    /// `"; CPU: <server> X s (Y us per msg), <own> Z s"` since `self`.
    pub(crate) fn since(&self, server: Option<u32>, msgs: u64) -> String {
        let now = Self::now(server, self.names);
        let mut out = String::new();
        if let (Some(a), Some(b)) = (self.server, now.server) {
            out += &format!(
                "; CPU: {} {:.2} s ({:.1} us per msg)",
                self.names.0,
                b - a,
                (b - a) * 1e6 / msgs.max(1) as f64
            );
        }
        if let (Some(a), Some(b)) = (self.own, now.own) {
            out += &format!(", {} {:.2} s", self.names.1, b - a);
        }
        out
    }
}

/// A latency histogram: 1 us to 60 s, three significant digits.
pub(crate) fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
}

/// A duration in whole microseconds, at least 1 (the histograms' floor).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The `q` quantile of a microsecond histogram, in milliseconds.
pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}
