//! Hundreds of attrinet nodes in one process, on libp2p's memory transport with the real
//! stack above it (noise, yamux, gossipsub with our scoring, Kademlia, identify, ping).
//!
//! 1. Each node dials [`DIALS`] random earlier nodes; the DHT and gossipsub do the rest.
//! 2. Honest providers publish adverts; we time how long each takes to reach every node
//!    (each node's market view is polled every [`POLL`]), and count the bytes all nodes
//!    write while it spreads, less what they write in as long a quiet window.
//! 3. 30% of the nodes turn Sybil: they publish validly signed adverts for random models
//!    and send inference requests on channels that do not exist, while honest clients
//!    query the honest providers through the real payer/provider exchange (channels, co-signed
//!    receipts, vouchers). We count honest queries completed and sample honest view sizes
//!    and the process's memory.
//!
//! Prints one `RESULT` line of `key=value` pairs, which `scripts/sim-scale` tabulates.
//! Run: `scripts/sim-scale` (50, 100, 250 and 500 nodes), or
//! `cargo test -p attrinet-p2p --bench scale -- NODES [FLOOD_SECS]` (or `cargo bench`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attrinet_market::{
    ChannelId, ChannelParams, ChannelState, Domain, Identity, MemStore, ModelAdvert, ModelId, Price, Quote, Store, Wei,
    encode,
};
use attrinet_p2p::{
    Ask, ByteMeter, Client, INFER_PROTOCOL, InferRequest, Limits, Multiaddr, NetConfig, Offer, Payer, PeerId, Prompt,
    Provider, Sampling, ServerMsg, Transport, read_msg, unix_now, write_msg,
};

/// Earlier nodes each new node dials.
const DIALS: usize = 3;
/// How often every node's view is polled while an advert spreads: the resolution of the
/// propagation times.
const POLL: Duration = Duration::from_millis(10);
/// Honest providers; each publishes [`ROUNDS`] adverts in turn, one at a time.
const PROVIDERS: usize = 5;
/// Adverts per provider whose propagation is timed.
const ROUNDS: usize = 2;
/// After an advert is published, bytes are counted this long (it has reached every node
/// and gossipsub has stopped announcing it: 3 heartbeats of IHAVE).
const WINDOW: Duration = Duration::from_secs(6);
/// Honest clients, each with a channel to every honest provider.
const CLIENTS: usize = 10;
/// Queries each honest client makes during the flood.
const QUERIES: usize = 5;
/// Share of the nodes that are Sybils, in percent.
const SYBIL_PERCENT: usize = 30;
/// A Sybil's pause between two adverts, and between two bogus requests: each Sybil tries
/// 10 adverts and 10 requests a second, far past what one CPU core can validate for the
/// whole network (see docs/benchmarks.md).
const SYBIL_PAUSE: Duration = Duration::from_millis(100);
const MODEL_NAME: &str = "sim-model";
const DOMAIN: Domain = Domain { chain_id: 31337, verifying_contract: alloy_primitives::Address::ZERO };

/// splitmix64: a reproducible topology and choice of Sybils without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        b
    }
}

/// Emits the prompt's length in fixed tokens, at once: the network is what is measured.
struct Echo;
impl attrinet_p2p::Generator for Echo {
    fn count_tokens(&self, p: &Prompt) -> Result<u32, attrinet_p2p::GenerateError> {
        Ok(match p {
            Prompt::Text(t) => t.split_whitespace().count() as u32,
            Prompt::Chat(m) => m.len() as u32,
        })
    }
    fn generate(
        &self,
        _: &Prompt,
        n: u32,
        _: &Sampling,
        on: &mut dyn FnMut(attrinet_p2p::Generated) -> bool,
    ) -> Result<(), attrinet_p2p::GenerateError> {
        for i in 0..n {
            if !on(attrinet_p2p::Generated { id: 100 + i, text: " tok".into(), logprobs: None }) {
                break;
            }
        }
        Ok(())
    }
}

struct Node {
    identity: Identity,
    client: Client,
    meter: ByteMeter,
    store: Arc<MemStore>,
    addr: Multiaddr,
}

