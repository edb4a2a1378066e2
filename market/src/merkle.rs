//! Merkle trees over receipt digests, and the Merkle-sum variant used for settlement batches.
//! The hashing and proof rules are those of `docs/protocol.md`, which the contracts mirror.

use alloy_primitives::{B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::error::MarketError;
use crate::types::Wei;

const LEAF: u8 = 0x00;
const NODE: u8 = 0x01;

/// Why a Merkle proof was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProofError {
    /// The index is not below the leaf count.
    #[error("leaf index {index} out of range for {count} leaves")]
    IndexOutOfRange {
        /// Claimed index.
        index: u64,
        /// Claimed leaf count.
        count: u64,
    },
    /// The proof has more or fewer siblings than the path from that index needs.
    #[error("proof has {got} siblings, the path needs {needed}")]
    WrongLength {
        /// Siblings given.
        got: usize,
        /// Siblings the path consumes.
        needed: usize,
    },
    /// The path does not hash to the expected root.
    #[error("proof leads to root {computed}, expected {expected}")]
    RootMismatch {
        /// Root the proof computes.
        computed: B256,
        /// Root it should reach.
        expected: B256,
    },
    /// A sum along the path overflows 128 bits.
    #[error("sums along the proof overflow")]
    SumOverflow,
    /// The path reaches the root hash but with a different total.
    #[error("proof totals {computed}, expected {expected}")]
    SumMismatch {
        /// Total the proof computes.
        computed: Wei,
        /// Expected total.
        expected: Wei,
    },
}

/// For each level from the leaves up: `Some(sibling_is_left)` when a sibling is consumed,
/// `None` when the node is promoted unchanged (last node of an odd level).
fn path(mut index: u64, mut count: u64) -> Result<Vec<Option<bool>>, ProofError> {
    if index >= count {
        return Err(ProofError::IndexOutOfRange { index, count });
    }
    let mut steps = Vec::new();
    while count > 1 {
        if index.is_multiple_of(2) && index.checked_add(1) == Some(count) {
            steps.push(None);
        } else {
            steps.push(Some(index % 2 == 1));
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    Ok(steps)
}

/// Builds every level of a tree bottom-up; `combine` joins two nodes.
fn levels<T: Clone>(
    leaves: Vec<T>,
    mut combine: impl FnMut(&T, &T) -> Result<T, MarketError>,
) -> Result<Vec<Vec<T>>, MarketError> {
    let mut levels = vec![leaves];
    while let Some(below) = levels.last().filter(|l| l.len() > 1) {
        let up = level_up(below, &mut combine)?;
        levels.push(up);
    }
    Ok(levels)
}

/// The level above `below`: pairs joined by `combine`, an odd last node promoted unchanged.
fn level_up<T: Clone>(
    below: &[T],
    combine: &mut impl FnMut(&T, &T) -> Result<T, MarketError>,
) -> Result<Vec<T>, MarketError> {
    below
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => combine(l, r),
            [last] => Ok(last.clone()),
            _ => unreachable!("chunks(2) yields one or two"),
        })
        .collect()
}

fn siblings<T: Clone>(levels: &[Vec<T>], mut index: usize) -> Vec<T> {
    let mut out = Vec::new();
    for level in &levels[..levels.len().saturating_sub(1)] {
        let sibling = index ^ 1;
        if sibling < level.len() {
            out.push(level[sibling].clone());
        }
        index /= 2;
    }
    out
}

/// Hash of a plain-tree leaf.
pub fn leaf_hash(digest: &B256) -> B256 {
    let mut buf = [0u8; 33];
    buf[0] = LEAF;
    buf[1..].copy_from_slice(digest.as_slice());
    keccak256(buf)
}

fn node_hash(l: &B256, r: &B256) -> B256 {
    let mut buf = [0u8; 65];
    buf[0] = NODE;
    buf[1..33].copy_from_slice(l.as_slice());
    buf[33..].copy_from_slice(r.as_slice());
    keccak256(buf)
}

