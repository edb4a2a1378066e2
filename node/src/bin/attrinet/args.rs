//! The command line: every command and option (clap derive), and the parsers of values
//! that need more than clap's (amounts, splits, channel ids, datanet arguments).

use std::net::SocketAddr;
use std::path::PathBuf;

use attrinet_compute::Backend;
use attrinet_market::Wei;
use attrinet_node::config::{self, FileConfig};
use clap::{Args, Parser, Subcommand};

/// attrinet: a peer-to-peer marketplace for AI inference where the model itself earns.
///
/// GPU owners serve models and are paid per token through co-signed receipts; model
/// owners and data contributors get their split of every payment on chain. Start with
/// `attrinet devnet`: the whole marketplace on this machine, in one command.
#[derive(Debug, Parser)]
#[command(name = "attrinet", version, long_about)]
pub(crate) struct Cli {
    /// Where keys, receipts, channel state and `config.toml` live. Use one data dir per
    /// running process: its store is locked while in use.
    #[arg(long, global = true, help_heading = "Global", default_value = "./attrinet-data", env = "ATTRINET_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// A TOML configuration file (default: `<data-dir>/config.toml` when it exists).
    /// Flags win over environment variables, which win over the file.
    #[arg(long, global = true, help_heading = "Global", env = "ATTRINET_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Log as JSON lines (for log collectors) instead of human-readable text. The level
    /// comes from RUST_LOG (default `warn`).
    #[arg(long, global = true, help_heading = "Global")]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the whole marketplace locally: chain, contracts, provider nodes, a client and a
    /// watcher; send queries, settle (one settlement dishonest, disputed by the watcher)
    /// and print who earned what.
    Devnet(DevnetArgs),
    /// Serve a model as a provider: load it, register the node and the model on chain if
    /// needed, advertise it, answer paid queries and settle the receipts.
    Serve(Box<ServeArgs>),
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
    /// Run a public node that serves no model: others join the network through it
    /// (`--bootstrap`), and nodes behind a NAT reserve a slot on it and are reached
    /// through it until hole punching connects them directly. Any reachable node relays
    /// the same way; this one only does that.
    Relay(RelayArgs),
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
pub(crate) struct ChainArgs {
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "ATTRINET_RPC")]
    pub(crate) rpc: Option<String>,
    /// The chain id (default 31337, anvil's).
    #[arg(long, env = "ATTRINET_CHAIN_ID")]
    pub(crate) chain_id: Option<u64>,
    /// The Registry contract.
    #[arg(long, env = "ATTRINET_REGISTRY")]
    pub(crate) registry: Option<alloy_primitives::Address>,
    /// The Channels contract.
    #[arg(long, env = "ATTRINET_CHANNELS")]
    pub(crate) channels: Option<alloy_primitives::Address>,
    /// The block the contracts were deployed in (where event scans start; default 0).
    #[arg(long, env = "ATTRINET_DEPLOY_BLOCK")]
    pub(crate) deploy_block: Option<u64>,
}

