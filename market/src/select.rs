//! Provider selection: rank the offers for a model by price, expected latency, free
//! capacity and the client's own record of each provider.

use std::collections::HashMap;

use alloy_primitives::U256;

use crate::advert::ModelAdvert;
use crate::receipt::PublicKey;
use crate::types::Wei;

/// What a client remembers of a provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ProviderRecord {
    /// Requests completed with a co-signed receipt.
    pub successes: u32,
    /// Requests that failed, timed out or were refused.
    pub failures: u32,
}

/// The client's record of every provider it used.
#[derive(Clone, Debug, Default)]
pub struct ProviderBook {
    records: HashMap<PublicKey, ProviderRecord>,
}

impl ProviderBook {
    /// An empty book.
    pub fn new() -> ProviderBook {
        ProviderBook::default()
    }

    /// Notes a success.
    pub fn success(&mut self, provider: PublicKey) {
        let r = self.records.entry(provider).or_default();
        r.successes = r.successes.saturating_add(1);
    }

    /// Notes a failure.
    pub fn failure(&mut self, provider: PublicKey) {
        let r = self.records.entry(provider).or_default();
        r.failures = r.failures.saturating_add(1);
    }

    /// The record of a provider.
    pub fn record(&self, provider: &PublicKey) -> ProviderRecord {
        self.records.get(provider).copied().unwrap_or_default()
    }
}

/// The request being placed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Demand {
    /// Estimated prompt tokens.
    pub input_tokens: u32,
    /// Most tokens to generate.
    pub max_output_tokens: u32,
    /// Refuse offers whose maximum cost for this request is above this.
    pub max_cost: Option<Wei>,
}

/// Ranks the offers, best first, leaving out providers with no free capacity or above the
/// price cap.
///
/// The score to minimise is `cost × latency / reliability`, all integers:
/// - cost: the request's maximum value at the offered price (wei);
/// - latency: advertised time to first token (plus loading, for a model not loaded) and
///   the tokens at the advertised decode speed (ms);
/// - reliability: `(successes + 1) / (successes + failures + 2)` (Laplace's rule), so an
///   unknown provider counts as 1/2 and one that keeps failing sinks.
///
/// A product rather than a weighted sum: halving the price is worth exactly as much as
/// halving the wait, without picking units for a weight. Ties go to the lower node key so
/// the order is deterministic.
pub fn rank(offers: &[ModelAdvert], demand: &Demand, book: &ProviderBook) -> Vec<ModelAdvert> {
    let mut scored: Vec<(U256, &ModelAdvert)> = offers
        .iter()
        .filter(|a| a.free_capacity > 0)
        .filter_map(|a| {
            let cost = a.price.value(demand.input_tokens, demand.max_output_tokens).ok()?;
            if demand.max_cost.is_some_and(|max| cost > max) {
                return None;
            }
            let tps = u64::from(a.decode_tokens_per_s.max(1));
            // u32 figures in u64: no overflow; tps ≥ 1.
            #[allow(clippy::arithmetic_side_effects)]
            let latency_ms =
                u64::from(a.ttft_ms) + u64::from(a.cold_start_ms) + u64::from(demand.max_output_tokens) * 1000 / tps;
            let r = book.record(&a.node_key);
            let (s, f) = (u64::from(r.successes), u64::from(r.failures));
            // cost × latency × (s + f + 2) / (s + 1); +1 on cost so free offers still rank
            // by latency and reliability.
            // In 256 bits: three factors below 2^129, 2^65 and 2^34; the divisor is ≥ 1. The
            // +1s saturate at their type's top, where an advert's absurd price would land.
            #[allow(clippy::arithmetic_side_effects)]
            let score = U256::from(cost.0.saturating_add(1))
                * U256::from(latency_ms.saturating_add(1))
                * (U256::from(s) + U256::from(f) + U256::from(2u8))
                / (U256::from(s) + U256::from(1u8));
            Some((score, a))
        })
        .collect();
    scored.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.node_key.cmp(&y.1.node_key)));
    scored.into_iter().map(|(_, a)| a.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ModelId, Price};

    fn offer(key: u8, price: u128, ttft: u32, tps: u32, capacity: u32) -> ModelAdvert {
        ModelAdvert {
            node_key: PublicKey([key; 32]),
            evm_address: Default::default(),
            model: ModelId::from([1; 32]),
            model_name: "m".into(),
            price: Price { per_1k_input: Wei(price), per_1k_output: Wei(price) },
            context_length: 2048,
            free_capacity: capacity,
            decode_tokens_per_s: tps,
            ttft_ms: ttft,
            cold_start_ms: 0,
            expires_at: 10,
            seq: 1,
            addrs: vec![],
        }
    }

    const DEMAND: Demand = Demand { input_tokens: 100, max_output_tokens: 100, max_cost: None };

    #[test]
    fn cheaper_and_faster_win_full_and_pricey_are_left_out() {
        let offers = [
            offer(1, 2000, 100, 50, 1),
            offer(2, 1000, 100, 50, 1),
            offer(3, 1000, 100, 100, 1),
            offer(4, 1, 1, 1000, 0),
        ];
        let ranked: Vec<u8> = rank(&offers, &DEMAND, &ProviderBook::new()).iter().map(|a| a.node_key.0[0]).collect();
        assert_eq!(ranked, vec![3, 2, 1]);
        let capped = Demand { max_cost: Some(Wei(300)), ..DEMAND };
        let ranked: Vec<u8> = rank(&offers, &capped, &ProviderBook::new()).iter().map(|a| a.node_key.0[0]).collect();
        assert_eq!(ranked, vec![3, 2]);
    }

    #[test]
    fn failures_sink_a_provider() {
        let offers = [offer(1, 1000, 100, 100, 1), offer(2, 1100, 100, 100, 1)];
        let mut book = ProviderBook::new();
        assert_eq!(rank(&offers, &DEMAND, &book)[0].node_key.0[0], 1);
        book.failure(PublicKey([1; 32]));
        book.success(PublicKey([2; 32]));
        assert_eq!(rank(&offers, &DEMAND, &book)[0].node_key.0[0], 2);
    }
}
