//! Weights paid outside a model's datanet (`DataDisputes.disputeOutsider`).

use std::collections::BTreeMap;
use std::sync::Arc;

use alloy::primitives::B256;
use attrinet_market::{Datanet, MerkleTree, ModelId, SumTree, Wei};

use crate::error::Result;
use crate::types::{Batch, FraudProof, WeightLeaf};

/// What the registry says of a model's datanet, as the outsider check needs it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Registered {
    /// The registered datanet commitment (zero: the model has none).
    pub root: B256,
    /// From when (chain time) receipts are judged by it: when it was last set, plus the
    /// contract's grace.
    pub judged_from: u64,
}

/// Evidence that a weight of `batch` pays an address outside its model's registered
/// datanet: provable from the weights alone when the model has no datanet, and with a copy
/// of the datanet (`datanets`, used only when it is the registered one) otherwise.
/// `registered` holds each model's registry entry (a model missing there is not judged);
/// receipts made before the datanet was last set (plus the grace) are not judged by it.
/// Run on a batch [`super::examine`] found honest, so each leaf hashes its receipt's value.
pub fn outsider(
    batch: &Batch,
    registered: &BTreeMap<ModelId, Registered>,
    datanets: &BTreeMap<ModelId, Arc<Datanet>>,
) -> Result<Option<FraudProof>> {
    let Some(weights) = &batch.weights else { return Ok(None) };
    let tree = match &batch.tree {
        Some(t) => t.clone(),
        None => {
            let leaves: Vec<(B256, Wei)> =
                batch.receipts.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect();
            SumTree::new(&leaves)?
        }
    };
    for (i, (sr, ws)) in batch.receipts.iter().zip(weights).enumerate() {
        let r = &sr.receipt;
        if ws.is_empty() {
            continue;
        }
        let Some(reg) = registered.get(&r.model) else { continue };
        if r.timestamp < reg.judged_from {
            continue;
        }
        let datanet = datanets.get(&r.model).filter(|d| d.root() == reg.root);
        for (j, w) in ws.iter().enumerate() {
            let datanet_proof = if reg.root.is_zero() {
                None
            } else {
                match datanet.and_then(|d| d.outsider_proof(&w.contributor)) {
                    Some(p) => Some(p),
                    None => continue,
                }
            };
            let weight_tree = MerkleTree::new(&ws.iter().map(WeightLeaf::digest).collect::<Vec<_>>());
            let (Some(proof), Some(weight_proof)) = (tree.proof(i), weight_tree.proof(j)) else { continue };
            // The value the leaf hashes: the receipt's, in the honest tree examine accepted.
            return Ok(Some(FraudProof::Outsider {
                receipt: r.clone(),
                leaf_value: r.value,
                proof,
                weight: *w,
                weight_proof,
                datanet: datanet_proof,
            }));
        }
    }
    Ok(None)
}
