//! What each command does, and what they share (the store, the client network, Ctrl-C,
//! chain checks).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use attrinet_chain::ChainClient;
use attrinet_compute::Backend;
use attrinet_market::{ChannelState, Identity, Store, Wei};
use attrinet_node::client::ChannelOpener;
use attrinet_node::config::{self, FileConfig};
use attrinet_node::datanet::load_datanet;
use attrinet_node::{PromptCount, SledStore};

use crate::args::{
    ChannelCommand, CheckArgs, DatanetBuildArgs, DevnetArgs, EarningsArgs, GatewayArgs, ModelRegisterArgs, ModelsArgs,
    NetArgs, QueryArgs, RelayArgs, ServeArgs, WatchArgs, parse_backend,
};

/// A payer that checks what `check` gives it: the attribution of models against their
/// datanets, each of which must be the one its model is registered with (a stale index
/// would make it refuse every honest receipt), and prompts' input counts with models' own
/// tokenizers.
pub(crate) async fn checking_payer(
    identity: Identity,
    store: Arc<SledStore>,
    chain: &attrinet_chain::ChainClient,
    check: &CheckArgs,
) -> anyhow::Result<attrinet_p2p::Payer> {
    let payer = attrinet_p2p::Payer::new(identity, store, Duration::from_secs(120));
    for path in &check.tokenizer_from {
        let model = attrinet_compute::Model::load(path)
            .with_context(|| format!("--tokenizer-from {}: not a model this client can count with", path.display()))?;
        eprintln!("counting prompts for model {} with the tokenizer of {}", model.id(), path.display());
        payer.count_input_with(attrinet_market::ModelId::from(model.id().0), Arc::new(PromptCount(Arc::new(model))));
    }
    for (model, path) in &check.datanet {
        let d = load_datanet(path)?;
        let registered = chain.datanet_root(*model).await?;
        anyhow::ensure!(
            registered == Some(d.root()),
            "datanet {} (root {}) is not model {model}'s registered one ({registered:?})",
            path.display(),
            d.root()
        );
        payer.check_attribution(*model, Arc::new(d));
    }
    Ok(payer)
}

/// The store of a data dir, with a hint when another process holds it.
pub(crate) fn open_store(data_dir: &Path) -> anyhow::Result<Arc<SledStore>> {
    let dir = data_dir.join("store");
    Ok(Arc::new(SledStore::open(&dir).with_context(|| {
        format!("cannot open the store at {} (is another attrinet using this data dir?)", dir.display())
    })?))
}

/// A Ctrl-C watch: turns true on the first Ctrl-C.
pub(crate) fn ctrl_c() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

/// Starts the network for a client-side command. With `chain`, only adverts of nodes
/// registered there are taken (a client could not open a channel with any other).
pub(crate) async fn client_network(
    identity: &Identity,
    net: &NetArgs,
    file: &FileConfig,
    chain: Option<&ChainClient>,
) -> anyhow::Result<attrinet_p2p::Client> {
    let (listen, bootstrap) = net.resolve(file, &["/ip4/0.0.0.0/tcp/0"])?;
    anyhow::ensure!(
        !bootstrap.is_empty(),
        "no peer to join: pass --bootstrap, set ATTRINET_BOOTSTRAP, or put `bootstrap` under [network] in the config file"
    );
    let nat = net.nat();
    let publishers = chain.map(|c| {
        Arc::new(attrinet_node::client::RegisteredPublishers(c.clone())) as Arc<dyn attrinet_p2p::PublisherCheck>
    });
    let config = attrinet_p2p::NetConfig { listen, bootstrap, nat, publishers, ..Default::default() };
    let (network, event_loop) = attrinet_p2p::new(identity.clone(), config)?;
    tokio::spawn(event_loop.run());
    Ok(network)
}

