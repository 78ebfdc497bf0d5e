//! Latency histograms and the report every scenario produces.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::procstat::Memory;

/// A latency histogram in nanoseconds (3 significant digits).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // 3 significant digits, growing as needed: cannot fail.
        Self(Histogram::new(3).unwrap_or_else(|_| unreachable!("valid precision")))
    }
}

impl Latency {
    pub fn record_ns(&mut self, ns: u64) {
        let _ = self.0.record(ns.max(1));
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            count: self.0.len(),
            mean_us: self.0.mean() / 1000.0,
            p50_us: us(self.0.value_at_quantile(0.5)),
            p90_us: us(self.0.value_at_quantile(0.9)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
        })
    }
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// What the receivers checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Every message sent was received by every recipient, once, in order.
    pub ok: bool,
    /// Messages that count as sent (acknowledged where the target acks).
    pub sent: u64,
    /// Deliveries expected by the end (sent × recipients).
    pub expected_deliveries: u64,
    /// Deliveries received (to recipients other than the sender).
    pub deliveries: u64,
    /// Expected deliveries that never arrived.
    pub missing: u64,
    /// Messages received twice.
    pub duplicates: u64,
    /// Messages received before an earlier one of the same sender, or
    /// chat/1 seqs that skipped or went back.
    pub out_of_order: u64,
    /// Messages whose payload was not ours.
    pub unknown: u64,
}

/// Server-side readings over the measured interval (a started server only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    pub cpu_seconds: f64,
    /// Server CPU time per delivered message, microseconds.
    pub cpu_us_per_delivery: Option<f64>,
    /// Deliveries per second of server CPU.
    pub deliveries_per_cpu_second: Option<f64>,
    pub memory_before: Option<MemoryJson>,
    pub memory_after: Option<MemoryJson>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MemoryJson {
    pub rss: u64,
    pub private: u64,
}

impl From<Memory> for MemoryJson {
    fn from(m: Memory) -> Self {
        Self {
            rss: m.rss,
            private: m.private,
        }
    }
}

/// Reports written before loadgen had other transports were over TCP.
fn tcp() -> String {
    "tcp".into()
}

/// The JSON report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// How loadgen reached the target (`tcp`, `tls`, `quic`, `ws`, `wss`).
    #[serde(default = "tcp")]
    pub transport: String,
    pub label: String,
    /// The loadgen arguments.
    pub args: Vec<String>,
    /// How the server was started.
    pub server_command: Option<String>,
    pub payload_bytes: usize,
    /// Requested total rate (0 = as fast as the window allows).
    pub rate: f64,
    pub window: usize,
    pub measured_seconds: f64,
    pub users: usize,
    /// Recipients per message (other than the sender).
    pub fanout: usize,
    /// Messages sent during the measured interval, per second.
    pub sent_per_second: f64,
    /// Deliveries during the measured interval, per second.
    pub deliveries_per_second: f64,
    pub send_to_ack: Option<LatencySummary>,
    pub send_to_deliver: Option<LatencySummary>,
    /// Send to the last recipient (groups and channels).
    pub send_to_last: Option<LatencySummary>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub verification: Verification,
    pub server: Option<ServerUsage>,
    /// Scenario-specific figures (connections, sync).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// The human summary.
    pub fn print(&self) {
        println!(
            "\n== {} / {} over {} ({}) ==",
            self.scenario, self.target, self.transport, self.label
        );
        println!(
            "users {}  recipients/msg {}  payload {} B  rate {}  window {}  measured {:.1} s",
            self.users,
            self.fanout,
            self.payload_bytes,
            if self.rate > 0.0 {
                format!("{}/s", self.rate)
            } else {
                "max".into()
            },
            self.window,
            self.measured_seconds
        );
        if self.sent_per_second > 0.0 {
            println!(
                "throughput: {:.0} msg/s sent, {:.0} deliveries/s",
                self.sent_per_second, self.deliveries_per_second
            );
        }
        for (name, l) in [
            ("send->ack", &self.send_to_ack),
            ("send->deliver", &self.send_to_deliver),
            ("send->last", &self.send_to_last),
        ] {
            if let Some(l) = l {
                println!(
                    "{name:>14}: p50 {:>9.1} us  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  (n={})",
                    l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
                );
            }
        }
        let v = &self.verification;
        println!(
            "verification: {}  sent {}  deliveries {}/{}  missing {}  duplicates {}  out of order {}  unknown {}",
            if v.ok { "OK" } else { "FAILED" },
            v.sent,
            v.deliveries,
            v.expected_deliveries,
            v.missing,
            v.duplicates,
            v.out_of_order,
            v.unknown
        );
        println!("errors: {}", self.errors);
        for e in &self.error_samples {
            println!("  {e}");
        }
        if let Some(s) = &self.server {
            print!("server: {:.2} s CPU", s.cpu_seconds);
            if let Some(c) = s.cpu_us_per_delivery {
                print!(", {c:.2} us CPU per delivery");
            }
            if let Some(d) = s.deliveries_per_cpu_second {
                print!(", {d:.0} deliveries per CPU second");
            }
            println!();
            if let (Some(b), Some(a)) = (s.memory_before, s.memory_after) {
                println!(
                    "server memory: rss {} -> {} KiB, private {} -> {} KiB",
                    b.rss / 1024,
                    a.rss / 1024,
                    b.private / 1024,
                    a.private / 1024
                );
            }
        }
        for (k, v) in &self.extra {
            println!("{k}: {v}");
        }
    }
}
