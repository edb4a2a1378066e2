//! Property tests of the market rules: encodings round-trip, signatures bind every byte,
//! splits are exact, Merkle proofs are sound, and ledgers and stores never accept a gap, a
//! replay or a cumulative that does not add up.

use alloy_primitives::{Address, B256};
use attrinet_market::*;
use proptest::prelude::*;
use serde::{Serialize, de::DeserializeOwned};

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = encode(v);
    let back: T = decode(&bytes).expect("decodes");
    assert_eq!(&back, v);
    // Trailing bytes are rejected: one value, one encoding length.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode::<T>(&longer).is_err());
}

fn b256() -> impl Strategy<Value = B256> {
    any::<[u8; 32]>().prop_map(B256::from)
}

fn address() -> impl Strategy<Value = Address> {
    any::<[u8; 20]>().prop_map(Address::from)
}

fn wei() -> impl Strategy<Value = Wei> {
    prop_oneof![any::<u128>(), 0u128..1_000_000_000].prop_map(Wei)
}

/// A secp256k1 secret is valid below the group order: a top byte under 0x80 guarantees it,
/// and a non-zero low byte rules out zero.
fn identity() -> impl Strategy<Value = Identity> {
    (any::<[u8; 32]>(), any::<[u8; 32]>(), 0u8..0x80, 1u8..=255).prop_map(|(ed, mut evm, top, low)| {
        evm[0] = top;
        evm[31] = low;
        Identity::from_secrets(ed, evm).expect("valid secret")
    })
}

fn domain() -> impl Strategy<Value = Domain> {
    (any::<u64>(), address()).prop_map(|(chain_id, verifying_contract)| Domain { chain_id, verifying_contract })
}

fn price() -> impl Strategy<Value = Price> {
    (0u128..1u128 << 90, 0u128..1u128 << 90).prop_map(|(i, o)| Price { per_1k_input: Wei(i), per_1k_output: Wei(o) })
}

fn receipt_with(payer: &Identity, provider: &Identity) -> impl Strategy<Value = Receipt> + use<> {
    let (pa, pk, va, vk) = (payer.address(), payer.public_key(), provider.address(), provider.public_key());
    (
        (domain(), b256(), any::<u64>(), b256(), b256(), b256()),
        (any::<u32>(), any::<u32>(), price(), wei(), wei(), b256(), any::<u64>()),
    )
        .prop_map(move |((domain, channel, seq, model, req, resp), (i, o, price, value, cumulative, attr, ts))| {
            Receipt {
                domain,
                channel: ChannelId(channel),
                seq: Seq(seq),
                payer: pa,
                provider: va,
                payer_key: pk,
                provider_key: vk,
                model: ModelId(model),
                request_hash: req,
                response_hash: resp,
                input_tokens: i,
                output_tokens: o,
                price,
                value,
                cumulative,
                attribution_root: attr,
                timestamp: ts,
            }
        })
}

/// A co-signed receipt with random content and fresh random keys.
fn signed_receipt() -> impl Strategy<Value = (SignedReceipt, Identity, Identity)> {
    (identity(), identity()).prop_flat_map(|(payer, provider)| {
        receipt_with(&payer, &provider).prop_map(move |r| {
            let signed = r.propose(&provider.ed25519).cosign(&payer.ed25519);
            (signed, payer.clone(), provider.clone())
        })
    })
}

