//! The contracts' alloy bindings, generated from the committed artifacts, and conversions
//! from attrinet-market's types to the contracts' ABI types.

// The generated methods take one argument per Solidity parameter; the dispute functions
// have more than clippy likes, and their shape is the contract's.
#![allow(clippy::too_many_arguments)]

use alloy::primitives::B256;
use attrinet_market as market;

alloy::sol!(
    /// Nodes, models and bonds (chain/contracts/Registry.sol).
    #[sol(rpc, all_derives)]
    Registry,
    "artifacts/Registry.json"
);

alloy::sol!(
    /// Channels, settlement and fraud proofs (chain/contracts/Channels.sol).
    #[sol(rpc, all_derives)]
    Channels,
    "artifacts/Channels.json"
);

/// DataDisputes in a module of its own: its ABI names Channels' structs, and the types
/// alloy generates for them would clash with those of the `Channels` binding above.
pub(crate) mod data_disputes {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        /// Disputes of data entries and attribution weights
        /// (chain/contracts/DataDisputes.sol), deployed by Channels' constructor.
        #[sol(rpc, all_derives)]
        DataDisputes,
        "artifacts/DataDisputes.json"
    );
}

/// The receipt as `Channels` takes it in disputes (same fields as its EIP-712 struct).
pub(crate) fn receipt_abi(r: &market::Receipt) -> Channels::Receipt {
    let e = r.to_eip712();
    Channels::Receipt {
        channel: e.channel,
        seq: e.seq,
        payer: e.payer,
        provider: e.provider,
        payerKey: e.payerKey,
        providerKey: e.providerKey,
        model: e.model,
        requestHash: e.requestHash,
        responseHash: e.responseHash,
        inputTokens: e.inputTokens,
        outputTokens: e.outputTokens,
        priceIn: e.priceIn,
        priceOut: e.priceOut,
        value: e.value,
        cumulative: e.cumulative,
        attributionRoot: e.attributionRoot,
        timestamp: e.timestamp,
    }
}

/// The voucher as `Channels.settle` takes it.
pub(crate) fn voucher_abi(v: &market::Voucher) -> Channels::Voucher {
    Channels::Voucher { channel: v.channel.0, seq: v.seq.0, cumulative: v.cumulative.0, receiptsRoot: v.receipts_root }
}

pub(crate) fn sum_node_abi(n: &market::SumNode) -> Channels::SumNode {
    Channels::SumNode { hash: n.hash, sum: n.sum.0 }
}

/// A leaf given by its preimage, as `disputeRunSum` and `disputeSum` take it: the hash
/// field carries the receipt digest, the sum field its value.
pub(crate) fn leaf_abi(digest: B256, value: market::Wei) -> Channels::SumNode {
    Channels::SumNode { hash: digest, sum: value.0 }
}

/// Conversions to the ABI types of the `DataDisputes` binding (its own copies of Channels'
/// structs).
pub(crate) mod dd {
    use attrinet_market as market;

    use super::data_disputes::Channels as C;
    use crate::batch::PayoutRun;
    use crate::data::WeightLeaf;

    pub(crate) fn payouts(runs: &[PayoutRun]) -> Vec<C::Payout> {
        runs.iter()
            .map(|r| {
                let p = r.abi();
                C::Payout {
                    model: p.model,
                    leaves: p.leaves,
                    node: p.node,
                    owner: p.owner,
                    data: p.data,
                    protocol: p.protocol,
                    dataRoot: p.dataRoot,
                    dataEntries: p.dataEntries,
                    distributed: p.distributed,
                }
            })
            .collect()
    }

    pub(crate) fn receipt(r: &market::Receipt) -> C::Receipt {
        let e = super::receipt_abi(r);
        C::Receipt {
            channel: e.channel,
            seq: e.seq,
            payer: e.payer,
            provider: e.provider,
            payerKey: e.payerKey,
            providerKey: e.providerKey,
            model: e.model,
            requestHash: e.requestHash,
            responseHash: e.responseHash,
            inputTokens: e.inputTokens,
            outputTokens: e.outputTokens,
            priceIn: e.priceIn,
            priceOut: e.priceOut,
            value: e.value,
            cumulative: e.cumulative,
            attributionRoot: e.attributionRoot,
            timestamp: e.timestamp,
        }
    }

    pub(crate) fn node(n: &market::SumNode) -> C::SumNode {
        C::SumNode { hash: n.hash, sum: n.sum.0 }
    }

    pub(crate) fn proof(p: &market::SumProof) -> C::Proof {
        C::Proof { index: p.index, count: p.leaf_count, siblings: p.siblings.iter().map(node).collect() }
    }

    pub(crate) fn entry(e: &market::DataEntry) -> C::DataEntry {
        C::DataEntry { contributor: e.contributor, leaf: e.leaf, weightIndex: e.weight_index, amount: e.amount.0 }
    }

    pub(crate) fn weight(w: &WeightLeaf) -> C::Weight {
        C::Weight { contributor: w.contributor, ppm: w.ppm, count: w.count }
    }

    pub(crate) fn plain_proof(p: &market::MerkleProof) -> C::PlainProof {
        C::PlainProof { index: p.index, count: p.leaf_count, siblings: p.siblings.clone() }
    }

    /// An absent neighbour in `disputeDataMissing`: ignored by the contract, but it must decode.
    pub(crate) fn no_entry() -> (C::DataEntry, C::Proof) {
        (
            C::DataEntry { contributor: Default::default(), leaf: 0, weightIndex: 0, amount: 0 },
            C::Proof { index: 0, count: 0, siblings: Vec::new() },
        )
    }
}

/// The data entry and path types as `Channels.claimData` takes them.
pub(crate) fn entry_abi(e: &market::DataEntry) -> Channels::DataEntry {
    Channels::DataEntry { contributor: e.contributor, leaf: e.leaf, weightIndex: e.weight_index, amount: e.amount.0 }
}
