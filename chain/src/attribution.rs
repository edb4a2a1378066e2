//! Where a node or a watcher finds the attribution data behind receipts.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::B256;
use attrinet_market::{self as market, PayoutError, Receipt, Weights};

use crate::error::Result;

/// Where a node or a watcher finds the attribution data behind receipts: the weights a
/// receipt's `attributionRoot` commits to (content-addressed by that root), and, for
/// recomputing weights against a datanet, the outputs (by `responseHash`). A node keeps
/// what it computed; a watcher gets them with the batch.
pub trait AttributionSource: Send + Sync {
    /// The weights whose root is `root`, if known.
    fn weights(&self, root: &B256) -> Result<Option<Weights>>;

    /// The output tokens whose hash is `response_hash`, if known.
    fn output(&self, response_hash: &B256) -> Result<Option<Vec<u32>>> {
        let _ = response_hash;
        Ok(None)
    }
}

impl std::fmt::Debug for dyn AttributionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttributionSource")
    }
}

/// Attribution data in memory (tests; a node's cache).
#[derive(Debug, Default)]
pub struct MemAttribution {
    weights: Mutex<HashMap<B256, Weights>>,
    outputs: Mutex<HashMap<B256, Vec<u32>>>,
}

impl MemAttribution {
    /// Keeps `weights` under their root, which it returns.
    pub fn insert_weights(&self, weights: Weights) -> B256 {
        let root = weights.root();
        self.weights.lock().unwrap_or_else(|p| p.into_inner()).insert(root, weights);
        root
    }

    /// Keeps an output under its response hash, which it returns.
    pub fn insert_output(&self, tokens: Vec<u32>) -> B256 {
        let hash = market::response_hash(&tokens);
        self.outputs.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, tokens);
        hash
    }
}

impl AttributionSource for MemAttribution {
    fn weights(&self, root: &B256) -> Result<Option<Weights>> {
        Ok(self.weights.lock().unwrap_or_else(|p| p.into_inner()).get(root).cloned())
    }

    fn output(&self, response_hash: &B256) -> Result<Option<Vec<u32>>> {
        Ok(self.outputs.lock().unwrap_or_else(|p| p.into_inner()).get(response_hash).cloned())
    }
}

/// The weights of each receipt from `source` (none for a zero root); an error names the
/// first receipt whose weights it lacks.
pub fn weights_of(receipts: &[Receipt], source: &dyn AttributionSource) -> Result<Vec<Weights>> {
    receipts
        .iter()
        .map(|r| {
            if r.attribution_root == B256::ZERO {
                return Ok(Weights::none());
            }
            source.weights(&r.attribution_root)?.ok_or(PayoutError::WeightsMismatch { seq: r.seq }.into())
        })
        .collect()
}
