//! Shared setup: an anvil, the contracts, funded participants, a registered node and model,
//! and receipts made the way nodes and clients make them.

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use attrinet_chain::{Anvil, AnvilConfig, ChainClient, DeployConfig, Deployment};
use attrinet_market::{
    Admission, ChannelId, ChannelParams, ChannelState, Delivered, Identity, MemStore, ModelId, PayerChannel, Price,
    ProviderChannel, Quote, Receipt, Seq, SignedReceipt, SignedVoucher, Split, Store, SumTree, Usage, Voucher, Wei,
    request_hash, response_hash,
};

pub(crate) const ETH: u128 = 1_000_000_000_000_000_000;
pub(crate) const BOND: Wei = Wei(ETH);
pub(crate) const WINDOW: u64 = 30;
pub(crate) const THAW: u64 = 120;

/// A participant: its two keys and a client signing with its EVM key.
pub(crate) struct Party {
    pub(crate) id: Identity,
    pub(crate) chain: ChainClient,
}

impl Party {
    pub(crate) fn address(&self) -> Address {
        self.id.address()
    }
}

pub(crate) struct World {
    pub(crate) anvil: Anvil,
    pub(crate) deployment: Deployment,
    pub(crate) node: Party,
    pub(crate) payer: Party,
    pub(crate) owner: Party,
    pub(crate) watcher: Party,
    pub(crate) treasury: Address,
    pub(crate) data_pool: Address,
    pub(crate) model: ModelId,
    pub(crate) price: Price,
    pub(crate) split: Split,
}

fn identity(seed: u8) -> Identity {
    Identity::from_secrets([seed; 32], [seed.wrapping_add(100); 32]).expect("valid test secrets")
}

impl World {
    pub(crate) async fn new() -> World {
        let anvil = Anvil::spawn(AnvilConfig::default()).expect("anvil starts (run scripts/setup-chain-tools)");
        let deployer = identity(1);
        let (node, payer, owner, watcher) = (identity(2), identity(3), identity(4), identity(5));
        for who in [&deployer, &node, &payer, &owner, &watcher] {
            anvil.fund(who.address(), U256::from(1_000 * ETH)).await.unwrap();
        }
        let treasury = Address::repeat_byte(0x7e);
        let data_pool = Address::repeat_byte(0xda);
        let config =
            DeployConfig { treasury, challenge_window: WINDOW, thaw_delay: THAW, unbond_delay: THAW, min_bond: BOND };
        let deployment = ChainClient::deploy(&anvil.endpoint(), deployer.evm.clone(), config).await.unwrap();
        let party = |id: Identity| {
            let chain = ChainClient::connect(&anvil.endpoint(), id.evm.clone(), deployment).unwrap();
            Party { id, chain }
        };
        let (node, payer, owner, watcher) = (party(node), party(payer), party(owner), party(watcher));
        node.chain.register_node(&node.id.public_key(), BOND).await.unwrap();
        let model = ModelId::from([0x11; 32]);
        // Odd prices and an uneven split, so rounding is exercised everywhere.
        let price = Price { per_1k_input: Wei(1_000_003_000_000_007), per_1k_output: Wei(4_000_011_000_000_013) };
        let split = Split::new(6_999, 2_001, 899, 101).unwrap();
        owner.chain.register_model(model, price, split, B256::repeat_byte(0xdd), data_pool).await.unwrap();
        World { anvil, deployment, node, payer, owner, watcher, treasury, data_pool, model, price, split }
    }

    /// Registers another model owned by the same owner.
    #[allow(dead_code)]
    pub(crate) async fn second_model(&self) -> (ModelId, Price, Split) {
        let model = ModelId::from([0x22; 32]);
        let price = Price { per_1k_input: Wei(7_000_000_000_000_001), per_1k_output: Wei(9_000_000_000_000_003) };
        let split = Split::new(5_000, 4_000, 500, 500).unwrap();
        if self.owner.chain.terms(model).await.unwrap().is_none() {
            self.owner.chain.register_model(model, price, split, B256::ZERO, self.data_pool).await.unwrap();
        }
        (model, price, split)
    }

    pub(crate) async fn open(&self, deposit: Wei) -> (ChannelId, ChannelParams) {
        let (id, _) = self.payer.chain.open(self.node.address(), &self.payer.id.public_key(), deposit).await.unwrap();
        let params = ChannelParams {
            domain: self.deployment.domain(),
            id,
            payer: self.payer.address(),
            provider: self.node.address(),
            payer_key: self.payer.id.public_key(),
            provider_key: self.node.id.public_key(),
        };
        (id, params)
    }

    pub(crate) async fn now(&self) -> u64 {
        self.node.chain.head().await.unwrap().1
    }

    /// A watcher's client that signs with `signer`.
    #[allow(dead_code)]
    pub(crate) fn client(&self, signer: PrivateKeySigner) -> ChainClient {
        ChainClient::connect(&self.anvil.endpoint(), signer, self.deployment).unwrap()
    }
}

/// Both sides of a channel, run through the market's ledgers exactly as a node and a
/// client do, with the node's receipts in a store.
pub(crate) struct Session {
    pub(crate) provider: ProviderChannel,
    pub(crate) payer: PayerChannel,
    pub(crate) node_store: Arc<MemStore>,
    pub(crate) client_store: MemStore,
}

