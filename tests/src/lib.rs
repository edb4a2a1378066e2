//! # attrinet-tests
//!
//! Cross-crate integration tests of attrinet (`tests/`), and the helper programs they run as
//! child processes (`src/bin/`). This library holds what both share: fixed test identities
//! and a driver that runs honest receipt rounds between a payer and a provider.

use alloy_primitives::Address;
use attrinet_market::{
    Admission, ChannelId, ChannelParams, ChannelState, Delivered, Domain, Identity, ModelId, PPM_WHOLE, PayerChannel,
    Price, ProviderChannel, Quote, Seq, SignedReceipt, Store, Usage, Wei, Weight, Weights, request_hash, response_hash,
};

/// The node's identity in these tests.
pub fn node_identity() -> Identity {
    Identity::from_secrets([0x11; 32], [0x12; 32]).expect("valid test secret")
}

/// The client's identity in these tests.
pub fn client_identity() -> Identity {
    Identity::from_secrets([0x21; 32], [0x22; 32]).expect("valid test secret")
}

/// The test channel between [`client_identity`] and [`node_identity`].
pub fn test_channel(deposit: Wei) -> ChannelState {
    let (node, client) = (node_identity(), client_identity());
    ChannelState::open(
        ChannelParams {
            domain: Domain { chain_id: 31337, verifying_contract: Address::repeat_byte(0xcc) },
            id: ChannelId::from([0x42; 32]),
            payer: client.address(),
            provider: node.address(),
            payer_key: client.public_key(),
            provider_key: node.public_key(),
        },
        deposit,
    )
}

/// The quote used by the driver.
pub fn test_quote() -> Quote {
    Quote {
        model: ModelId::from([7; 32]),
        price: Price { per_1k_input: Wei(1_000_003), per_1k_output: Wei(4_000_037) },
        max_input_tokens: 4096,
        max_output_tokens: 512,
    }
}

/// Token counts of the receipt with `seq`: deterministic, so a test can recompute every
/// value without reading the store.
pub fn tokens_for(seq: Seq) -> (u32, u32) {
    ((seq.0 * 37 % 4096) as u32, (seq.0 * 11 % 512) as u32)
}

/// Runs honest rounds on one channel, as payer and provider at once, recording each
/// co-signed receipt in the provider's store.
#[derive(Debug)]
pub struct Driver {
    node: Identity,
    client: Identity,
    provider: ProviderChannel,
    payer: PayerChannel,
}

/// The attribution weights of the test receipt `seq`: one or two contributors, different
/// for every seq (so that one receipt's weights cannot stand in for another's).
pub fn weights_for(seq: Seq) -> Weights {
    let addr = |n: u64| {
        let mut b = [0u8; 20];
        b[12..].copy_from_slice(&n.to_be_bytes());
        Address::from(b)
    };
    let (a, b) = (addr(2 * seq.0 + 1), addr(2 * seq.0 + 2));
    let parts = if seq.0.is_multiple_of(2) {
        vec![Weight { contributor: a, ppm: PPM_WHOLE }]
    } else {
        vec![Weight { contributor: a, ppm: 300_000 }, Weight { contributor: b, ppm: PPM_WHOLE - 300_000 }]
    };
    Weights::new(parts).expect("whole, ascending weights")
}

impl Driver {
    /// Resumes the test channel from `store` (opening it if absent).
    pub fn resume(store: &dyn Store) -> anyhow::Result<Driver> {
        let open = test_channel(Wei(u128::MAX / 2));
        let state = match store.channel(&open.params.id)? {
            Some(s) => s,
            None => {
                store.put_channel(&open)?;
                open
            }
        };
        let receipts = store.receipts_after(&state.params.id, state.settled_seq)?;
        Ok(Driver {
            node: node_identity(),
            client: client_identity(),
            provider: ProviderChannel::restore(state.clone(), &receipts, Wei(u128::MAX / 4)),
            payer: PayerChannel::restore(state, &receipts),
        })
    }

    /// One round: reserve, propose, accept, store the weights and record the receipt
    /// durably, commit. Returns the stored receipt once `store.record_receipt` has returned.
    pub fn round(&mut self, store: &dyn Store, now: u64) -> anyhow::Result<SignedReceipt> {
        let seq = self.provider.state().last_seq.next()?;
        let (input, output) = tokens_for(seq);
        let tokens: Vec<u32> = (0..output).collect();
        let request = seq.0.to_le_bytes();
        // Every receipt is attributed, as with a model that has a datanet: its weights are
        // stored first (as node and client do), and must survive whenever it does.
        let weights = weights_for(seq);
        store.put_weights(&weights)?;
        let usage = Usage {
            request_hash: request_hash(&request),
            response_hash: response_hash(&tokens),
            input_tokens: input,
            output_tokens: output,
            attribution_root: weights.root(),
        };
        let delivered = Delivered {
            request_hash: usage.request_hash,
            response_hash: usage.response_hash,
            output_tokens: output,
            input_tokens: Some(input),
            weights: weights.clone(),
            expected_weights: None,
        };
        let quote = test_quote();
        let reservation = self.provider.reserve(quote, Admission::of(&quote))?;
        let (proposal, start) = self.provider.propose(reservation, &usage, now, &self.node)?;
        let (receipt, voucher) = self.payer.accept(proposal, start, &quote, &delivered, now, &self.client)?;
        self.provider.check_cosigned(&receipt, &voucher)?;
        let state = store.record_receipt(&receipt, &voucher)?;
        self.provider.commit(&state, &receipt);
        self.payer.commit(&state, &receipt);
        Ok(receipt)
    }
}
