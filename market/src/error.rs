//! Errors of the market rules that are not specific to one ledger or store.

use crate::types::{Price, Wei};

/// An arithmetic or encoding rule was broken.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum MarketError {
    /// A sum of amounts does not fit in 128 bits; no real channel holds that much.
    #[error("amount overflow: the sum exceeds 2^128 - 1 wei")]
    AmountOverflow,
    /// A subtraction would go below zero.
    #[error("amount underflow: {from} minus {minus} is negative")]
    AmountUnderflow {
        /// The amount subtracted from.
        from: Wei,
        /// The amount subtracted.
        minus: Wei,
    },
    /// Tokens × price does not fit in 128 bits: the price is absurd.
    #[error("price overflow: {input_tokens} input and {output_tokens} output tokens at {price:?} exceed 2^128 wei")]
    PriceOverflow {
        /// The price used.
        price: Price,
        /// Input tokens.
        input_tokens: u32,
        /// Output tokens.
        output_tokens: u32,
    },
    /// The channel's seq would pass `u64::MAX`.
    #[error("seq overflow: the channel has reached the largest seq")]
    SeqOverflow,
    /// Basis points of a split do not add up to 10,000.
    #[error("split basis points sum to {sum}, not 10000")]
    SplitNotWhole {
        /// What they sum to.
        sum: u32,
    },
    /// Bytes could not be decoded as the expected type.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// The type being decoded.
        what: &'static str,
        /// What the decoder said.
        reason: String,
    },
}

/// A signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum VerifyError {
    /// The provider's ed25519 signature over the receipt digest is invalid.
    #[error("provider signature on receipt is invalid")]
    ProviderSignature,
    /// The payer's ed25519 signature over the receipt digest is invalid.
    #[error("payer signature on receipt is invalid")]
    PayerSignature,
    /// A voucher signature is not 65 bytes `r ‖ s ‖ v` with `v` 27 or 28 and a low `s`.
    #[error("voucher signature is malformed: {0}")]
    MalformedVoucherSignature(&'static str),
    /// The voucher signature recovers to a different address than the payer's.
    #[error("voucher signed by {recovered}, expected payer {expected}")]
    WrongVoucherSigner {
        /// Who actually signed.
        recovered: alloy_primitives::Address,
        /// Who should have.
        expected: alloy_primitives::Address,
    },
}
