//! `attrinet watch` fetching batches over `/attrinet/batch/1` from registered providers on
//! a real anvil (issue 15, bounds under abuse): a provider that trickles its batch delays
//! no other settlement's dispute, and fetched batches are let go once their window ends.
//!
//! The providers here are in-process nodes registered on chain: one answers batch requests
//! with the real batch server (`Provider::serve`), the other plays the abuser. Their
//! settlements are made the way a node makes them (a co-signed receipt, the payer's
//! voucher, payout runs by the registered split), one of them with a split tampered by a
//! wei, which any watcher holding the batch can prove.

use crate::common::{self, Killed, bin};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy_primitives::{B256, U256};
use attrinet_chain::{Anvil, ChainClient, Deployment};
use attrinet_market::{
    ChannelId, ChannelParams, ChannelState, Identity, MemStore, ModelId, Price, Receipt, Seq, Split, Store, SumTree,
    Voucher, Wei, payout_runs, request_hash, response_hash,
};
use attrinet_p2p::{BATCH_PROTOCOL, BatchMsg, BatchRequest, NetConfig, read_msg, write_msg};

const ETH: u128 = 1_000_000_000_000_000_000;
/// Long enough for a loaded CI machine to start the watcher and dispute within it; short
/// against the fetch deadline (`FETCH_DEADLINE`, 128 s), which is what a trickler used to
/// hold every dispute for.
const WINDOW: u64 = 45;

/// The chain, a model registered by the deployer, who is also every channel's payer.
struct World {
    anvil: Anvil,
    deployment: Deployment,
    payer: Identity,
    payer_chain: ChainClient,
    model: ModelId,
    price: Price,
    split: Split,
}

impl World {
    async fn new() -> World {
        let (anvil, deployment, payer) = common::chain_with_window(None, 2 * WINDOW, WINDOW).await;
        let payer_chain = ChainClient::connect(&anvil.endpoint(), payer.evm.clone(), deployment).unwrap();
        let model = ModelId::from([0x5a; 32]);
        let price = Price { per_1k_input: Wei(ETH / 1_000), per_1k_output: Wei(ETH / 100) };
        let split = Split::new(7_000, 2_000, 500, 500).unwrap();
        payer_chain.register_model(model, price, split, B256::ZERO, payer.address()).await.unwrap();
        World { anvil, deployment, payer, payer_chain, model, price, split }
    }

    /// A node registered on chain with a bond, on the network at a loopback address.
    async fn node(&self, seed: u8) -> Node {
        let id = Identity::from_secrets([seed; 32], [seed; 32]).unwrap();
        self.anvil.fund(id.address(), U256::from(10 * ETH)).await.unwrap();
        let chain = ChainClient::connect(&self.anvil.endpoint(), id.evm.clone(), self.deployment).unwrap();
        chain.register_node(&id.public_key(), Wei(ETH / 10)).await.unwrap();
        let config = NetConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], ..NetConfig::default() };
        let (network, event_loop) = attrinet_p2p::new(id.clone(), config).unwrap();
        tokio::spawn(event_loop.run());
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            if let Some(a) = network.listen_addrs().await.unwrap().into_iter().find(|a| a.to_string().contains("/tcp/"))
            {
                break a;
            }
            assert!(Instant::now() < deadline, "no listen address within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = format!("{addr}/p2p/{}", network.peer_id());
        Node { id, chain, network, addr }
    }

    /// Opens a channel to `node`, has it serve one request (a receipt both sign, in
    /// `store`), and settles it with the registered split, or (`tamper`) with a wei of
    /// the owner's part moved to the node. Returns the channel and its window's end.
    async fn settle_one(&self, node: &Node, store: &MemStore, tamper: bool) -> (ChannelId, u64) {
        let deposit = Wei(ETH / 100);
        let (channel, _) = self.payer_chain.open(node.id.address(), &self.payer.public_key(), deposit).await.unwrap();
        let domain = self.deployment.domain();
        let params = ChannelParams {
            domain,
            id: channel,
            payer: self.payer.address(),
            provider: node.id.address(),
            payer_key: self.payer.public_key(),
            provider_key: node.id.public_key(),
        };
        store.put_channel(&ChannelState::open(params, deposit)).unwrap();
        let (_, now) = self.payer_chain.head().await.unwrap();
        let (input_tokens, output_tokens) = (120, 30);
        let value = self.price.value(input_tokens, output_tokens).unwrap();
        let receipt = Receipt {
            domain,
            channel,
            seq: Seq(1),
            payer: self.payer.address(),
            provider: node.id.address(),
            payer_key: self.payer.public_key(),
            provider_key: node.id.public_key(),
            model: self.model,
            request_hash: request_hash(format!("a request on {channel}").as_bytes()),
            response_hash: response_hash(&(0..output_tokens).collect::<Vec<_>>()),
            input_tokens,
            output_tokens,
            price: self.price,
            value,
            cumulative: value,
            attribution_root: B256::ZERO,
            timestamp: now,
        };
        let signed = receipt.clone().propose(&node.id.ed25519).cosign(&self.payer.ed25519);
        let root = SumTree::new(&[(receipt.digest(), value)]).unwrap().root().hash;
        let voucher =
            Voucher { domain, channel, seq: Seq(1), cumulative: value, receipts_root: root }.sign(&self.payer.evm);
        store.record_receipt(&signed, &voucher).unwrap();
        let (mut runs, _) = payout_runs(&[receipt], None, |_| Ok((0, self.split))).unwrap();
        if tamper {
            runs[0].parts.owner.0 -= 1;
            runs[0].parts.node.0 += 1;
        }
        node.chain.settle(&voucher, &runs).await.unwrap();
        let pending = self.payer_chain.pending(channel).await.unwrap().expect("settled and pending");
        (channel, pending.deadline)
    }

    /// A watcher's data dir, joined to every node in `peers`.
    async fn watcher_dir(&self, root: &std::path::Path, peers: &[&Node]) -> std::path::PathBuf {
        let (dir, _) =
            common::participant(root, "watcher", &self.anvil, self.deployment, "/ip4/127.0.0.1/tcp/0", None).await;
        let path = attrinet_node::config::default_path(&dir);
        let mut file = attrinet_node::config::FileConfig::load(Some(&path), &dir).unwrap();
        file.network.bootstrap = Some(peers.iter().map(|n| n.addr.clone()).collect());
        file.save(&path).unwrap();
        dir
    }

    async fn now(&self) -> u64 {
        self.payer_chain.head().await.unwrap().1
    }
}

