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

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, U256, keccak256};
use serde::{Deserialize, Serialize};

use crate::merkle::{MerkleProof, MerkleTree};
use crate::receipt::response_hash;
use crate::types::Wei;

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

// ------------------------------------------------------------------ contributions

/// One contribution: token ids owned by an address.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Contribution {
    /// Who is paid for it.
    pub owner: Address,
    /// A name for people (the file path it came from); not part of the commitment.
    pub name: String,
    /// Its token ids, as the model's tokenizer gives them.
    pub tokens: Vec<u32>,
}

impl Contribution {
    /// The contribution's leaf digest in the datanet commitment:
    /// `keccak256(owner ‖ SHA-256(tokens, 4 bytes little-endian each))`.
    pub fn digest(&self) -> B256 {
        contribution_digest(&self.owner, &self.tokens)
    }
}

fn contribution_digest(owner: &Address, tokens: &[u32]) -> B256 {
    let mut buf = [0u8; 52];
    buf[..20].copy_from_slice(owner.as_slice());
    buf[20..].copy_from_slice(response_hash(tokens).as_slice());
    keccak256(buf)
}

/// A text to tokenize into a contribution.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Document {
    /// Who is paid for it.
    pub owner: Address,
    /// A name for people (its path).
    pub name: String,
    /// The text.
    pub text: String,
}

/// The commitment to a datanet, recorded with its model in the Registry:
/// `keccak256("attrinet/datanet/v2" ‖ uint32be(min_span) ‖ contributionsRoot ‖ ownersRoot)`
/// where `contributionsRoot` is the plain Merkle root of the contributions' digests, in
/// order, and `ownersRoot` that of [`owner_digest`]s of the distinct owners, ascending.
/// The minimum span is bound because it changes every weight; the sorted owners let anyone
/// prove on chain that an address is *not* a contributor ([`OutsiderProof`]).
pub fn datanet_root(min_span: u32, contribution_digests: &[B256], owners: &[Address]) -> B256 {
    datanet_root_of(min_span, &MerkleTree::new(contribution_digests).root(), &owners_root(owners))
}

fn datanet_root_of(min_span: u32, contributions_root: &B256, owners_root: &B256) -> B256 {
    let mut buf = Vec::with_capacity(DATANET_TAG.len() + 4 + 64);
    buf.extend_from_slice(DATANET_TAG);
    buf.extend_from_slice(&min_span.to_be_bytes());
    buf.extend_from_slice(contributions_root.as_slice());
    buf.extend_from_slice(owners_root.as_slice());
    keccak256(buf)
}

/// An owner's leaf digest in the owners tree of `count` owners:
/// `keccak256(owner ‖ uint32be(count))`. The count makes a leaf name its tree's size, so a
/// proof cannot place it in a tree of another size.
pub fn owner_digest(owner: &Address, count: u32) -> B256 {
    let mut buf = [0u8; 24];
    buf[..20].copy_from_slice(owner.as_slice());
    buf[20..].copy_from_slice(&count.to_be_bytes());
    keccak256(buf)
}

fn owners_tree(owners: &[Address]) -> MerkleTree {
    let count = owners.len() as u32;
    MerkleTree::new(&owners.iter().map(|o| owner_digest(o, count)).collect::<Vec<_>>())
}

/// The plain Merkle root of the distinct owners' digests, ascending.
pub fn owners_root(owners: &[Address]) -> B256 {
    owners_tree(owners).root()
}

/// Proof that an address owns no contribution of a datanet: its two neighbours in the
/// ascending owners tree (one of them absent at either end), with the parts of the
/// datanet's commitment the proof needs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OutsiderProof {
    /// The datanet's minimum span.
    pub min_span: u32,
    /// Plain Merkle root of the contributions' digests.
    pub contributions_root: B256,
    /// Plain Merkle root of the owners' digests.
    pub owners_root: B256,
    /// Number of distinct owners.
    pub owner_count: u32,
    /// The greatest owner below the address, and its path; `None` when none is.
    pub below: Option<(Address, crate::MerkleProof)>,
    /// The least owner above the address, and its path; `None` when none is.
    pub above: Option<(Address, crate::MerkleProof)>,
}

