//! # attrinet-tests
//!
//! Cross-crate integration tests of attrinet (`tests/`), and the helper programs they run as
//! child processes (`src/bin/`). This library holds what both share: fixed test identities
//! and a driver that runs honest receipt rounds between a payer and a provider.

use alloy_primitives::{Address, B256};
use attrinet_market::{
    ChannelId, ChannelParams, ChannelState, Delivered, Domain, Identity, ModelId, PayerChannel, Price, ProviderChannel,
    Quote, Seq, SignedReceipt, Store, Usage, Wei, request_hash, response_hash,
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

    /// One round: reserve, propose, accept, record durably, commit. Returns the stored
    /// receipt once `store.record_receipt` has returned.
    pub fn round(&mut self, store: &dyn Store, now: u64) -> anyhow::Result<SignedReceipt> {
        let seq = self.provider.state().last_seq.next()?;
        let (input, output) = tokens_for(seq);
        let tokens: Vec<u32> = (0..output).collect();
        let request = seq.0.to_le_bytes();
        let usage = Usage {
            request_hash: request_hash(&request),
            response_hash: response_hash(&tokens),
            input_tokens: input,
            output_tokens: output,
            attribution_root: B256::ZERO,
        };
        let delivered = Delivered {
            request_hash: usage.request_hash,
            response_hash: usage.response_hash,
            output_tokens: output,
            input_tokens: Some(input),
        };
        let quote = test_quote();
        let reservation = self.provider.reserve(quote)?;
        let (proposal, start) = self.provider.propose(reservation, &usage, now, &self.node)?;
        let (receipt, voucher) = self.payer.accept(proposal, start, &quote, &delivered, now, &self.client)?;
        self.provider.check_cosigned(&receipt, &voucher)?;
        let state = store.record_receipt(&receipt, &voucher)?;
        self.provider.commit(&state, &receipt);
        self.payer.commit(&state, &receipt);
        Ok(receipt)
    }
}
