//! Payout splits: how one value is shared between the node, the model owner, the data
//! contributors and the protocol.

use serde::{Deserialize, Serialize};

use crate::error::MarketError;
use crate::types::Wei;

/// Basis points in a whole.
pub const BPS_WHOLE: u16 = 10_000;

/// A model's registered split, in basis points. Construct with [`Split::new`], which checks
/// that the parts make a whole.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct Split {
    node: u16,
    owner: u16,
    data: u16,
    protocol: u16,
}

/// A value split into its four shares; they always sum to the value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Payout {
    /// The node that served (compute).
    pub node: Wei,
    /// The model's owner (royalty).
    pub owner: Wei,
    /// The data contributors, shared by attribution weights.
    pub data: Wei,
    /// The protocol.
    pub protocol: Wei,
}

impl Payout {
    /// Sum of the four shares.
    pub fn total(&self) -> Result<Wei, MarketError> {
        self.node.checked_add(self.owner)?.checked_add(self.data)?.checked_add(self.protocol)
    }

    /// Share-wise sum, for totals over a batch.
    pub fn checked_add(&self, other: &Payout) -> Result<Payout, MarketError> {
        Ok(Payout {
            node: self.node.checked_add(other.node)?,
            owner: self.owner.checked_add(other.owner)?,
            data: self.data.checked_add(other.data)?,
            protocol: self.protocol.checked_add(other.protocol)?,
        })
    }
}

/// `floor(v × bps / 10000)` without overflow: with `v = q·10000 + r`, it is
/// `q·bps + floor(r·bps / 10000)`, and `q·bps ≤ v`, `r·bps < 10^8`.
// The derivation above; `bps` ≤ 10000 for every part of a checked split.
#[allow(clippy::arithmetic_side_effects)]
fn bps_of(v: Wei, bps: u16) -> Wei {
    let whole = u128::from(BPS_WHOLE);
    let bps = u128::from(bps);
    Wei((v.0 / whole) * bps + (v.0 % whole) * bps / whole)
}

impl Split {
    /// A split of `node + owner + data + protocol = 10000` basis points.
    pub fn new(node: u16, owner: u16, data: u16, protocol: u16) -> Result<Split, MarketError> {
        // Four u16 in a u32: no overflow.
        #[allow(clippy::arithmetic_side_effects)]
        let sum = u32::from(node) + u32::from(owner) + u32::from(data) + u32::from(protocol);
        if sum != u32::from(BPS_WHOLE) {
            return Err(MarketError::SplitNotWhole { sum });
        }
        Ok(Split { node, owner, data, protocol })
    }

    /// The parts in basis points: (node, owner, data, protocol).
    pub fn bps(&self) -> (u16, u16, u16, u16) {
        (self.node, self.owner, self.data, self.protocol)
    }

    /// Splits `value`: owner, data and protocol get the floor of their share, and the node
    /// gets the rest, so the rounding dust (at most 3 wei) goes to whoever did the work and
    /// the parts sum to exactly `value`.
    pub fn apply(&self, value: Wei) -> Payout {
        let owner = bps_of(value, self.owner);
        let data = bps_of(value, self.data);
        let protocol = bps_of(value, self.protocol);
        // Cannot underflow: the three floors sum to at most floor(value × (10000 − node) / 10000).
        #[allow(clippy::arithmetic_side_effects)]
        let node = Wei(value.0 - owner.0 - data.0 - protocol.0);
        Payout { node, owner, data, protocol }
    }
}

impl<'de> Deserialize<'de> for Split {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            node: u16,
            owner: u16,
            data: u16,
            protocol: u16,
        }
        let r = Raw::deserialize(d)?;
        // A decoded split is checked like a constructed one: bytes never bypass the rule.
        Split::new(r.node, r.owner, r.data, r.protocol).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dust_goes_to_the_node() {
        let s = Split::new(7000, 2000, 900, 100).unwrap();
        let p = s.apply(Wei(10_001));
        assert_eq!(p, Payout { node: Wei(7001), owner: Wei(2000), data: Wei(900), protocol: Wei(100) });
        assert_eq!(p.total().unwrap(), Wei(10_001));
    }

    #[test]
    fn whole_is_checked() {
        assert_eq!(Split::new(1, 2, 3, 4), Err(MarketError::SplitNotWhole { sum: 10 }));
    }

    #[test]
    fn no_overflow_at_the_top() {
        let s = Split::new(2500, 2500, 2500, 2500).unwrap();
        assert_eq!(s.apply(Wei(u128::MAX)).total().unwrap(), Wei(u128::MAX));
    }
}