struct Node {
    id: Identity,
    chain: ChainClient,
    network: attrinet_p2p::Client,
    addr: String,
}

impl Node {
    /// Answers batch requests from `store` with the real batch server.
    fn serve_batches(&self, store: Arc<MemStore>) {
        let provider = attrinet_p2p::Provider::new(self.id.clone(), store, Vec::new(), attrinet_p2p::Limits::default());
        tokio::spawn(provider.serve(self.network.clone()));
    }

    /// Answers every batch request with an empty `Receipts` frame every 300 ms (inside any
    /// idle timeout, and no progress at all) for as long as the asker keeps the stream.
    fn trickle_batches(&self) -> Arc<Trickle> {
        use futures::{AsyncReadExt, StreamExt};
        let mut incoming = self.network.streams().accept(BATCH_PROTOCOL).unwrap();
        let trickle = Arc::new(Trickle::default());
        let counts = trickle.clone();
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let counts = counts.clone();
                tokio::spawn(async move {
                    if read_msg::<BatchRequest>(&mut s, Duration::from_secs(5)).await.is_err() {
                        return;
                    }
                    counts.asked.fetch_add(1, Ordering::SeqCst);
                    counts.open.fetch_add(1, Ordering::SeqCst);
                    let (mut reader, mut writer) = s.split();
                    // The watcher sends nothing after its request: a read returns only
                    // when it closes or drops the stream.
                    let closed = async move {
                        let mut b = [0u8; 1];
                        let _ = reader.read(&mut b).await;
                    };
                    let drip = async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if write_msg(&mut writer, &BatchMsg::Receipts(Vec::new())).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = closed => {}
                        () = drip => {}
                    }
                    counts.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        trickle
    }
}

/// The trickler's batch streams: how many were asked for, how many are still open.
#[derive(Debug, Default)]
struct Trickle {
    asked: AtomicUsize,
    open: AtomicUsize,
}

fn watch(dir: &std::path::Path, extra: &[&str]) -> (Killed, std::sync::mpsc::Receiver<String>) {
    let mut child = Killed(
        Command::new(bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["watch", "--interval", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = common::lines(&mut child.0, "watch");
    (child, rx)
}

/// Issue 15: a registered provider trickles the batch of its own settlement to the watcher
/// (an empty frame every 300 ms, inside the idle timeout), and another provider's
/// settlement is fraudulent. `attrinet watch` fetched batches one after another inside its
/// loop, before checking anything, so the trickler held every check and dispute for the
/// fetch deadline (128 s), past the fraud's window. Now fetches run beside the checks: the
/// fraud is disputed while the trickler's stream is still open, and that stream is
/// dropped once its own settlement's window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_provider_delays_no_dispute_of_another_settlement() {
    let root = tempfile::tempdir().unwrap();
    let world = World::new().await;
    let trickler = world.node(41).await;
    let cheat = world.node(42).await;
    let trickle = trickler.trickle_batches();
    let cheat_store = Arc::new(MemStore::new());
    cheat.serve_batches(cheat_store.clone());

    // The trickler settles first, so a watcher taking settlements in order meets it first.
    let (trickled, trickled_deadline) = world.settle_one(&trickler, &MemStore::new(), false).await;
    let (fraud, fraud_deadline) = world.settle_one(&cheat, &cheat_store, true).await;
    let bond = world.payer_chain.bond(cheat.id.address()).await.unwrap();

    let dir = world.watcher_dir(root.path(), &[&trickler, &cheat]).await;
    let (mut watcher, rx) = watch(&dir, &[]);
    let disputed = format!("DISPUTED channel {fraud}: split");
    loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with(&disputed) {
                break;
            }
            continue;
        }
        assert!(watcher.0.try_wait().unwrap().is_none(), "watch exited");
        let now = world.now().await;
        assert!(
            now < fraud_deadline,
            "the fraud's window ended undisputed (chain time {now}, deadline {fraud_deadline}); the \
             trickler was asked {} times and holds {} open stream(s)",
            trickle.asked.load(Ordering::SeqCst),
            trickle.open.load(Ordering::SeqCst)
        );
    }
    // The dispute did not wait for the trickle to end: its stream is still open.
    assert!(trickle.asked.load(Ordering::SeqCst) >= 1, "the trickler was never asked");
    assert_eq!(trickle.open.load(Ordering::SeqCst), 1, "the trickler's stream was closed before the dispute");
    assert_eq!(world.payer_chain.pending(fraud).await.unwrap(), None, "the fraud was voided");
    assert!(world.payer_chain.bond(cheat.id.address()).await.unwrap() < bond, "the cheat's bond was slashed");
    assert!(world.payer_chain.pending(trickled).await.unwrap().is_some());

    // Once the trickled settlement's window ends, the watcher gives up on it and drops the
    // stream (it no longer matters what the trickler sends).
    let now = world.now().await;
    world.anvil.advance(trickled_deadline.saturating_sub(now) + 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while trickle.open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "the watcher still holds the trickler's stream 30 s after its settlement's window ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gave_up = format!("could not check channel {trickled}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rx.try_iter().any(|l| l.starts_with(&gave_up)) {
        assert!(Instant::now() < deadline, "the watcher did not report the trickled settlement unchecked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A scrape of the watcher's `/metrics`: the value of `name`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (code, body) = common::http(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Issue 15: fetched batches and their weights were kept for as long as the watcher ran.
/// Now each is held until its settlement's window ends, then evicted (the watcher cannot
/// dispute after that, so nothing needs it): the watcher's `/metrics` count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_batch_is_evicted_once_its_window_ends() {
    let root = tempfile::tempdir().unwrap();
    let world = World::new().await;
    let node = world.node(43).await;
    let store = Arc::new(MemStore::new());
    node.serve_batches(store.clone());
    let (channel, deadline) = world.settle_one(&node, &store, false).await;

    let dir = world.watcher_dir(root.path(), &[&node]).await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (mut watcher, rx) = watch(&dir, &["--metrics", &metrics.to_string()]);
    let verified = format!("verified channel {channel} settlement to seq 1");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == verified => break,
            _ => {
                assert!(watcher.0.try_wait().unwrap().is_none(), "watch exited");
                assert!(Instant::now() < until, "the settlement was not verified within 60 s");
            }
        }
    }
    assert_eq!(metric(metrics, "attrinet_watch_batches_held").await, Some(1));
    assert!(metric(metrics, "attrinet_watch_batch_bytes_held").await.unwrap() > 0);
    assert_eq!(metric(metrics, "attrinet_watch_batches_evicted_total").await, Some(0));

    let now = world.now().await;
    world.anvil.advance(deadline.saturating_sub(now) + 1).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while metric(metrics, "attrinet_watch_batches_evicted_total").await != Some(1) {
        assert!(Instant::now() < until, "the batch was not evicted within 30 s of its window's end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(metrics, "attrinet_watch_batches_held").await, Some(0));
    assert_eq!(metric(metrics, "attrinet_watch_batch_bytes_held").await, Some(0));
}