fn identity(i: usize) -> Identity {
    let mut ed = [7u8; 32];
    ed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    // A secp256k1 secret must be below the group order: a small leading byte keeps it so.
    let mut evm = [0u8; 32];
    evm[24..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Identity::from_secrets(ed, evm).expect("valid secrets")
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn total_sent(nodes: &[Node]) -> u64 {
    nodes.iter().map(|n| n.meter.sent()).sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Polls every node but `publisher` until its view holds `publisher`'s advert for `model`
/// at `seq` or newer; returns each node's wait in milliseconds since `t0`.
async fn arrivals(nodes: &[Node], publisher: usize, model: ModelId, seq: u64, t0: Instant) -> Vec<f64> {
    let key = nodes[publisher].identity.public_key();
    let mut pending: Vec<usize> = (0..nodes.len()).filter(|i| *i != publisher).collect();
    let mut times = Vec::new();
    let give_up = t0 + Duration::from_secs(120);
    while !pending.is_empty() {
        let checks = pending.iter().map(|i| {
            let c = nodes[*i].client.clone();
            async move {
                let view = c.market().await.expect("node runs");
                view.offers(&model, unix_now()).iter().any(|a| a.node_key == key && a.seq >= seq)
            }
        });
        let seen = futures::future::join_all(checks).await;
        let now = t0.elapsed().as_secs_f64() * 1000.0;
        let mut still = Vec::new();
        for (i, s) in pending.into_iter().zip(seen) {
            if s { times.push(now) } else { still.push(i) }
        }
        pending = still;
        if Instant::now() > give_up {
            eprintln!("{} nodes never saw the advert within 120 s", pending.len());
            times.extend(pending.iter().map(|_| f64::INFINITY));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    times
}

fn offer(i: usize) -> Offer {
    Offer {
        model: ModelId::from([0x5c; 32]),
        name: MODEL_NAME.into(),
        price: Price { per_1k_input: Wei(1000 + i as u128), per_1k_output: Wei(2000 + i as u128) },
        context_length: 2048,
        decode_tokens_per_s: 50,
        ttft_ms: 20,
        generator: Arc::new(Echo),
        datanet: None,
    }
}

/// Opens a channel from `payer` to `provider` in both their stores (what following the
/// chain would do).
fn open_channel(payer: &Node, provider: &Node) {
    let id = ChannelId(attrinet_market::request_hash(
        &[payer.identity.public_key().0, provider.identity.public_key().0].concat(),
    ));
    let state = ChannelState::open(
        ChannelParams {
            domain: DOMAIN,
            id,
            payer: payer.identity.address(),
            provider: provider.identity.address(),
            payer_key: payer.identity.public_key(),
            provider_key: provider.identity.public_key(),
        },
        Wei(10u128.pow(18)),
    );
    payer.store.put_channel(&state).expect("memory store");
    provider.store.put_channel(&state).expect("memory store");
}

/// A Sybil's advert for a model nobody serves, validly signed by the Sybil.
fn sybil_advert(me: &Identity, rng: &mut Rng, seq: u64) -> Vec<u8> {
    let model = ModelId::from(rng.bytes());
    let advert = ModelAdvert {
        node_key: me.public_key(),
        evm_address: me.address(),
        model,
        model_name: format!("sybil-{:016x}", rng.next()),
        price: Price { per_1k_input: Wei(1), per_1k_output: Wei(1) },
        context_length: 2048,
        free_capacity: 64,
        decode_tokens_per_s: 1000,
        ttft_ms: 1,
        cold_start_ms: 0,
        expires_at: unix_now() + 600,
        seq,
        addrs: vec![],
    };
    encode(&advert.sign(&me.ed25519))
}

/// A request on a channel that does not exist, as a Sybil spams it; true if the provider
/// answered (with a refusal).
async fn bogus_request(client: &Client, provider: PeerId, rng: &mut Rng) -> bool {
    let model = ModelId::from([0x5c; 32]);
    let price = Price { per_1k_input: Wei(1), per_1k_output: Wei(1) };
    let req = InferRequest {
        model,
        prompt: Prompt::Text("spam spam spam".into()),
        max_tokens: 64,
        sampling: Sampling::default(),
        stop: vec![],
        channel: ChannelId(rng.bytes().into()),
        quote: Quote { model, price, max_input_tokens: 2048, max_output_tokens: 64 },
        resync: None,
    };
    let round = async {
        let mut s = client.open_stream(provider, INFER_PROTOCOL).await.ok()?;
        write_msg(&mut s, &req).await.ok()?;
        read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(10), round).await, Ok(Some(ServerMsg::Error(_))))
}

/// Sizes of the honest nodes' views now: (largest, sum).
async fn honest_views(nodes: &[Node], honest: &[usize]) -> (usize, usize) {
    let sizes = futures::future::join_all(honest.iter().map(|i| {
        let c = nodes[*i].client.clone();
        async move { c.market().await.expect("node runs").all(unix_now()).len() }
    }))
    .await;
    (sizes.iter().copied().max().unwrap_or(0), sizes.iter().sum())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let flood = Duration::from_secs(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60));
    assert!(n >= PROVIDERS + CLIENTS + 10, "at least {} nodes", PROVIDERS + CLIENTS + 10);
    let mut rng = Rng(0x5ca1e);
    let started = Instant::now();
    let rss_base = rss();

    // 1. The nodes. Adverts are republished rarely (5 minutes, within the 10-minute cap on
    //    their lifetime), so that republishing stays out of the windows measured here;
    //    everything else is as a real node runs it, the 1 s gossipsub heartbeat included.
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let identity = identity(i);
        let mut bootstrap = Vec::new();
        while bootstrap.len() < DIALS.min(i) {
            let a: &Multiaddr = &nodes[rng.below(i)].addr;
            if !bootstrap.contains(a) {
                bootstrap.push(a.clone());
            }
        }
        let port = i as u64 + 1;
        let config = NetConfig {
            listen: vec![format!("/memory/{port}").parse().expect("valid")],
            bootstrap,
            republish_every: Duration::from_secs(300),
            advert_ttl: Duration::from_secs(600),
            ..NetConfig::default()
        };
        let meter = ByteMeter::new();
        let (client, event_loop) =
            attrinet_p2p::new_with_transport(identity.clone(), config, Transport::Memory(meter.clone()))
                .expect("node starts");
        tokio::spawn(event_loop.run());
        let addr = format!("/memory/{port}/p2p/{}", client.peer_id()).parse().expect("valid");
        nodes.push(Node { identity, client, meter, store: Arc::new(MemStore::new()), addr });
    }
    loop {
        let peers = futures::future::join_all(nodes.iter().map(|n| n.client.peers())).await;
        let lonely = peers.into_iter().filter(|p| p.as_ref().expect("node runs").is_empty()).count();
        if lonely == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meshes form on heartbeats; the DHT's first bootstrap adds connections.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let peers = futures::future::join_all(nodes.iter().map(|n| n.client.peers())).await;
    let degrees: Vec<usize> = peers.iter().map(|p| p.as_ref().map_or(0, Vec::len)).collect();
    let mean_degree = degrees.iter().sum::<usize>() as f64 / n as f64;
    let rss_nodes = rss();
    let mem_per_node = rss_nodes.saturating_sub(rss_base) as f64 / n as f64;
    eprintln!(
        "{n} nodes up in {:.1} s; mean {mean_degree:.1} connections (max {}); {:.0} KiB RSS per node",
        started.elapsed().as_secs_f64(),
        degrees.iter().max().unwrap_or(&0),
        mem_per_node / 1024.0
    );

    // Roles: the last nodes are the honest providers and clients; Sybils are drawn from the rest.
    let providers: Vec<usize> = (n - PROVIDERS..n).collect();
    let clients: Vec<usize> = (n - PROVIDERS - CLIENTS..n - PROVIDERS).collect();
    let mut sybils: Vec<usize> = Vec::new();
    let others = n - PROVIDERS - CLIENTS;
    while sybils.len() < n * SYBIL_PERCENT / 100 {
        let s = rng.below(others);
        if !sybils.contains(&s) {
            sybils.push(s);
        }
    }
    let honest: Vec<usize> = (0..n).filter(|i| !sybils.contains(i)).collect();
    for c in &clients {
        for p in &providers {
            open_channel(&nodes[*c], &nodes[*p]);
        }
    }

    // 2. Propagation: the providers start serving (the first advert of each also announces
    //    it in the DHT), then republish one at a time.
    let mut serving = Vec::new();
    for (k, p) in providers.iter().enumerate() {
        let node = &nodes[*p];
        let provider = Provider::new(node.identity.clone(), node.store.clone(), vec![offer(k)], Limits::default());
        serving.push(provider.clone());
        tokio::spawn(provider.serve(node.client.clone()));
    }
    let t0 = Instant::now();
    let mut first_all = 0.0f64;
    for p in &providers {
        let times = arrivals(&nodes, *p, ModelId::from([0x5c; 32]), 0, t0).await;
        first_all = first_all.max(times.iter().copied().fold(0.0, f64::max));
    }
    eprintln!("first adverts (with DHT announcements) everywhere after {first_all:.0} ms");
    tokio::time::sleep(WINDOW).await;
    let quiet_start = total_sent(&nodes);
    tokio::time::sleep(WINDOW).await;
    let background = total_sent(&nodes) - quiet_start;
    let mut waits = Vec::new();
    let mut everywhere = Vec::new();
    let mut per_advert = Vec::new();
    let mut gross = Vec::new();
    for round in 0..ROUNDS {
        for (k, p) in providers.iter().enumerate() {
            let node = &nodes[*p];
            let before = total_sent(&nodes);
            let t0 = Instant::now();
            node.client.update_adverts(serving[k].adverts()).await.expect("node runs");
            let own = node.client.market().await.expect("node runs");
            let key = node.identity.public_key();
            let model = ModelId::from([0x5c; 32]);
            let seq = own.offers(&model, unix_now()).iter().find(|a| a.node_key == key).expect("own advert").seq;
            let times = arrivals(&nodes, *p, model, seq, t0).await;
            everywhere.push(times.iter().copied().fold(0.0, f64::max));
            waits.extend(times);
            tokio::time::sleep(WINDOW.saturating_sub(t0.elapsed())).await;
            let spent = total_sent(&nodes) - before;
            // The window is longer than WINDOW when the advert took longer to spread.
            let window = t0.elapsed().as_secs_f64() / WINDOW.as_secs_f64();
            gross.push(spent as f64 / n as f64);
            // Signed: the background is bursty (DHT refreshes), and can exceed an advert.
            per_advert.push((spent as f64 - background as f64 * window) / n as f64);
            eprintln!("round {round} provider {k}: everywhere after {:.0} ms", everywhere.last().unwrap());
        }
    }
    waits.sort_by(f64::total_cmp);
    everywhere.sort_by(f64::total_cmp);
    per_advert.sort_by(f64::total_cmp);
    gross.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&waits, 0.5), percentile(&waits, 0.99));
    let all_p50 = percentile(&everywhere, 0.5);
    let bytes_per_advert = percentile(&per_advert, 0.5);
    let window_bytes = percentile(&gross, 0.5);
    let background_rate = background as f64 / n as f64 / WINDOW.as_secs_f64();
    eprintln!(
        "propagation: per node p50 {p50:.0} ms, p99 {p99:.0} ms; every node (median of {}) {all_p50:.0} ms; \
         {bytes_per_advert:.0} B per node per advert; background {background_rate:.0} B/s per node",
        everywhere.len()
    );

    // 3. Sybils flood adverts and bogus requests; honest clients query meanwhile.
    let sent_adverts = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + flood;
    let mut floods = Vec::new();
    for (j, s) in sybils.iter().enumerate() {
        let me = nodes[*s].identity.clone();
        let client = nodes[*s].client.clone();
        let sent = sent_adverts.clone();
        let mut rng = Rng(0xbad + j as u64);
        floods.push(tokio::spawn(async move {
            let mut seq = unix_now();
            while Instant::now() < stop_at {
                seq += 1;
                if client.publish_raw_advert(sybil_advert(&me, &mut rng, seq)).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(SYBIL_PAUSE).await;
            }
        }));
        let client = nodes[*s].client.clone();
        let targets: Vec<(PeerId, Multiaddr)> =
            providers.iter().map(|p| (nodes[*p].client.peer_id(), nodes[*p].addr.clone())).collect();
        let refused = refused.clone();
        let mut rng = Rng(0x5bad + j as u64);
        floods.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let (peer, addr) = &targets[rng.below(targets.len())];
                let _ = client.dial(addr.clone()).await;
                if bogus_request(&client, *peer, &mut rng).await {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(SYBIL_PAUSE).await;
            }
        }));
    }
    let completed = Arc::new(AtomicU64::new(0));
    let mut queries = Vec::new();
    for (j, c) in clients.iter().enumerate() {
        let node = &nodes[*c];
        let payer = Payer::new(node.identity.clone(), node.store.clone(), Duration::from_secs(30));
        let client = node.client.clone();
        let completed = completed.clone();
        queries.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for q in 0..QUERIES {
                // Spread over the flood, starting once it is under way.
                tokio::time::sleep(flood / (QUERIES as u32 + 1)).await;
                let ask = Ask {
                    model: MODEL_NAME.into(),
                    prompt: Prompt::Text(format!("client {j} query {q}")),
                    max_tokens: 16,
                    sampling: Sampling::default(),
                    max_cost: None,
                    stop: vec![],
                };
                match payer.infer(&client, &ask, |_| {}).await {
                    Ok(a) if a.tokens.len() == 16 => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.push(format!("{} tokens", a.tokens.len())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    let mut max_view = 0;
    let mut max_rss = rss();
    let sample_every = Duration::from_secs(15);
    while Instant::now() < stop_at {
        tokio::time::sleep(sample_every.min(stop_at.saturating_duration_since(Instant::now()))).await;
        let (largest, _) = honest_views(&nodes, &honest).await;
        max_view = max_view.max(largest);
        max_rss = max_rss.max(rss());
        eprintln!(
            "flood at {:.0} s: {} Sybil adverts published, {} bogus requests refused; largest honest view {largest}; RSS {} MiB",
            (flood.as_secs_f64() - stop_at.saturating_duration_since(Instant::now()).as_secs_f64()),
            sent_adverts.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            rss() >> 20
        );
    }
    for f in floods {
        let _ = f.await;
    }
    let mut failures = Vec::new();
    for q in queries {
        failures.extend(q.await.expect("query task"));
    }
    let (largest, sum) = honest_views(&nodes, &honest).await;
    max_view = max_view.max(largest);
    max_rss = max_rss.max(rss());
    let asked = CLIENTS * QUERIES;
    let done = completed.load(Ordering::Relaxed);
    for f in failures.iter().take(5) {
        eprintln!("honest query failed: {f}");
    }
    println!(
        "RESULT nodes={n} mean_degree={mean_degree:.1} mem_per_node_kib={:.0} p50_ms={p50:.0} p99_ms={p99:.0} \
         all_ms={all_p50:.0} bytes_per_node_per_advert={bytes_per_advert:.0} window_bytes_per_node={window_bytes:.0} background_bps_per_node={background_rate:.0} \
         sybils={} flood_s={} sybil_adverts={} bogus_refused={} honest_done={done}/{asked} max_honest_view={max_view} \
         mean_honest_view={:.0} rss_mib={} max_rss_mib={} wall_s={:.0}",
        mem_per_node / 1024.0,
        sybils.len(),
        flood.as_secs(),
        sent_adverts.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        sum as f64 / honest.len() as f64,
        rss_nodes >> 20,
        max_rss >> 20,
        started.elapsed().as_secs_f64()
    );
    std::process::exit(if done as usize == asked { 0 } else { 1 });
}
