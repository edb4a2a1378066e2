//! Receipts co-signed and verified per second on one core, next to raw ed25519
//! verifications per second measured in the same run: the ratio shows what our encoding,
//! EIP-712 hashing and ledger checks cost on top of the signatures themselves.
//!
//! Run: `cargo bench -p attrinet-market --bench receipts`

use std::hint::black_box;
use std::time::{Duration, Instant};

use attrinet_market::*;
use ed25519_dalek::{Signer, Verifier};

/// Runs `f` repeatedly for about `budget`, returning operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up caches and lazy tables first.
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_secs(2);
    let node = Identity::from_secrets([1; 32], [2; 32]).expect("valid secrets");
    let client = Identity::from_secrets([3; 32], [4; 32]).expect("valid secrets");
    let params = ChannelParams {
        domain: Domain { chain_id: 31337, verifying_contract: Default::default() },
        id: ChannelId::from([9; 32]),
        payer: client.address(),
        provider: node.address(),
        payer_key: client.public_key(),
        provider_key: node.public_key(),
    };
    let quote = Quote {
        model: ModelId::from([7; 32]),
        price: Price { per_1k_input: Wei(1_000), per_1k_output: Wei(4_000) },
        max_input_tokens: 512,
        max_output_tokens: 256,
    };
    let tokens: Vec<u32> = (0..256).collect();
    let usage = Usage {
        request_hash: request_hash(b"bench"),
        response_hash: response_hash(&tokens),
        input_tokens: 100,
        output_tokens: 256,
        attribution_root: Default::default(),
    };
    let delivered = Delivered::plain(usage.request_hash, usage.response_hash, 256, Some(100));

    // Reference: one raw ed25519 verification of a 32-byte message.
    let msg = [5u8; 32];
    let sig = node.ed25519.sign(&msg);
    let vk = node.ed25519.verifying_key();
    let raw_verify = rate(budget, || {
        black_box(vk.verify(black_box(&msg), &sig)).expect("valid");
    });

    // One full receipt round on one thread, both sides, without disk: the provider
    // proposes, the payer checks, co-signs and signs a voucher, the provider checks both
    // back, and both sides' store rules (`ChannelState::after`) re-check what they record.
    // That is 2 ed25519 signs, 7 strict ed25519 verifications, 1 ECDSA sign and 3 ECDSA
    // recoveries, plus encoding, EIP-712 hashing and Merkle-sum roots.
    let open = ChannelState::open(params.clone(), Wei(u128::MAX / 2));
    let mut provider = ProviderChannel::restore(open.clone(), &[], Wei(u128::MAX / 4));
    let mut payer = PayerChannel::restore(open, &[]);
    let mut state_p = provider.state().clone();
    let mut state_c = payer.state().clone();
    let mut settled_every = 0u32;
    let round = rate(budget, || {
        let r = provider.reserve(quote, Admission::of(&quote)).expect("within limits");
        let (proposal, start) = provider.propose(r, &usage, 1, &node).expect("proposes");
        let wire = encode(&proposal);
        let proposal: ProposedReceipt = decode(&wire).expect("decodes");
        let (receipt, voucher) = payer.accept(proposal, start, &quote, &delivered, 1, &client).expect("accepts");
        let wire = encode(&(receipt, voucher));
        let (receipt, voucher): (SignedReceipt, SignedVoucher) = decode(&wire).expect("decodes");
        provider.check_cosigned(&receipt, &voucher).expect("valid answer");
        state_p = state_p.after(&receipt, &voucher).expect("next");
        state_c = state_c.after(&receipt, &voucher).expect("next");
        provider.commit(&state_p, &receipt);
        payer.commit(&state_c, &receipt);
        // Settle every 16 receipts so the batch (and its Merkle root) stays a realistic size.
        settled_every += 1;
        if settled_every.is_multiple_of(16) {
            state_p = state_p.settled_at(state_p.last_seq).expect("settles");
            state_c = state_c.settled_at(state_c.last_seq).expect("settles");
            provider.settled(&state_p);
            payer.settled(&state_c);
        }
    });

    // Verification of a stored co-signed receipt (what a watcher does per receipt).
    let r = provider.reserve(quote, Admission::of(&quote)).expect("within limits");
    let (proposal, start) = provider.propose(r, &usage, 1, &node).expect("proposes");
    let (receipt, _) = payer.accept(proposal, start, &quote, &delivered, 1, &client).expect("accepts");
    let verify = rate(budget, || {
        black_box(&receipt).verify().expect("valid");
    });

    println!(
        "machine: {} logical CPUs, measured on 1 thread",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("raw ed25519 verify            {raw_verify:>10.0} /s");
    println!("co-signed receipt verify      {verify:>10.0} /s   ratio to raw {:.2}", verify / raw_verify);
    println!("full receipt round (both sides){round:>9.0} /s   ratio to raw {:.2}", round / raw_verify);
    println!("  = {:.1} µs per receipt round", 1e6 / round);
}