impl ChainArgs {
    pub(crate) fn resolve(&self, file: &FileConfig) -> anyhow::Result<(String, attrinet_chain::Deployment)> {
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
pub(crate) struct NetArgs {
    /// Address to listen on (repeatable), e.g. `/ip4/0.0.0.0/tcp/4001`.
    #[arg(long, env = "ATTRINET_P2P_LISTEN", value_delimiter = ',')]
    pub(crate) p2p_listen: Vec<attrinet_p2p::Multiaddr>,
    /// A peer to join through (repeatable), `/ip4/.../tcp/PORT/p2p/PEER_ID`.
    #[arg(long, env = "ATTRINET_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<attrinet_p2p::Multiaddr>,
    /// The network lives in private address space (a LAN, a test bed): reachability
    /// probes take peers at private IP addresses, and the first comes after 2 s instead of
    /// 15 s. Behind a NAT on the internet, leave it off.
    #[arg(long, env = "ATTRINET_P2P_LAN")]
    pub(crate) lan: bool,
}

impl NetArgs {
    pub(crate) fn resolve(
        &self,
        file: &FileConfig,
        default_listen: &[&str],
    ) -> anyhow::Result<(Vec<attrinet_p2p::Multiaddr>, Vec<attrinet_p2p::Multiaddr>)> {
        let listen = config::addrs(&self.p2p_listen, file.network.listen.as_ref(), default_listen)?;
        let bootstrap = config::addrs(&self.bootstrap, file.network.bootstrap.as_ref(), &[])?;
        Ok((listen, bootstrap))
    }

    /// How the node probes its reachability ([`attrinet_p2p::NatConfig`]).
    pub(crate) fn nat(&self) -> attrinet_p2p::NatConfig {
        if self.lan {
            attrinet_p2p::NatConfig {
                probe_delay: std::time::Duration::from_secs(2),
                probe_retry: std::time::Duration::from_secs(5),
                only_global_ips: false,
                public: false,
            }
        } else {
            attrinet_p2p::NatConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A GGUF model file to serve, or a folder of them (`[serve] model`). Repeat it to
    /// serve several models: each is advertised, loaded on its first request, and evicted
    /// least recently used under --memory-budget.
    #[arg(long)]
    pub(crate) model: Vec<PathBuf>,
    /// Memory the loaded models may take together, in MiB (weights plus KV cache; default:
    /// no limit, every model stays loaded once used).
    #[arg(long, value_name = "MIB")]
    pub(crate) memory_budget: Option<u64>,
    /// Price per 1,000 input tokens: wei, or with a unit (`0.0001eth`, `50gwei`).
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) price_in: Option<Wei>,
    /// Price per 1,000 output tokens.
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) price_out: Option<Wei>,
    /// Inference backend: auto (a GPU through wgpu if present, else CPU), wgpu, cpu.
    #[arg(long, value_parser = parse_backend)]
    pub(crate) backend: Option<Backend>,
    /// Requests decoded together in one batch (default 8, at most 64); more wait in the
    /// queue.
    #[arg(long, visible_alias = "capacity")]
    pub(crate) max_batch: Option<usize>,
    /// Memory for the KV cache the batch shares, in MiB (default: a full context for each
    /// batch slot, at most 1024). Requests wait in the queue until their pages are free.
    #[arg(long, value_name = "MIB")]
    pub(crate) kv_memory: Option<u64>,
    /// Requests that may wait, first come first served, when every generation slot is taken
    /// (default 64); past that requests are answered "busy" and clients fail over.
    #[arg(long)]
    pub(crate) queue: Option<usize>,
    /// Most value served to one channel before the client pays for it (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) exposure_limit: Option<Wei>,
    /// Bond posted when this node registers (default 1eth; the contract sets a minimum).
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) bond: Option<Wei>,
    /// The model's terms, used when this node registers it (and becomes its owner); the
    /// datanet is also what answers are attributed to.
    #[command(flatten)]
    pub(crate) terms: TermsArgs,
    /// Seconds between settlement checks (default 30).
    #[arg(long)]
    pub(crate) settle_every: Option<u64>,
    /// Settle a channel once its unsettled value reaches this (default 0.001eth)...
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) settle_threshold: Option<Wei>,
    /// ... or once its oldest unsettled receipt is this many seconds old.
    #[arg(long, default_value_t = 3600)]
    pub(crate) settle_max_age: u64,
    /// Never settle when the gas would cost more than this share of the value, in basis
    /// points (100 = 1%); a payer's thaw overrides it.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub(crate) settle_max_gas_bps: u16,
    /// Also serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub(crate) metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The question.
    pub(crate) prompt: String,
    /// Model name or id (hex); the first advertised one when omitted.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Refuse providers whose price for this request (at --max-tokens) is above this.
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) max_price: Option<Wei>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    /// Deposit of a channel opened for this query when none exists (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) deposit: Option<Wei>,
    /// Seconds to wait for the model's adverts.
    #[arg(long, default_value_t = 15)]
    pub(crate) wait_secs: u64,
    #[command(flatten)]
    pub(crate) check: CheckArgs,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Where the HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Deposit of a channel opened on demand (default 0.01eth).
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) deposit: Option<Wei>,
    #[command(flatten)]
    pub(crate) check: CheckArgs,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Seconds between checks; keep well under the challenge window.
    #[arg(long, default_value_t = 2)]
    pub(crate) interval: u64,
    /// A model's datanet index, to recompute its receipts' attribution: MODEL_ID=PATH.
    #[arg(long, value_parser = parse_datanet_arg)]
    pub(crate) datanet: Vec<(attrinet_market::ModelId, PathBuf)>,
    /// Stop after this many checks (default: until Ctrl-C).
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Check only the settlements whose receipts are in this data dir's store (those of
    /// its own channels), without joining the network to fetch others' batches.
    #[arg(long)]
    pub(crate) offline: bool,
    /// Also serve Prometheus metrics at http://ADDR/metrics (fetches in flight, fetched
    /// batches held and evicted).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChannelCommand {
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
pub(crate) enum ModelCommand {
    /// Register a model: its id is the SHA-256 of the GGUF file, and this data dir's
    /// account becomes its owner.
    Register(ModelRegisterArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelRegisterArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Price per 1,000 input tokens.
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) price_in: Wei,
    /// Price per 1,000 output tokens.
    #[arg(long, value_parser = config::parse_wei)]
    pub(crate) price_out: Wei,
    #[command(flatten)]
    pub(crate) terms: TermsArgs,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
}