/// A Merkle tree over 32-byte digests.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    levels: Vec<Vec<B256>>,
}

/// Inclusion proof in a [`MerkleTree`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MerkleProof {
    /// Position of the leaf.
    pub index: u64,
    /// Number of leaves in the tree.
    pub leaf_count: u64,
    /// Sibling hashes from the leaf up, skipping promoted levels.
    pub siblings: Vec<B256>,
}

impl MerkleTree {
    /// Builds the tree over `digests`, in order.
    pub fn new(digests: &[B256]) -> Self {
        let leaves = digests.iter().map(leaf_hash).collect();
        let levels = levels(leaves, |l, r| Ok(node_hash(l, r))).expect("plain nodes never fail");
        MerkleTree { levels }
    }

    /// The root; 32 zero bytes for an empty tree.
    pub fn root(&self) -> B256 {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or(B256::ZERO)
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Proof for leaf `index`, or `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        (index < self.len()).then(|| MerkleProof {
            index: index as u64,
            leaf_count: self.len() as u64,
            siblings: siblings(&self.levels, index),
        })
    }
}

impl MerkleProof {
    /// A proof of nothing (no index, no leaves): what a contract call takes where its
    /// evidence is absent and ignored, but must decode.
    pub fn empty() -> MerkleProof {
        MerkleProof { index: 0, leaf_count: 0, siblings: Vec::new() }
    }

    /// Checks that `digest` is leaf `index` of the tree with root `root`.
    pub fn verify(&self, digest: &B256, root: &B256) -> Result<(), ProofError> {
        let steps = path(self.index, self.leaf_count)?;
        let needed = steps.iter().flatten().count();
        if needed != self.siblings.len() {
            return Err(ProofError::WrongLength { got: self.siblings.len(), needed });
        }
        let mut siblings = self.siblings.iter();
        let mut h = leaf_hash(digest);
        for step in steps.into_iter().flatten() {
            let s = siblings.next().expect("length checked");
            h = if step { node_hash(s, &h) } else { node_hash(&h, s) };
        }
        if h == *root { Ok(()) } else { Err(ProofError::RootMismatch { computed: h, expected: *root }) }
    }
}

/// A node of a Merkle-sum tree: its hash and the sum of the values below it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SumNode {
    /// Hash committing to the subtree, sums included.
    pub hash: B256,
    /// Sum of the leaf values below.
    pub sum: Wei,
}

impl SumNode {
    /// The leaf for a receipt digest and its value.
    pub fn leaf(digest: &B256, value: Wei) -> SumNode {
        let mut buf = [0u8; 49];
        buf[0] = LEAF;
        buf[1..33].copy_from_slice(digest.as_slice());
        buf[33..].copy_from_slice(&value.0.to_be_bytes());
        SumNode { hash: keccak256(buf), sum: value }
    }

    /// The parent of two nodes; an error if the sum overflows.
    pub fn parent(l: &SumNode, r: &SumNode) -> Result<SumNode, MarketError> {
        let mut buf = [0u8; 97];
        buf[0] = NODE;
        buf[1..33].copy_from_slice(l.hash.as_slice());
        buf[33..49].copy_from_slice(&l.sum.0.to_be_bytes());
        buf[49..81].copy_from_slice(r.hash.as_slice());
        buf[81..].copy_from_slice(&r.sum.0.to_be_bytes());
        Ok(SumNode { hash: keccak256(buf), sum: l.sum.checked_add(r.sum)? })
    }
}

/// A Merkle-sum tree over `(digest, value)` leaves: a settlement batch (receipt digests
/// and values) or a payout run's data entries. Every level is kept, so that proofs can be
/// made for any node; a tree taken as published ([`SumTree::from_levels`]) may record sums
/// that do not add up, which is what a watcher looks for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SumTree {
    levels: Vec<Vec<SumNode>>,
}

/// Inclusion proof in a [`SumTree`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SumProof {
    /// Position of the leaf (leaf `i` is the receipt with seq `batchStart + 1 + i`).
    pub index: u64,
    /// Number of leaves in the tree.
    pub leaf_count: u64,
    /// Sibling nodes from the leaf up, skipping promoted levels.
    pub siblings: Vec<SumNode>,
}

impl SumTree {
    /// Builds the tree; an error if the total overflows.
    pub fn new(leaves: &[(B256, Wei)]) -> Result<Self, MarketError> {
        let leaves = leaves.iter().map(|(d, v)| SumNode::leaf(d, *v)).collect();
        Ok(SumTree { levels: levels(leaves, SumNode::parent)? })
    }

    /// A tree as published: its levels from the leaves up to the root, taken as they are
    /// (sums unchecked).
    pub fn from_levels(levels: Vec<Vec<SumNode>>) -> SumTree {
        SumTree { levels }
    }

    /// A tree whose node `index` of `level` records `sum` instead of its children's sum,
    /// with every ancestor hashed over that record: the shape of a batch a dishonest
    /// builder commits to, for tests and simulations. An error if a sum overflows.
    pub fn with_recorded_sum(
        leaves: &[(B256, Wei)],
        level: usize,
        index: usize,
        sum: Wei,
    ) -> Result<Self, MarketError> {
        let mut below: Vec<SumNode> = leaves.iter().map(|(d, v)| SumNode::leaf(d, *v)).collect();
        let mut out = Vec::new();
        let mut depth = 0usize;
        loop {
            if depth == level
                && let Some(node) = below.get_mut(index)
            {
                node.sum = sum;
            }
            let done = below.len() <= 1;
            let up = if done { Vec::new() } else { level_up(&below, &mut SumNode::parent)? };
            out.push(below);
            if done {
                return Ok(SumTree { levels: out });
            }
            below = up;
            depth = depth.saturating_add(1);
        }
    }

    /// The levels, leaves first (the last holds the root alone; none for an empty tree
    /// given as such).
    pub fn levels(&self) -> &[Vec<SumNode>] {
        &self.levels
    }

    /// The root node; hash zero and sum zero for an empty batch.
    pub fn root(&self) -> SumNode {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_default()
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Proof for leaf `index`, or `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<SumProof> {
        self.proof_at(0, index)
    }

    /// The path from node `index` of `level` to the root, in the contracts' format: the
    /// index and count are those of the node's level, as a dispute of an inner node takes
    /// them. `None` when there is no such node.
    pub fn proof_at(&self, level: usize, index: usize) -> Option<SumProof> {
        let nodes = self.levels.get(level)?;
        (index < nodes.len()).then(|| SumProof {
            index: index as u64,
            leaf_count: nodes.len() as u64,
            siblings: siblings(&self.levels[level..], index),
        })
    }
}

impl SumProof {
    /// A proof of nothing (no index, no leaves), like [`MerkleProof::empty`].
    pub fn empty() -> SumProof {
        SumProof { index: 0, leaf_count: 0, siblings: Vec::new() }
    }

