//! `attrinet serve`: a provider node. Loads the model (with progress), registers the node
//! and the model on chain when they are not yet, advertises, serves queries on channels it
//! learns of from the chain, persists receipts in sled and settles them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use anyhow::{Context, bail};
use attrinet_chain::{
    ChainClient, ChannelEvent, Deployment, EventFollower, MemCheckpoint, ModelTerms, SettleAction, SettlementLoop,
    SettlementPolicy, StoreSource,
};
use attrinet_compute::{Backend, BatchOptions, Model};
use attrinet_market::{ChannelId, ChannelParams, ChannelState, Datanet, Identity, ModelId, Price, Split, Store, Wei};
use attrinet_p2p::{ChannelLookup, Limits, LookupError, Multiaddr, NetConfig, Offer, Provider};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::Speed;
use crate::metrics::Metrics;
use crate::pool::ModelPool;
use crate::store::SledStore;

/// Everything `serve` runs with, after flags, environment and file are merged.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The GGUF files.
    pub models: Vec<PathBuf>,
    /// Memory the loaded models may take together, MiB (weights and KV cache); models are
    /// loaded on first request and evicted least recently used (default: no limit).
    pub memory_budget_mib: Option<u64>,
    /// Prices per 1,000 tokens.
    pub price: Price,
    /// Engine backend.
    pub backend: Backend,
    /// Requests generated at once: the engine's batch.
    pub capacity: usize,
    /// Memory for the KV cache the batch shares, MiB (default: a full context per batch
    /// slot, at most 1 GiB; at least one full context).
    pub kv_memory_mib: Option<u64>,
    /// Requests that may wait for a generation slot.
    pub queue: usize,
    /// Most unpaid value per channel.
    pub exposure_limit: Wei,
    /// Bond posted when the node is not registered yet.
    pub bond: Wei,
    /// The split registered with the model when it is not registered yet.
    pub split: Split,
    /// A datanet index (`attrinet datanet build`) to attribute answers to.
    pub datanet: Option<PathBuf>,
    /// Where the unclaimed data share goes when the model is registered here (default:
    /// this node, its owner).
    pub data_pool: Option<Address>,
    /// Settlement checks.
    pub settle_every: Duration,
    /// Settlement policy.
    pub policy: SettlementPolicy,
    /// JSON-RPC endpoint and contracts.
    pub rpc: String,
    /// The deployment.
    pub deployment: Deployment,
    /// Network listen addresses and bootstrap peers.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// Reachability probing.
    pub nat: attrinet_p2p::NatConfig,
}

/// Loads a model file with a byte progress bar (hashing the file for its id is most of
/// loading), then parses and validates it.
pub fn load_model_with_progress(path: &std::path::Path) -> anyhow::Result<Model> {
    if !path.exists() {
        anyhow::bail!("model {} does not exist (run scripts/fetch-model?)", path.display());
    }
    let bar = indicatif::ProgressBar::new(0).with_message(format!("loading {}", path.display()));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("constant template")
            .progress_chars("=> "),
    );
    let model = Model::load_with_progress(path, &mut |done, len| {
        bar.set_length(len);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(model?)
}

/// Looks channels up on chain for the provider: a channel the chain holds with this node
/// as provider, not closed, with the payer's key as the payer named it.
#[derive(Clone, Debug)]
pub struct ChainLookup {
    /// A chain client (any account: it only reads).
    pub chain: ChainClient,
    /// This provider.
    pub identity: Identity,
}

impl ChannelLookup for ChainLookup {
    fn lookup(&self, id: ChannelId) -> BoxFuture<'static, Result<Option<ChannelState>, LookupError>> {
        let this = self.clone();
        Box::pin(async move {
            let info = match this.chain.channel(id).await {
                Ok(i) => i,
                Err(attrinet_chain::ChainError::UnknownChannel(_)) => return Ok(None),
                Err(e) => return Err(LookupError(Box::new(e))),
            };
            if info.provider != this.identity.address() {
                return Ok(None);
            }
            let params = ChannelParams {
                domain: this.chain.deployment().domain(),
                id,
                payer: info.payer,
                provider: info.provider,
                payer_key: info.payer_key,
                provider_key: this.identity.public_key(),
            };
            // The thaw rule: a payer that is leaving gets no new service.
            Ok(ChannelState::servable(params, info.deposit, info.thaw_end, info.closed))
        })
    }
}