/// `attrinet relay`: joins (or starts) the network, prints where others reach it, and
/// relays until Ctrl-C.
pub(crate) async fn relay(data_dir: &Path, file: &FileConfig, r: RelayArgs) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let (listen, bootstrap) = r.net.resolve(file, &["/ip4/0.0.0.0/tcp/4001"])?;
    // A relay is public by definition: it vouches for the addresses it listens on.
    let nat = attrinet_p2p::NatConfig { public: true, ..r.net.nat() };
    let (network, event_loop) =
        attrinet_p2p::new(identity, attrinet_p2p::NetConfig { listen, bootstrap, nat, ..Default::default() })?;
    tokio::spawn(event_loop.run());
    // A wildcard listener reports each interface's address in turn: wait until the list
    // has stopped growing.
    let started = std::time::Instant::now();
    let mut addrs = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = network.listen_addrs().await?;
        if !now.is_empty() && now == addrs {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "not listening after 10 s");
        addrs = now;
    }
    for a in &addrs {
        println!("listening on {a}");
    }
    let l = attrinet_p2p::relay_limits();
    println!(
        "relaying for nodes behind NAT ({} reservations, {} circuits, each up to {} s and {} MiB); Ctrl-C stops.",
        l.max_reservations,
        l.max_circuits,
        l.max_circuit_duration.as_secs(),
        l.max_circuit_bytes >> 20
    );
    let mut stop = ctrl_c();
    let _ = stop.changed().await;
    Ok(())
}

pub(crate) const DEFAULT_DEPOSIT: Wei = Wei(10_000_000_000_000_000);

pub(crate) fn store_audit(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("store");
    anyhow::ensure!(dir.exists(), "no store at {} (is --data-dir right?)", dir.display());
    let store = SledStore::open(&dir)?;
    let audit = attrinet_node::audit(&store).context("store audit failed")?;
    println!("ok: {} channels, {} receipts, all consistent", audit.channels, audit.receipts);
    Ok(())
}

pub(crate) fn keys_new(data_dir: &Path) -> anyhow::Result<()> {
    let id = attrinet_node::keys::create(data_dir)?;
    print_identity(&id);
    println!("keys written to {} (mode 0600)", attrinet_node::keys::key_path(data_dir).display());
    Ok(())
}

pub(crate) fn keys_show(data_dir: &Path) -> anyhow::Result<()> {
    print_identity(&attrinet_node::keys::load(data_dir)?);
    Ok(())
}

fn print_identity(id: &Identity) {
    println!("ed25519 public key: {:?}", id.public_key());
    if let Some(peer) = attrinet_p2p::key_peer(&id.public_key()) {
        println!("peer id:            {peer}");
    }
    println!("EVM address:        {}", id.address());
}

pub(crate) async fn models(data_dir: &Path, file: &FileConfig, m: ModelsArgs) -> anyhow::Result<()> {
    let id = match attrinet_node::keys::load(data_dir) {
        Ok(id) => id,
        // Listing needs no identity of its own: a throwaway one will do.
        Err(_) => Identity::from_secrets(rand32()?, [7; 32])?,
    };
    // Listing follows no chain: it shows every validly signed advert.
    let net = client_network(&id, &m.net, file, None).await?;
    let bar = indicatif::ProgressBar::new_spinner().with_message("listening for adverts");
    bar.enable_steady_tick(Duration::from_millis(100));
    match &m.model {
        Some(model) => {
            attrinet_node::client::wait_for_offers(&net, model, Duration::from_secs(m.wait_secs)).await?;
        }
        None => tokio::time::sleep(Duration::from_secs(m.wait_secs)).await,
    }
    bar.finish_and_clear();
    let offers = net.market().await?.all(attrinet_p2p::unix_now());
    if offers.is_empty() {
        println!("no adverts seen in {} s", m.wait_secs);
    }
    println!(
        "{:<34} {:<44} {:>16} {:>16} {:>7} {:>6}",
        "model", "provider", "wei/1k in", "wei/1k out", "tok/s", "free"
    );
    for a in offers {
        println!(
            "{:<34} {:<44} {:>16} {:>16} {:>7} {:>6}",
            a.model_name,
            a.evm_address.to_string(),
            a.price.per_1k_input.0,
            a.price.per_1k_output.0,
            a.decode_tokens_per_s,
            a.free_capacity
        );
    }
    Ok(())
}