/// What a paying client checks before it co-signs.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// A model's datanet index, MODEL_ID=PATH (repeatable): answers' attribution is
    /// recomputed and a receipt with other weights is refused before paying.
    #[arg(long, value_parser = parse_datanet_arg)]
    pub(crate) datanet: Vec<(attrinet_market::ModelId, PathBuf)>,
    /// A GGUF file of a model you query (repeatable): your prompts' tokens are counted with
    /// its own tokenizer and chat template, exactly as its providers count them, and a
    /// provider billing more input is refused. Without it, input is bounded by the
    /// prompt's length in bytes. Applies to providers of that very file (same model id).
    #[arg(long, value_name = "FILE")]
    pub(crate) tokenizer_from: Vec<PathBuf>,
}

/// A model's terms on chain, besides its prices.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model terms")]
pub(crate) struct TermsArgs {
    /// Split in basis points: node,owner,data,protocol (must add up to 10000).
    #[arg(long, default_value = "7000,2000,500,500", value_parser = parse_split)]
    pub(crate) split: attrinet_market::Split,
    /// A datanet index (`attrinet datanet build`): its root is recorded with the model,
    /// and nodes attribute answers to its contributors.
    #[arg(long)]
    pub(crate) datanet: Option<PathBuf>,
    /// Where the data share not claimed by contributors goes (default: the model owner).
    #[arg(long)]
    pub(crate) data_pool: Option<alloy_primitives::Address>,
}