impl Session {
    pub(crate) fn new(params: ChannelParams, deposit: Wei) -> Session {
        let open = ChannelState::open(params, deposit);
        let (node_store, client_store) = (Arc::new(MemStore::new()), MemStore::new());
        node_store.put_channel(&open).unwrap();
        client_store.put_channel(&open).unwrap();
        Session {
            provider: ProviderChannel::restore(open.clone(), &[], Wei(u128::MAX / 4)),
            payer: PayerChannel::restore(open, &[]),
            node_store,
            client_store,
        }
    }

    /// Serves `n` inferences of `model` at `price`, with varying token counts; returns the
    /// co-signed receipts and the last voucher.
    pub(crate) fn serve(
        &mut self,
        w: &World,
        model: ModelId,
        price: Price,
        n: usize,
        now: u64,
    ) -> (Vec<SignedReceipt>, SignedVoucher) {
        let quote = Quote { model, price, max_input_tokens: 4_096, max_output_tokens: 1_024 };
        let mut out = Vec::new();
        let mut last = None;
        for i in 0..n {
            let request = format!("request {i} at {now}");
            let tokens: Vec<u32> = (0..(1 + (i * 7) % 300) as u32).collect();
            let reservation = self.provider.reserve(quote, Admission::of(&quote)).unwrap();
            let usage = Usage {
                request_hash: request_hash(request.as_bytes()),
                response_hash: response_hash(&tokens),
                input_tokens: 3 + ((i * 13) % 2_000) as u32,
                output_tokens: tokens.len() as u32,
                attribution_root: B256::ZERO,
            };
            let (proposal, batch_start) = self.provider.propose(reservation, &usage, now, &w.node.id).unwrap();
            let delivered = Delivered::plain(usage.request_hash, usage.response_hash, usage.output_tokens, None);
            let (receipt, voucher) =
                self.payer.accept(proposal, batch_start, &quote, &delivered, now, &w.payer.id).unwrap();
            let stored = self.client_store.record_receipt(&receipt, &voucher).unwrap();
            self.payer.commit(&stored, &receipt);
            self.provider.check_cosigned(&receipt, &voucher).unwrap();
            let stored = self.node_store.record_receipt(&receipt, &voucher).unwrap();
            self.provider.commit(&stored, &receipt);
            out.push(receipt);
            last = Some(voucher);
        }
        (out, last.expect("n > 0"))
    }
}

/// Receipts made by hand (a colluding payer and provider), `tamper` applied to each
/// before cumulatives are chained and both keys sign.
#[allow(dead_code, clippy::too_many_arguments)]
pub(crate) fn forge_receipts(
    w: &World,
    params: &ChannelParams,
    models: &[(ModelId, Price)],
    first_seq: u64,
    start_cumulative: Wei,
    n: usize,
    now: u64,
    mut tamper: impl FnMut(usize, &mut Receipt),
) -> Vec<SignedReceipt> {
    let mut cumulative = start_cumulative;
    (0..n)
        .map(|i| {
            let (model, price) = models[i * models.len() / n];
            let input_tokens = 10 + i as u32 * 3;
            let output_tokens = 5 + i as u32;
            let value = price.value(input_tokens, output_tokens).unwrap();
            let mut r = Receipt {
                domain: params.domain,
                channel: params.id,
                seq: Seq(first_seq + i as u64),
                payer: params.payer,
                provider: params.provider,
                payer_key: params.payer_key,
                provider_key: params.provider_key,
                model,
                request_hash: B256::repeat_byte(i as u8),
                response_hash: B256::repeat_byte(!(i as u8)),
                input_tokens,
                output_tokens,
                price,
                value,
                cumulative: Wei::ZERO,
                attribution_root: B256::ZERO,
                timestamp: now,
            };
            tamper(i, &mut r);
            cumulative = cumulative.checked_add(r.value).unwrap();
            r.cumulative = cumulative;
            r.propose(&w.node.id.ed25519).cosign(&w.payer.id.ed25519)
        })
        .collect()
}

/// The honest tree over receipts.
#[allow(dead_code)]
pub(crate) fn tree_of(receipts: &[SignedReceipt]) -> SumTree {
    SumTree::new(&leaves(receipts)).unwrap()
}

#[allow(dead_code)]
pub(crate) fn leaves(receipts: &[SignedReceipt]) -> Vec<(B256, Wei)> {
    receipts.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect()
}

/// The payer's voucher for a batch committed as `tree`.
#[allow(dead_code)]
pub(crate) fn voucher(w: &World, params: &ChannelParams, seq: u64, cumulative: Wei, tree: &SumTree) -> SignedVoucher {
    Voucher { domain: params.domain, channel: params.id, seq: Seq(seq), cumulative, receipts_root: tree.root().hash }
        .sign(&w.payer.id.evm)
}

/// Asserts that `e` is a revert naming the contract error `name`.
pub(crate) fn reverted_with(e: attrinet_chain::ChainError, name: &str) {
    match e {
        attrinet_chain::ChainError::Rpc(attrinet_chain::RpcError::Reverted { reason, .. }) => {
            assert!(reason.contains(name), "expected {name}, got {reason}")
        }
        other => panic!("expected a revert with {name}, got {other}"),
    }
}