pub(crate) async fn earnings(data_dir: &Path, file: &FileConfig, e: EarningsArgs) -> anyhow::Result<()> {
    let (rpc, deployment) = e.chain.resolve(file)?;
    let who = match e.contributor {
        Some(a) => a,
        None => {
            attrinet_node::keys::load(data_dir).context("pass --contributor, or use a data dir with keys")?.address()
        }
    };
    let earned = attrinet_node::earnings(&rpc, deployment, who).await?;
    print!("{}", earned.render(who));
    Ok(())
}

pub(crate) fn datanet_build(d: DatanetBuildArgs) -> anyhow::Result<()> {
    let model =
        attrinet_compute::Model::load(&d.model).with_context(|| format!("cannot load {}", d.model.display()))?;
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!("indexing {}", d.dir.display()));
    bar.enable_steady_tick(Duration::from_millis(100));
    let tok = model.tokenizer();
    let datanet = attrinet_node::datanet::build_datanet_dir(&d.dir, d.min_span, |text| tok.encode(text, false))?;
    attrinet_node::datanet::save_datanet(&datanet, &d.out)?;
    bar.finish_and_clear();
    let owners: std::collections::BTreeSet<_> = datanet.contributions().map(|(owner, _, _)| owner).collect();
    println!(
        "{} contributions from {} owners, {} tokens",
        datanet.contributions().count(),
        owners.len(),
        datanet.contributions().map(|(_, _, t)| t.len()).sum::<usize>()
    );
    println!("index written to {}", d.out.display());
    println!("datanet root: {}", datanet.root());
    Ok(())
}

pub(crate) async fn gateway(data_dir: &Path, file: &FileConfig, g: GatewayArgs) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = g.chain.resolve(file)?;
    let store = open_store(data_dir)?;
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    let network = client_network(&identity, &g.net, file, Some(&chain)).await?;
    let deposit = match g.deposit {
        Some(d) => d,
        None => config::wei_or(file.client.deposit.as_deref(), "[client] deposit", DEFAULT_DEPOSIT)?,
    };
    let gateway = attrinet_node::gateway::Gateway {
        network,
        payer: checking_payer(identity.clone(), store.clone(), &chain, &g.check).await?,
        metrics: Arc::new(attrinet_node::Metrics::default()),
        opener: Some(ChannelOpener { identity, chain, store: store.clone(), deposit }),
    };
    serve_gateway(gateway, g.listen, "Ctrl-C stops.").await?;
    store.flush()?;
    Ok(())
}

/// Serves the OpenAI-compatible gateway on `listen` until Ctrl-C.
async fn serve_gateway(
    gateway: attrinet_node::gateway::Gateway,
    listen: std::net::SocketAddr,
    stops: &str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!("gateway: http://{}/v1 (OpenAI-compatible; model names at /v1/models). {stops}", listener.local_addr()?);
    let mut stop = ctrl_c();
    axum::serve(listener, attrinet_node::gateway::router(gateway))
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await?;
    Ok(())
}

pub(crate) async fn model_register(data_dir: &Path, file: &FileConfig, m: ModelRegisterArgs) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = m.chain.resolve(file)?;
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    let model = attrinet_node::serve::load_model_with_progress(&m.model)?;
    let id = attrinet_market::ModelId::from(model.id().0);
    let root = match &m.terms.datanet {
        Some(p) => load_datanet(p)?.root(),
        None => alloy_primitives::B256::ZERO,
    };
    anyhow::ensure!(chain.terms(id).await?.is_none(), "model {id} is already registered");
    let price = attrinet_market::Price { per_1k_input: m.price_in, per_1k_output: m.price_out };
    let out =
        chain.register_model(id, price, m.terms.split, root, m.terms.data_pool.unwrap_or(identity.address())).await?;
    println!(
        "registered model {id} ({}) owned by {}; gas {}",
        model.name().unwrap_or("model"),
        identity.address(),
        out.gas_used
    );
    Ok(())
}

