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
