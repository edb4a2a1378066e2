//! `attrinet`: the command-line entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use attrinet_compute::Backend;
use attrinet_market::{ChannelState, Identity, Store, Wei};
use attrinet_node::SledStore;
use attrinet_node::client::ChannelOpener;
use attrinet_node::config::{self, FileConfig};
use clap::{Args, Parser, Subcommand};

/// attrinet: a peer-to-peer marketplace for AI inference where the model itself earns.
///
/// GPU owners serve models and are paid per token through co-signed receipts; model
/// owners and data contributors get their split of every payment on chain. Start with
/// `attrinet devnet`: the whole marketplace on this machine, in one command.
#[derive(Debug, Parser)]
#[command(name = "attrinet", version, long_about)]
struct Cli {
    /// Where keys, receipts, channel state and `config.toml` live. Use one data dir per
    /// running process: its store is locked while in use.
    #[arg(long, global = true, help_heading = "Global", default_value = "./attrinet-data", env = "ATTRINET_DATA_DIR")]
    data_dir: PathBuf,
    /// A TOML configuration file (default: `<data-dir>/config.toml` when it exists).
    /// Flags win over environment variables, which win over the file.
    #[arg(long, global = true, help_heading = "Global", env = "ATTRINET_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines (for log collectors) instead of human-readable text. The level
    /// comes from RUST_LOG (default `warn`).
    #[arg(long, global = true, help_heading = "Global")]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole marketplace locally: chain, contracts, provider nodes, a client and a
    /// watcher; send queries, settle (one settlement dishonest, disputed by the watcher)
    /// and print who earned what.
    Devnet(DevnetArgs),
    /// Serve a model as a provider: load it, register the node and the model on chain if
    /// needed, advertise it, answer paid queries and settle the receipts.
    Serve(ServeArgs),
    /// Ask the network one question: find a provider, open or reuse a channel, stream
    /// the answer to the terminal and print the receipt.
    Query(QueryArgs),
    /// Serve an OpenAI-compatible HTTP API that routes into the network and pays through
    /// channels (point any OpenAI client's base URL at it).
    Gateway(GatewayArgs),
    /// Watch settlements on chain and dispute bad ones within their challenge window,
    /// with this data dir's receipts as the evidence.
    Watch(WatchArgs),
    /// Payment channels of this data dir's account: open, top up, thaw, withdraw, status.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Models on chain: register one with its prices, split and datanet.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Manage this node's keys (ed25519 for the network and receipts, secp256k1 for the
    /// chain).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the local receipt store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// List what the network offers now: models, providers, prices, speeds.
    Models(ModelsArgs),
    /// What an address earned on chain, per model and role (node, model owner, data pool,
    /// protocol), finalised and still pending; its withdrawable balance; its data claims.
    Earnings(EarningsArgs),
    /// Datanets: the contributions a model's data share is paid to.
    #[command(subcommand)]
    Datanet(DatanetCommand),
}

/// Where the chain and contracts are. Each falls back to the environment, then to the
/// `[chain]` table of the config file.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Chain (else ATTRINET_* variables, else [chain] in the config file)")]
struct ChainArgs {
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "ATTRINET_RPC")]
    rpc: Option<String>,
    /// The chain id (default 31337, anvil's).
    #[arg(long, env = "ATTRINET_CHAIN_ID")]
    chain_id: Option<u64>,
    /// The Registry contract.
    #[arg(long, env = "ATTRINET_REGISTRY")]
    registry: Option<alloy_primitives::Address>,
    /// The Channels contract.
    #[arg(long, env = "ATTRINET_CHANNELS")]
    channels: Option<alloy_primitives::Address>,
    /// The block the contracts were deployed in (where event scans start; default 0).
    #[arg(long, env = "ATTRINET_DEPLOY_BLOCK")]
    deploy_block: Option<u64>,
}

impl ChainArgs {
    fn resolve(&self, file: &FileConfig) -> anyhow::Result<(String, attrinet_chain::Deployment)> {
        attrinet_node::config::ChainFlags {
            rpc: self.rpc.clone(),
            chain_id: self.chain_id,
            registry: self.registry,
            channels: self.channels,
            deploy_block: self.deploy_block,
        }
        .resolve(&file.chain)
    }
}

/// The peer-to-peer network. Each falls back to the `[network]` table of the config file.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Network (else ATTRINET_* variables, else [network] in the config file)")]
struct NetArgs {
    /// Address to listen on (repeatable), e.g. `/ip4/0.0.0.0/tcp/4001`.
    #[arg(long, env = "ATTRINET_P2P_LISTEN", value_delimiter = ',')]
    p2p_listen: Vec<attrinet_p2p::Multiaddr>,
    /// A peer to join through (repeatable), `/ip4/.../tcp/PORT/p2p/PEER_ID`.
    #[arg(long, env = "ATTRINET_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<attrinet_p2p::Multiaddr>,
}