fn signed_voucher() -> impl Strategy<Value = (SignedVoucher, Address)> {
    (identity(), domain(), b256(), any::<u64>(), wei(), b256()).prop_map(
        |(payer, domain, ch, seq, cumulative, root)| {
            let v = Voucher { domain, channel: ChannelId(ch), seq: Seq(seq), cumulative, receipts_root: root };
            (v.sign(&payer.evm), payer.address())
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn wire_and_stored_types_roundtrip((signed, payer, _provider) in signed_receipt(), (voucher, _) in signed_voucher(), p in price(), n in 1usize..20) {
        roundtrip(&signed);
        roundtrip(&signed.receipt);
        roundtrip(&signed.proposal());
        roundtrip(&voucher);
        roundtrip(&voucher.voucher);
        roundtrip(&StoredReceipt { receipt: signed.clone(), voucher: voucher.clone() });
        let params = ChannelParams {
            domain: signed.receipt.domain,
            id: signed.receipt.channel,
            payer: payer.address(),
            provider: signed.receipt.provider,
            payer_key: payer.public_key(),
            provider_key: signed.receipt.provider_key,
        };
        roundtrip(&params);
        roundtrip(&ChannelState { last_seq: Seq(3), cumulative: Wei(17), settled_seq: Seq(1), ..ChannelState::open(params, Wei(99)) });
        roundtrip(&Quote { model: signed.receipt.model, price: p, max_input_tokens: 7, max_output_tokens: 9 });
        roundtrip(&p);
        let split = Split::new(7000, 2000, 900, 100).unwrap();
        roundtrip(&split);
        roundtrip(&split.apply(signed.receipt.value));
        let digests: Vec<B256> = (0..n).map(|i| B256::repeat_byte(i as u8)).collect();
        roundtrip(&MerkleTree::new(&digests).proof(n - 1).unwrap());
        let leaves: Vec<(B256, Wei)> = digests.iter().map(|d| (*d, Wei(5))).collect();
        let tree = SumTree::new(&leaves).unwrap();
        roundtrip(&tree.proof(0).unwrap());
        roundtrip(&tree.root());
    }

    #[test]
    fn any_byte_change_breaks_a_signed_receipt((signed, _, _) in signed_receipt(), flip in 1u8..=255) {
        prop_assert!(signed.verify().is_ok());
        let bytes = encode(&signed);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            if let Ok(decoded) = decode::<SignedReceipt>(&bad) {
                prop_assert!(decoded.verify().is_err(), "byte {} ^ {:#x} still verifies", i, flip);
            }
        }
    }

    #[test]
    fn any_byte_change_breaks_a_signed_voucher((voucher, payer) in signed_voucher(), flip in 1u8..=255) {
        prop_assert_eq!(voucher.signer().unwrap(), payer);
        let bytes = encode(&voucher);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            if let Ok(decoded) = decode::<SignedVoucher>(&bad) {
                prop_assert!(decoded.verify(payer).is_err(), "byte {} ^ {:#x} still verifies", i, flip);
            }
        }
    }

    #[test]
    fn splits_sum_exactly(v in any::<u128>(), a in 0u16..=10_000, b in 0u16..=10_000, c in 0u16..=10_000) {
        // Any three parts that fit, the fourth makes the whole.
        prop_assume!(u32::from(a) + u32::from(b) + u32::from(c) <= 10_000);
        let node = 10_000 - a - b - c;
        let split = Split::new(node, a, b, c).unwrap();
        let p = split.apply(Wei(v));
        prop_assert_eq!(p.total().unwrap(), Wei(v));
        // Each floored share is the exact share rounded down; the node gets at most 3 wei of dust.
        let exact = |bps: u16| alloy_primitives::U256::from(v) * alloy_primitives::U256::from(bps) / alloy_primitives::U256::from(10_000u32);
        prop_assert_eq!(alloy_primitives::U256::from(p.owner.0), exact(a));
        prop_assert_eq!(alloy_primitives::U256::from(p.data.0), exact(b));
        prop_assert_eq!(alloy_primitives::U256::from(p.protocol.0), exact(c));
        let node_exact = exact(node);
        let node_got = alloy_primitives::U256::from(p.node.0);
        prop_assert!(node_got >= node_exact && node_got - node_exact <= alloy_primitives::U256::from(3));
    }

    #[test]
    fn merkle_proofs_verify_and_tampering_fails(digests in prop::collection::vec(b256(), 1..40), pick in any::<prop::sample::Index>(), other in b256()) {
        let tree = MerkleTree::new(&digests);
        let root = tree.root();
        for (i, d) in digests.iter().enumerate() {
            tree.proof(i).unwrap().verify(d, &root).unwrap();
        }
        let i = pick.index(digests.len());
        let proof = tree.proof(i).unwrap();
        if other != digests[i] {
            prop_assert!(proof.verify(&other, &root).is_err());
        }
        for s in 0..proof.siblings.len() {
            let mut bad = proof.clone();
            bad.siblings[s].0[0] ^= 1;
            prop_assert!(bad.verify(&digests[i], &root).is_err());
        }
        if digests.len() > 1 && digests.iter().any(|d| *d != digests[i]) {
            // The same content at another position does not verify (position is bound).
            let j = (i + 1) % digests.len();
            let moved = MerkleProof { index: j as u64, ..proof.clone() };
            if digests[j] != digests[i] {
                prop_assert!(moved.verify(&digests[i], &root).is_err());
            }
        }
        let mut short = proof.clone();
        short.siblings.push(other);
        prop_assert!(short.verify(&digests[i], &root).is_err());
    }

    #[test]
    fn sum_proofs_verify_and_tampering_fails(leaves in prop::collection::vec((b256(), 0u128..1 << 100), 1..40), pick in any::<prop::sample::Index>(), delta in 1u128..1000) {
        let leaves: Vec<(B256, Wei)> = leaves.into_iter().map(|(d, v)| (d, Wei(v))).collect();
        let tree = SumTree::new(&leaves).unwrap();
        let root = tree.root();
        let total = leaves.iter().map(|l| l.1.0).sum::<u128>();
        prop_assert_eq!(root.sum, Wei(total));
        for (i, (d, v)) in leaves.iter().enumerate() {
            tree.proof(i).unwrap().verify(d, *v, &root).unwrap();
        }
        let i = pick.index(leaves.len());
        let (d, v) = leaves[i];
        let proof = tree.proof(i).unwrap();
        prop_assert!(proof.verify(&d, Wei(v.0 + delta), &root).is_err());
        for s in 0..proof.siblings.len() {
            let mut bad = proof.clone();
            bad.siblings[s].sum = Wei(bad.siblings[s].sum.0 + delta);
            prop_assert!(bad.verify(&d, v, &root).is_err());
            let mut bad = proof.clone();
            bad.siblings[s].hash.0[31] ^= 1;
            prop_assert!(bad.verify(&d, v, &root).is_err());
        }
        let inflated = SumNode { sum: Wei(root.sum.0 + delta), ..root };
        prop_assert!(proof.verify(&d, v, &inflated).is_err());
    }
}

