//! One type per concept: ids, sequence numbers, money and prices.

use std::fmt;

use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

use crate::error::MarketError;

/// Tokens per price unit: prices are quoted per 1,000 tokens.
pub const TOKENS_PER_PRICE_UNIT: u128 = 1_000;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        pub struct $name(pub B256);

        impl $name {
            /// The id's 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0.0
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(B256::from(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

hash_id!(
    /// A model's id: the SHA-256 of its model file, so that the id names exactly the weights
    /// that run.
    ModelId
);
hash_id!(
    /// A payment channel's id, as assigned by the settlement contract.
    ChannelId
);

/// A receipt's position in its channel: 1 for the first receipt, then exactly +1.
/// `Seq(0)` means "no receipt yet".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq before any receipt.
    pub const ZERO: Seq = Seq(0);

    /// The next seq, or an error at `u64::MAX` (a channel that long is closed, not wrapped).
    pub fn next(self) -> Result<Seq, MarketError> {
        self.0.checked_add(1).map(Seq).ok_or(MarketError::SeqOverflow)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An amount of the chain's native currency, in wei. Arithmetic is checked: an overflow is
/// an error, never a wrap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize)]
pub struct Wei(pub u128);

impl Wei {
    /// Nothing.
    pub const ZERO: Wei = Wei(0);

    /// `self + other`, or [`MarketError::AmountOverflow`].
    pub fn checked_add(self, other: Wei) -> Result<Wei, MarketError> {
        self.0.checked_add(other.0).map(Wei).ok_or(MarketError::AmountOverflow)
    }

    /// `self - other`, or [`MarketError::AmountUnderflow`] when `other > self`.
    pub fn checked_sub(self, other: Wei) -> Result<Wei, MarketError> {
        self.0.checked_sub(other.0).map(Wei).ok_or(MarketError::AmountUnderflow { from: self, minus: other })
    }
}

impl fmt::Display for Wei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} wei", self.0)
    }
}

/// A model's price: wei per 1,000 input (prompt) tokens and per 1,000 output tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, Serialize, Deserialize)]
pub struct Price {
    /// Wei per 1,000 prompt tokens.
    pub per_1k_input: Wei,
    /// Wei per 1,000 generated tokens.
    pub per_1k_output: Wei,
}

impl Price {
    /// The value of an inference at this price:
    /// `floor((input × per_1k_input + output × per_1k_output) / 1000)`, computed exactly.
    /// Rounding down favours the payer by less than one wei.
    pub fn value(&self, input_tokens: u32, output_tokens: u32) -> Result<Wei, MarketError> {
        let input = u128::from(input_tokens).checked_mul(self.per_1k_input.0);
        let output = u128::from(output_tokens).checked_mul(self.per_1k_output.0);
        let total = input.zip(output).and_then(|(i, o)| i.checked_add(o)).ok_or(MarketError::PriceOverflow {
            price: *self,
            input_tokens,
            output_tokens,
        })?;
        Ok(Wei(total / TOKENS_PER_PRICE_UNIT))
    }

    /// The value the contracts compute for these tokens: the same floor, in 256 bits, so it
    /// never overflows. A receipt whose `value` is not this is provable fraud
    /// (`disputeValue`); where [`Price::value`] succeeds the two are equal.
    // Each product is below 2^32 × 2^128 and their sum below 2^161: no 256-bit overflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn contract_value(&self, input_tokens: u32, output_tokens: u32) -> alloy_primitives::U256 {
        use alloy_primitives::U256;
        (U256::from(input_tokens) * U256::from(self.per_1k_input.0)
            + U256::from(output_tokens) * U256::from(self.per_1k_output.0))
            / U256::from(TOKENS_PER_PRICE_UNIT)
    }
}

/// The chain and contract a receipt or voucher is bound to (its EIP-712 domain).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, Serialize, Deserialize)]
pub struct Domain {
    /// The L2's chain id.
    pub chain_id: u64,
    /// The settlement (Channels) contract.
    pub verifying_contract: alloy_primitives::Address,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rounds_down_and_is_exact() {
        let p = Price { per_1k_input: Wei(1_500), per_1k_output: Wei(3_001) };
        // 3 × 1500 + 2 × 3001 = 10502 → 10 wei
        assert_eq!(p.value(3, 2).unwrap(), Wei(10));
        assert_eq!(p.value(1000, 0).unwrap(), Wei(1_500));
        assert_eq!(p.value(0, 0).unwrap(), Wei::ZERO);
    }

    #[test]
    fn value_overflow_is_an_error() {
        let p = Price { per_1k_input: Wei(u128::MAX), per_1k_output: Wei(0) };
        assert!(matches!(p.value(2, 0), Err(MarketError::PriceOverflow { .. })));
    }

    #[test]
    fn seq_does_not_wrap() {
        assert_eq!(Seq(1).next().unwrap(), Seq(2));
        assert!(Seq(u64::MAX).next().is_err());
    }
}
