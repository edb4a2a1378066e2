//! The index: a [`Datanet`]'s contributions laid end to end, their suffix array (built by
//! prefix doubling, checked in linear time when loaded), the longest-match search that
//! cuts an output into [`Span`]s, and the index's saved form.

// Positions and lengths within a datanet's text held in memory: every index is below the
// text's length, which `check_contributions` bounds to u32 before anything is built, so
// this arithmetic on positions cannot overflow. Money is not computed here.
#![allow(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use super::commitment::{Contribution, Document, OutsiderProof, datanet_root_of, owners_root, owners_tree};
use super::weights::Weights;
use super::{AttributionError, FORMAT_VERSION, SEPARATOR, SPAN_SCALE};
use crate::merkle::MerkleTree;

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

    /// The commitment registered with the model (see [`datanet_root`](super::datanet_root)).
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
}