pub(crate) async fn serve(data_dir: &Path, file: &FileConfig, a: ServeArgs) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = a.chain.resolve(file)?;
    let (listen, bootstrap) = a.net.resolve(file, &["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"])?;
    let s = &file.serve;
    let wei = |flag: Option<Wei>, key: Option<&String>, what: &str, default: Option<Wei>| -> anyhow::Result<Wei> {
        match (flag, key, default) {
            (Some(w), _, _) => Ok(w),
            (None, Some(v), _) => config::parse_wei(v).map_err(|e| anyhow::anyhow!("[serve] {what}: {e}")),
            (None, None, Some(d)) => Ok(d),
            (None, None, None) => {
                anyhow::bail!("missing --{} (or `{what}` under [serve] in the config file)", what.replace('_', "-"))
            }
        }
    };
    let backend = match (a.backend, &s.backend) {
        (Some(b), _) => b,
        (None, Some(b)) => parse_backend(b).map_err(|e| anyhow::anyhow!("[serve] backend: {e}"))?,
        (None, None) => Backend::Auto,
    };
    let opts = attrinet_node::serve::ServeOptions {
        models: model_files(if a.model.is_empty() { s.model.iter().cloned().collect() } else { a.model })?,
        memory_budget_mib: a.memory_budget.or(s.memory_budget_mib),
        price: attrinet_market::Price {
            per_1k_input: wei(a.price_in, s.price_in.as_ref(), "price_in", None)?,
            per_1k_output: wei(a.price_out, s.price_out.as_ref(), "price_out", None)?,
        },
        backend,
        capacity: match a.max_batch.or(s.max_batch).or(s.capacity).unwrap_or(8) {
            n @ 1..=attrinet_compute::MAX_BATCH => n,
            n => anyhow::bail!("--max-batch {n} is not within 1..={}", attrinet_compute::MAX_BATCH),
        },
        kv_memory_mib: a.kv_memory.or(s.kv_memory_mib),
        queue: a.queue.or(s.queue).unwrap_or(64),
        exposure_limit: wei(a.exposure_limit, s.exposure_limit.as_ref(), "exposure_limit", Some(DEFAULT_DEPOSIT))?,
        bond: wei(a.bond, s.bond.as_ref(), "bond", Some(Wei(1_000_000_000_000_000_000)))?,
        split: a.terms.split,
        datanet: a.terms.datanet.or(s.datanet.clone()),
        data_pool: a.terms.data_pool,
        settle_every: Duration::from_secs(a.settle_every.or(s.settle_every_secs).unwrap_or(30).max(1)),
        policy: attrinet_chain::SettlementPolicy {
            threshold: wei(
                a.settle_threshold,
                s.settle_threshold.as_ref(),
                "settle_threshold",
                Some(Wei(1_000_000_000_000_000)),
            )?,
            max_age_secs: a.settle_max_age,
            max_gas_bps: a.settle_max_gas_bps,
        },
        rpc,
        deployment,
        listen,
        bootstrap,
        nat: a.net.nat(),
    };
    let store = open_store(data_dir)?;
    let metrics = Arc::new(attrinet_node::Metrics::default());
    if let Some(addr) = a.metrics {
        let (m, st, me) = (metrics.clone(), store.clone(), identity.address());
        serve_metrics(addr, move || match attrinet_node::provider_metrics(st.as_ref(), me) {
            Ok(p) => (axum::http::StatusCode::OK, m.render() + &p),
            Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("store unreadable: {e}\n")),
        })
        .await?;
    }
    let address = identity.address();
    attrinet_node::serve::serve(identity, store, opts, metrics, ctrl_c(), |s| {
        println!("serving on {} as {address}:", s.device);
        for m in &s.models {
            println!(
                "  {} ({}): measured {} tokens/s, first token in {} ms (advertised)",
                m.name, m.model, m.speed.decode_tokens_per_s, m.speed.ttft_ms
            );
        }
        for addr in &s.addrs {
            println!("listening on {addr}");
        }
        println!("Ctrl-C stops (receipts are kept in the store).");
    })
    .await?;
    println!("stopped");
    Ok(())
}