impl OutsiderProof {
    /// Checks that the proof shows `who` outside the datanet committed to by `root`: what
    /// the `disputeOutsider` fraud proof checks on chain.
    pub fn verify(&self, who: &Address, root: &B256) -> bool {
        if datanet_root_of(self.min_span, &self.contributions_root, &self.owners_root) != *root {
            return false;
        }
        let n = u64::from(self.owner_count);
        let at = |side: &Option<(Address, crate::MerkleProof)>| {
            side.as_ref().map(|(o, p)| {
                (p.leaf_count == n && p.verify(&owner_digest(o, self.owner_count), &self.owners_root).is_ok())
                    .then_some((*o, p.index))
            })
        };
        match (at(&self.below), at(&self.above)) {
            (Some(Some((lo, i))), Some(Some((hi, j)))) => lo < *who && *who < hi && j == i + 1,
            (Some(Some((lo, i))), None) => lo < *who && i + 1 == n,
            (None, Some(Some((hi, j)))) => *who < hi && j == 0,
            _ => false,
        }
    }
}

// ------------------------------------------------------------------ the index

#[derive(Clone, PartialEq, Eq, Debug)]
struct Entry {
    owner: u32, // index into `owners`
    name: String,
    start: u32, // first token in `text`
    len: u32,
}

/// A datanet and its exact index: the contributions' tokens concatenated (each followed by
/// a separator) and the suffix array of every token position, ordered by the token
/// sequence up to the end of its contribution, then by position.
#[derive(Clone, PartialEq, Eq)]
pub struct Datanet {
    min_span: u32,
    owners: Vec<Address>, // distinct, ascending
    entries: Vec<Entry>,
    text: Vec<u32>,
    suffixes: Vec<u32>,
    root: B256,
    contributions_root: B256,
}

impl std::fmt::Debug for Datanet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datanet")
            .field("root", &self.root)
            .field("min_span", &self.min_span)
            .field("contributions", &self.entries.len())
            .field("contributors", &self.owners.len())
            .field("tokens", &self.suffixes.len())
            .finish()
    }
}

/// One span of an output found in the datanet.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Span {
    /// Position of its first token in the output.
    pub start: u32,
    /// Its length in tokens (at least the datanet's minimum span).
    pub len: u32,
    /// The distinct owners of the contributions that contain it, ascending.
    pub contributors: Vec<Address>,
    /// How many times it occurs in the datanet.
    pub occurrences: u64,
}

/// The attribution of one output: the spans found and the weights they give.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Attribution {
    /// Spans in output order, never overlapping.
    pub spans: Vec<Span>,
    /// Contributors' weights; empty when no span was found.
    pub weights: Weights,
}

impl Datanet {
    /// Indexes `contributions` (in the given order, which the commitment fixes) with
    /// spans of at least `min_span` tokens.
    pub fn build(min_span: u32, contributions: Vec<Contribution>) -> Result<Datanet, AttributionError> {
        check_contributions(min_span, &contributions)?;
        let (owners, entries, text, digests) = layout(contributions);
        let suffixes = suffix_array(&text, entries.len());
        let contributions_root = MerkleTree::new(&digests).root();
        let root = datanet_root_of(min_span, &contributions_root, &owners_root(&owners));
        Ok(Datanet { min_span, owners, entries, text, suffixes, root, contributions_root })
    }

    /// Tokenizes `documents` with the model's tokenizer and indexes them, in the given
    /// order (a caller reading a directory sorts the files by path first, so that the same
    /// directory always gives the same commitment).
    pub fn from_texts(
        min_span: u32,
        documents: impl IntoIterator<Item = Document>,
        tokenize: impl Fn(&str) -> Vec<u32>,
    ) -> Result<Datanet, AttributionError> {
        let contributions = documents
            .into_iter()
            .map(|d| Contribution { tokens: tokenize(&d.text), owner: d.owner, name: d.name })
            .collect();
        Datanet::build(min_span, contributions)
    }

    /// The commitment registered with the model (see [`datanet_root`]).
    pub fn root(&self) -> B256 {
        self.root
    }

    /// The minimum span length, in tokens.
    pub fn min_span(&self) -> u32 {
        self.min_span
    }

    /// The distinct contributors, ascending.
    pub fn contributors(&self) -> &[Address] {
        &self.owners
    }