    /// The path of a tree's root: index 0 of a level of one, no siblings (the contracts
    /// take it so for a dispute of the root itself, whose sum no parent records).
    pub fn of_root() -> SumProof {
        SumProof { index: 0, leaf_count: 1, siblings: Vec::new() }
    }

    /// Checks that `(digest, value)` is leaf `index` of the batch whose root is `root`
    /// (hash and total).
    pub fn verify(&self, digest: &B256, value: Wei, root: &SumNode) -> Result<(), ProofError> {
        let steps = path(self.index, self.leaf_count)?;
        let needed = steps.iter().flatten().count();
        if needed != self.siblings.len() {
            return Err(ProofError::WrongLength { got: self.siblings.len(), needed });
        }
        let mut siblings = self.siblings.iter();
        let mut node = SumNode::leaf(digest, value);
        for step in steps.into_iter().flatten() {
            let s = siblings.next().expect("length checked");
            let (l, r) = if step { (s, &node) } else { (&node, s) };
            node = SumNode::parent(l, r).map_err(|_| ProofError::SumOverflow)?;
        }
        if node.hash != root.hash {
            return Err(ProofError::RootMismatch { computed: node.hash, expected: root.hash });
        }
        if node.sum != root.sum {
            return Err(ProofError::SumMismatch { computed: node.sum, expected: root.sum });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> B256 {
        B256::repeat_byte(i)
    }

    #[test]
    fn three_leaves_promote_the_last() {
        let t = MerkleTree::new(&[d(1), d(2), d(3)]);
        let expected = node_hash(&node_hash(&leaf_hash(&d(1)), &leaf_hash(&d(2))), &leaf_hash(&d(3)));
        assert_eq!(t.root(), expected);
        let p = t.proof(2).unwrap();
        assert_eq!(p.siblings.len(), 1);
        p.verify(&d(3), &expected).unwrap();
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(MerkleTree::new(&[]).root(), B256::ZERO);
        assert_eq!(MerkleTree::new(&[d(7)]).root(), leaf_hash(&d(7)));
        let s = SumTree::new(&[(d(7), Wei(5))]).unwrap();
        assert_eq!(s.root(), SumNode::leaf(&d(7), Wei(5)));
        assert_eq!(SumTree::new(&[]).unwrap().root(), SumNode::default());
    }

    #[test]
    fn inner_node_proofs_verify_and_a_recorded_sum_changes_every_ancestor() {
        for n in 1..=9u8 {
            let leaves: Vec<_> = (0..n).map(|i| (d(i), Wei(u128::from(i) + 1))).collect();
            let t = SumTree::new(&leaves).unwrap();
            assert_eq!(SumTree::from_levels(t.levels().to_vec()), t);
            for (level, nodes) in t.levels().iter().enumerate() {
                for (i, node) in nodes.iter().enumerate() {
                    let p = t.proof_at(level, i).unwrap();
                    assert_eq!((p.index, p.leaf_count), (i as u64, nodes.len() as u64));
                    // Walk up from the node: it must reach the root.
                    let steps = path(p.index, p.leaf_count).unwrap();
                    let mut sib = p.siblings.iter();
                    let mut h = *node;
                    for left in steps.into_iter().flatten() {
                        let s = sib.next().unwrap();
                        h = if left { SumNode::parent(s, &h).unwrap() } else { SumNode::parent(&h, s).unwrap() };
                    }
                    assert!(sib.next().is_none());
                    assert_eq!(h, t.root(), "n = {n}, level {level}, node {i}");
                }
                assert!(t.proof_at(level, nodes.len()).is_none());
            }
            assert_eq!(t.proof_at(0, 0), t.proof(0));
            // Recording the honest sum changes nothing; recording another changes the root hash.
            let honest_sum = t.levels()[0][0].sum;
            assert_eq!(SumTree::with_recorded_sum(&leaves, 0, 0, honest_sum).unwrap(), t);
            let lie = SumTree::with_recorded_sum(&leaves, 0, 0, Wei(honest_sum.0 + 7)).unwrap();
            assert_eq!(lie.len(), t.len());
            // (A lone leaf is its own root: its sum is recorded by no parent's hash.)
            assert_eq!(lie.root().hash != t.root().hash, n > 1, "n = {n}");
        }
    }

    #[test]
    fn sum_tree_total_and_overflow() {
        let s = SumTree::new(&[(d(1), Wei(2)), (d(2), Wei(3)), (d(3), Wei(4))]).unwrap();
        assert_eq!(s.root().sum, Wei(9));
        assert!(SumTree::new(&[(d(1), Wei(u128::MAX)), (d(2), Wei(1))]).is_err());
    }
}
