//! `attrinet devnet`: the whole marketplace on one machine. A local L2 (anvil), the
//! contracts, provider nodes serving a real model over libp2p, a client paying through
//! channels, a watcher; queries, settlement (one of them dishonest, which the watcher
//! disputes), and a summary checked against the chain's state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use anyhow::{Context, bail};
use attrinet_chain::{
    Anvil, AnvilConfig, ChainClient, DeployConfig, MemCheckpoint, SettleAction, SettlementPolicy, StoreSource,
};
use attrinet_compute::{Backend, Model};
use attrinet_market::{
    Beneficiaries, ChannelId, Contribution, Datanet, Identity, ModelId, Price, Receipt, Seq, Split, Store, Wei,
    payout_runs,
};
use attrinet_p2p::{Ask, Limits, NetConfig, Payer, Prompt, Sampling};
use tracing::info;

use crate::client::ChannelOpener;
use crate::engine::{EngineGenerator, Speed};
use crate::serve::{listening_addrs, offer, settler, start_network, start_provider};
use crate::store::SledStore;
use crate::watch::Evidence;

/// 1 ether in wei.
pub const ETH: u128 = 1_000_000_000_000_000_000;

/// What the devnet runs.
#[derive(Clone, Debug)]
pub struct DevnetConfig {
    /// Provider nodes.
    pub nodes: usize,
    /// Queries the client sends.
    pub queries: usize,
    /// Tokens per answer.
    pub max_tokens: u32,
    /// The model file.
    pub model: PathBuf,
    /// Engine backend.
    pub backend: Backend,
    /// Where stores live (a fresh subfolder per run).
    pub data_dir: PathBuf,
    /// Challenge window in seconds.
    pub challenge_window: u64,
}

/// One answered query.
#[derive(Clone, Debug)]
pub struct QueryLine {
    /// The question.
    pub prompt: String,
    /// The answer.
    pub answer: String,
    /// Which node answered (index).
    pub node: usize,
    /// Receipt seq and value.
    pub seq: Seq,
    /// Its value.
    pub value: Wei,
}

/// What the run did, with every figure read back from the chain.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Answers.
    pub queries: Vec<QueryLine>,
    /// Co-signed receipts in the client's store.
    pub receipts: u64,
    /// Total value of those receipts.
    pub paid: Wei,
    /// Gas of each settlement and of the dispute.
    pub gas: Vec<(String, u64)>,
    /// Who is owed what on chain after finalisation: (role, address, credited).
    pub earnings: Vec<(String, Address, Wei)>,
    /// What the receipts say each should have been credited (same order).
    pub expected: Vec<Wei>,
    /// The dishonest settlement's dispute: (fraud class, bond moved to the watcher).
    pub dispute: Option<(String, Wei)>,
    /// Engine and device.
    pub device: String,
    /// A second settlement (after the first was finalised) was verified honest.
    pub second_batch_verified: bool,
    /// Data contributors: (name, address, claimed on chain, owed by the settled batches).
    pub contributors: Vec<(String, Address, Wei, Wei)>,
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 plus 30?",
    "Give one tip for writing clear code.",
    "What does a GPU do?",
    "Say hello in Spanish.",
    "What is the largest planet in the solar system?",
    "Why is the sky blue? Answer in one sentence.",
];

fn dev_identity(role: u8, index: u8) -> Identity {
    // Fixed, public development keys: the devnet is reproducible and never holds real money.
    Identity::from_secrets(
        [role.wrapping_mul(16).wrapping_add(index).max(1); 32],
        [role.wrapping_add(index * 3 + 1); 32],
    )
    .expect("small constant secrets are valid")
}

struct NodeHandle {
    identity: Identity,
    chain: ChainClient,
    store: Arc<SledStore>,
    _network: attrinet_p2p::Client,
}

fn progress(msg: &str) {
    eprintln!("devnet: {msg}");
}

