//! Counters exported at `GET /metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use attrinet_market::Wei;

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
    /// Wei paid through receipts: a u128 like every amount (19 ETH would wrap a u64), kept
    /// behind a lock because there is no 128-bit atomic on every target. Saturates.
    paid_wei: Mutex<u128>,
    /// Connected peers, as last sampled.
    pub peers: AtomicU64,
    /// Models loaded into an engine (a node serving several loads them on demand).
    pub model_loads: AtomicU64,
    /// Models evicted to make room for another under the memory budget.
    pub model_evictions: AtomicU64,
    /// Streaming gateway clients cut off for leaving an event unread too long.
    pub streams_cut: AtomicU64,
}

impl Metrics {
    /// Counts `value` as paid through a co-signed receipt.
    pub fn add_paid(&self, value: Wei) {
        let mut paid = self.paid_wei.lock().unwrap_or_else(|p| p.into_inner());
        *paid = paid.saturating_add(value.0);
    }

    /// Wei paid through receipts so far.
    pub fn paid(&self) -> Wei {
        Wei(*self.paid_wei.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 8] = [
            ("attrinet_requests_total", "counter", "Inference requests received.", &self.requests),
            ("attrinet_request_errors_total", "counter", "Inference requests that failed.", &self.request_errors),
            ("attrinet_tokens_total", "counter", "Tokens received from providers.", &self.tokens),
            ("attrinet_receipts_total", "counter", "Co-signed receipts.", &self.receipts),
            ("attrinet_peers", "gauge", "Connected peers.", &self.peers),
            ("attrinet_model_loads_total", "counter", "Models loaded into an engine.", &self.model_loads),
            (
                "attrinet_model_evictions_total",
                "counter",
                "Models evicted under the memory budget.",
                &self.model_evictions,
            ),
            (
                "attrinet_streams_cut_total",
                "counter",
                "Streaming clients cut off for reading too slowly.",
                &self.streams_cut,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
        let paid = self.paid().0;
        let name = "attrinet_paid_wei_total";
        let _ = writeln!(
            out,
            "# HELP {name} Wei committed through co-signed receipts.\n# TYPE {name} counter\n{name} {paid}"
        );
        out
    }
}

/// A provider's figures in Prometheus' text format, read from its store when scraped, so
/// they are always what is persisted: channels served, co-signed receipts, value earned
/// (the channels' cumulative totals) and how much of it is settled on chain.
pub fn provider_metrics(
    store: &dyn attrinet_market::Store,
    me: alloy_primitives::Address,
) -> Result<String, attrinet_market::StoreError> {
    let mine: Vec<_> = store.channels()?.into_iter().filter(|c| c.params.provider == me).collect();
    let receipts: u64 = mine.iter().map(|c| c.last_seq.0).sum();
    let settled_receipts: u64 = mine.iter().map(|c| c.settled_seq.0).sum();
    // u128 sums cannot overflow here: each cumulative is bounded by a deposit in wei.
    let earned: u128 = mine.iter().map(|c| c.cumulative.0).fold(0u128, u128::saturating_add);
    let mut out = String::new();
    let rows: [(&str, &str, &str, String); 4] = [
        ("attrinet_provider_channels", "gauge", "Channels this node serves.", mine.len().to_string()),
        (
            "attrinet_provider_receipts_total",
            "counter",
            "Co-signed receipts stored by this node.",
            receipts.to_string(),
        ),
        (
            "attrinet_provider_settled_receipts_total",
            "counter",
            "Receipts covered by settlements.",
            settled_receipts.to_string(),
        ),
        (
            "attrinet_provider_earned_wei_total",
            "counter",
            "Wei owed to this node's channels by co-signed receipts.",
            earned.to_string(),
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, attack 12: amounts are u128 everywhere; the gateway used to add each
    /// receipt's value to a u64 counter `as u64`, so 2^64 + 5 wei showed as 5.
    #[test]
    fn paid_wei_counts_amounts_past_u64_exactly_and_saturates() {
        let m = Metrics::default();
        m.add_paid(Wei(u128::from(u64::MAX) + 6));
        m.add_paid(Wei(1));
        assert!(m.render().contains("attrinet_paid_wei_total 18446744073709551622\n"), "{}", m.render());
        m.add_paid(Wei(u128::MAX));
        assert_eq!(m.paid(), Wei(u128::MAX));
    }
}