/// A channel with both ledgers and stores, driven through the protocol.
struct Channel {
    node: Identity,
    client: Identity,
    provider: ProviderChannel,
    payer: PayerChannel,
    node_store: MemStore,
    client_store: MemStore,
    quote: Quote,
}

const NOW: u64 = 1_700_000_000;

impl Channel {
    fn new(deposit: Wei, limit: Wei) -> Channel {
        let node = Identity::from_secrets([1; 32], [2; 32]).unwrap();
        let client = Identity::from_secrets([3; 32], [4; 32]).unwrap();
        let params = ChannelParams {
            domain: Domain { chain_id: 10, verifying_contract: Address::repeat_byte(0xcc) },
            id: ChannelId::from([9; 32]),
            payer: client.address(),
            provider: node.address(),
            payer_key: client.public_key(),
            provider_key: node.public_key(),
        };
        let open = ChannelState::open(params, deposit);
        let (node_store, client_store) = (MemStore::new(), MemStore::new());
        node_store.put_channel(&open).unwrap();
        client_store.put_channel(&open).unwrap();
        Channel {
            provider: ProviderChannel::restore(open.clone(), &[], limit),
            payer: PayerChannel::restore(open, &[]),
            node,
            client,
            node_store,
            client_store,
            quote: Quote {
                model: ModelId::from([7; 32]),
                price: Price { per_1k_input: Wei(1_000), per_1k_output: Wei(3_000) },
                max_input_tokens: 100,
                max_output_tokens: 50,
            },
        }
    }

    fn usage(input: u32, tokens: &[u32]) -> (Usage, Delivered) {
        let usage = Usage {
            request_hash: request_hash(&input.to_le_bytes()),
            response_hash: response_hash(tokens),
            input_tokens: input,
            output_tokens: tokens.len() as u32,
            attribution_root: B256::ZERO,
        };
        let delivered = Delivered::plain(usage.request_hash, usage.response_hash, usage.output_tokens, Some(input));
        (usage, delivered)
    }

