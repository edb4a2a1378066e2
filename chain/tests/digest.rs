//! The contract's EIP-712 digests equal attrinet-market's, byte for byte.

use alloy::primitives::{Address, B256};
use attrinet_market::{ChannelId, Domain, ModelId, Price, PublicKey, Receipt, Seq, Voucher, Wei};

use crate::util::World;

/// splitmix64: random but reproducible values without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn random_receipt(rng: &mut Rng, domain: Domain) -> Receipt {
    Receipt {
        domain,
        channel: ChannelId::from(rng.bytes()),
        seq: Seq(rng.next()),
        payer: Address::from(rng.bytes::<20>()),
        provider: Address::from(rng.bytes::<20>()),
        payer_key: PublicKey(rng.bytes()),
        provider_key: PublicKey(rng.bytes()),
        model: ModelId::from(rng.bytes()),
        request_hash: B256::from(rng.bytes::<32>()),
        response_hash: B256::from(rng.bytes::<32>()),
        input_tokens: rng.next() as u32,
        output_tokens: rng.next() as u32,
        price: Price { per_1k_input: Wei(rng.u128()), per_1k_output: Wei(rng.u128()) },
        value: Wei(rng.u128()),
        cumulative: Wei(rng.u128()),
        attribution_root: B256::from(rng.bytes::<32>()),
        timestamp: rng.next(),
    }
}

#[tokio::test]
async fn receipt_and_voucher_digests_match_solidity() {
    let w = World::new().await;
    let domain = w.deployment.domain();
    let mut rng = Rng(0xa77e_1bed);
    for _ in 0..48 {
        let r = random_receipt(&mut rng, domain);
        assert_eq!(w.node.chain.receipt_digest(&r).await.unwrap(), r.digest(), "receipt {r:?}");

        let v = Voucher {
            domain,
            channel: ChannelId::from(rng.bytes()),
            seq: Seq(rng.next()),
            cumulative: Wei(rng.u128()),
            receipts_root: B256::from(rng.bytes::<32>()),
        };
        assert_eq!(w.node.chain.voucher_digest(&v).await.unwrap(), v.digest(), "voucher {v:?}");
    }
    // The domain is part of the digest: the same receipt bound to another chain or
    // contract hashes differently, so a comparison above could have failed.
    let r = random_receipt(&mut rng, domain);
    let elsewhere = Receipt { domain: Domain { chain_id: domain.chain_id + 1, ..domain }, ..r.clone() };
    assert_ne!(w.node.chain.receipt_digest(&elsewhere).await.unwrap(), elsewhere.digest());
    let other_contract = Receipt { domain: Domain { verifying_contract: Address::repeat_byte(1), ..domain }, ..r };
    assert_ne!(w.node.chain.receipt_digest(&other_contract).await.unwrap(), other_contract.digest());
}
