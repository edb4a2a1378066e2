//! `attrinet earnings`: what an address is owed on chain, read from the contracts.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use attrinet_chain::{ChainClient, Deployment};
use attrinet_market::{ModelId, Wei};

/// An address's earnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earnings {
    /// Credited and not yet withdrawn (node, owner, data pool and protocol shares after
    /// finalisation, and data claims).
    pub withdrawable: Wei,
    /// Data-contributor claims made so far, per model.
    pub claimed_by_model: BTreeMap<ModelId, Wei>,
}

/// Reads `who`'s earnings from the deployment at `endpoint`.
pub async fn earnings(endpoint: &str, deployment: Deployment, who: Address) -> anyhow::Result<Earnings> {
    // Reading needs no key of ours; a fixed throwaway one signs nothing.
    let chain = ChainClient::connect(endpoint, reader().evm, deployment)?;
    Ok(Earnings { withdrawable: chain.credited(who).await?, claimed_by_model: chain.claimed_data_by_model(who).await? })
}

fn reader() -> attrinet_market::Identity {
    attrinet_market::Identity::from_secrets([1; 32], [1; 32]).expect("constant secret is valid")
}

impl Earnings {
    /// As text, one model per line.
    pub fn render(&self, who: Address) -> String {
        let mut s = format!("{who}\n  withdrawable now: {} wei\n", self.withdrawable.0);
        if self.claimed_by_model.is_empty() {
            s += "  data claims: none yet\n";
        }
        for (model, w) in &self.claimed_by_model {
            s += &format!("  data claimed for model {model}: {} wei\n", w.0);
        }
        s
    }
}
