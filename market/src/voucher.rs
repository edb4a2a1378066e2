//! Vouchers: the payer's EVM-signed promise of a channel's cumulative total, which the
//! settlement contract checks with `ecrecover`.

use std::fmt;

use alloy_primitives::{Address, B256, Signature, U256, uint};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::SolStruct;
use serde::{Deserialize, Serialize};

use crate::codec::byte_array;
use crate::eip712;
use crate::error::VerifyError;
use crate::types::{ChannelId, Domain, Seq, Wei};

/// secp256k1's group order divided by two: signatures with a larger `s` are rejected (EIP-2),
/// because `(r, n − s)` would be a second valid signature of the same voucher.
const HALF_ORDER: U256 = uint!(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0_U256);

/// A secp256k1 signature as `ecrecover` takes it: `r ‖ s ‖ v`, `v` 27 or 28, low `s`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EvmSignature(#[serde(with = "byte_array")] pub [u8; 65]);

impl fmt::Debug for EvmSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EvmSignature({})", alloy_primitives::hex::encode(self.0))
    }
}

impl EvmSignature {
    fn from_alloy(sig: &Signature) -> Self {
        let sig = sig.normalized_s();
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
        out[32..64].copy_from_slice(&sig.s().to_be_bytes::<32>());
        // v is 0 or 1.
        #[allow(clippy::arithmetic_side_effects)]
        let v = 27 + u8::from(sig.v());
        out[64] = v;
        EvmSignature(out)
    }

    /// Parses the canonical encoding; anything else is rejected, so that exactly one byte
    /// string is a valid signature of a voucher.
    pub fn to_alloy(&self) -> Result<Signature, VerifyError> {
        let r = U256::from_be_slice(&self.0[..32]);
        let s = U256::from_be_slice(&self.0[32..64]);
        let parity = match self.0[64] {
            27 => false,
            28 => true,
            _ => return Err(VerifyError::MalformedVoucherSignature("v must be 27 or 28")),
        };
        if s > HALF_ORDER {
            return Err(VerifyError::MalformedVoucherSignature("s is in the upper half"));
        }
        if r.is_zero() || s.is_zero() {
            return Err(VerifyError::MalformedVoucherSignature("r or s is zero"));
        }
        Ok(Signature::new(r, s, parity))
    }
}

/// The payer's promise: "this channel owes the provider `cumulative` in total, as of `seq`,
/// for the receipts under `receipts_root`".
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Voucher {
    /// Chain and settlement contract.
    pub domain: Domain,
    /// The channel.
    pub channel: ChannelId,
    /// Seq of the latest receipt it covers.
    pub seq: Seq,
    /// Channel total as of `seq`.
    pub cumulative: Wei,
    /// Merkle-sum root of the receipts since the last settlement.
    pub receipts_root: B256,
}

impl Voucher {
    /// The voucher as its EIP-712 struct.
    pub fn to_eip712(&self) -> eip712::Voucher {
        eip712::Voucher {
            channel: self.channel.0,
            seq: self.seq.0,
            cumulative: self.cumulative.0,
            receiptsRoot: self.receipts_root,
        }
    }

    /// The EIP-712 hash that is signed.
    pub fn digest(&self) -> B256 {
        self.to_eip712().eip712_signing_hash(&self.domain.eip712())
    }

    /// Signs as the payer.
    pub fn sign(self, payer: &PrivateKeySigner) -> SignedVoucher {
        let sig = payer.sign_hash_sync(&self.digest()).expect("signing a 32-byte hash with a local key cannot fail");
        SignedVoucher { voucher: self, signature: EvmSignature::from_alloy(&sig) }
    }
}

/// A voucher with the payer's signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// The payer's signature over [`Voucher::digest`].
    pub signature: EvmSignature,
}

impl SignedVoucher {
    /// The address that signed, as `ecrecover` would return it.
    pub fn signer(&self) -> Result<Address, VerifyError> {
        self.signature
            .to_alloy()?
            .recover_address_from_prehash(&self.voucher.digest())
            .map_err(|_| VerifyError::MalformedVoucherSignature("no key recovers from it"))
    }

    /// Checks that `payer` signed it.
    pub fn verify(&self, payer: Address) -> Result<(), VerifyError> {
        let recovered = self.signer()?;
        if recovered == payer { Ok(()) } else { Err(VerifyError::WrongVoucherSigner { recovered, expected: payer }) }
    }
}