/// Runs the devnet to its summary. With `keep`, returns the live client too, for the
/// gateway.
pub async fn run(config: &DevnetConfig) -> anyhow::Result<(Summary, Option<Live>)> {
    if config.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let started = Instant::now();
    let run_dir = config.data_dir.join(format!("devnet-{}", attrinet_p2p::unix_now()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;

    progress("starting the local L2 (anvil --optimism)");
    let anvil = Anvil::spawn(AnvilConfig::default()).context("cannot start anvil: run scripts/setup-chain-tools")?;
    let endpoint = anvil.endpoint();
    let deployer = dev_identity(1, 0);
    let owner = dev_identity(2, 0);
    let watcher_id = dev_identity(3, 0);
    let client_id = dev_identity(4, 0);
    let data_pool = Address::repeat_byte(0xda);
    for who in [&deployer, &owner, &watcher_id, &client_id] {
        anvil.fund(who.address(), U256::from(1000 * ETH)).await?;
    }
    let deployment = ChainClient::deploy(
        &endpoint,
        deployer.evm.clone(),
        DeployConfig {
            treasury: deployer.address(),
            challenge_window: config.challenge_window,
            // The contract requires two challenge windows at least (docs/protocol.md).
            thaw_delay: 60.max(config.challenge_window.saturating_mul(2)),
            unbond_delay: 60,
            min_bond: Wei(ETH / 10),
        },
    )
    .await?;
    progress(&format!("contracts deployed: Registry {}, Channels {}", deployment.registry, deployment.channels));

    progress(&format!("loading {}", config.model.display()));
    let model = Model::load(&config.model)
        .with_context(|| format!("cannot load {}: run scripts/fetch-model", config.model.display()))?;
    let model_id = ModelId::from(model.id().0);
    let name = model.name().unwrap_or("model").to_string();
    // A file without a chat template is mostly a base model, which echoes a chat (Gemma 3
    // 270M does) but completes "Question: ...\nAnswer:".
    let completions = !model.has_own_chat_template();
    if completions {
        progress(&format!("{name} carries no chat template (a base model?): questions are sent as completions"));
    }
    let price = Price { per_1k_input: Wei(ETH / 10_000), per_1k_output: Wei(ETH / 2_500) };
    let split = Split::new(7000, 2000, 500, 500)?;
    // The model's datanet: two contributors whose texts the model's answers to two of the
    // demo questions reproduce. The minimum span is 4 tokens here (8 by default) because the
    // demo's answers are short.
    let contributors = [("geography notes", dev_identity(6, 0)), ("colour notes", dev_identity(6, 1))];
    let texts = [
        "Geography notes.\nThe capital of France is Paris. It lies on the Seine.\n",
        "Colour notes.\n1. Red - The most common primary colour, which is found in many flags.\n",
    ];
    let tok = model.tokenizer();
    let datanet = Arc::new(Datanet::build(
        4,
        contributors
            .iter()
            .zip(texts)
            .map(|((name, id), text)| Contribution {
                owner: id.address(),
                name: (*name).into(),
                tokens: tok.encode(text, false),
            })
            .collect(),
    )?);
    for (_, c) in &contributors {
        anvil.fund(c.address(), U256::from(ETH)).await?;
    }
    let owner_chain = ChainClient::connect(&endpoint, owner.evm.clone(), deployment)?;
    owner_chain.register_model(model_id, price, split, datanet.root(), data_pool).await?;
    progress(&format!(
        "model {name} ({model_id}) registered by its owner {}, datanet root {}",
        owner.address(),
        datanet.root()
    ));

    // Providers: the pieces `serve` runs, with fixed development keys and no speed
    // measurement (the advertised figures only rank providers, and the devnet asks each
    // node by name).
    let mut nodes: Vec<NodeHandle> = Vec::new();
    let mut boot: Vec<attrinet_p2p::Multiaddr> = Vec::new();
    let mut device = String::new();
    for i in 0..config.nodes {
        let id = dev_identity(5, i as u8);
        anvil.fund(id.address(), U256::from(100 * ETH)).await?;
        let chain = ChainClient::connect(&endpoint, id.evm.clone(), deployment)?;
        chain.register_node(&id.public_key(), Wei(ETH)).await?;
        let generator = EngineGenerator::open(Model::load(&config.model)?, config.backend, Default::default())?;
        device = generator.device();
        let store = Arc::new(SledStore::open(&run_dir.join(format!("node-{i}")))?);
        let network = start_network(
            &id,
            NetConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                bootstrap: boot.clone(),
                republish_every: Duration::from_secs(5),
                ..NetConfig::default()
            },
        )?;
        let generator = Arc::new(generator);
        let speed = Speed { decode_tokens_per_s: 20, ttft_ms: 200 };
        let offer = offer(&generator.model_arc(), generator.clone(), price, speed, Some(datanet.clone()));
        let limits = Limits { capacity: 1, exposure_limit: Wei(ETH), ..Limits::default() };
        start_provider(&id, store.clone(), &chain, vec![offer], limits, &network);
        if boot.is_empty() {
            boot = listening_addrs(&network).await?;
        }
        progress(&format!("node {i} serving as {} ({})", id.address(), network.peer_id()));
        nodes.push(NodeHandle { identity: id, chain, store, _network: network });
    }

    // The client opens a channel with every node on chain, as `query` and `channel open`
    // do; each node learns of its channel from the chain on the first request.
    let client_store = Arc::new(SledStore::open(&run_dir.join("client"))?);
    let client_chain = ChainClient::connect(&endpoint, client_id.evm.clone(), deployment)?;
    let client_net = start_network(
        &client_id,
        NetConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?], bootstrap: boot.clone(), ..NetConfig::default() },
    )?;
    let deposit = Wei(10 * ETH);
    let opener =
        ChannelOpener { identity: client_id.clone(), chain: client_chain, store: client_store.clone(), deposit };
    for n in &nodes {
        opener.open(n.identity.address(), deposit).await?;
    }
    progress(&format!("client {} opened {} channels of {deposit} each", client_id.address(), nodes.len()));
    let payer = Payer::new(client_id.clone(), client_store.clone(), Duration::from_secs(120));
    // The client holds the datanet too: it co-signs only the weights the datanet gives.
    payer.check_attribution(model_id, datanet.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while client_net.market().await?.all(attrinet_p2p::unix_now()).len() < nodes.len() {
        if Instant::now() > deadline {
            bail!("the client did not see every provider's advert within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Queries. The client's store keeps each answer's weights; the watcher checks them.
    let evidence = Arc::new(Evidence::new(client_store.clone()));
    let offers = client_net.market().await?.all(attrinet_p2p::unix_now());
    let mut lines = Vec::new();
    for q in 0..config.queries {
        let prompt = PROMPTS[q % PROMPTS.len()];
        // Round robin over the providers (rather than the client's ranking, which would send
        // everything to the first of equal offers) so that every node has receipts to settle.
        let node = q % nodes.len();
        let answer = ask_node(
            &payer,
            &client_net,
            &offers,
            &nodes[node].identity,
            &name,
            (prompt, completions),
            config.max_tokens,
        )
        .await
        .with_context(|| format!("query {q} to node {node} failed"))?;
        let attributed: Vec<String> = contributors
            .iter()
            .filter(|(_, c)| answer.weights.ppm_of(&c.address()) > 0)
            .map(|(n, c)| format!("{n} {}‰", answer.weights.ppm_of(&c.address()) / 1000))
            .collect();
        let attributed =
            if attributed.is_empty() { String::new() } else { format!("  [data: {}]", attributed.join(", ")) };
        eprintln!("  [{q:>2}] node {node}: {prompt} → {}{attributed}", answer.text.trim().replace('\n', " "));
        lines.push(QueryLine {
            prompt: prompt.into(),
            answer: answer.text.clone(),
            node,
            seq: answer.receipt.receipt.seq,
            value: answer.receipt.receipt.value,
        });
    }

    // Settlement: every node settles honestly, except the last, which first tries to
    // settle with a split that favours itself; the watcher disputes it and takes its bond.
    let policy = SettlementPolicy { threshold: Wei(0), max_age_secs: 0, max_gas_bps: 10_000 };
    let mut gas = Vec::new();
    let watcher_chain = ChainClient::connect(&endpoint, watcher_id.evm.clone(), deployment)?;
    let mut watcher = crate::watch::watcher(
        watcher_chain.clone(),
        MemCheckpoint::default(),
        evidence.clone(),
        [(model_id, datanet.clone())],
    )?;
    // Every settled batch, for the contributors' claims: (node, channel, batch start, seq).
    let mut batches: Vec<(usize, ChannelId, Seq, Seq)> = Vec::new();
    let mut dispute = None;
    // The last node that has receipts to settle is the dishonest one.
    let cheat = (nodes.len() - 1).min(config.queries.saturating_sub(1));
    for (i, n) in nodes.iter().enumerate() {
        let settler = settler(&n.chain, &n.store, policy);
        // A node that got no query never looked its channel up.
        let Some(channel) = n.store.channels()?.into_iter().next() else { continue };
        if i == cheat {
            let receipts: Vec<_> = n
                .store
                .receipts_after(&channel.params.id, channel.settled_seq)?
                .into_iter()
                .map(|r| r.receipt.receipt)
                .collect();
            let voucher = n.store.receipt(&channel.params.id, channel.last_seq)?.expect("stored").voucher;
            let weights = attrinet_chain::weights_of(&receipts, &StoreSource(n.store.clone()))?;
            let (mut runs, _) = payout_runs(&receipts, Some(&weights), |_| Ok((0, split)))?;
            // One wei moved from the owner's part to the node's: a split that differs
            // from the registered one.
            if let Some(r) = runs.first_mut()
                && r.parts.owner.0 > 0
            {
                r.parts.owner.0 -= 1;
                r.parts.node.0 += 1;
            }
            let bond_before = n.chain.bond(n.identity.address()).await?;
            let out = n.chain.settle(&voucher, &runs).await?;
            gas.push((format!("settle (dishonest, node {i})"), out.gas_used));
            progress(&format!("node {i} settled with a tampered split; the watcher checks it"));
            let report = watcher.step().await?;
            let Some((_, class, tx)) = report.disputed.first().cloned() else {
                bail!("the watcher did not dispute the dishonest settlement: {report:?}");
            };
            gas.push((format!("dispute ({class})"), tx.gas_used));
            let bond_after = n.chain.bond(n.identity.address()).await?;
            dispute = Some((class.to_string(), Wei(bond_before.0 - bond_after.0)));
            progress(&format!(
                "the watcher disputed ({class}); node {i}'s bond went from {bond_before} to {bond_after}"
            ));
            // The node re-bonds and settles honestly.
            n.chain.add_bond(Wei(ETH)).await?;
        }
        match settler.settle_channel(channel.params.id, true).await? {
            SettleAction::Settled { outcome, seq, amount } => {
                batches.push((i, channel.params.id, channel.settled_seq, seq));
                gas.push((format!("settle (node {i}, {} receipts)", seq.0), outcome.gas_used));
                info!(target: "devnet", node = i, %amount, "settled");
            }
            other => bail!("node {i} could not settle: {other:?}"),
        }
    }
    // The honest settlements pass the watcher, then finalise after the window.
    let report = watcher.step().await?;
    if !report.disputed.is_empty() {
        bail!("the watcher disputed an honest settlement: {report:?}");
    }
    anvil.advance(config.challenge_window + 1).await?;
    for (i, n) in nodes.iter().enumerate() {
        let Some(channel) = n.store.channels()?.into_iter().next() else { continue };
        match settler(&n.chain, &n.store, policy).settle_channel(channel.params.id, true).await? {
            SettleAction::Finalized { .. } => {}
            other => bail!("node {i} could not finalise: {other:?}"),
        }
    }

    // Business goes on after a settlement: one more paid query to node 0, whose voucher
    // commits to a batch starting after the settled seq; the watcher must find that
    // second batch honest.
    let second_batch = {
        let n = &nodes[0];
        let answer =
            ask_node(&payer, &client_net, &offers, &n.identity, &name, (PROMPTS[0], completions), config.max_tokens)
                .await
                .context("query after settlement failed")?;
        lines.push(QueryLine {
            prompt: PROMPTS[0].into(),
            answer: answer.text.clone(),
            node: 0,
            seq: answer.receipt.receipt.seq,
            value: answer.receipt.receipt.value,
        });
        let settler = settler(&n.chain, &n.store, policy);
        let id = answer.receipt.receipt.channel;
        let start = n.store.channel(&id)?.map(|c| c.settled_seq).unwrap_or_default();
        match settler.settle_channel(id, true).await? {
            SettleAction::Settled { outcome, seq, .. } => {
                batches.push((0, id, start, seq));
                gas.push((format!("settle (node 0, second batch to seq {})", seq.0), outcome.gas_used))
            }
            other => bail!("node 0 could not settle its second batch: {other:?}"),
        }
        let report = watcher.step().await?;
        if !report.disputed.is_empty() {
            bail!("the watcher disputed the honest second batch: {report:?}");
        }
        anvil.advance(config.challenge_window + 1).await?;
        match settler.settle_channel(id, true).await? {
            SettleAction::Finalized { .. } => {}
            other => bail!("node 0 could not finalise its second batch: {other:?}"),
        }
        report.verified.iter().any(|(c, _)| *c == id)
    };
    progress(&format!("second batch on node 0 settled, verified by the watcher: {second_batch}"));

    // What the receipts say, batch by batch as they were settled, against what the chain
    // credited; the data contributors claim their entries of each batch.
    let mut expected_by: BTreeMap<Address, Wei> = BTreeMap::new();
    let mut owed: BTreeMap<Address, Wei> = BTreeMap::new();
    let mut receipts = 0u64;
    let mut paid = Wei::ZERO;
    let contributor_chains: Vec<ChainClient> = contributors
        .iter()
        .map(|(_, c)| ChainClient::connect(&endpoint, c.evm.clone(), deployment))
        .collect::<Result<_, _>>()?;
    for &(i, channel, start, seq) in &batches {
        let n = &nodes[i];
        let batch: Vec<Receipt> = client_store
            .receipts_after(&channel, start)?
            .into_iter()
            .map(|r| r.receipt.receipt)
            .filter(|r| r.seq <= seq)
            .collect();
        receipts += batch.len() as u64;
        let weights = attrinet_chain::weights_of(&batch, evidence.as_ref())?;
        let (runs, data) = payout_runs(&batch, Some(&weights), |_| Ok((0, split)))?;
        let settled = watcher_chain.settled_payouts(channel, seq).await?.context("settled payouts not found")?;
        for (k, run) in runs.iter().enumerate() {
            paid = paid.checked_add(run.value()?)?;
            let to = Beneficiaries {
                node: n.identity.address(),
                owner: owner.address(),
                data_pool,
                protocol: deployer.address(),
            };
            for (_, who, amount) in run.credits(&to)? {
                let e = expected_by.entry(who).or_default();
                *e = e.checked_add(amount)?;
            }
            for ((_, c), chain) in contributors.iter().zip(&contributor_chains) {
                if let Some(claim) = data[k].claim(&c.address()) {
                    chain.claim_data(channel, seq, &settled, k, &claim).await?;
                    let o = owed.entry(c.address()).or_default();
                    *o = o.checked_add(claim.amount)?;
                }
            }
        }
    }
    let mut contributor_lines = Vec::new();
    for (name, c) in &contributors {
        contributor_lines.push((
            (*name).to_string(),
            c.address(),
            watcher_chain.credited(c.address()).await?,
            owed.get(&c.address()).copied().unwrap_or_default(),
        ));
    }
    let mut earnings = Vec::new();
    let mut expected = Vec::new();
    let mut roles: Vec<(String, Address)> =
        nodes.iter().enumerate().map(|(i, n)| (format!("node {i}"), n.identity.address())).collect();
    roles.push(("model owner".into(), owner.address()));
    roles.push(("data pool".into(), data_pool));
    roles.push(("protocol".into(), deployer.address()));
    for (role, who) in roles {
        earnings.push((role, who, watcher_chain.credited(who).await?));
        expected.push(expected_by.get(&who).copied().unwrap_or_default());
    }
    let summary = Summary {
        queries: lines,
        receipts,
        paid,
        gas,
        earnings,
        expected,
        dispute,
        device,
        second_batch_verified: second_batch,
        contributors: contributor_lines,
    };
    progress(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    let live = Live {
        endpoint: endpoint.clone(),
        deployment,
        _anvil: anvil,
        network: client_net,
        payer,
        _nodes: nodes.into_iter().map(|n| n._network).collect(),
    };
    Ok((summary, Some(live)))
}

/// The running devnet, kept for `--keep` (the gateway runs on its client).
pub struct Live {
    /// The chain's endpoint.
    pub endpoint: String,
    /// Where the contracts are.
    pub deployment: attrinet_chain::Deployment,
    _anvil: Anvil,
    /// The client's network handle.
    pub network: attrinet_p2p::Client,
    /// The client.
    pub payer: Payer,
    _nodes: Vec<attrinet_p2p::Client>,
}

impl Live {
    /// Writes `<data_dir>/devnet.toml`, a config file with this devnet's chain and a
    /// bootstrap peer, so that `attrinet --config … query|gateway|channel|models|earnings`
    /// work against it; funds this data dir's account (creating its keys if it has none)
    /// so that it can open channels. Returns the file's path.
    pub async fn write_config(&self, data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
        let mut file = crate::config::FileConfig::default();
        file.chain.rpc = Some(self.endpoint.clone());
        file.chain.chain_id = Some(self.deployment.chain_id);
        file.chain.registry = Some(self.deployment.registry);
        file.chain.channels = Some(self.deployment.channels);
        file.chain.deploy_block = Some(self.deployment.deploy_block);
        let mut bootstrap = Vec::new();
        if let Some(n) = self._nodes.first() {
            bootstrap.extend(n.listen_addrs().await?.into_iter().map(|a| a.to_string()));
        }
        file.network.bootstrap = Some(bootstrap);
        file.client.deposit = Some("0.1eth".into());
        let path = data_dir.join("devnet.toml");
        file.save(&path)?;
        let identity = match crate::keys::load(data_dir) {
            Ok(id) => id,
            Err(_) => {
                let id = crate::keys::create(data_dir)?;
                progress(&format!("created keys for {} in {}", id.address(), data_dir.display()));
                id
            }
        };
        self._anvil.fund(identity.address(), U256::from(100 * ETH)).await?;
        progress(&format!("funded this data dir's account {} with 100 ETH on the devnet", identity.address()));
        Ok(path)
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish()
    }
}

/// Asks one chosen node (through the client's channel with it) a question: a one-message
/// chat, or with `completion` the text "Question: ...\nAnswer:".
async fn ask_node(
    payer: &Payer,
    network: &attrinet_p2p::Client,
    offers: &[attrinet_market::ModelAdvert],
    node: &Identity,
    model: &str,
    (question, completion): (&str, bool),
    max_tokens: u32,
) -> anyhow::Result<attrinet_p2p::Answer> {
    let advert = offers.iter().find(|a| a.node_key == node.public_key()).context("no advert from that node")?;
    let channel = payer.channel_with(advert)?.context("no channel with that node")?;
    let ask = Ask {
        model: model.into(),
        prompt: if completion {
            Prompt::Text(format!("Question: {question}\nAnswer:"))
        } else {
            Prompt::Chat(vec![attrinet_p2p::ChatMessage { role: "user".into(), content: question.into() }])
        },
        max_tokens,
        sampling: Sampling::default(),
        max_cost: None,
        stop: Vec::new(),
    };
    Ok(payer.infer_with(network, advert, channel, &ask, &mut |_| {}).await?)
}

impl Summary {
    /// Whether every credited amount equals what the receipts say, contributors' claims
    /// included.
    pub fn consistent(&self) -> bool {
        self.earnings.iter().zip(&self.expected).all(|((_, _, got), want)| got == want)
            && self.contributors.iter().all(|(_, _, got, want)| got == want)
    }

    /// The summary as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let eth = |w: Wei| format!("{:.6} ETH", w.0 as f64 / ETH as f64);
        s += &format!("\n== attrinet devnet summary ({}) ==\n", self.device);
        s += &format!(
            "answers: {}  receipts: {}  paid: {} ({} wei)\n",
            self.queries.len(),
            self.receipts,
            eth(self.paid),
            self.paid.0
        );
        s += "gas:\n";
        for (what, g) in &self.gas {
            s += &format!("  {what:<40} {g:>9}\n");
        }
        s += &format!("second batch after a settlement verified by the watcher: {}\n", self.second_batch_verified);
        if let Some((class, bond)) = &self.dispute {
            s += &format!("dispute: fraud class '{class}', {} of bond moved to the watcher\n", eth(*bond));
        }
        s += "earned (credited on chain | from receipts):\n";
        for ((role, who, got), want) in self.earnings.iter().zip(&self.expected) {
            let mark = if got == want { "ok" } else { "MISMATCH" };
            s += &format!("  {role:<12} {who}  {:>22} | {:>22} wei  {mark}\n", got.0, want.0);
        }
        s += "data contributors (claimed on chain | owed by the settled batches):\n";
        for (name, who, got, want) in &self.contributors {
            let mark = if got == want { "ok" } else { "MISMATCH" };
            s += &format!("  {name:<16} {who}  {:>18} | {:>18} wei  {mark}\n", got.0, want.0);
        }
        s
    }
}