#[derive(Debug, Args)]
pub(crate) struct EarningsArgs {
    /// The data contributor (or node, model owner, ...) to report on (default: this
    /// data dir's account).
    #[arg(long, alias = "address")]
    pub(crate) contributor: Option<alloy_primitives::Address>,
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DatanetCommand {
    /// Tokenize a folder of contributions with the model's tokenizer, index it, save the
    /// index and print its commitment root (which `model register` records on chain).
    ///
    /// Layout: DIR/<0xOWNER_ADDRESS>/**/*.txt — each file is one contribution owned by
    /// the address of its top folder.
    Build(DatanetBuildArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DatanetBuildArgs {
    /// The folder of contributions.
    pub(crate) dir: PathBuf,
    /// The GGUF model whose tokenizer the index uses.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct-Q4_1.gguf")]
    pub(crate) model: PathBuf,
    /// Where to write the index.
    #[arg(long, default_value = "datanet.idx")]
    pub(crate) out: PathBuf,
    /// Shortest span of tokens that counts as a match.
    #[arg(long, default_value_t = attrinet_market::DEFAULT_MIN_SPAN)]
    pub(crate) min_span: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ModelsArgs {
    /// How long to listen for adverts.
    #[arg(long, default_value_t = 5)]
    pub(crate) wait_secs: u64,
    /// List as soon as this model (name or hex id) is offered, waiting at most --wait-secs.
    #[arg(long)]
    pub(crate) model: Option<String>,
    #[command(flatten)]
    pub(crate) net: NetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DevnetArgs {
    /// Provider nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub(crate) nodes: u16,
    /// Queries the client sends.
    #[arg(long, default_value_t = 20)]
    pub(crate) queries: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 24)]
    pub(crate) max_tokens: u32,
    /// The GGUF model the nodes serve (`scripts/fetch-model` downloads SmolLM2 and Gemma 3 270M).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct-Q4_1.gguf")]
    pub(crate) model: PathBuf,
    /// Inference backend: auto (a GPU through wgpu if present, else CPU), wgpu, cpu.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    pub(crate) backend: Backend,
    /// Seconds during which a settlement can be disputed.
    #[arg(long, default_value_t = 3)]
    pub(crate) challenge_window: u64,
    /// Stay up afterwards and serve the OpenAI-compatible gateway until Ctrl-C.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Where the gateway listens with --keep.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create keys in the data dir (refuses to overwrite).
    New,
    /// Print the public key, peer id and EVM address.
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Re-check every stored channel: contiguous seqs, valid signatures, exact cumulative
    /// totals. Exits with status 1 if anything is wrong.
    Audit,
}

pub(crate) fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "cpu" | "candle" => Ok(Backend::Candle),
        other => other.parse(),
    }
}

pub(crate) fn parse_split(s: &str) -> Result<attrinet_market::Split, String> {
    let parts: Vec<u16> = s
        .split(',')
        .map(|p| p.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{s}` is not four numbers node,owner,data,protocol"))?;
    let [node, owner, data, protocol] = parts[..] else {
        return Err(format!("`{s}` is not four numbers node,owner,data,protocol"));
    };
    attrinet_market::Split::new(node, owner, data, protocol).map_err(|e| e.to_string())
}

pub(crate) fn parse_channel(s: &str) -> Result<attrinet_market::ChannelId, String> {
    attrinet_node::client::parse_channel(s)
}

pub(crate) fn parse_datanet_arg(s: &str) -> Result<(attrinet_market::ModelId, PathBuf), String> {
    let (id, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not MODEL_ID=PATH"))?;
    let id: alloy_primitives::B256 =
        id.parse().map_err(|_| format!("`{id}` is not a model id (0x and 64 hex digits)"))?;
    Ok((attrinet_market::ModelId::from(id.0), PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_refuses_bad_input() {
        let cli = Cli::try_parse_from(["attrinet", "--data-dir", "/x", "store", "audit"]).unwrap();
        assert_eq!(cli.data_dir, PathBuf::from("/x"));
        assert!(matches!(cli.command, Command::Store(StoreCommand::Audit)));
        let cli =
            Cli::try_parse_from(["attrinet", "devnet", "--nodes", "2", "--queries", "4", "--backend", "cpu", "--keep"])
                .unwrap();
        let Command::Devnet(d) = cli.command else { panic!("devnet") };
        assert_eq!((d.nodes, d.queries, d.backend, d.keep), (2, 4, Backend::Candle, true));
        assert!(Cli::try_parse_from(["attrinet", "devnet", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "devnet", "--backend", "tpu"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "store", "bogus"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["attrinet", "keys", "show"]).unwrap().command,
            Command::Keys(KeysCommand::Show)
        ));
        // The bootstrap peer may come from the config file: checked when the command runs.
        assert!(Cli::try_parse_from(["attrinet", "models"]).is_ok());
        let cli = Cli::try_parse_from(["attrinet", "datanet", "build", "data/", "--min-span", "4"]).unwrap();
        let Command::Datanet(DatanetCommand::Build(b)) = cli.command else { panic!("datanet build") };
        assert_eq!((b.dir, b.min_span, b.out), (PathBuf::from("data/"), 4, PathBuf::from("datanet.idx")));
        assert!(Cli::try_parse_from(["attrinet", "datanet", "build"]).is_err(), "a folder is required");
        let a = "0x00000000000000000000000000000000000000aa";
        let cli = Cli::try_parse_from([
            "attrinet",
            "earnings",
            "--rpc",
            "http://127.0.0.1:8545",
            "--registry",
            a,
            "--channels",
            a,
            "--contributor",
            a,
        ])
        .unwrap();
        let Command::Earnings(e) = cli.command else { panic!("earnings") };
        assert_eq!(
            (e.chain.rpc.as_deref(), e.chain.chain_id, e.contributor.is_some()),
            (Some("http://127.0.0.1:8545"), None, true)
        );
        assert!(
            Cli::try_parse_from([
                "attrinet",
                "earnings",
                "--rpc",
                "x",
                "--registry",
                a,
                "--channels",
                a,
                "--contributor",
                "0xnope"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["attrinet", "models", "--bootstrap", "not-an-address"]).is_err());
        let peer = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWE44BGKWaa2TbxruLPku6zmMh4t1cXJn3uRPfqTg9NYcS";
        let cli = Cli::try_parse_from(["attrinet", "models", "--bootstrap", peer]).unwrap();
        assert!(matches!(cli.command, Command::Models(ModelsArgs { wait_secs: 5, .. })));

        // serve: amounts with units, exact; a bad split or backend is refused.
        let cli = Cli::try_parse_from([
            "attrinet",
            "serve",
            "--model",
            "m.gguf",
            "--price-in",
            "0.0001eth",
            "--price-out",
            "40gwei",
            "--backend",
            "cpu",
            "--split",
            "6000,3000,500,500",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else { panic!("serve") };
        assert_eq!(
            (s.price_in, s.price_out, s.backend),
            (Some(Wei(100_000_000_000_000)), Some(Wei(40_000_000_000)), Some(Backend::Candle))
        );
        assert_eq!(s.terms.split, attrinet_market::Split::new(6000, 3000, 500, 500).unwrap());
        assert!(Cli::try_parse_from(["attrinet", "serve", "--split", "6000,3000,500"]).is_err());
        assert!(
            Cli::try_parse_from(["attrinet", "serve", "--split", "6000,3000,500,600"]).is_err(),
            "must add up to 10000"
        );
        assert!(Cli::try_parse_from(["attrinet", "serve", "--price-in", "1.5"]).is_err(), "wei has no decimals");
        assert!(Cli::try_parse_from(["attrinet", "serve", "--settle-max-gas-bps", "0"]).is_err());

        // query: the prompt is positional; the rest have defaults.
        let cli = Cli::try_parse_from(["attrinet", "query", "hello there", "--max-price", "0.01eth"]).unwrap();
        let Command::Query(q) = cli.command else { panic!("query") };
        assert_eq!(
            (q.prompt.as_str(), q.model.as_deref(), q.max_tokens, q.max_price),
            ("hello there", None, 128, Some(Wei(10_000_000_000_000_000)))
        );
        assert!(Cli::try_parse_from(["attrinet", "query"]).is_err(), "a prompt is required");
        let id = "0x1111111111111111111111111111111111111111111111111111111111111111";
        let cli = Cli::try_parse_from([
            "attrinet",
            "query",
            "hi",
            "--datanet",
            &format!("{id}=a.idx"),
            "--datanet",
            &format!("{id}=b.idx"),
        ])
        .unwrap();
        let Command::Query(q) = cli.command else { panic!("query") };
        assert_eq!(q.check.datanet.iter().map(|(_, p)| p.to_str().unwrap()).collect::<Vec<_>>(), ["a.idx", "b.idx"]);

        // channel: ids are checked; open needs a provider and a deposit.
        let id = "0x1111111111111111111111111111111111111111111111111111111111111111";
        assert!(matches!(
            Cli::try_parse_from(["attrinet", "channel", "thaw", id]).unwrap().command,
            Command::Channel(ChannelCommand::Thaw { .. })
        ));
        assert!(Cli::try_parse_from(["attrinet", "channel", "thaw", "0x11"]).is_err());
        assert!(
            Cli::try_parse_from(["attrinet", "channel", "open", "--provider", a]).is_err(),
            "a deposit is required"
        );
        let cli = Cli::try_parse_from(["attrinet", "channel", "top-up", id, "--amount", "1eth"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Channel(ChannelCommand::TopUp { amount: Wei(1_000_000_000_000_000_000), .. })
        ));
        assert!(matches!(
            Cli::try_parse_from(["attrinet", "channel", "status"]).unwrap().command,
            Command::Channel(ChannelCommand::Status { .. })
        ));

        // gateway, watch, model register.
        let cli =
            Cli::try_parse_from(["attrinet", "gateway", "--listen", "127.0.0.1:9999", "--bootstrap", peer]).unwrap();
        let Command::Gateway(g) = cli.command else { panic!("gateway") };
        assert_eq!((g.listen.port(), g.net.bootstrap.len()), (9999, 1));
        let cli =
            Cli::try_parse_from(["attrinet", "watch", "--datanet", &format!("{id}=d.idx"), "--steps", "3"]).unwrap();
        let Command::Watch(w) = cli.command else { panic!("watch") };
        assert_eq!((w.datanet.len(), w.steps, w.interval), (1, Some(3), 2));
        assert!(Cli::try_parse_from(["attrinet", "watch", "--datanet", "d.idx"]).is_err(), "MODEL_ID=PATH");
        assert!(
            Cli::try_parse_from([
                "attrinet",
                "model",
                "register",
                "--model",
                "m.gguf",
                "--price-in",
                "1",
                "--price-out",
                "2"
            ])
            .is_ok()
        );
        assert!(
            Cli::try_parse_from(["attrinet", "model", "register", "--model", "m.gguf"]).is_err(),
            "prices are required"
        );
        let cli = Cli::try_parse_from(["attrinet", "--config", "c.toml", "keys", "show"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("c.toml")));
    }
}