pub(crate) async fn query(data_dir: &Path, file: &FileConfig, q: QueryArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = q.chain.resolve(file)?;
    let store = open_store(data_dir)?;
    // The chain first: a wrong endpoint or datanet fails before anything else happens.
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    let payer = checking_payer(identity.clone(), store.clone(), &chain, &q.check).await?;
    let network = client_network(&identity, &q.net, file, Some(&chain)).await?;
    let deposit = match q.deposit {
        Some(d) => d,
        None => config::wei_or(file.client.deposit.as_deref(), "[client] deposit", DEFAULT_DEPOSIT)?,
    };
    let bar = indicatif::ProgressBar::new_spinner().with_message("looking for providers");
    bar.enable_steady_tick(Duration::from_millis(100));
    let wanted = q.model.clone().unwrap_or_default();
    let offers = attrinet_node::client::wait_for_offers(&network, &wanted, Duration::from_secs(q.wait_secs)).await?;
    bar.finish_and_clear();
    let Some(first) = offers.first() else {
        anyhow::bail!("no provider advertises {} (waited {} s)", q.model.as_deref().unwrap_or("any model"), q.wait_secs)
    };
    let model = q.model.clone().unwrap_or_else(|| first.model_name.clone());
    let opener = ChannelOpener { identity: identity.clone(), chain, store: store.clone(), deposit };
    if let Some(opened) = opener.ensure(&network, &model, q.max_tokens, q.max_price).await? {
        eprintln!(
            "opened channel {} with {} ({} wei deposit)",
            opened.params.id, opened.params.provider, opened.deposit.0
        );
    }
    let ask = attrinet_p2p::Ask {
        model,
        prompt: attrinet_p2p::Prompt::Chat(vec![attrinet_p2p::ChatMessage { role: "user".into(), content: q.prompt }]),
        max_tokens: q.max_tokens,
        sampling: attrinet_p2p::Sampling {
            temperature_milli: (q.temperature.clamp(0.0, 10.0) * 1000.0) as u32,
            top_p_milli: 0,
            seed: rand_u64()?,
            logprobs: None,
        },
        max_cost: q.max_price,
        stop: Vec::new(),
    };
    let mut out = std::io::stdout();
    let answer = payer
        .infer(&network, &ask, |t| {
            let _ = out.write_all(t.text.as_bytes());
            let _ = out.flush();
        })
        .await?;
    println!();
    let r = &answer.receipt.receipt;
    eprintln!(
        "receipt: provider {} channel {} seq {}: {} input + {} output tokens, {} wei (channel total {} wei)",
        r.provider, r.channel, r.seq.0, r.input_tokens, r.output_tokens, r.value.0, r.cumulative.0
    );
    for f in &answer.failed {
        eprintln!("  failed over from {}: {}", f.provider.evm_address, f.reason);
    }
    if !answer.weights.is_empty() {
        eprintln!("  attributed to {} data contributors (root {})", answer.weights.len(), r.attribution_root);
    }
    store.flush()?;
    Ok(())
}