/// One model `serve` offers.
#[derive(Clone, Debug)]
pub struct Served {
    /// The model's id.
    pub model: ModelId,
    /// Its name in adverts.
    pub name: String,
    /// What it measured and advertises.
    pub speed: Speed,
}

/// What `serve` reports once it is up.
#[derive(Clone, Debug)]
pub struct Serving {
    /// The models, in the order given.
    pub models: Vec<Served>,
    /// The device.
    pub device: String,
    /// Where the node listens.
    pub addrs: Vec<Multiaddr>,
}

/// Default KV memory: enough for every batch slot to fill its context, up to this.
const DEFAULT_KV_MIB: u64 = 1024;

/// The engine's batch: `max_batch` sequences sharing `kv_memory_mib` of KV cache.
pub fn batch_options(model: &Model, max_batch: usize, kv_memory_mib: Option<u64>) -> BatchOptions {
    let per_token = model.config().kv_bytes_per_token().max(1) as u64;
    // The context the engines give it (they cap a longer one).
    let context = model.config().context_length.min(attrinet_compute::DEFAULT_MAX_CONTEXT);
    let budget = kv_memory_mib.unwrap_or(DEFAULT_KV_MIB).saturating_mul(1 << 20);
    let full = (context * max_batch) as u64;
    let tokens = (budget / per_token).min(full);
    if tokens < context as u64 {
        eprintln!(
            "a KV budget of {} MiB holds {tokens} tokens, less than one context of {context}: using one context ({} MiB)",
            budget >> 20,
            (context as u64 * per_token).div_ceil(1 << 20)
        );
    }
    BatchOptions { max_batch: max_batch.clamp(1, attrinet_compute::MAX_BATCH), kv_tokens: Some(tokens as usize) }
}