impl NetArgs {
    fn resolve(&self, file: &FileConfig, default_listen: &[&str]) -> anyhow::Result<(Vec<attrinet_p2p::Multiaddr>, Vec<attrinet_p2p::Multiaddr>)> {
        let listen = config::addrs(&self.p2p_listen, file.network.listen.as_ref(), default_listen)?;
        let bootstrap = config::addrs(&self.bootstrap, file.network.bootstrap.as_ref(), &[])?;
        Ok((listen, bootstrap))
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The GGUF model file (`[serve] model`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Price per 1,000 input tokens: wei, or with a unit (`0.0001eth`, `50gwei`).
    #[arg(long, value_parser = config::parse_wei)]
    price_in: Option<Wei>,
    /// Price per 1,000 output tokens.
    #[arg(long, value_parser = config::parse_wei)]
    price_out: Option<Wei>,
    /// Inference backend: auto (a GPU through wgpu if present, else CPU), wgpu, cpu.
    #[arg(long, value_parser = parse_backend)]
    backend: Option<Backend>,
    /// Requests generated at once; more are answered "busy" so clients fail over.
    #[arg(long)]
    capacity: Option<usize>,
    /// Most value served to one channel before the client pays for it (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    exposure_limit: Option<Wei>,
    /// Bond posted when this node registers (default 1eth; the contract sets a minimum).
    #[arg(long, value_parser = config::parse_wei)]
    bond: Option<Wei>,
    /// The model's terms, used when this node registers it (and becomes its owner); the
    /// datanet is also what answers are attributed to.
    #[command(flatten)]
    terms: TermsArgs,
    /// Seconds between settlement checks (default 30).
    #[arg(long)]
    settle_every: Option<u64>,
    /// Settle a channel once its unsettled value reaches this (default 0.001eth)...
    #[arg(long, value_parser = config::parse_wei)]
    settle_threshold: Option<Wei>,
    /// ... or once its oldest unsettled receipt is this many seconds old.
    #[arg(long, default_value_t = 3600)]
    settle_max_age: u64,
    /// Never settle when the gas would cost more than this share of the value, in basis
    /// points (100 = 1%); a payer's thaw overrides it.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    settle_max_gas_bps: u16,
    /// Also serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The question.
    prompt: String,
    /// Model name or id (hex); the first advertised one when omitted.
    #[arg(long)]
    model: Option<String>,
    /// Refuse providers whose price for this request (at --max-tokens) is above this.
    #[arg(long, value_parser = config::parse_wei)]
    max_price: Option<Wei>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Deposit of a channel opened for this query when none exists (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    deposit: Option<Wei>,
    /// Seconds to wait for the model's adverts.
    #[arg(long, default_value_t = 15)]
    wait_secs: u64,
    /// A model's datanet index, MODEL_ID=PATH (repeatable): answers' attribution is
    /// recomputed and a receipt with other weights is refused before paying.
    #[arg(long, value_parser = parse_datanet_arg)]
    datanet: Vec<(attrinet_market::ModelId, PathBuf)>,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Deposit of a channel opened on demand (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    deposit: Option<Wei>,
    /// A model's datanet index, MODEL_ID=PATH (repeatable): answers' attribution is
    /// recomputed and a receipt with other weights is refused before paying.
    #[arg(long, value_parser = parse_datanet_arg)]
    datanet: Vec<(attrinet_market::ModelId, PathBuf)>,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Seconds between checks; keep well under the challenge window.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// A model's datanet index, to recompute its receipts' attribution: MODEL_ID=PATH.
    #[arg(long, value_parser = parse_datanet_arg)]
    datanet: Vec<(attrinet_market::ModelId, PathBuf)>,
    /// Stop after this many checks (default: until Ctrl-C).
    #[arg(long)]
    steps: Option<u64>,
    /// Check only the settlements whose receipts are in this data dir's store (those of
    /// its own channels), without joining the network to fetch others' batches.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Open a channel to a registered node, paying DEPOSIT into it.
    Open {
        /// The provider's EVM address (`attrinet models` lists them).
        #[arg(long)]
        provider: alloy_primitives::Address,
        /// Deposit: wei or with a unit (`0.05eth`).
        #[arg(long, value_parser = config::parse_wei)]
        deposit: Wei,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Add to a channel's deposit.
    TopUp {
        /// The channel id.
        #[arg(value_parser = parse_channel)]
        channel: attrinet_market::ChannelId,
        /// Amount: wei or with a unit.
        #[arg(long, value_parser = config::parse_wei)]
        amount: Wei,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Start leaving a channel: after the thaw delay, `withdraw` returns what was not
    /// settled (the provider settles what it is owed meanwhile).
    Thaw {
        /// The channel id.
        #[arg(value_parser = parse_channel)]
        channel: attrinet_market::ChannelId,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Withdraw the unsettled deposit after the thaw and close the channel.
    Withdraw {
        /// The channel id.
        #[arg(value_parser = parse_channel)]
        channel: attrinet_market::ChannelId,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Every channel of this data dir: local receipts next to the chain's state.
    Status {
        #[command(flatten)]
        chain: ChainArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Register a model: its id is the SHA-256 of the GGUF file, and this data dir's
    /// account becomes its owner.
    Register(ModelRegisterArgs),
}

#[derive(Debug, Args)]
struct ModelRegisterArgs {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// Price per 1,000 input tokens.
    #[arg(long, value_parser = config::parse_wei)]
    price_in: Wei,
    /// Price per 1,000 output tokens.
    #[arg(long, value_parser = config::parse_wei)]
    price_out: Wei,
    #[command(flatten)]
    terms: TermsArgs,
    #[command(flatten)]
    chain: ChainArgs,
}

/// A model's terms on chain, besides its prices.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model terms")]
struct TermsArgs {
    /// Split in basis points: node,owner,data,protocol (must add up to 10000).
    #[arg(long, default_value = "7000,2000,500,500", value_parser = parse_split)]
    split: attrinet_market::Split,
    /// A datanet index (`attrinet datanet build`): its root is recorded with the model,
    /// and nodes attribute answers to its contributors.
    #[arg(long)]
    datanet: Option<PathBuf>,
    /// Where the data share not claimed by contributors goes (default: the model owner).
    #[arg(long)]
    data_pool: Option<alloy_primitives::Address>,
}

#[derive(Debug, Args)]
struct EarningsArgs {
    /// The data contributor (or node, model owner, ...) to report on (default: this
    /// data dir's account).
    #[arg(long, alias = "address")]
    contributor: Option<alloy_primitives::Address>,
    #[command(flatten)]
    chain: ChainArgs,
}

#[derive(Debug, Subcommand)]
enum DatanetCommand {
    /// Tokenize a folder of contributions with the model's tokenizer, index it, save the
    /// index and print its commitment root (which `model register` records on chain).
    ///
    /// Layout: DIR/<0xOWNER_ADDRESS>/**/*.txt — each file is one contribution owned by
    /// the address of its top folder.
    Build(DatanetBuildArgs),
}

#[derive(Debug, Args)]
struct DatanetBuildArgs {
    /// The folder of contributions.
    dir: PathBuf,
    /// The GGUF model whose tokenizer the index uses.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct-Q4_1.gguf")]
    model: PathBuf,
    /// Where to write the index.
    #[arg(long, default_value = "datanet.idx")]
    out: PathBuf,
    /// Shortest span of tokens that counts as a match.
    #[arg(long, default_value_t = attrinet_market::DEFAULT_MIN_SPAN)]
    min_span: u32,
}

#[derive(Debug, Args)]
struct ModelsArgs {
    /// How long to listen for adverts.
    #[arg(long, default_value_t = 5)]
    wait_secs: u64,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Debug, Args)]
struct DevnetArgs {
    /// Provider nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// Queries the client sends.
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 24)]
    max_tokens: u32,
    /// The GGUF model the nodes serve (`scripts/fetch-model` downloads SmolLM2).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct-Q4_1.gguf")]
    model: PathBuf,
    /// Inference backend: auto (a GPU through wgpu if present, else CPU), wgpu, cpu.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    backend: Backend,
    /// Seconds during which a settlement can be disputed.
    #[arg(long, default_value_t = 3)]
    challenge_window: u64,
    /// Stay up afterwards and serve the OpenAI-compatible gateway until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Where the gateway listens with --keep.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create keys in the data dir (refuses to overwrite).
    New,
    /// Print the public key, peer id and EVM address.
    Show,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Re-check every stored channel: contiguous seqs, valid signatures, exact cumulative
    /// totals. Exits with status 1 if anything is wrong.
    Audit,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "cpu" | "candle" => Ok(Backend::Candle),
        other => other.parse(),
    }
}

fn parse_split(s: &str) -> Result<attrinet_market::Split, String> {
    let parts: Vec<u16> = s.split(',').map(|p| p.trim().parse::<u16>()).collect::<Result<_, _>>().map_err(|_| format!("`{s}` is not four numbers node,owner,data,protocol"))?;
    let [node, owner, data, protocol] = parts[..] else { return Err(format!("`{s}` is not four numbers node,owner,data,protocol")) };
    attrinet_market::Split::new(node, owner, data, protocol).map_err(|e| e.to_string())
}

fn parse_channel(s: &str) -> Result<attrinet_market::ChannelId, String> {
    attrinet_node::client::parse_channel(s)
}

fn parse_datanet_arg(s: &str) -> Result<(attrinet_market::ModelId, PathBuf), String> {
    let (id, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not MODEL_ID=PATH"))?;
    let id: alloy_primitives::B256 = id.parse().map_err(|_| format!("`{id}` is not a model id (0x and 64 hex digits)"))?;
    Ok((attrinet_market::ModelId::from(id.0), PathBuf::from(path)))
}

/// A payer that checks the attribution of the given models against their datanets, each
/// of which must be the one its model is registered with (a stale index would make it
/// refuse every honest receipt).
async fn payer_with_datanets(
    identity: Identity,
    store: Arc<SledStore>,
    chain: &attrinet_chain::ChainClient,
    datanets: &[(attrinet_market::ModelId, PathBuf)],
) -> anyhow::Result<attrinet_p2p::Payer> {
    let payer = attrinet_p2p::Payer::new(identity, store, Duration::from_secs(120));
    for (model, path) in datanets {
        let d = attrinet_chain::load_datanet(path).with_context(|| format!("cannot load datanet {}", path.display()))?;
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
fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Arc<SledStore>> {
    let dir = data_dir.join("store");
    Ok(Arc::new(SledStore::open(&dir).with_context(|| format!("cannot open the store at {} (is another attrinet using this data dir?)", dir.display()))?))
}

/// A Ctrl-C watch: turns true on the first Ctrl-C.
fn ctrl_c() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

/// Starts the network for a client-side command.
async fn client_network(identity: &Identity, net: &NetArgs, file: &FileConfig) -> anyhow::Result<attrinet_p2p::Client> {
    let (listen, bootstrap) = net.resolve(file, &["/ip4/0.0.0.0/tcp/0"])?;
    anyhow::ensure!(!bootstrap.is_empty(), "no peer to join: pass --bootstrap, set ATTRINET_BOOTSTRAP, or put `bootstrap` under [network] in the config file");
    let (network, event_loop) = attrinet_p2p::new(identity.clone(), attrinet_p2p::NetConfig { listen, bootstrap, ..Default::default() })?;
    tokio::spawn(event_loop.run());
    Ok(network)
}

const DEFAULT_DEPOSIT: Wei = Wei(10_000_000_000_000_000);

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref(), &cli.data_dir)?;
    match cli.command {
        Command::Store(StoreCommand::Audit) => {
            let dir = cli.data_dir.join("store");
            anyhow::ensure!(dir.exists(), "no store at {} (is --data-dir right?)", dir.display());
            let store = SledStore::open(&dir)?;
            let audit = attrinet_node::audit(&store).context("store audit failed")?;
            println!("ok: {} channels, {} receipts, all consistent", audit.channels, audit.receipts);
        }
        Command::Keys(KeysCommand::New) => {
            let id = attrinet_node::keys::create(&cli.data_dir)?;
            print_identity(&id);
            println!("keys written to {} (mode 0600)", attrinet_node::keys::key_path(&cli.data_dir).display());
        }
        Command::Keys(KeysCommand::Show) => print_identity(&attrinet_node::keys::load(&cli.data_dir)?),
        Command::Models(m) => {
            let id = match attrinet_node::keys::load(&cli.data_dir) {
                Ok(id) => id,
                // Listing needs no identity of its own: a throwaway one will do.
                Err(_) => Identity::from_secrets(rand32()?, [7; 32])?,
            };
            let net = client_network(&id, &m.net, &file).await?;
            let bar = indicatif::ProgressBar::new_spinner().with_message("listening for adverts");
            bar.enable_steady_tick(Duration::from_millis(100));
            tokio::time::sleep(Duration::from_secs(m.wait_secs)).await;
            bar.finish_and_clear();
            let offers = net.market().await?.all(attrinet_p2p::unix_now());
            if offers.is_empty() {
                println!("no adverts seen in {} s", m.wait_secs);
            }
            println!("{:<34} {:<44} {:>16} {:>16} {:>7} {:>6}", "model", "provider", "wei/1k in", "wei/1k out", "tok/s", "free");
            for a in offers {
                println!(
                    "{:<34} {:<44} {:>16} {:>16} {:>7} {:>6}",
                    a.model_name, a.evm_address.to_string(), a.price.per_1k_input.0, a.price.per_1k_output.0, a.decode_tokens_per_s, a.free_capacity
                );
            }
        }
        Command::Earnings(e) => {
            let (rpc, deployment) = e.chain.resolve(&file)?;
            let who = match e.contributor {
                Some(a) => a,
                None => attrinet_node::keys::load(&cli.data_dir).context("pass --contributor, or use a data dir with keys")?.address(),
            };
            let earned = attrinet_node::earnings(&rpc, deployment, who).await?;
            print!("{}", earned.render(who));
        }
        Command::Datanet(DatanetCommand::Build(d)) => {
            let model = attrinet_compute::Model::load(&d.model).with_context(|| format!("cannot load {}", d.model.display()))?;
            let bar = indicatif::ProgressBar::new_spinner().with_message(format!("indexing {}", d.dir.display()));
            bar.enable_steady_tick(Duration::from_millis(100));
            let tok = model.tokenizer();
            let datanet = attrinet_chain::build_datanet_dir(&d.dir, d.min_span, |text| tok.encode(text, false))?;
            attrinet_chain::save_datanet(&datanet, &d.out)?;
            bar.finish_and_clear();
            let owners: std::collections::BTreeSet<_> = datanet.contributions().map(|(owner, _, _)| owner).collect();
            println!("{} contributions from {} owners, {} tokens", datanet.contributions().count(), owners.len(), datanet.contributions().map(|(_, _, t)| t.len()).sum::<usize>());
            println!("index written to {}", d.out.display());
            println!("datanet root: {}", datanet.root());
        }
        Command::Serve(a) => serve(&cli.data_dir, &file, a).await?,
        Command::Query(q) => query(&cli.data_dir, &file, q).await?,
        Command::Gateway(g) => {
            let identity = attrinet_node::keys::load(&cli.data_dir)?;
            let (rpc, deployment) = g.chain.resolve(&file)?;
            let store = open_store(&cli.data_dir)?;
            let network = client_network(&identity, &g.net, &file).await?;
            let deposit = match g.deposit {
                Some(d) => d,
                None => config::wei_or(file.client.deposit.as_deref(), "[client] deposit", DEFAULT_DEPOSIT)?,
            };
            let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
            let gateway = attrinet_node::gateway::Gateway {
                network,
                payer: payer_with_datanets(identity.clone(), store.clone(), &chain, &g.datanet).await?,
                metrics: Arc::new(attrinet_node::Metrics::default()),
                opener: Some(ChannelOpener { identity, chain, store: store.clone(), deposit }),
            };
            let listener = tokio::net::TcpListener::bind(g.listen).await.with_context(|| format!("cannot listen on {}", g.listen))?;
            println!("gateway: http://{}/v1 (OpenAI-compatible; model names at /v1/models). Ctrl-C stops.", listener.local_addr()?);
            let mut stop = ctrl_c();
            axum::serve(listener, attrinet_node::gateway::router(gateway))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await?;
            store.flush()?;
        }
        Command::Watch(w) => watch(&cli.data_dir, &file, w).await?,
        Command::Channel(c) => channel(&cli.data_dir, &file, c).await?,
        Command::Model(ModelCommand::Register(m)) => {
            let identity = attrinet_node::keys::load(&cli.data_dir)?;
            let (rpc, deployment) = m.chain.resolve(&file)?;
            let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
            let model = attrinet_node::serve::load_model_with_progress(&m.model)?;
            let id = attrinet_market::ModelId::from(model.id().0);
            let root = match &m.terms.datanet {
                Some(p) => attrinet_chain::load_datanet(p).with_context(|| format!("cannot load datanet {}", p.display()))?.root(),
                None => alloy_primitives::B256::ZERO,
            };
            anyhow::ensure!(chain.terms(id).await?.is_none(), "model {id} is already registered");
            let price = attrinet_market::Price { per_1k_input: m.price_in, per_1k_output: m.price_out };
            let out = chain.register_model(id, price, m.terms.split, root, m.terms.data_pool.unwrap_or(identity.address())).await?;
            println!("registered model {id} ({}) owned by {}; gas {}", model.name().unwrap_or("model"), identity.address(), out.gas_used);
        }
        Command::Devnet(a) => devnet(&cli.data_dir, a).await?,
    }
    Ok(())
}

async fn serve(data_dir: &std::path::Path, file: &FileConfig, a: ServeArgs) -> anyhow::Result<()> {
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = a.chain.resolve(file)?;
    let (listen, bootstrap) = a.net.resolve(file, &["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"])?;
    let s = &file.serve;
    let wei = |flag: Option<Wei>, key: Option<&String>, what: &str, default: Option<Wei>| -> anyhow::Result<Wei> {
        match (flag, key, default) {
            (Some(w), _, _) => Ok(w),
            (None, Some(v), _) => config::parse_wei(v).map_err(|e| anyhow::anyhow!("[serve] {what}: {e}")),
            (None, None, Some(d)) => Ok(d),
            (None, None, None) => anyhow::bail!("missing --{} (or `{what}` under [serve] in the config file)", what.replace('_', "-")),
        }
    };
    let backend = match (a.backend, &s.backend) {
        (Some(b), _) => b,
        (None, Some(b)) => parse_backend(b).map_err(|e| anyhow::anyhow!("[serve] backend: {e}"))?,
        (None, None) => Backend::Auto,
    };
    let opts = attrinet_node::serve::ServeOptions {
        model: config::required(a.model.or(s.model.clone()), "model", "model")?,
        price: attrinet_market::Price {
            per_1k_input: wei(a.price_in, s.price_in.as_ref(), "price_in", None)?,
            per_1k_output: wei(a.price_out, s.price_out.as_ref(), "price_out", None)?,
        },
        backend,
        capacity: a.capacity.or(s.capacity).unwrap_or(2).max(1),
        exposure_limit: wei(a.exposure_limit, s.exposure_limit.as_ref(), "exposure_limit", Some(DEFAULT_DEPOSIT))?,
        bond: wei(a.bond, s.bond.as_ref(), "bond", Some(Wei(1_000_000_000_000_000_000)))?,
        split: a.terms.split,
        datanet: a.terms.datanet.or(s.datanet.clone()),
        data_pool: a.terms.data_pool,
        settle_every: Duration::from_secs(a.settle_every.or(s.settle_every_secs).unwrap_or(30).max(1)),
        policy: attrinet_chain::SettlementPolicy {
            threshold: wei(a.settle_threshold, s.settle_threshold.as_ref(), "settle_threshold", Some(Wei(1_000_000_000_000_000)))?,
            max_age_secs: a.settle_max_age,
            max_gas_bps: a.settle_max_gas_bps,
        },
        rpc,
        deployment,
        listen,
        bootstrap,
    };
    let store = open_store(data_dir)?;
    let metrics = Arc::new(attrinet_node::Metrics::default());
    if let Some(addr) = a.metrics {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let (m, st, me) = (metrics.clone(), store.clone(), identity.address());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move {
                match attrinet_node::provider_metrics(st.as_ref(), me) {
                    Ok(p) => (axum::http::StatusCode::OK, m.render() + &p),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("store unreadable: {e}\n")),
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let address = identity.address();
    attrinet_node::serve::serve(identity, store, opts, metrics, ctrl_c(), |s| {
        println!("serving {} ({}) on {} as {address}", s.name, s.model, s.device);
        println!("measured {} tokens/s, first token in {} ms (advertised)", s.speed.decode_tokens_per_s, s.speed.ttft_ms);
        for addr in &s.addrs {
            println!("listening on {addr}");
        }
        println!("Ctrl-C stops (receipts are kept in the store).");
    })
    .await?;
    println!("stopped");
    Ok(())
}

async fn query(data_dir: &std::path::Path, file: &FileConfig, q: QueryArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = q.chain.resolve(file)?;
    let store = open_store(data_dir)?;
    // The chain first: a wrong endpoint or datanet fails before anything else happens.
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    let payer = payer_with_datanets(identity.clone(), store.clone(), &chain, &q.datanet).await?;
    let network = client_network(&identity, &q.net, file).await?;
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
        eprintln!("opened channel {} with {} ({} wei deposit)", opened.params.id, opened.params.provider, opened.deposit.0);
    }
    let ask = attrinet_p2p::Ask {
        model,
        prompt: attrinet_p2p::Prompt::Chat(vec![attrinet_p2p::ChatMessage { role: "user".into(), content: q.prompt }]),
        max_tokens: q.max_tokens,
        sampling: attrinet_p2p::Sampling { temperature_milli: (q.temperature.clamp(0.0, 10.0) * 1000.0) as u32, top_p_milli: 0, seed: rand_u64()? },
        max_cost: q.max_price,
    };
    let mut out = std::io::stdout();
    let answer = payer
        .infer(&network, &ask, |t| {
            let _ = out.write_all(t.as_bytes());
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

async fn watch(data_dir: &std::path::Path, file: &FileConfig, w: WatchArgs) -> anyhow::Result<()> {
    use attrinet_chain::{EventFollower, FileCheckpoint, Watcher};
    use attrinet_node::watch::{BatchFetcher, Evidence};
    let identity = attrinet_node::keys::load(data_dir)?;
    let (rpc, deployment) = w.chain.resolve(file)?;
    let store = open_store(data_dir)?;
    let chain = attrinet_node::client::connect_chain(&rpc, &identity, deployment).await?;
    // The checkpoint makes a restarted watcher resume where it was, without missing a
    // settlement still in its window.
    let checkpoint = data_dir.join("watcher.checkpoint");
    let follower = EventFollower::new(chain.provider().clone(), deployment.channels, 0, deployment.deploy_block, FileCheckpoint::new(&checkpoint))?;
    let evidence = Arc::new(Evidence::new(store.clone()));
    let mut fetcher = if w.offline { None } else { Some(BatchFetcher::new(client_network(&identity, &w.net, file).await?, chain.clone(), &checkpoint, evidence.clone())?) };
    let mut watcher: Watcher<FileCheckpoint, SledStore> = Watcher::new(chain, follower, evidence.clone(), None).with_attribution(evidence);
    for (model, path) in &w.datanet {
        let d = attrinet_chain::load_datanet(path).with_context(|| format!("cannot load datanet {}", path.display()))?;
        watcher = watcher.with_datanet(*model, Arc::new(d));
    }
    let source = if fetcher.is_some() { "its store and the providers' batches" } else { "its store only" };
    println!("watching Channels {} as {} every {} s, with {source}. Ctrl-C stops.", deployment.channels, identity.address(), w.interval);
    let mut stop = ctrl_c();
    let mut steps = 0u64;
    loop {
        if let Some(f) = fetcher.as_mut() {
            match f.fetch_new().await {
                Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                Err(e) => eprintln!("fetching batches failed (retrying): {e:#}"),
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
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(w.interval.max(1))) => {}
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

async fn channel(data_dir: &std::path::Path, file: &FileConfig, c: ChannelCommand) -> anyhow::Result<()> {
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
            println!("channel {channel} thawing: withdraw after {} (unix time); the provider settles what it is owed meanwhile", info.thaw_end);
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

async fn devnet(data_dir: &std::path::Path, a: DevnetArgs) -> anyhow::Result<()> {
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
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
    println!("gateway: http://{}/v1 (OpenAI-compatible; model names at /v1/models). Ctrl-C stops everything.", a.listen);
    let config_path = live.write_config(data_dir).await?;
    println!("chain and network settings for other commands: {}", config_path.display());
    println!("  e.g.  attrinet --config {} models", config_path.display());
    if let Some((_, who, _, _)) = summary.contributors.first() {
        println!("  a contributor's earnings:  attrinet --config {} earnings --contributor {who}", config_path.display());
    }
    let mut stop = ctrl_c();
    axum::serve(listener, attrinet_node::gateway::router(gateway))
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await?;
    drop(live);
    println!("stopped");
    Ok(())
}

fn rand_u64() -> anyhow::Result<u64> {
    let b = rand32()?;
    Ok(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
}

fn rand32() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn print_identity(id: &attrinet_market::Identity) {
    println!("ed25519 public key: {:?}", id.public_key());
    if let Some(peer) = attrinet_p2p::key_peer(&id.public_key()) {
        println!("peer id:            {peer}");
    }
    println!("EVM address:        {}", id.address());
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { builder.json().init() } else { builder.init() }
}

/// Exit codes: 0 success, 1 a command failed (the message says why), 2 bad usage (clap).
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_refuses_bad_input() {
        let cli = Cli::try_parse_from(["attrinet", "--data-dir", "/x", "store", "audit"]).unwrap();
        assert_eq!(cli.data_dir, PathBuf::from("/x"));
        assert!(matches!(cli.command, Command::Store(StoreCommand::Audit)));
        let cli = Cli::try_parse_from(["attrinet", "devnet", "--nodes", "2", "--queries", "4", "--backend", "cpu", "--keep"]).unwrap();
        let Command::Devnet(d) = cli.command else { panic!("devnet") };
        assert_eq!((d.nodes, d.queries, d.backend, d.keep), (2, 4, Backend::Candle, true));
        assert!(Cli::try_parse_from(["attrinet", "devnet", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "devnet", "--backend", "tpu"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "store", "bogus"]).is_err());
        assert!(matches!(Cli::try_parse_from(["attrinet", "keys", "show"]).unwrap().command, Command::Keys(KeysCommand::Show)));
        // The bootstrap peer may come from the config file: checked when the command runs.
        assert!(Cli::try_parse_from(["attrinet", "models"]).is_ok());
        let cli = Cli::try_parse_from(["attrinet", "datanet", "build", "data/", "--min-span", "4"]).unwrap();
        let Command::Datanet(DatanetCommand::Build(b)) = cli.command else { panic!("datanet build") };
        assert_eq!((b.dir, b.min_span, b.out), (PathBuf::from("data/"), 4, PathBuf::from("datanet.idx")));
        assert!(Cli::try_parse_from(["attrinet", "datanet", "build"]).is_err(), "a folder is required");
        let a = "0x00000000000000000000000000000000000000aa";
        let cli = Cli::try_parse_from(["attrinet", "earnings", "--rpc", "http://127.0.0.1:8545", "--registry", a, "--channels", a, "--contributor", a]).unwrap();
        let Command::Earnings(e) = cli.command else { panic!("earnings") };
        assert_eq!((e.chain.rpc.as_deref(), e.chain.chain_id, e.contributor.is_some()), (Some("http://127.0.0.1:8545"), None, true));
        assert!(Cli::try_parse_from(["attrinet", "earnings", "--rpc", "x", "--registry", a, "--channels", a, "--contributor", "0xnope"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "models", "--bootstrap", "not-an-address"]).is_err());
        let peer = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWE44BGKWaa2TbxruLPku6zmMh4t1cXJn3uRPfqTg9NYcS";
        let cli = Cli::try_parse_from(["attrinet", "models", "--bootstrap", peer]).unwrap();
        assert!(matches!(cli.command, Command::Models(ModelsArgs { wait_secs: 5, .. })));

        // serve: amounts with units, exact; a bad split or backend is refused.
        let cli = Cli::try_parse_from(["attrinet", "serve", "--model", "m.gguf", "--price-in", "0.0001eth", "--price-out", "40gwei", "--backend", "cpu", "--split", "6000,3000,500,500"]).unwrap();
        let Command::Serve(s) = cli.command else { panic!("serve") };
        assert_eq!((s.price_in, s.price_out, s.backend), (Some(Wei(100_000_000_000_000)), Some(Wei(40_000_000_000)), Some(Backend::Candle)));
        assert_eq!(s.terms.split, attrinet_market::Split::new(6000, 3000, 500, 500).unwrap());
        assert!(Cli::try_parse_from(["attrinet", "serve", "--split", "6000,3000,500"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "serve", "--split", "6000,3000,500,600"]).is_err(), "must add up to 10000");
        assert!(Cli::try_parse_from(["attrinet", "serve", "--price-in", "1.5"]).is_err(), "wei has no decimals");
        assert!(Cli::try_parse_from(["attrinet", "serve", "--settle-max-gas-bps", "0"]).is_err());

        // query: the prompt is positional; the rest have defaults.
        let cli = Cli::try_parse_from(["attrinet", "query", "hello there", "--max-price", "0.01eth"]).unwrap();
        let Command::Query(q) = cli.command else { panic!("query") };
        assert_eq!((q.prompt.as_str(), q.model.as_deref(), q.max_tokens, q.max_price), ("hello there", None, 128, Some(Wei(10_000_000_000_000_000))));
        assert!(Cli::try_parse_from(["attrinet", "query"]).is_err(), "a prompt is required");
        let id = "0x1111111111111111111111111111111111111111111111111111111111111111";
        let cli = Cli::try_parse_from(["attrinet", "query", "hi", "--datanet", &format!("{id}=a.idx"), "--datanet", &format!("{id}=b.idx")]).unwrap();
        let Command::Query(q) = cli.command else { panic!("query") };
        assert_eq!(q.datanet.iter().map(|(_, p)| p.to_str().unwrap()).collect::<Vec<_>>(), ["a.idx", "b.idx"]);

        // channel: ids are checked; open needs a provider and a deposit.
        let id = "0x1111111111111111111111111111111111111111111111111111111111111111";
        assert!(matches!(Cli::try_parse_from(["attrinet", "channel", "thaw", id]).unwrap().command, Command::Channel(ChannelCommand::Thaw { .. })));
        assert!(Cli::try_parse_from(["attrinet", "channel", "thaw", "0x11"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "channel", "open", "--provider", a]).is_err(), "a deposit is required");
        let cli = Cli::try_parse_from(["attrinet", "channel", "top-up", id, "--amount", "1eth"]).unwrap();
        assert!(matches!(cli.command, Command::Channel(ChannelCommand::TopUp { amount: Wei(1_000_000_000_000_000_000), .. })));
        assert!(matches!(Cli::try_parse_from(["attrinet", "channel", "status"]).unwrap().command, Command::Channel(ChannelCommand::Status { .. })));

        // gateway, watch, model register.
        let cli = Cli::try_parse_from(["attrinet", "gateway", "--listen", "127.0.0.1:9999", "--bootstrap", peer]).unwrap();
        let Command::Gateway(g) = cli.command else { panic!("gateway") };
        assert_eq!((g.listen.port(), g.net.bootstrap.len()), (9999, 1));
        let cli = Cli::try_parse_from(["attrinet", "watch", "--datanet", &format!("{id}=d.idx"), "--steps", "3"]).unwrap();
        let Command::Watch(w) = cli.command else { panic!("watch") };
        assert_eq!((w.datanet.len(), w.steps, w.interval), (1, Some(3), 2));
        assert!(Cli::try_parse_from(["attrinet", "watch", "--datanet", "d.idx"]).is_err(), "MODEL_ID=PATH");
        assert!(Cli::try_parse_from(["attrinet", "model", "register", "--model", "m.gguf", "--price-in", "1", "--price-out", "2"]).is_ok());
        assert!(Cli::try_parse_from(["attrinet", "model", "register", "--model", "m.gguf"]).is_err(), "prices are required");
        let cli = Cli::try_parse_from(["attrinet", "--config", "c.toml", "keys", "show"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("c.toml")));
    }
}