    /// Proof that `who` owns no contribution here, or `None` when it does.
    pub fn outsider_proof(&self, who: &Address) -> Option<OutsiderProof> {
        let at = match self.owners.binary_search(who) {
            Ok(_) => return None,
            Err(at) => at,
        };
        let tree = owners_tree(&self.owners);
        let side = |i: usize| Some((self.owners[i], tree.proof(i).expect("index within the owners")));
        Some(OutsiderProof {
            min_span: self.min_span,
            contributions_root: self.contributions_root,
            owners_root: tree.root(),
            owner_count: self.owners.len() as u32,
            below: if at == 0 { None } else { side(at - 1) },
            above: if at == self.owners.len() { None } else { side(at) },
        })
    }

    /// Number of contributions.
    pub fn contribution_count(&self) -> usize {
        self.entries.len()
    }

    /// The contributions' owners, names and tokens, in commitment order.
    pub fn contributions(&self) -> impl Iterator<Item = (Address, &str, &[u32])> + '_ {
        self.entries.iter().map(|e| {
            (self.owners[e.owner as usize], e.name.as_str(), &self.text[e.start as usize..(e.start + e.len) as usize])
        })
    }

    /// Number of indexed tokens.
    pub fn token_count(&self) -> usize {
        self.suffixes.len()
    }

    /// Memory the index occupies (tokens, separators and suffix array), in bytes.
    pub fn index_bytes(&self) -> usize {
        (self.text.len() + self.suffixes.len()) * 4
            + self.entries.iter().map(|e| e.name.len() + std::mem::size_of::<Entry>()).sum::<usize>()
            + self.owners.len() * 20
    }

    /// Attributes `output`, read left to right: at each position the longest prefix of the
    /// rest of the output that occurs inside one contribution is found; if it is at least
    /// the minimum span long it becomes a span and reading resumes after it, otherwise
    /// reading moves one token on. Each span's length, in millionths of a token, is shared
    /// equally (rounding down) between the distinct owners of the contributions containing
    /// it; the owners' totals become parts per million by [`Weights::from_scores`].
    pub fn attribute(&self, output: &[u32]) -> Attribution {
        let mut spans = Vec::new();
        let mut scores: BTreeMap<Address, u128> = BTreeMap::new();
        let mut i = 0;
        while i < output.len() {
            let (len, lo, hi) = self.longest_match(&output[i..]);
            if len < self.min_span as usize {
                i += 1;
                continue;
            }
            let mut owners: Vec<u32> = self.suffixes[lo..hi].iter().map(|&p| self.owner_at(p)).collect();
            owners.sort_unstable();
            owners.dedup();
            let contributors: Vec<Address> = owners.iter().map(|&o| self.owners[o as usize]).collect();
            // k ≥ 1 (the span occurs), len < 2^32: no overflow in 128 bits.
            let share = len as u128 * SPAN_SCALE / contributors.len() as u128;
            for c in &contributors {
                *scores.entry(*c).or_default() += share;
            }
            spans.push(Span { start: i as u32, len: len as u32, contributors, occurrences: (hi - lo) as u64 });
            i += len;
        }
        Attribution { spans, weights: Weights::from_scores(&scores) }
    }

    /// The longest prefix of `query` that occurs in one contribution: its length and the
    /// range of the suffix array whose suffixes start with it.
    fn longest_match(&self, query: &[u32]) -> (usize, usize, usize) {
        let (mut lo, mut hi) = (0usize, self.suffixes.len());
        let mut depth = 0usize;
        while depth < query.len() && query[depth] != SEPARATOR {
            // In suffix-array order the suffixes of [lo, hi) agree on `depth` tokens; their
            // next token orders them, a contribution's end (SEPARATOR) first, hence the key.
            let key = |s: &u32| -> u64 {
                // In bounds: the suffix agrees with the query for `depth` non-separator
                // tokens, so its separator is at or after s + depth.
                let t = self.text[*s as usize + depth];
                if t == SEPARATOR { 0 } else { u64::from(t) + 1 }
            };
            let target = u64::from(query[depth]) + 1;
            let range = &self.suffixes[lo..hi];
            let first = range.partition_point(|s| key(s) < target);
            let end = first + range[first..].partition_point(|s| key(s) <= target);
            if first == end {
                break;
            }
            (lo, hi) = (lo + first, lo + end);
            depth += 1;
        }
        (depth, lo, hi)
    }

    fn owner_at(&self, position: u32) -> u32 {
        let entry = self.entries.partition_point(|e| e.start <= position) - 1;
        self.entries[entry].owner
    }

    /// The index in a self-describing binary form (postcard): contributions, then the
    /// suffix array, so that loading does not sort again.
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            version: FORMAT_VERSION,
            min_span: self.min_span,
            contributions: self
                .entries
                .iter()
                .map(|e| StoredContribution {
                    owner: self.owners[e.owner as usize],
                    name: e.name.clone(),
                    tokens: self.text[e.start as usize..(e.start + e.len) as usize].to_vec(),
                })
                .collect(),
            suffixes: self.suffixes.clone(),
        };
        crate::codec::encode(&stored)
    }

    /// Loads an index saved by [`Datanet::to_bytes`]. The bytes are not trusted: the
    /// contributions are checked as [`Datanet::build`] checks them, the commitment is
    /// recomputed, and the suffix array is verified in linear time (it must be a
    /// permutation of the token positions and each neighbouring pair must be in order,
    /// which together imply the whole order).
    pub fn from_bytes(bytes: &[u8]) -> Result<Datanet, AttributionError> {
        let stored: Stored =
            crate::codec::decode(bytes).map_err(|e| AttributionError::Decode { reason: e.to_string() })?;
        if stored.version != FORMAT_VERSION {
            return Err(AttributionError::CorruptIndex {
                reason: format!("format version {} (this build reads {FORMAT_VERSION})", stored.version),
            });
        }
        let contributions: Vec<Contribution> = stored
            .contributions
            .into_iter()
            .map(|c| Contribution { owner: c.owner, name: c.name, tokens: c.tokens })
            .collect();
        check_contributions(stored.min_span, &contributions)?;
        let (owners, entries, text, digests) = layout(contributions);
        verify_suffix_array(&text, &stored.suffixes).map_err(|reason| AttributionError::CorruptIndex { reason })?;
        let contributions_root = MerkleTree::new(&digests).root();
        let root = datanet_root_of(stored.min_span, &contributions_root, &owners_root(&owners));
        Ok(Datanet {
            min_span: stored.min_span,
            owners,
            entries,
            text,
            suffixes: stored.suffixes,
            root,
            contributions_root,
        })
    }
}

