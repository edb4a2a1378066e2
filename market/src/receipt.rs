//! Attribution receipts: one per inference, signed by the provider, co-signed by the payer.

use std::fmt;

use alloy_primitives::{Address, B256};
use alloy_sol_types::SolStruct;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::byte_array;
use crate::eip712;
use crate::error::VerifyError;
use crate::types::{ChannelId, Domain, ModelId, Price, Seq, Wei};

/// An ed25519 public key (32 bytes, RFC 8032 encoding). Kept as bytes: whether they are a
/// valid, non-small-order point is checked when a signature is verified under them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl From<&SigningKey> for PublicKey {
    fn from(key: &SigningKey) -> Self {
        PublicKey(key.verifying_key().to_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", B256::from(self.0))
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ed25519Signature(#[serde(with = "byte_array")] pub [u8; 64]);

impl fmt::Debug for Ed25519Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Signature({})", alloy_primitives::hex::encode(self.0))
    }
}

fn sign(key: &SigningKey, digest: &B256) -> Ed25519Signature {
    Ed25519Signature(key.sign(digest.as_slice()).to_bytes())
}

fn verify(key: &PublicKey, digest: &B256, sig: &Ed25519Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&key.0) else { return false };
    // verify_strict: rejects non-canonical S, small-order keys and R, so a signature has one
    // valid encoding and cannot be malleated into a second valid one.
    key.verify_strict(digest.as_slice(), &ed25519_dalek::Signature::from_bytes(&sig.0)).is_ok()
}

/// SHA-256 of a request as the client sent it.
pub fn request_hash(request: &[u8]) -> B256 {
    B256::from(<[u8; 32]>::from(Sha256::digest(request)))
}

/// SHA-256 of the output token ids, each as 4 bytes little-endian, in order.
pub fn response_hash(tokens: &[u32]) -> B256 {
    let mut h = Sha256::new();
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    B256::from(<[u8; 32]>::from(h.finalize()))
}

/// The record of one inference. Its fields are specified in `docs/protocol.md`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Receipt {
    /// Chain and settlement contract the receipt is bound to.
    pub domain: Domain,
    /// The payment channel.
    pub channel: ChannelId,
    /// Position in the channel: previous + 1.
    pub seq: Seq,
    /// The client's EVM address.
    pub payer: Address,
    /// The node's EVM address.
    pub provider: Address,
    /// The client's ed25519 key.
    pub payer_key: PublicKey,
    /// The node's ed25519 key.
    pub provider_key: PublicKey,
    /// The model that ran.
    pub model: ModelId,
    /// [`request_hash`] of the request.
    pub request_hash: B256,
    /// [`response_hash`] of the generated tokens.
    pub response_hash: B256,
    /// Prompt tokens processed.
    pub input_tokens: u32,
    /// Tokens generated and delivered.
    pub output_tokens: u32,
    /// Quoted price.
    pub price: Price,
    /// `price.value(input_tokens, output_tokens)`.
    pub value: Wei,
    /// Channel total after this receipt.
    pub cumulative: Wei,
    /// Merkle root of the attribution weights (zero when none).
    pub attribution_root: B256,
    /// Unix seconds at which the provider proposed it.
    pub timestamp: u64,
}

impl Receipt {
    /// The receipt as its EIP-712 struct.
    pub fn to_eip712(&self) -> eip712::Receipt {
        eip712::Receipt {
            channel: self.channel.0,
            seq: self.seq.0,
            payer: self.payer,
            provider: self.provider,
            payerKey: B256::from(self.payer_key.0),
            providerKey: B256::from(self.provider_key.0),
            model: self.model.0,
            requestHash: self.request_hash,
            responseHash: self.response_hash,
            inputTokens: self.input_tokens,
            outputTokens: self.output_tokens,
            priceIn: self.price.per_1k_input.0,
            priceOut: self.price.per_1k_output.0,
            value: self.value.0,
            cumulative: self.cumulative.0,
            attributionRoot: self.attribution_root,
            timestamp: self.timestamp,
        }
    }

    /// The signing digest: the receipt's EIP-712 hash under its domain (what Solidity's
    /// `_hashTypedDataV4(hashStruct(receipt))` returns).
    pub fn digest(&self) -> B256 {
        self.to_eip712().eip712_signing_hash(&self.domain.eip712())
    }

    /// Signs the receipt as its provider.
    pub fn propose(self, provider: &SigningKey) -> ProposedReceipt {
        let provider_sig = sign(provider, &self.digest());
        ProposedReceipt { receipt: self, provider_sig }
    }
}

/// A receipt signed by its provider, waiting for the payer's signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProposedReceipt {
    /// The receipt.
    pub receipt: Receipt,
    /// The provider's signature over [`Receipt::digest`].
    pub provider_sig: Ed25519Signature,
}

impl ProposedReceipt {
    /// Checks the provider's signature under the receipt's provider key.
    pub fn verify(&self) -> Result<(), VerifyError> {
        if verify(&self.receipt.provider_key, &self.receipt.digest(), &self.provider_sig) {
            Ok(())
        } else {
            Err(VerifyError::ProviderSignature)
        }
    }

    /// Adds the payer's signature. Checking the receipt is the ledger's job
    /// ([`crate::PayerChannel::accept`]); this only signs.
    pub fn cosign(self, payer: &SigningKey) -> SignedReceipt {
        let payer_sig = sign(payer, &self.receipt.digest());
        SignedReceipt { receipt: self.receipt, provider_sig: self.provider_sig, payer_sig }
    }
}

/// A receipt signed by both parties.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// The receipt.
    pub receipt: Receipt,
    /// The provider's signature over [`Receipt::digest`].
    pub provider_sig: Ed25519Signature,
    /// The payer's signature over [`Receipt::digest`].
    pub payer_sig: Ed25519Signature,
}

impl SignedReceipt {
    /// Checks both signatures (strict ed25519) under the keys the receipt names.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let digest = self.receipt.digest();
        if !verify(&self.receipt.provider_key, &digest, &self.provider_sig) {
            return Err(VerifyError::ProviderSignature);
        }
        if !verify(&self.receipt.payer_key, &digest, &self.payer_sig) {
            return Err(VerifyError::PayerSignature);
        }
        Ok(())
    }

    /// The proposal this was co-signed from.
    pub fn proposal(&self) -> ProposedReceipt {
        ProposedReceipt { receipt: self.receipt.clone(), provider_sig: self.provider_sig }
    }
}
