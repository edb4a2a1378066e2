//! Counters exported at `GET /metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests the gateway received.
    pub requests: AtomicU64,
    /// Requests that failed.
    pub request_errors: AtomicU64,
    /// Tokens received from providers.
    pub tokens: AtomicU64,
    /// Co-signed receipts.
    pub receipts: AtomicU64,
    /// Wei paid through receipts (low 64 bits suffice for a counter's rate).
    pub paid_wei: AtomicU64,
    /// Connected peers, as last sampled.
    pub peers: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 6] = [
            ("attrinet_requests_total", "counter", "Inference requests received.", &self.requests),
            ("attrinet_request_errors_total", "counter", "Inference requests that failed.", &self.request_errors),
            ("attrinet_tokens_total", "counter", "Tokens received from providers.", &self.tokens),
            ("attrinet_receipts_total", "counter", "Co-signed receipts.", &self.receipts),
            ("attrinet_paid_wei_total", "counter", "Wei committed through co-signed receipts.", &self.paid_wei),
            ("attrinet_peers", "gauge", "Connected peers.", &self.peers),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}