/// Runs the node until `shutdown` turns true; `ready` is called once it serves.
pub async fn serve(
    identity: Identity,
    store: Arc<SledStore>,
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(&Serving),
) -> anyhow::Result<()> {
    if opts.models.is_empty() {
        bail!("no model to serve: give --model FILE.gguf (several, or a folder of them, to serve more than one)");
    }
    if opts.models.len() > attrinet_market::MAX_MODELS_PER_NODE {
        bail!(
            "{} models given; a node advertises at most {} (peers refuse more from one node): run another node",
            opts.models.len(),
            attrinet_market::MAX_MODELS_PER_NODE
        );
    }
    if opts.datanet.is_some() && opts.models.len() > 1 {
        bail!("--datanet attributes one model's answers: serve a model with a datanet on its own");
    }
    let mut models = Vec::with_capacity(opts.models.len());
    for path in &opts.models {
        let model = Arc::new(load_model_with_progress(path)?);
        let batch = batch_options(&model, opts.capacity, opts.kv_memory_mib);
        eprintln!("{}: chats are rendered with {}", model.name().unwrap_or("model"), model.chat_template().name());
        models.push((model, batch));
    }
    let ids: Vec<ModelId> = models.iter().map(|(m, _)| ModelId::from(m.id().0)).collect();
    if let Some(dup) = ids.iter().enumerate().find_map(|(i, id)| ids[..i].contains(id).then_some(id)) {
        bail!("model {dup} is given twice (the same file, or a copy of it)");
    }
    let budget = opts.memory_budget_mib.map(|m| m.saturating_mul(1 << 20));
    let pool = ModelPool::new(models, opts.backend, budget, metrics.clone());
    let datanet = match &opts.datanet {
        Some(p) => Some(Arc::new(crate::datanet::load_datanet(p)?)),
        None => None,
    };

    let chain = crate::client::connect_chain(&opts.rpc, &identity, opts.deployment).await?;
    let datanet_root = datanet.as_ref().map(|d| d.root());
    let mut watched = Vec::with_capacity(ids.len());
    for &id in &ids {
        let terms = register(&chain, &identity, &opts, id, datanet_root).await?;
        watched.push(Watched { model: id, terms, datanet: datanet_root.unwrap_or_default() });
    }

    // Each model is loaded once now, to measure what its advert says; under a memory
    // budget the pool evicts the older ones as the later ones load.
    let mut device = String::new();
    let mut offers = Vec::with_capacity(ids.len());
    let mut served = Vec::with_capacity(ids.len());
    for (i, model) in pool.models().enumerate() {
        let name = model.name().unwrap_or("model").to_owned();
        let spinner = indicatif::ProgressBar::new_spinner()
            .with_message(format!("opening the {:?} engine for {name} and measuring its speed", opts.backend));
        spinner.enable_steady_tick(Duration::from_millis(100));
        let engine = pool.engine(i)?;
        device = engine.device();
        let speed = engine.measure(16).with_context(|| format!("{name} failed its first generation"))?;
        drop(engine);
        spinner.finish_and_clear();
        let generator = Arc::new(pool.generator(i));
        offers.push(offer(model, generator, opts.price, speed, datanet.clone()));
        served.push(Served { model: ids[i], name, speed });
    }
    let network = start_network(
        &identity,
        NetConfig {
            listen: opts.listen.clone(),
            bootstrap: opts.bootstrap.clone(),
            nat: opts.nat.clone(),
            // A provider's view serves the clients that join through it: only registered
            // nodes' adverts.
            publishers: Some(Arc::new(crate::client::RegisteredPublishers(chain.clone()))),
            ..NetConfig::default()
        },
    )?;
    let limits =
        Limits { capacity: opts.capacity, queue: opts.queue, exposure_limit: opts.exposure_limit, ..Limits::default() };
    let (provider, serving) = start_provider(&identity, store.clone(), &chain, offers, limits, &network);
    let addrs = listening_addrs(&network).await?;
    metrics
        .peers
        .store(network.peers().await.map(|p| p.len()).unwrap_or_default() as u64, std::sync::atomic::Ordering::Relaxed);
    ready(&Serving { models: served, device, addrs });

    let settler = settler(&chain, &store, opts.policy);
    // Thaws, from the deployment's first block: a channel whose payer is leaving gets no
    // more service (what it already owes is settled by the loop, forced by the thaw).
    let mut thaws = crate::watch::follow_channels(&chain, MemCheckpoint::default())?;
    loop {
        match freeze_thawing(&mut thaws, store.as_ref(), identity.address()).await {
            Ok(frozen) => frozen.iter().for_each(|c| eprintln!("channel {c} is thawing: no more service on it")),
            Err(e) => warn!(target: "serve", %e, "cannot read thaws; retrying next pass"),
        }
        for why in recheck(&chain, &provider, &watched).await {
            eprintln!("{why}");
        }
        match settler.tick().await {
            Ok(actions) => {
                for (channel, action) in actions {
                    match action {
                        Ok(SettleAction::Settled { seq, amount, outcome }) => {
                            info!(target: "serve", %channel, seq = seq.0, amount = amount.0, gas = outcome.gas_used, "settled");
                            eprintln!(
                                "settled channel {channel} to seq {} ({} wei, {} gas)",
                                seq.0, amount.0, outcome.gas_used
                            );
                        }
                        Ok(SettleAction::Finalized { seq }) => {
                            eprintln!("finalized channel {channel} at seq {}", seq.0)
                        }
                        Ok(SettleAction::Voided { seq }) => eprintln!(
                            "error: the settlement of channel {channel} at seq {} was voided by a dispute; not resending it (check this node's receipts and prices)",
                            seq.0
                        ),
                        Ok(SettleAction::NotWorthIt { value, gas_cost }) => {
                            info!(target: "serve", %channel, value = value.0, gas_cost = gas_cost.0, "not worth settling yet")
                        }
                        // Failures are logged by the loop and retried next pass.
                        Ok(_) | Err(_) => {}
                    }
                }
            }
            Err(e) => warn!(target: "serve", %e, "settlement pass failed"),
        }
        if let Ok(p) = network.peers().await {
            metrics.peers.store(p.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.settle_every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() || serving.is_finished() {
            break;
        }
    }
    serving.abort();
    store.flush()?;
    Ok(())
}

/// A split as `--split` takes it: node, owner, data, protocol in basis points.
fn split_csv(s: &Split) -> String {
    let (node, owner, data, protocol) = s.bps();
    format!("{node},{owner},{data},{protocol}")
}

/// What a node served a model under, checked again on every pass ([`recheck`]).
#[derive(Clone, Copy, Debug)]
pub struct Watched {
    /// The model.
    pub model: ModelId,
    /// The terms it serves under, as registered when it started.
    pub terms: ModelTerms,
    /// The datanet its answers are attributed against (zero: none).
    pub datanet: B256,
}

/// Stops serving each model whose terms or datanet changed on chain since the node
/// started, and only that model: its other offers go on, and the settlement loop goes on
/// settling and finalizing every channel (receipts already made are judged by the terms and
/// datanet they were made under). Serving on would be wrong: receipts at the old prices
/// become provable fraud once the registry's grace has passed, and weights against an old
/// datanet an hour after it changed. Returns what to tell the operator.
pub async fn recheck(chain: &ChainClient, provider: &Provider, watched: &[Watched]) -> Vec<String> {
    let mut said = Vec::new();
    for w in watched.iter().filter(|w| provider.withdrawn(&w.model).is_none()) {
        let why = match (chain.terms(w.model).await, chain.datanet_root(w.model).await) {
            (Ok(Some(t)), _) if t.version != w.terms.version => format!(
                "its owner changed its terms on chain (version {} to {}: {} wei per 1k input, {} per 1k output, split {}); restart with the new prices and split to serve it again",
                w.terms.version,
                t.version,
                t.price.per_1k_input.0,
                t.price.per_1k_output.0,
                split_csv(&t.split)
            ),
            (_, Ok(Some(root))) if root != w.datanet => format!(
                "its datanet changed on chain to {root} (this node served {}); restart with the new datanet (--datanet), or none if it has none, to serve it again",
                w.datanet
            ),
            (Err(e), _) | (_, Err(e)) => {
                warn!(target: "serve", model = %w.model, %e, "cannot read the model's terms; retrying next pass");
                continue;
            }
            _ => continue,
        };
        provider.withdraw(w.model, why.clone());
        said.push(format!("error: stopped serving model {}: {why}; settling goes on", w.model));
    }
    said
}

/// The network of a node, its event loop running on this runtime.
pub fn start_network(identity: &Identity, config: NetConfig) -> anyhow::Result<attrinet_p2p::Client> {
    let (network, event_loop) = attrinet_p2p::new(identity.clone(), config)?;
    tokio::spawn(event_loop.run());
    Ok(network)
}

/// What a node offers of `model`, generated by `generator`, at `price`, advertising `speed`.
pub fn offer(
    model: &Model,
    generator: Arc<dyn attrinet_p2p::Generator>,
    price: Price,
    speed: Speed,
    datanet: Option<Arc<Datanet>>,
) -> Offer {
    Offer {
        model: ModelId::from(model.id().0),
        name: model.name().unwrap_or("model").to_string(),
        price,
        context_length: model.config().context_length as u32,
        decode_tokens_per_s: speed.decode_tokens_per_s,
        ttft_ms: speed.ttft_ms,
        generator,
        datanet,
    }
}

/// Serves `offers` on `network` (spawned): channels the store does not hold yet are
/// looked up on chain, so a client can open one and query at once. Returns the provider
/// (to withdraw offers from) and its task.
pub fn start_provider(
    identity: &Identity,
    store: Arc<SledStore>,
    chain: &ChainClient,
    offers: Vec<Offer>,
    limits: Limits,
    network: &attrinet_p2p::Client,
) -> (Provider, tokio::task::JoinHandle<Result<(), attrinet_p2p::NetError>>) {
    let provider = Provider::new(identity.clone(), store, offers, limits)
        .with_lookup(Arc::new(ChainLookup { chain: chain.clone(), identity: identity.clone() }));
    (provider.clone(), tokio::spawn(provider.serve(network.clone())))
}

/// A provider's settlement loop: receipts and their weights come from its own store.
pub fn settler(chain: &ChainClient, store: &Arc<SledStore>, policy: SettlementPolicy) -> SettlementLoop<SledStore> {
    SettlementLoop::new(chain.clone(), store.clone(), policy).with_attribution(Arc::new(StoreSource(store.clone())))
}

/// The node's listen addresses, once its listeners are up (within 2 s).
pub(crate) async fn listening_addrs(network: &attrinet_p2p::Client) -> anyhow::Result<Vec<Multiaddr>> {
    for _ in 0..100 {
        let addrs = network.listen_addrs().await?;
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the node never started listening")
}

/// Stops service on this provider's channels whose payer started a thaw: the stored
/// deposit is cut to what is already owed, so every new request would pass it, and the
/// chain lookup the provider then makes refuses a thawing channel. Returns the channels cut.
async fn freeze_thawing(
    thaws: &mut EventFollower<MemCheckpoint>,
    store: &SledStore,
    me: Address,
) -> anyhow::Result<Vec<ChannelId>> {
    let mut frozen = Vec::new();
    for e in thaws.poll_all().await? {
        let ChannelEvent::Thawing { channel, provider, .. } = e.event else { continue };
        if provider != me {
            continue;
        }
        if let Some(thawed) = store.channel(&channel)?.as_ref().and_then(ChannelState::thawed) {
            store.put_channel(&thawed)?;
            frozen.push(channel);
        }
    }
    Ok(frozen)
}

/// Registers the node (with its bond) and the model (with this node's account as owner)
/// when the chain does not know them; checks that a registered node has this key, and that
/// a registered model has the prices and split given. Returns the terms it will serve under.
async fn register(
    chain: &ChainClient,
    identity: &Identity,
    opts: &ServeOptions,
    model: ModelId,
    datanet_root: Option<alloy_primitives::B256>,
) -> anyhow::Result<ModelTerms> {
    // Every check first, so that a refusal changes nothing on chain.
    let node_key = chain.node_key(identity.address()).await?;
    if node_key.is_some_and(|k| k != identity.public_key()) {
        bail!("{} is registered with another ed25519 key: these are not that node's keys", identity.address());
    }
    let terms = chain.terms(model).await?;
    if let Some(terms) = &terms {
        // Weights against another datanet than the registered one are provable fraud
        // (a weight to a non-contributor) or, at best, wrong: refuse to serve them.
        let registered = chain.datanet_root(model).await?.unwrap_or_default();
        match datanet_root {
            Some(local) if local != registered => bail!(
                "model {model} is registered with datanet {registered}, but --datanet gives {local}: serve the registered datanet (or none if it has none)"
            ),
            None if !registered.is_zero() => eprintln!(
                "warning: model {model} is registered with datanet {registered}; without --datanet its contributors get nothing from this node's answers"
            ),
            _ => {}
        }
        if terms.price != opts.price {
            bail!(
                "model {model} is registered at {:?}, not at the prices given ({:?}): receipts would be disputed; use the registered prices",
                terms.price,
                opts.price
            );
        }
        // Someone else's model: serving it means taking its owner's split, which the
        // operator should choose knowingly rather than find on chain afterwards.
        if terms.split != opts.split {
            bail!(
                "model {model} is registered with the split {} (node, owner, data, protocol in basis points), not the one given ({}): pass --split {} to serve under it",
                split_csv(&terms.split),
                split_csv(&opts.split),
                split_csv(&terms.split)
            );
        }
    }
    if node_key.is_none() {
        chain
            .register_node(&identity.public_key(), opts.bond)
            .await
            .context("registering the node (is the account funded?)")?;
        eprintln!("registered node {} with a bond of {} wei", identity.address(), opts.bond.0);
    }
    if terms.is_none() {
        // Without contributors to claim it, the data share goes to the owner.
        let pool = opts.data_pool.unwrap_or(identity.address());
        chain
            .register_model(model, opts.price, opts.split, datanet_root.unwrap_or_default(), pool)
            .await
            .context("registering the model")?;
        eprintln!("registered model {model}, owned by {}", identity.address());
    }
    match terms {
        Some(t) => Ok(t),
        None => chain.terms(model).await?.context("the model is not registered after registering it"),
    }
}
