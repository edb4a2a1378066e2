//! A participant's two keys: ed25519 (libp2p identity, receipt co-signing) and secp256k1
//! (EVM address, vouchers and transactions).

use std::fmt;

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use ed25519_dalek::SigningKey;

use crate::error::MarketError;
use crate::receipt::PublicKey;

/// The keys of a node or client.
#[derive(Clone)]
pub struct Identity {
    /// ed25519: libp2p identity and receipt signatures.
    pub ed25519: SigningKey,
    /// secp256k1: EVM address, vouchers and transactions.
    pub evm: PrivateKeySigner,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("Identity").field("public_key", &self.public_key()).field("address", &self.address()).finish()
    }
}

impl Identity {
    /// Builds an identity from two 32-byte secrets; an error if the secp256k1 secret is not
    /// a valid scalar (zero or not below the group order).
    pub fn from_secrets(ed25519: [u8; 32], evm: [u8; 32]) -> Result<Identity, MarketError> {
        let evm = PrivateKeySigner::from_bytes(&evm.into())
            .map_err(|e| MarketError::Decode { what: "secp256k1 secret key", reason: e.to_string() })?;
        Ok(Identity { ed25519: SigningKey::from_bytes(&ed25519), evm })
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.ed25519)
    }

    /// The EVM address.
    pub fn address(&self) -> Address {
        self.evm.address()
    }
}