pub(crate) async fn watch(data_dir: &Path, file: &FileConfig, w: WatchArgs) -> anyhow::Result<()> {
    use attrinet_chain::FileCheckpoint;
    use attrinet_node::watch::{BatchFetcher, Evidence, FetchLimits};
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = w.chain.resolve(file)?;
    let store = open_store(data_dir)?;
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    // The checkpoint makes a restarted watcher resume where it was, without missing a
    // settlement still in its window.
    let checkpoint = data_dir.join("watcher.checkpoint");
    let evidence = Arc::new(Evidence::new(store.clone()));
    let mut fetcher = if w.offline {
        None
    } else {
        Some(BatchFetcher::new(
            client_network(&identity, &w.net, file, Some(&chain)).await?,
            chain.clone(),
            &checkpoint,
            evidence.clone(),
            FetchLimits::default(),
        )?)
    };
    if let Some(addr) = w.metrics {
        let evidence = evidence.clone();
        serve_metrics(addr, move || (axum::http::StatusCode::OK, evidence.metrics())).await?;
    }
    let datanets = w.datanet.iter().map(|(model, path)| Ok((*model, Arc::new(load_datanet(path)?))));
    let datanets = datanets.collect::<anyhow::Result<Vec<_>>>()?;
    let mut watcher = attrinet_node::watch::watcher(chain, FileCheckpoint::new(&checkpoint), evidence, datanets)?;
    let source = if fetcher.is_some() { "its store and the providers' batches" } else { "its store only" };
    println!(
        "watching Channels {} as {} every {} s, with {source}. Ctrl-C stops.",
        deployment.channels,
        identity.address(),
        w.interval
    );
    let mut stop = ctrl_c();
    let mut steps = 0u64;
    loop {
        if let Some(f) = fetcher.as_mut() {
            match f.poll().await {
                Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                Err(e) => eprintln!("fetching batches failed (retrying): {e:#}"),
            }
            // The last of `--steps` checks what the fetches under way bring.
            if w.steps.is_some_and(|n| steps + 1 >= n) {
                f.finish().await.iter().for_each(|l| println!("{l}"));
            }
        }
        match watcher.step().await {
            Ok(r) => {
                for (c, seq) in &r.verified {
                    println!("verified channel {c} settlement to seq {}", seq.0);
                }
                for (c, class, tx) in &r.disputed {
                    println!("DISPUTED channel {c}: {class} (gas {})", tx.gas_used);
                }
                for (c, seq) in &r.settled_on_thaw {
                    println!("settled channel {c} to seq {} before its thaw ended", seq.0);
                }
                for (c, why) in &r.failed {
                    println!("could not check channel {c}: {why}");
                }
                for (c, seq, why) in &r.misattributed {
                    println!("MISATTRIBUTED channel {c} seq {}: {why}", seq.0);
                }
            }
            Err(e) => eprintln!("watcher step failed (retrying): {e}"),
        }
        steps += 1;
        if w.steps.is_some_and(|n| steps >= n) {
            break;
        }
        // A fetch that ends is checked at once: no settlement waits for the next tick, nor
        // for a slow fetch of another.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(w.interval.max(1))) => {}
            line = next_fetched(&mut fetcher) => println!("{line}"),
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

/// The next fetch to end, or never without a fetcher.
async fn next_fetched(fetcher: &mut Option<attrinet_node::watch::BatchFetcher>) -> String {
    match fetcher {
        Some(f) => f.next_done().await,
        None => std::future::pending().await,
    }
}

/// Serves `render`'s status and text at http://ADDR/metrics.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    render: impl Fn() -> (axum::http::StatusCode, String) + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { render() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

pub(crate) async fn channel(data_dir: &Path, file: &FileConfig, c: ChannelCommand) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let chain_args = match &c {
        ChannelCommand::Open { chain, .. }
        | ChannelCommand::TopUp { chain, .. }
        | ChannelCommand::Thaw { chain, .. }
        | ChannelCommand::Withdraw { chain, .. }
        | ChannelCommand::Status { chain } => chain.clone(),
    };
    let (rpc, deployment) = chain_args.resolve(file)?;
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    let store = open_store(data_dir)?;
    let me = identity.address();
    match c {
        ChannelCommand::Open { provider, deposit, .. } => {
            let opener = ChannelOpener { identity, chain, store: store.clone(), deposit };
            let state = opener.open(provider, deposit).await?;
            println!("opened channel {} to {provider} with {} wei", state.params.id, deposit.0);
        }
        ChannelCommand::TopUp { channel, amount, .. } => {
            attrinet_node::client::own_channel(&store, channel, me)?;
            chain.top_up(channel, amount).await?;
            let info = chain.channel(channel).await?;
            // The stored deposit follows the chain's (put_channel keeps the receipts' progress).
            let mut state = store.channel(&channel)?.context("channel vanished from the store")?;
            state.deposit = info.deposit;
            store.put_channel(&state)?;
            println!("channel {channel}: deposit now {} wei", info.deposit.0);
        }
        ChannelCommand::Thaw { channel, .. } => {
            attrinet_node::client::own_channel(&store, channel, me)?;
            chain.thaw(channel).await?;
            let info = chain.channel(channel).await?;
            // Nothing more will be served on it: mark it spent here too, so that queries
            // open a new channel instead of trying this one.
            let state = store.channel(&channel)?.context("channel vanished from the store")?;
            store.put_channel(&ChannelState { deposit: state.cumulative, ..state })?;
            println!(
                "channel {channel} thawing: withdraw after {} (unix time); the provider settles what it is owed meanwhile",
                info.thaw_end
            );
        }
        ChannelCommand::Withdraw { channel, .. } => {
            attrinet_node::client::own_channel(&store, channel, me)?;
            let before = chain.native_balance(me).await?;
            let out = chain.withdraw_deposit(channel).await?;
            let after = chain.native_balance(me).await?;
            println!("channel {channel} closed; balance {} -> {} wei (gas {})", before.0, after.0, out.gas_used);
        }
        ChannelCommand::Status { .. } => {
            let lines = attrinet_node::client::channel_status(&store, &chain).await?;
            if lines.is_empty() {
                println!("no channels in {}", data_dir.display());
            }
            for l in lines {
                print!("{}", l.render(me));
            }
        }
    }
    store.flush()?;
    Ok(())
}

pub(crate) async fn devnet(data_dir: &Path, a: DevnetArgs) -> anyhow::Result<()> {
    let config = attrinet_node::devnet::DevnetConfig {
        nodes: usize::from(a.nodes),
        queries: a.queries,
        max_tokens: a.max_tokens,
        model: a.model,
        backend: a.backend,
        data_dir: data_dir.to_path_buf(),
        challenge_window: a.challenge_window,
    };
    let (summary, live) = attrinet_node::devnet::run(&config).await?;
    println!("{}", summary.render());
    anyhow::ensure!(summary.consistent(), "on-chain credits differ from the receipts");
    if !a.keep {
        return Ok(());
    }
    let live = live.expect("devnet keeps its client");
    let gateway = attrinet_node::gateway::Gateway {
        network: live.network.clone(),
        payer: live.payer.clone(),
        metrics: Arc::new(attrinet_node::Metrics::default()),
        opener: None,
    };
    let config_path = live.write_config(data_dir).await?;
    println!("chain and network settings for other commands: {}", config_path.display());
    println!("  e.g.  attrinet --config {} models", config_path.display());
    if let Some((_, who, _, _)) = summary.contributors.first() {
        println!(
            "  a contributor's earnings:  attrinet --config {} earnings --contributor {who}",
            config_path.display()
        );
    }
    serve_gateway(gateway, a.listen, "Ctrl-C stops everything.").await?;
    drop(live);
    println!("stopped");
    Ok(())
}

pub(crate) fn rand_u64() -> anyhow::Result<u64> {
    let b = rand32()?;
    Ok(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
}

pub(crate) fn rand32() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// The model files of `serve`: each path as given, and each folder's `.gguf` files in
/// name order.
fn model_files(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if paths.is_empty() {
        anyhow::bail!("no model given: pass --model FILE.gguf (or set model in the config file's [serve] section)");
    }
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path);
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot read the folder {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")))
            .collect();
        if found.is_empty() {
            anyhow::bail!("the folder {} holds no .gguf file", path.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}