/// The rules every datanet's contributions follow, whether built or loaded.
fn check_contributions(min_span: u32, contributions: &[Contribution]) -> Result<(), AttributionError> {
    if min_span == 0 {
        return Err(AttributionError::ZeroMinSpan);
    }
    if contributions.is_empty() {
        return Err(AttributionError::EmptyDatanet);
    }
    let total: u64 = contributions.iter().map(|c| c.tokens.len() as u64 + 1).sum();
    // Positions are u32 and SEPARATOR's value is not a position, so the text (tokens and
    // one separator per contribution) must stay below u32::MAX entries.
    if total >= u64::from(u32::MAX) {
        return Err(AttributionError::TooLarge { tokens: total });
    }
    for c in contributions {
        if c.tokens.is_empty() {
            return Err(AttributionError::EmptyContribution { name: c.name.clone() });
        }
        if c.owner == Address::ZERO {
            return Err(AttributionError::ZeroOwner { name: c.name.clone() });
        }
        if let Some(position) = c.tokens.iter().position(|&t| t == SEPARATOR) {
            return Err(AttributionError::ReservedToken { name: c.name.clone(), position });
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    min_span: u32,
    contributions: Vec<StoredContribution>,
    suffixes: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct StoredContribution {
    owner: Address,
    name: String,
    tokens: Vec<u32>,
}

/// Owners (distinct, ascending), entries, the concatenated text and the contribution
/// digests, from checked contributions.
fn layout(contributions: Vec<Contribution>) -> (Vec<Address>, Vec<Entry>, Vec<u32>, Vec<B256>) {
    let mut owners: Vec<Address> = contributions.iter().map(|c| c.owner).collect();
    owners.sort_unstable();
    owners.dedup();
    let total: usize = contributions.iter().map(|c| c.tokens.len() + 1).sum();
    let mut text = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(contributions.len());
    let mut digests = Vec::with_capacity(contributions.len());
    for c in contributions {
        digests.push(c.digest());
        let owner = owners.binary_search(&c.owner).expect("owners holds every owner") as u32;
        // Fits: build checked that the whole text stays below u32::MAX entries.
        entries.push(Entry { owner, name: c.name, start: text.len() as u32, len: c.tokens.len() as u32 });
        text.extend_from_slice(&c.tokens);
        text.push(SEPARATOR);
    }
    (owners, entries, text, digests)
}

/// The suffix array of `text` (which ends each of its `contributions` with SEPARATOR),
/// without the separators' own positions. Prefix doubling: suffixes are first grouped by
/// their first token, then each round orders the groups still holding several suffixes by
/// the group of the suffix `h` positions further, doubling `h`. Separators all get
/// distinct ranks below every token (by contribution), so no comparison reads past the
/// end of a contribution and equal sequences are ordered by position. Only unfinished
/// groups are touched, so natural text finishes in a few cheap rounds, and repeated text
/// (a file contributed twice) costs O(n log n) rather than the O(n²) of comparison sorting.
fn suffix_array(text: &[u32], contributions: usize) -> Vec<u32> {
    let n = text.len();
    let mut keys = Vec::with_capacity(n);
    let mut next_separator = 0u64;
    for &t in text {
        if t == SEPARATOR {
            keys.push(next_separator);
            next_separator += 1;
        } else {
            keys.push((1u64 << 32) + u64::from(t));
        }
    }
    let mut sa: Vec<u32> = (0..n as u32).collect();
    sa.sort_unstable_by_key(|&i| keys[i as usize]);
    // rank = index of the first suffix of its group in `sa`: ranks order groups as `sa` does.
    let mut rank = vec![0u32; n];
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut s = 0;
    while s < n {
        let mut e = s + 1;
        while e < n && keys[sa[e] as usize] == keys[sa[s] as usize] {
            e += 1;
        }
        for &p in &sa[s..e] {
            rank[p as usize] = s as u32;
        }
        if e - s > 1 {
            groups.push((s, e));
        }
        s = e;
    }
    drop(keys);

    let mut h = 1usize;
    let mut round: Vec<(u32, u32)> = Vec::new();
    while !groups.is_empty() {
        // Every key of a round is read before any rank of that round changes.
        round.clear();
        for &(s, e) in &groups {
            for &p in &sa[s..e] {
                // In bounds: a suffix in a group of several shares its first h tokens with
                // another, and separators are unique, so those h positions are tokens and
                // its separator comes at p + h or later.
                round.push((rank[p as usize + h], p));
            }
        }
        let mut next = Vec::new();
        let mut off = 0;
        for &(s, e) in &groups {
            let seg = &mut round[off..off + (e - s)];
            seg.sort_unstable();
            let mut a = 0;
            while a < seg.len() {
                let mut b = a + 1;
                while b < seg.len() && seg[b].0 == seg[a].0 {
                    b += 1;
                }
                for (t, &(_, p)) in seg.iter().enumerate().take(b).skip(a) {
                    sa[s + t] = p;
                    rank[p as usize] = (s + a) as u32;
                }
                if b - a > 1 {
                    next.push((s + a, s + b));
                }
                a = b;
            }
            off += e - s;
        }
        groups = next;
        h *= 2;
    }
    // The separators rank below every token: they are the first `contributions` entries.
    sa.drain(..contributions);
    sa
}

/// Checks that `suffixes` is the suffix array of `text` in linear time: a permutation of
/// the token positions in which every neighbouring pair is ordered by first token, then by
/// the order of the suffixes one position on (a contribution's end first, ends ordered by
/// contribution). Induction on suffix length makes the neighbouring checks imply the whole
/// order.
fn verify_suffix_array(text: &[u32], suffixes: &[u32]) -> Result<(), String> {
    let tokens = text.iter().filter(|&&t| t != SEPARATOR).count();
    if suffixes.len() != tokens {
        return Err(format!("{} suffixes for {tokens} tokens", suffixes.len()));
    }
    // rank of the suffix at each position; separators get -(contributions) .. -1 in order.
    let mut rank = vec![i64::MIN; text.len()];
    let separators = text.len() - tokens;
    let mut next_separator = -(separators as i64);
    for (p, &t) in text.iter().enumerate() {
        if t == SEPARATOR {
            rank[p] = next_separator;
            next_separator += 1;
        }
    }
    for (r, &p) in suffixes.iter().enumerate() {
        let slot = rank.get_mut(p as usize).ok_or_else(|| format!("suffix {r} points past the text"))?;
        if *slot != i64::MIN {
            return Err(format!("position {p} appears twice or is a separator"));
        }
        *slot = r as i64;
    }
    for (r, pair) in suffixes.windows(2).enumerate() {
        let (a, b) = (pair[0] as usize, pair[1] as usize);
        let ordered = match text[a].cmp(&text[b]) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            // Not past the end: every token is followed by a token or its separator.
            std::cmp::Ordering::Equal => rank[a + 1] < rank[b + 1],
        };
        if !ordered {
            return Err(format!("suffixes {r} and {} are out of order", r + 1));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ weights

/// One contributor's weight in an attribution.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Weight {
    /// The contributor (a contribution owner's address).
    pub contributor: Address,
    /// Its share, in parts per million (never zero).
    pub ppm: u32,
}

/// An output's attribution weights: strictly ascending by contributor, each non-zero,
/// summing to exactly [`PPM_WHOLE`]; or empty when nothing matched. Decoding checks the
/// same rules as [`Weights::new`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize)]
pub struct Weights(Vec<Weight>);

impl Weights {
    /// Weights from a list that must already follow the rules (ascending, non-zero, whole).
    pub fn new(weights: Vec<Weight>) -> Result<Weights, AttributionError> {
        let mut sum = 0u64;
        for (i, w) in weights.iter().enumerate() {
            if w.ppm == 0 {
                return Err(AttributionError::ZeroWeight { contributor: w.contributor });
            }
            if i > 0 && weights[i - 1].contributor >= w.contributor {
                return Err(AttributionError::WeightsUnsorted { index: i });
            }
            sum += u64::from(w.ppm);
        }
        if !weights.is_empty() && sum != u64::from(PPM_WHOLE) {
            return Err(AttributionError::WeightsSum { sum });
        }
        Ok(Weights(weights))
    }

    /// No attribution: the output matched nothing.
    pub fn none() -> Weights {
        Weights(Vec::new())
    }

    /// Parts per million from non-negative scores, by the largest-remainder rule: each
    /// contributor first gets `floor(score × 10^6 / total)`; the ppm still missing (fewer
    /// than the number of contributors) go one each to the largest remainders
    /// `score × 10^6 mod total`, ties to the smaller address. Contributors left at zero
    /// are dropped. All zero scores give no weights.
    pub fn from_scores(scores: &BTreeMap<Address, u128>) -> Weights {
        let whole = u128::from(PPM_WHOLE);
        // Summed in 256 bits: no set of u128 scores can overflow it.
        let total = scores.values().fold(U256::ZERO, |acc, s| acc + U256::from(*s));
        if total.is_zero() {
            return Weights::none();
        }
        let mut parts: Vec<(Address, u32, U256)> = scores
            .iter()
            .map(|(c, s)| {
                let scaled = U256::from(*s) * U256::from(whole);
                let base = scaled / total; // ≤ 10^6
                (*c, base.to::<u32>(), scaled % total)
            })
            .collect();
        let given: u32 = parts.iter().map(|p| p.1).sum();
        let missing = PPM_WHOLE - given;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        // Largest remainder first; BTreeMap order already makes ties go to the smaller address.
        order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
        for &k in order.iter().take(missing as usize) {
            parts[k].1 += 1;
        }
        Weights(
            parts.into_iter().filter(|p| p.1 > 0).map(|(contributor, ppm, _)| Weight { contributor, ppm }).collect(),
        )
    }

    /// The weights, ascending by contributor.
    pub fn as_slice(&self) -> &[Weight] {
        &self.0
    }

    /// Whether there are none (nothing matched).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of contributors weighted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `contributor`'s weight, 0 when it has none.
    pub fn ppm_of(&self, contributor: &Address) -> u32 {
        self.0.binary_search_by(|w| w.contributor.cmp(contributor)).map_or(0, |i| self.0[i].ppm)
    }

    /// Leaf `index`'s digest: `keccak256(contributor ‖ uint32be(ppm) ‖ uint32be(count))`.
    /// The count makes a leaf name its tree's size, so a proof cannot place it at another
    /// position of a tree of another size (a promoted node hashes alike at both).
    pub fn leaf(&self, index: usize) -> Option<B256> {
        self.0.get(index).map(|w| weight_digest(w, self.0.len() as u32))
    }

    /// The Merkle root committed in the receipt's `attributionRoot` (zero when empty).
    pub fn root(&self) -> B256 {
        self.tree().root()
    }

    /// Inclusion proof of weight `index` under [`Weights::root`].
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        self.tree().proof(index)
    }

    fn tree(&self) -> MerkleTree {
        let count = self.0.len() as u32;
        MerkleTree::new(&self.0.iter().map(|w| weight_digest(w, count)).collect::<Vec<_>>())
    }
}

/// The leaf digest of a weight in a tree of `count` weights (see [`Weights::leaf`]).
pub fn weight_digest(w: &Weight, count: u32) -> B256 {
    let mut buf = [0u8; 28];
    buf[..20].copy_from_slice(w.contributor.as_slice());
    buf[20..24].copy_from_slice(&w.ppm.to_be_bytes());
    buf[24..].copy_from_slice(&count.to_be_bytes());
    keccak256(buf)
}

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Decoded weights obey the same rules as constructed ones.
        Weights::new(Vec::<Weight>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

// ------------------------------------------------------------------ data shares

/// The part of a settlement's data share owed to one contributor for one receipt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct DataEntry {
    /// Who is owed.
    pub contributor: Address,
    /// The receipt's leaf index in the settlement batch.
    pub leaf: u64,
    /// The contributor's position in the receipt's weights.
    pub weight_index: u32,
    /// How much.
    pub amount: Wei,
}

impl DataEntry {
    /// The entry's digest in a run's data tree:
    /// `keccak256(contributor ‖ uint64be(leaf) ‖ uint32be(weightIndex))`; the tree is a
    /// Merkle-sum tree whose leaf values are the amounts.
    pub fn digest(&self) -> B256 {
        let mut buf = [0u8; 32];
        buf[..20].copy_from_slice(self.contributor.as_slice());
        buf[20..28].copy_from_slice(&self.leaf.to_be_bytes());
        buf[28..].copy_from_slice(&self.weight_index.to_be_bytes());
        keccak256(buf)
    }

    /// The order of entries in a run's data tree: by contributor, then leaf. A contributor's
    /// entries are then contiguous, and it claims them as one range.
    pub fn key(&self) -> (Address, u64) {
        (self.contributor, self.leaf)
    }
}

/// A receipt's part of its run's data share: `floor(value × run_data / run_value)` (zero
/// for a run of zero value). Receipts of one run share its data share by value; the parts
/// never sum to more than `run_data`.
pub fn receipt_data_share(value: Wei, run_value: Wei, run_data: Wei) -> Wei {
    if run_value.0 == 0 {
        return Wei::ZERO;
    }
    let share = U256::from(value.0) * U256::from(run_data.0) / U256::from(run_value.0);
    // value ≤ run_value for a receipt of the run, so share ≤ run_data; saturate otherwise.
    Wei(u128::try_from(share).unwrap_or(u128::MAX))
}

/// `floor(amount × ppm / 10^6)`, exactly and without overflow.
pub fn ppm_of(amount: Wei, ppm: u32) -> Wei {
    let whole = u128::from(PPM_WHOLE);
    let ppm = u128::from(ppm);
    Wei((amount.0 / whole) * ppm + (amount.0 % whole) * ppm / whole)
}

/// The data entries of one payout run: for each receipt (its leaf index in the batch, its
/// value and its weights), its data share ([`receipt_data_share`]) is split by its weights
/// ([`ppm_of`]); entries of zero are left out; the result is sorted by
/// [`DataEntry::key`]. Receipts without weights add nothing, so their share (and the
/// rounding dust) stays with the model's data pool.
pub fn run_data_entries<'a>(
    receipts: impl IntoIterator<Item = (u64, Wei, &'a Weights)>,
    run_value: Wei,
    run_data: Wei,
) -> Vec<DataEntry> {
    let mut entries = Vec::new();
    for (leaf, value, weights) in receipts {
        let data = receipt_data_share(value, run_value, run_data);
        for (j, w) in weights.as_slice().iter().enumerate() {
            let amount = ppm_of(data, w.ppm);
            if amount.0 > 0 {
                entries.push(DataEntry { contributor: w.contributor, leaf, weight_index: j as u32, amount });
            }
        }
    }
    entries.sort_by_key(DataEntry::key);
    entries
}

/// Each contributor's total over `entries`, ascending by contributor.
pub fn contributor_totals(entries: &[DataEntry]) -> Result<Vec<(Address, Wei)>, AttributionError> {
    let mut totals: BTreeMap<Address, Wei> = BTreeMap::new();
    for e in entries {
        let t = totals.entry(e.contributor).or_default();
        *t = t.checked_add(e.amount).map_err(|_| AttributionError::AmountOverflow)?;
    }
    Ok(totals.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    fn naive_suffixes(text: &[u32]) -> Vec<u32> {
        // Compare token sequences up to the separator, separator smallest, then position.
        let seq = |p: usize| -> Vec<u64> {
            text[p..].iter().take_while(|&&t| t != SEPARATOR).map(|&t| u64::from(t) + 1).collect()
        };
        let mut sa: Vec<u32> = (0..text.len() as u32).filter(|&p| text[p as usize] != SEPARATOR).collect();
        sa.sort_by(|&x, &y| seq(x as usize).cmp(&seq(y as usize)).then(x.cmp(&y)));
        sa
    }

    #[test]
    fn suffix_array_matches_naive_sort_on_repetitive_text() {
        let docs = vec![vec![1, 1, 1, 1, 1, 1], vec![1, 1, 1], vec![2, 1, 2, 1, 2, 1], vec![1, 2, 1]];
        let contributions =
            docs.into_iter().map(|tokens| Contribution { owner: a(1), name: String::new(), tokens }).collect();
        let (_, entries, text, _) = layout(contributions);
        let sa = suffix_array(&text, entries.len());
        assert_eq!(sa, naive_suffixes(&text));
        verify_suffix_array(&text, &sa).unwrap();
        // Swapping two neighbours is caught.
        let mut bad = sa.clone();
        bad.swap(3, 4);
        assert!(verify_suffix_array(&text, &bad).is_err());
    }

    #[test]
    fn largest_remainder_breaks_ties_by_address() {
        let scores = BTreeMap::from([(a(3), 1u128), (a(1), 1), (a(2), 1)]);
        let w = Weights::from_scores(&scores);
        // 333,333 each and one ppm left: equal remainders, so the smallest address gets it.
        assert_eq!(w.as_slice().iter().map(|w| w.ppm).collect::<Vec<_>>(), vec![333_334, 333_333, 333_333]);
        assert_eq!(w.as_slice()[0].contributor, a(1));
    }

    #[test]
    fn weights_rules_are_enforced() {
        let w = |c: u8, ppm| Weight { contributor: a(c), ppm };
        assert!(Weights::new(vec![w(1, 500_000), w(2, 500_000)]).is_ok());
        assert_eq!(
            Weights::new(vec![w(2, 500_000), w(1, 500_000)]),
            Err(AttributionError::WeightsUnsorted { index: 1 })
        );
        assert_eq!(Weights::new(vec![w(1, 999_999)]), Err(AttributionError::WeightsSum { sum: 999_999 }));
        assert_eq!(
            Weights::new(vec![w(1, 0), w(2, 1_000_000)]),
            Err(AttributionError::ZeroWeight { contributor: a(1) })
        );
        let bytes = crate::codec::encode(&vec![w(1, 7)]);
        assert!(crate::codec::decode::<Weights>(&bytes).is_err(), "decoding checks the sum");
    }

    #[test]
    fn data_shares_round_down_and_never_exceed_the_run() {
        assert_eq!(ppm_of(Wei(999_999), 500_000), Wei(499_999));
        assert_eq!(ppm_of(Wei(u128::MAX), PPM_WHOLE), Wei(u128::MAX));
        assert_eq!(receipt_data_share(Wei(1), Wei(3), Wei(100)), Wei(33));
        assert_eq!(receipt_data_share(Wei(5), Wei(0), Wei(100)), Wei::ZERO);
        let w = Weights::new(vec![Weight { contributor: a(1), ppm: 1 }, Weight { contributor: a(2), ppm: 999_999 }])
            .unwrap();
        let entries = run_data_entries([(0, Wei(1), &w), (1, Wei(2), &w)], Wei(3), Wei(100));
        // data shares 33 and 66; a(1)'s 1 ppm of either rounds to nothing.
        assert_eq!(
            entries.iter().map(|e| (e.contributor, e.leaf, e.amount.0)).collect::<Vec<_>>(),
            vec![(a(2), 0, 32), (a(2), 1, 65)]
        );
    }
}
