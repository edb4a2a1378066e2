//! Proof of Attribution: which data contributors an output owes its content to, and how
//! the data share of its value is divided among them.
//!
//! A [`Datanet`] is a model's set of contributions (token ids, each owned by an EVM address)
//! with an exact index over them: a suffix array over the concatenated tokens, in the
//! spirit of Infini-gram. [`Datanet::attribute`] cuts an output into longest-match spans of
//! at least the datanet's minimum length and turns them into [`Weights`]: parts per million
//! per contributor summing to exactly 1,000,000 (or none at all when nothing matches). The
//! receipt commits to [`Weights::root`]; [`run_data_entries`] turns the weights of a
//! settlement's receipts into the per-contributor amounts the settlement pays. The rules
//! are those of `docs/protocol.md`, section "Attribution"; everything here is deterministic
//! and does no I/O (reading a directory and saving the index are the callers' business:
//! see [`Datanet::from_texts`], [`Datanet::to_bytes`] and [`Datanet::from_bytes`]).
//!
//! The module is split by job:
//!
//! - `commitment`: [`Contribution`]s and [`Document`]s, the digests and roots of the
//!   datanet commitment ([`datanet_root`], [`owner_digest`], [`owners_root`]), and the
//!   [`OutsiderProof`] that an address owns no contribution;
//! - `index`: the [`Datanet`] itself, its suffix array and its check, saving and loading
//!   it, and [`Datanet::attribute`], which finds an output's [`Span`]s and gives its
//!   [`Attribution`];
//! - `weights`: an output's [`Weights`], each contributor's [`Weight`] in parts per
//!   million, and their Merkle leaves ([`weight_digest`]);
//! - `shares`: how a settlement's data share is divided: [`receipt_data_share`],
//!   [`ppm_of`], [`run_data_entries`],
//!   giving [`DataEntry`]s.
//!
//! This file holds what they share: [`AttributionError`] and the constants.
//!
//! ```
//! use attrinet_market::{Contribution, Datanet, PPM_WHOLE};
//! use alloy_primitives::Address;
//! # fn main() -> Result<(), attrinet_market::AttributionError> {
//! let (alice, bob) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb0));
//! let datanet = Datanet::build(4, vec![
//!     Contribution { owner: alice, name: "a.txt".into(), tokens: vec![1, 2, 3, 4, 5, 6, 7, 8] },
//!     Contribution { owner: bob, name: "b.txt".into(), tokens: vec![9, 10, 11, 12, 13, 14] },
//! ])?;
//! // The output copies five tokens of alice's contribution and nothing of bob's.
//! let attribution = datanet.attribute(&[40, 2, 3, 4, 5, 6, 41]);
//! assert_eq!(attribution.spans.len(), 1);
//! assert_eq!(attribution.weights.ppm_of(&alice), PPM_WHOLE);
//! assert_eq!(attribution.weights.ppm_of(&bob), 0);
//! // An output that shares nothing gets no weights, and the zero root.
//! assert!(datanet.attribute(&[40, 41, 42, 43, 44]).weights.is_empty());
//! # Ok(()) }
//! ```

use alloy_primitives::Address;

mod commitment;
mod index;
mod shares;
mod weights;

pub use commitment::{Contribution, Document, OutsiderProof, datanet_root, owner_digest, owners_root};
pub use index::{Attribution, Datanet, Span};
pub use shares::{DataEntry, ppm_of, receipt_data_share, run_data_entries};
pub use weights::{Weight, Weights, weight_digest};

/// Parts per million in a whole: weights sum to exactly this (or are empty).
pub const PPM_WHOLE: u32 = 1_000_000;

/// The minimum span length the CLI proposes for a new datanet. Eight tokens of a BPE
/// vocabulary are five to seven English words: long enough that a match is rarely a
/// common phrase met by chance, short enough to catch a copied sentence.
pub const DEFAULT_MIN_SPAN: u32 = 8;

/// Each contribution's share of a span is counted in millionths of a token (see
/// [`Datanet::attribute`]), so that a span shared by k contributors divides without
/// fractions.
const SPAN_SCALE: u128 = 1_000_000;

/// Ends every contribution in the concatenated text. No tokenizer has 2^32 - 1 ids, so
/// the value is reserved: a contribution holding it is refused.
const SEPARATOR: u32 = u32::MAX;

/// Domain tag of the datanet commitment (docs/protocol.md, "Datanet commitment").
const DATANET_TAG: &[u8] = b"attrinet/datanet/v2";

/// Version of [`Datanet::to_bytes`]' format; bumped whenever the layout changes.
const FORMAT_VERSION: u32 = 1;

/// What went wrong building, loading or using attribution data.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AttributionError {
    /// A datanet needs at least one contribution.
    #[error("the datanet has no contributions: add at least one text owned by an address")]
    EmptyDatanet,
    /// A contribution tokenized to nothing (an empty or whitespace-only file).
    #[error("contribution {name:?} has no tokens: remove it or give it content")]
    EmptyContribution {
        /// The contribution's name (its file path when built from a directory).
        name: String,
    },
    /// A contribution owned by the zero address: its rewards could never be claimed.
    #[error("contribution {name:?} is owned by the zero address")]
    ZeroOwner {
        /// The contribution's name.
        name: String,
    },
    /// A token id of 2^32 - 1, which the index reserves as its separator.
    #[error("contribution {name:?} holds the reserved token id 4294967295 at position {position}")]
    ReservedToken {
        /// The contribution's name.
        name: String,
        /// Where in it.
        position: usize,
    },
    /// More tokens than 32-bit positions can address.
    #[error("the datanet holds {tokens} tokens and separators; the index addresses at most 4294967295")]
    TooLarge {
        /// Tokens plus one separator per contribution.
        tokens: u64,
    },
    /// A minimum span length of zero would attribute every single token.
    #[error("the minimum span length must be at least 1")]
    ZeroMinSpan,
    /// Saved index bytes that cannot be decoded.
    #[error("cannot decode the datanet index: {reason}")]
    Decode {
        /// What the decoder said.
        reason: String,
    },
    /// Saved index bytes that decode but are not a correct index (wrong version, or a
    /// suffix array that is not the one of its tokens).
    #[error("the datanet index is corrupt: {reason}; rebuild it from its contributions")]
    CorruptIndex {
        /// What is wrong.
        reason: String,
    },
    /// Weights not in strictly ascending contributor order (or a contributor twice).
    #[error("weight {index} is not after the previous one in contributor order")]
    WeightsUnsorted {
        /// Index of the offending weight.
        index: usize,
    },
    /// A weight of zero parts per million: contributors without a share are left out.
    #[error("contributor {contributor} has a weight of 0 ppm; zero weights are omitted")]
    ZeroWeight {
        /// The contributor.
        contributor: Address,
    },
    /// Weights that do not sum to exactly 1,000,000 parts per million.
    #[error("weights sum to {sum} ppm, not 1000000")]
    WeightsSum {
        /// What they sum to.
        sum: u64,
    },
    /// A sum of amounts does not fit in 128 bits.
    #[error("amount overflow while adding data shares")]
    AmountOverflow,
}
