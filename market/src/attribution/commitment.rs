//! The contributions and the datanet commitment: each contribution's digest, the roots the
//! Registry records, and the proof that an address is not a contributor.

use alloy_primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};

use super::DATANET_TAG;
use crate::merkle::MerkleTree;
use crate::receipt::response_hash;

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

pub(super) fn datanet_root_of(min_span: u32, contributions_root: &B256, owners_root: &B256) -> B256 {
    // A capacity of constants: a short tag, a u32 and two hashes.
    #[allow(clippy::arithmetic_side_effects)]
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

pub(super) fn owners_tree(owners: &[Address]) -> MerkleTree {
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
            (Some(Some((lo, i))), Some(Some((hi, j)))) => lo < *who && *who < hi && i.checked_add(1) == Some(j),
            (Some(Some((lo, i))), None) => lo < *who && i.checked_add(1) == Some(n),
            (None, Some(Some((hi, j)))) => *who < hi && j == 0,
            _ => false,
        }
    }
}