    /// One full, honest round; returns what both stored.
    fn round(&mut self, input: u32, out: u32) -> Result<(SignedReceipt, SignedVoucher), LedgerError> {
        let tokens: Vec<u32> = (0..out).collect();
        let (usage, delivered) = Channel::usage(input, &tokens);
        let r = self.provider.reserve(self.quote, Admission::of(&self.quote))?;
        let (proposal, start) = self.provider.propose(r, &usage, NOW, &self.node)?;
        let (receipt, voucher) = self.payer.accept(proposal, start, &self.quote, &delivered, NOW, &self.client)?;
        let s = self.client_store.record_receipt(&receipt, &voucher).unwrap();
        self.payer.commit(&s, &receipt);
        self.provider.check_cosigned(&receipt, &voucher)?;
        let s = self.node_store.record_receipt(&receipt, &voucher).unwrap();
        self.provider.commit(&s, &receipt);
        Ok((receipt, voucher))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// After any honest history, a proposal with any seq but last + 1, or any cumulative but
    /// previous + value, is refused by the payer's ledger and by both stores, and nothing
    /// changes.
    #[test]
    fn ledgers_refuse_bad_seq_and_cumulative(
        rounds in prop::collection::vec((0u32..=100, 0u32..=50), 1..8),
        bad_seq in any::<u64>(),
        bad_cumulative in any::<u128>(),
    ) {
        let mut ch = Channel::new(Wei(u128::MAX), Wei(1 << 40));
        let mut sum = 0u128;
        for (i, o) in &rounds {
            let (r, _) = ch.round(*i, *o).unwrap();
            sum += r.receipt.value.0;
        }
        let state = ch.client_store.channel(&ch.payer.state().params.id).unwrap().unwrap();
        prop_assert_eq!(state.cumulative, Wei(sum));
        prop_assert_eq!(state.last_seq, Seq(rounds.len() as u64));

        // The node proposes the next receipt honestly; we then forge its seq or cumulative
        // and re-sign it with the node's key, so only the rule can catch it.
        let tokens = [1, 2, 3];
        let (usage, delivered) = Channel::usage(10, &tokens);
        let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
        let (honest, start) = ch.provider.propose(r, &usage, NOW, &ch.node).unwrap();
        let next = honest.receipt.seq;

        let mut forged = honest.receipt.clone();
        forged.seq = Seq(bad_seq);
        if forged.seq != next {
            let p = forged.clone().propose(&ch.node.ed25519);
            let err = ch.payer.accept(p.clone(), start, &ch.quote, &delivered, NOW, &ch.client).unwrap_err();
            prop_assert!(matches!(err, LedgerError::WrongSeq { .. }), "{:?}", err);
            // Even co-signed by the payer, no store records it.
            let signed = p.cosign(&ch.client.ed25519);
            let v = Voucher { domain: forged.domain, channel: forged.channel, seq: forged.seq, cumulative: forged.cumulative, receipts_root: B256::ZERO }.sign(&ch.client.evm);
            prop_assert!(ch.node_store.record_receipt(&signed, &v).is_err());
            prop_assert!(ch.client_store.record_receipt(&signed, &v).is_err());
        }

        let mut forged = honest.receipt.clone();
        forged.cumulative = Wei(bad_cumulative);
        if forged.cumulative != honest.receipt.cumulative {
            let p = forged.clone().propose(&ch.node.ed25519);
            let err = ch.payer.accept(p.clone(), start, &ch.quote, &delivered, NOW, &ch.client).unwrap_err();
            prop_assert!(matches!(err, LedgerError::WrongCumulative { .. }), "{:?}", err);
            let signed = p.cosign(&ch.client.ed25519);
            let v = Voucher { domain: forged.domain, channel: forged.channel, seq: forged.seq, cumulative: forged.cumulative, receipts_root: B256::ZERO }.sign(&ch.client.evm);
            let res = ch.node_store.record_receipt(&signed, &v);
            prop_assert!(matches!(res, Err(StoreError::Cumulative { .. })), "{:?}", res);
        }

        // Replaying an already stored receipt is refused by the stores and the ledger.
        let old = ch.node_store.receipt(&state.params.id, Seq(1)).unwrap().unwrap();
        let res = ch.node_store.record_receipt(&old.receipt, &old.voucher);
        prop_assert!(matches!(res, Err(StoreError::SeqGap { .. })), "{:?}", res);
        let err = ch.payer.accept(old.receipt.proposal(), start, &ch.quote, &delivered, NOW, &ch.client).unwrap_err();
        prop_assert!(matches!(err, LedgerError::WrongSeq { .. }), "{:?}", err);

        // Nothing moved.
        prop_assert_eq!(ch.node_store.channel(&state.params.id).unwrap().unwrap(), state.clone());
        prop_assert_eq!(ch.client_store.channel(&state.params.id).unwrap().unwrap(), state);
    }
}

#[test]
fn payer_refuses_each_dishonest_field() {
    let mut ch = Channel::new(Wei(1_000_000), Wei(1_000_000));
    ch.round(10, 5).unwrap();
    let tokens = [1, 2, 3];
    let (usage, delivered) = Channel::usage(10, &tokens);
    let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let (honest, start) = ch.provider.propose(r, &usage, NOW, &ch.node).unwrap();
    let check = |f: &dyn Fn(&mut Receipt)| {
        let mut r = honest.receipt.clone();
        f(&mut r);
        ch.payer.check(&r.propose(&ch.node.ed25519), start, &ch.quote, &delivered, NOW).unwrap_err()
    };
    assert!(matches!(check(&|r| r.value = Wei(r.value.0 + 1)), LedgerError::WrongValue { .. }));
    assert!(matches!(check(&|r| r.output_tokens += 1), LedgerError::WrongTokens { kind: "output", .. }));
    assert!(matches!(check(&|r| r.input_tokens += 1), LedgerError::WrongTokens { kind: "input", .. }));
    assert!(matches!(check(&|r| r.response_hash = B256::ZERO), LedgerError::WrongResponse));
    assert!(matches!(check(&|r| r.request_hash = B256::ZERO), LedgerError::WrongRequest));
    assert!(matches!(check(&|r| r.model = ModelId::from([0; 32])), LedgerError::WrongModel { .. }));
    assert!(matches!(check(&|r| r.price.per_1k_output = Wei(1)), LedgerError::WrongPrice { .. }));
    assert!(matches!(check(&|r| r.timestamp = NOW + 3600), LedgerError::ClockSkew { .. }));
    assert!(matches!(check(&|r| r.domain.chain_id = 1), LedgerError::ForeignReceipt("domain")));
    // A signature by another key than the channel's provider key.
    let mut other = honest.clone();
    other.provider_sig = honest.receipt.clone().propose(&ch.client.ed25519).provider_sig;
    assert!(matches!(ch.payer.check(&other, start, &ch.quote, &delivered, NOW), Err(LedgerError::Signature(_))));
    // The honest one passes.
    ch.payer.check(&honest, start, &ch.quote, &delivered, NOW).unwrap();
}

#[test]
fn provider_refuses_past_its_exposure_limit_and_the_deposit() {
    // Max value of one request: 100 × 1000/1000 + 50 × 3000/1000 = 250 wei.
    let mut ch = Channel::new(Wei(10_000), Wei(600));
    let a = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let _b = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let err = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap_err();
    assert_eq!(err, LedgerError::ExposureLimit { unpaid: Wei(500), requested: Wei(250), limit: Wei(600) });
    // A proposal the payer never co-signs stays unpaid, also once written off.
    let (usage, _) = Channel::usage(100, &(0..50).collect::<Vec<_>>());
    let (first, _) = ch.provider.propose(a, &usage, NOW, &ch.node).unwrap();
    assert_eq!(ch.provider.unpaid().unwrap(), Wei(500));
    assert_eq!(ch.provider.abandon().unwrap(), first.receipt.value, "what was written off");
    assert_eq!(ch.provider.unpaid().unwrap(), Wei(500));
    assert_eq!(ch.provider.written_off(), first.receipt.value);
    // What the payer left unpaid elsewhere counts against the same limit.
    let mut fresh = Channel::new(Wei(10_000), Wei(600));
    assert!(matches!(
        fresh.provider.reserve_with(fresh.quote, Admission::of(&fresh.quote), Wei(400)),
        Err(LedgerError::ExposureLimit { unpaid: Wei(400), .. })
    ));
    assert!(matches!(ch.provider.reserve(ch.quote, Admission::of(&ch.quote)), Err(LedgerError::ExposureLimit { .. })));
    // The abandoned seq is reused by the next proposal.
    ch.provider.release(_b);
    let c = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let (next, _) = ch.provider.propose(c, &usage, NOW, &ch.node).unwrap();
    assert_eq!(next.receipt.seq, first.receipt.seq);
    // One proposal at a time.
    let mut ch2 = Channel::new(Wei(10_000), Wei(10_000));
    let a = ch2.provider.reserve(ch2.quote, Admission::of(&ch2.quote)).unwrap();
    let b = ch2.provider.reserve(ch2.quote, Admission::of(&ch2.quote)).unwrap();
    ch2.provider.propose(a, &usage, NOW, &ch2.node).unwrap();
    assert!(matches!(ch2.provider.propose(b, &usage, NOW, &ch2.node), Err(LedgerError::ProposalInFlight { .. })));
    assert_eq!(ch2.provider.unpaid().unwrap(), Wei(250), "a failed proposal releases its reservation");

    // The deposit bounds the total even under a generous limit.
    let mut ch = Channel::new(Wei(400), Wei(1_000_000));
    ch.round(100, 50).unwrap();
    assert_eq!(
        ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap_err(),
        LedgerError::DepositExceeded { needed: Wei(500), deposit: Wei(400) }
    );
}

#[test]
fn voucher_root_covers_the_batch_since_settlement() {
    let mut ch = Channel::new(Wei(1_000_000), Wei(1_000_000));
    let mut leaves = Vec::new();
    for k in 0..5 {
        let (r, v) = ch.round(10 + k, 5).unwrap();
        leaves.push((r.receipt.digest(), r.receipt.value));
        let tree = SumTree::new(&leaves).unwrap();
        assert_eq!(v.voucher.receipts_root, tree.root().hash);
        assert_eq!(tree.root().sum, v.voucher.cumulative);
    }
    // Settle through seq 5: the next voucher's batch holds only seq 6.
    let s = ch.node_store.mark_settled(&ch.provider.state().params.id, Seq(5)).unwrap();
    ch.provider.settled(&s);
    let s = ch.client_store.mark_settled(&ch.payer.state().params.id, Seq(5)).unwrap();
    ch.payer.settled(&s);
    let (r, v) = ch.round(1, 1).unwrap();
    assert_eq!(v.voucher.receipts_root, SumTree::new(&[(r.receipt.digest(), r.receipt.value)]).unwrap().root().hash);
}

#[test]
fn provider_refuses_a_voucher_for_the_wrong_batch() {
    let mut ch = Channel::new(Wei(1_000_000), Wei(1_000_000));
    ch.round(10, 5).unwrap();
    let tokens = [1, 2];
    let (usage, delivered) = Channel::usage(3, &tokens);
    let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let (proposal, _) = ch.provider.propose(r, &usage, NOW, &ch.node).unwrap();
    // The payer builds its root from a wrong batch start (pretending seq 1 was settled).
    let (receipt, voucher) = ch.payer.accept(proposal, Seq(1), &ch.quote, &delivered, NOW, &ch.client).unwrap();
    assert!(matches!(ch.provider.check_cosigned(&receipt, &voucher), Err(LedgerError::WrongReceiptsRoot { .. })));
    // A voucher signed by someone other than the payer.
    let forged = voucher.voucher.clone().sign(&ch.node.evm);
    assert!(matches!(
        ch.provider.check_cosigned(&receipt, &forged),
        Err(LedgerError::WrongReceiptsRoot { .. }) | Err(LedgerError::Signature(_))
    ));
}

fn advert_by(node: &Identity, seq: u64, expires_at: u64) -> SignedAdvert {
    ModelAdvert {
        node_key: node.public_key(),
        evm_address: node.address(),
        model: ModelId::from([5; 32]),
        model_name: "SmolLM2-135M-Instruct".into(),
        price: Price { per_1k_input: Wei(10), per_1k_output: Wei(20) },
        context_length: 2048,
        free_capacity: 4,
        decode_tokens_per_s: 80,
        ttft_ms: 40,
        cold_start_ms: 0,
        expires_at,
        seq,
        addrs: vec![],
    }
    .sign(&node.ed25519)
}

/// Issue 15's advert flood: one node (or many) publishing valid adverts for ever more
/// models. The view holds at most `MAX_MODELS_PER_NODE` per node (more is refused and
/// penalised) and `MAX_VIEW_ADVERTS` in all (a full view refuses newcomers, unpenalised,
/// and keeps taking updates of what it holds), so memory stays bounded.
#[test]
fn a_flood_of_valid_adverts_cannot_grow_the_view_without_bound() {
    use attrinet_market::{MAX_MODELS_PER_NODE, MAX_VIEW_ADVERTS};
    let now = 1_000;
    let model = |i: usize| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        ModelId::from(id)
    };
    let for_model = |node: &Identity, i: usize, seq: u64| {
        let mut a = advert_by(node, seq, now + 60).advert;
        a.model = model(i);
        a.sign(&node.ed25519)
    };
    let flooder = Identity::from_secrets([3; 32], [3; 32]).unwrap();
    let mut view = MarketView::new();
    let mut refused = 0;
    for i in 0..1_000 {
        match view.insert(for_model(&flooder, i, 1)) {
            Ok(()) => {}
            Err(e) => {
                assert!(matches!(e, AdvertError::TooManyModels { .. }) && e.penalise(), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((view.all(now).len(), refused), (MAX_MODELS_PER_NODE, 1_000 - MAX_MODELS_PER_NODE));
    // Its adverts for models it already has are still taken.
    view.insert(for_model(&flooder, 0, 2)).unwrap();

    // Many nodes: the view fills, then refuses newcomers without penalty, and still takes
    // updates from the nodes it holds.
    let mut view = MarketView::new();
    let per_node = MAX_MODELS_PER_NODE;
    let nodes: Vec<Identity> = (0..MAX_VIEW_ADVERTS / per_node + 1)
        .map(|n| {
            let mut secret = [7u8; 32];
            secret[..8].copy_from_slice(&(n as u64).to_le_bytes());
            Identity::from_secrets(secret, secret).unwrap()
        })
        .collect();
    let (last, full) = nodes.split_last().unwrap();
    for node in full {
        for i in 0..per_node {
            view.insert(for_model(node, i, 1)).unwrap();
        }
    }
    assert_eq!(view.all(now).len(), MAX_VIEW_ADVERTS);
    let e = view.insert(for_model(last, 0, 1)).unwrap_err();
    assert!(matches!(e, AdvertError::ViewFull { .. }) && !e.penalise(), "{e}");
    view.insert(for_model(&full[0], 0, 2)).unwrap();
    assert_eq!(view.all(now).len(), MAX_VIEW_ADVERTS);
    // Once adverts expire, newcomers fit again.
    view.expire(now + 60);
    view.insert(for_model(last, 0, 1)).unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 15's update flood: a node publishing new seqs as fast as gossip carries them (or
/// one seq near `u64::MAX`, after which every honest advert of that node and model would be
/// stale). An advert's seq may run at most `MAX_SEQ_LEAD_SECS` ahead of the clock, so a
/// node gets at most that many updates through at once, and then one a second.
#[test]
fn an_advert_whose_seq_runs_ahead_of_the_clock_is_refused() {
    let now = 1_000;
    let node = Identity::from_secrets([9; 32], [9; 32]).unwrap();
    let mut view = MarketView::new();
    let mut taken = 0u64;
    for seq in now + 1..=now + 10_000 {
        let bytes = encode(&advert_by(&node, seq, now + 60));
        if let Ok(advert) = SignedAdvert::from_gossip(&bytes, &node.public_key(), now) {
            view.insert(advert).unwrap();
            taken += 1;
        }
    }
    assert_eq!(taken, MAX_SEQ_LEAD_SECS, "updates taken within one second of the clock");
    // A second later, one more.
    let next = encode(&advert_by(&node, now + MAX_SEQ_LEAD_SECS + 1, now + 60));
    view.insert(SignedAdvert::from_gossip(&next, &node.public_key(), now + 1).unwrap()).unwrap();
    // The far-future seq is refused, penalised, and so cannot shut later honest adverts out.
    let max = encode(&advert_by(&node, u64::MAX, now + 60));
    let e = SignedAdvert::from_gossip(&max, &node.public_key(), now).unwrap_err();
    assert!(matches!(e, AdvertError::SeqAhead { .. }) && e.penalise(), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn adverts_roundtrip_and_any_byte_change_is_refused(node in identity(), seq in 0..=1_000 + MAX_SEQ_LEAD_SECS, flip in 1u8..=255) {
        let now = 1_000;
        let signed = advert_by(&node, seq, now + 60);
        roundtrip(&signed);
        let bytes = encode(&signed);
        prop_assert_eq!(SignedAdvert::from_gossip(&bytes, &node.public_key(), now).unwrap(), signed.clone());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            prop_assert!(SignedAdvert::from_gossip(&bad, &node.public_key(), now).is_err(), "byte {} accepted", i);
        }
    }
}

#[test]
fn advert_validation_names_each_fault() {
    let node = Identity::from_secrets([1; 32], [2; 32]).unwrap();
    let other = Identity::from_secrets([3; 32], [4; 32]).unwrap();
    let now = 1_000;
    let good = advert_by(&node, 1, now + 60);
    // Published by another peer than the one it names: forged.
    assert_eq!(SignedAdvert::from_gossip(&encode(&good), &other.public_key(), now), Err(AdvertError::WrongPublisher));
    // Names the publisher but signed by someone else.
    let mut forged = good.clone();
    forged.signature = good.advert.clone().sign(&other.ed25519).signature;
    assert_eq!(SignedAdvert::from_gossip(&encode(&forged), &node.public_key(), now), Err(AdvertError::BadSignature));
    // Oversized.
    let mut big = good.advert.clone();
    big.model_name = "x".repeat(2000);
    let big = encode(&big.sign(&node.ed25519));
    assert_eq!(SignedAdvert::from_gossip(&big, &node.public_key(), now), Err(AdvertError::TooLarge(big.len())));
    // Expired, or claiming to live too long.
    assert!(matches!(
        SignedAdvert::from_gossip(&encode(&good), &node.public_key(), now + 60),
        Err(AdvertError::Expired { .. })
    ));
    let long = advert_by(&node, 1, now + MAX_ADVERT_TTL_SECS + 1);
    assert!(matches!(
        SignedAdvert::from_gossip(&encode(&long), &node.public_key(), now),
        Err(AdvertError::TooLongLived { .. })
    ));
    // The view keeps the newest per node and model, refuses replays, forgets expired ones.
    let mut view = MarketView::new();
    view.insert(advert_by(&node, 2, now + 60)).unwrap();
    assert_eq!(view.insert(advert_by(&node, 2, now + 60)), Err(AdvertError::Stale { last: 2, got: 2 }));
    assert_eq!(view.insert(advert_by(&node, 1, now + 90)), Err(AdvertError::Stale { last: 2, got: 1 }));
    assert!(!AdvertError::Stale { last: 2, got: 1 }.penalise());
    view.insert(advert_by(&other, 1, now + 30)).unwrap();
    assert_eq!(view.offers(&ModelId::from([5; 32]), now).len(), 2);
    assert_eq!(view.find("SmolLM2-135M-Instruct", now).len(), 2);
    view.expire(now + 30);
    assert_eq!(view.offers(&ModelId::from([5; 32]), now + 30).len(), 1);
}

#[test]
fn provider_admits_only_requests_under_its_offer_and_reserves_what_they_can_cost() {
    let mut ch = Channel::new(Wei(10_000), Wei(10_000));
    let quote = ch.quote;
    let admission =
        Admission { model: quote.model, price: quote.price, context_length: 120, input_tokens: 40, max_tokens: 20 };
    // Another model, another price, fewer output tokens than asked for: the quote is wrong.
    for bad in [
        Quote { model: ModelId::from([8; 32]), ..quote },
        Quote { price: Price { per_1k_input: Wei(999), ..quote.price }, ..quote },
        Quote { max_output_tokens: 19, ..quote },
    ] {
        assert!(matches!(ch.provider.reserve(bad, admission), Err(LedgerError::QuoteMismatch { .. })), "{bad:?}");
    }
    // A prompt past the quote, or prompt + new tokens past the context: it does not fit.
    for (input_tokens, context_length) in [(101, 1_000), (101, 120), (40, 59)] {
        let a = Admission { input_tokens, context_length, ..admission };
        assert!(matches!(ch.provider.reserve(quote, a), Err(LedgerError::DoesNotFit { .. })), "{a:?}");
    }
    assert_eq!(ch.provider.unpaid().unwrap(), Wei::ZERO, "a refusal reserves nothing");
    // Admitted: the reservation is for this request's tokens, not the quote's maximum.
    let r = ch.provider.reserve(quote, admission).unwrap();
    assert_eq!((r.quote().max_input_tokens, r.quote().max_output_tokens), (40, 20));
    assert_eq!(ch.provider.unpaid().unwrap(), quote.price.value(40, 20).unwrap());
}

#[test]
fn payer_refuses_weights_not_committed_or_not_the_datanets() {
    let mut ch = Channel::new(Wei(10_000), Wei(10_000));
    let w = |c: u8| Weights::new(vec![Weight { contributor: Address::repeat_byte(c), ppm: PPM_WHOLE }]).unwrap();
    let tokens: Vec<u32> = (0..5).collect();
    let (mut usage, mut delivered) = Channel::usage(10, &tokens);
    usage.attribution_root = w(1).root();
    let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    let (proposal, start) = ch.provider.propose(r, &usage, NOW, &ch.node).unwrap();
    // Sent without the weights it commits to, or with others.
    for sent in [Weights::none(), w(2)] {
        delivered.weights = sent.clone();
        let err = ch.payer.check(&proposal, start, &ch.quote, &delivered, NOW).unwrap_err();
        assert_eq!(err, LedgerError::WeightsNotCommitted { weights: sent.root(), committed: w(1).root() });
    }
    // The committed weights, but the payer's datanet gives others for this output.
    delivered.weights = w(1);
    delivered.expected_weights = Some(w(2));
    let err = ch.payer.check(&proposal, start, &ch.quote, &delivered, NOW).unwrap_err();
    assert_eq!(err, LedgerError::WrongWeights { got: w(1).root(), expected: w(2).root() });
    // The datanet agrees, or the payer cannot tell: accepted.
    delivered.expected_weights = Some(w(1));
    ch.payer.check(&proposal, start, &ch.quote, &delivered, NOW).unwrap();
    delivered.expected_weights = None;
    ch.payer.check(&proposal, start, &ch.quote, &delivered, NOW).unwrap();
}

#[test]
fn a_leaving_payer_gets_no_service_and_a_thaw_cuts_the_deposit_to_what_is_owed() {
    let mut ch = Channel::new(Wei(10_000), Wei(10_000));
    let params = ch.provider.state().params.clone();
    assert_eq!(
        ChannelState::servable(params.clone(), Wei(10_000), 0, false),
        Some(ChannelState::open(params.clone(), Wei(10_000)))
    );
    assert!(ChannelState::servable(params.clone(), Wei(10_000), 1_700_000_000, false).is_none());
    assert!(ChannelState::servable(params.clone(), Wei(10_000), 0, true).is_none());
    assert!(!ChannelState::payer_leaving(0, false) && ChannelState::payer_leaving(5, false));
    ch.round(10, 5).unwrap();
    let state = ch.node_store.channel(&params.id).unwrap().unwrap();
    let thawed = state.thawed().unwrap();
    assert_eq!((thawed.deposit, thawed.cumulative), (state.cumulative, state.cumulative));
    assert!(thawed.thawed().is_none(), "nothing left to cut");
    // Every new request is refused for want of deposit.
    let mut provider = ProviderChannel::restore(thawed, &[], Wei(10_000));
    let quote = Quote { max_input_tokens: 1, max_output_tokens: 1, ..ch.quote };
    assert!(matches!(provider.reserve(quote, Admission::of(&quote)), Err(LedgerError::DepositExceeded { .. })));
}

#[test]
fn a_reservation_cut_off_by_a_hang_up_leaves_the_tokens_sent_unpaid() {
    // One request: 100 prompt and at most 50 output tokens at 1,000 / 3,000 wei per 1,000.
    let mut ch = Channel::new(Wei(10_000), Wei(600));
    let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    assert_eq!(ch.provider.unpaid().unwrap(), Wei(250));
    // 20 tokens sent, then the payer left: 100 + 60 wei stay unpaid, the rest is released.
    assert_eq!(ch.provider.cut_off(r, 100, 20).unwrap(), Wei(160));
    assert_eq!(ch.provider.unpaid().unwrap(), Wei(160));
    // Never more than the reservation, whatever the counts say.
    let r = ch.provider.reserve(ch.quote, Admission::of(&ch.quote)).unwrap();
    assert_eq!(ch.provider.cut_off(r, 100, 5_000).unwrap(), Wei(250));
    assert_eq!(ch.provider.unpaid().unwrap(), Wei(410));
    // And the limit holds: 410 + 250 > 600.
    assert!(matches!(ch.provider.reserve(ch.quote, Admission::of(&ch.quote)), Err(LedgerError::ExposureLimit { .. })));
}
