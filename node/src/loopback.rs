//! A provider and a client on loopback in one process, with a channel between them held in
//! both stores (no chain): for serving benchmarks and tests of what sits on top (the
//! gateway). Real network, real protocol, real engine.

use std::sync::Arc;
use std::time::Duration;

use attrinet_compute::{Backend, Model};
use attrinet_market::{ChannelId, ChannelParams, ChannelState, Domain, Identity, MemStore, ModelId, Price, Store, Wei};
use attrinet_p2p::{Client, Generator, Limits, NetConfig, Offer, Payer, Provider};

use crate::EngineGenerator;

/// The running pair; dropping it stops both nodes.
pub struct Loopback {
    /// The client's network handle.
    pub client_net: Client,
    /// The client's payer (its store holds the channel).
    pub payer: Payer,
    /// The provider, for its load.
    pub provider: Provider,
    /// The provider's engine, for its batch (when it serves one model).
    pub generator: Option<Arc<EngineGenerator>>,
    /// The provider's store.
    pub provider_store: Arc<MemStore>,
    /// The client's store.
    pub client_store: Arc<MemStore>,
    /// The channel between them.
    pub channel: ChannelId,
    /// The provider's network and serving tasks.
    pub provider_tasks: Vec<tokio::task::AbortHandle>,
    client_task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        for h in &self.provider_tasks {
            h.abort();
        }
        self.client_task.abort();
    }
}

fn net() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("constant address")],
        bootstrap: vec![],
        republish_every: Duration::from_secs(1),
        advert_ttl: Duration::from_secs(60),
        heartbeat: Duration::from_millis(300),
        nat: Default::default(),
        ..Default::default()
    }
}

/// Serves `model` on `backend` as `name` at 1,000 / 3,000 wei per 1,000 input / output
/// tokens under `limits`, and opens a channel of `deposit` to it from a client, once the
/// client sees the provider's advert.
pub async fn loopback(
    model: Model,
    backend: Backend,
    name: &str,
    deposit: Wei,
    limits: Limits,
) -> anyhow::Result<Loopback> {
    // The offer caps the context at 256 tokens: 256 MiB of KV cache is plenty.
    let batch = crate::serve::batch_options(&model, limits.capacity, Some(256));
    let generator = Arc::new(EngineGenerator::open(model, backend, batch)?);
    let offer = loopback_offer(&generator.model_arc(), name, generator.clone());
    let mut lb = loopback_offers(vec![offer], deposit, limits).await?;
    lb.generator = Some(generator);
    Ok(lb)
}

/// An offer of `model` as `name` at 1,000 / 3,000 wei per 1,000 input / output tokens,
/// its context capped at 256 tokens.
pub fn loopback_offer(model: &Model, name: &str, generator: Arc<dyn Generator>) -> Offer {
    let context_length = u32::try_from(model.config().context_length).unwrap_or(u32::MAX);
    Offer {
        model: ModelId::from(model.id().0),
        name: name.into(),
        price: Price { per_1k_input: Wei(1_000), per_1k_output: Wei(3_000) },
        context_length: context_length.min(256),
        decode_tokens_per_s: 100,
        ttft_ms: 5,
        generator,
        datanet: None,
    }
}

/// Serves `offers` under `limits` and opens a channel of `deposit` to the provider from a
/// client, once the client sees the provider's adverts.
pub async fn loopback_offers(offers: Vec<Offer>, deposit: Wei, limits: Limits) -> anyhow::Result<Loopback> {
    let node = Identity::from_secrets([1; 32], [2; 32])?;
    let client = Identity::from_secrets([3; 32], [4; 32])?;
    let (pnet, ploop) = attrinet_p2p::new(node.clone(), net())?;
    let h1 = tokio::spawn(ploop.run());
    let provider_store = Arc::new(MemStore::new());
    let n_offers = offers.len();
    let provider = Provider::new(node.clone(), provider_store.clone(), offers, limits);
    let h2 = tokio::spawn(provider.clone().serve(pnet.clone()));
    let addr = loop {
        if let Some(a) = pnet.listen_addrs().await?.into_iter().next() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cnet, cloop) = attrinet_p2p::new(client.clone(), NetConfig { bootstrap: vec![addr], ..net() })?;
    let h3 = tokio::spawn(cloop.run());
    let client_store = Arc::new(MemStore::new());
    let channel = ChannelId::from([9; 32]);
    let state = ChannelState::open(
        ChannelParams {
            domain: Domain { chain_id: 31337, verifying_contract: Default::default() },
            id: channel,
            payer: client.address(),
            provider: node.address(),
            payer_key: client.public_key(),
            provider_key: node.public_key(),
        },
        deposit,
    );
    client_store.put_channel(&state)?;
    provider_store.put_channel(&state)?;
    let mut seen = false;
    for _ in 0..300 {
        if cnet.market().await?.all(attrinet_p2p::unix_now()).len() >= n_offers {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(seen, "the client never saw the provider's adverts");
    Ok(Loopback {
        client_net: cnet,
        payer: Payer::new(client, client_store.clone(), Duration::from_secs(30)),
        provider,
        generator: None,
        provider_store,
        client_store,
        channel,
        provider_tasks: vec![h1.abort_handle(), h2.abort_handle()],
        client_task: h3.abort_handle(),
    })
}
