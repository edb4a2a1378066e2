//! `attrinet`: the command-line entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use attrinet_compute::Backend;
use clap::{Args, Parser, Subcommand};

/// attrinet: a peer-to-peer marketplace for AI inference where the model itself earns.
///
/// GPU owners serve models and are paid per token through co-signed receipts; model
/// owners and data contributors get their split of every payment on chain. Start with
/// `attrinet devnet`: the whole marketplace on this machine, in one command.
#[derive(Debug, Parser)]
#[command(name = "attrinet", version, long_about)]
struct Cli {
    /// Where keys, receipts and channel state live.
    #[arg(long, global = true, default_value = "./attrinet-data", env = "ATTRINET_DATA_DIR")]
    data_dir: PathBuf,
    /// Log as JSON lines (for log collectors) instead of human-readable text.
    #[arg(long, global = true)]
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
    /// Manage this node's keys (ed25519 for the network and receipts, secp256k1 for the
    /// chain).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the local receipt store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// List what the network offers now: models, providers, prices, speeds.
    Models(ModelsArgs),
    /// What an address earned on chain: withdrawable balance and data claims per model.
    Earnings(EarningsArgs),
    /// Datanets: the contributions a model's data share is paid to.
    #[command(subcommand)]
    Datanet(DatanetCommand),
}

#[derive(Debug, Args)]
struct EarningsArgs {
    /// The data contributor (or node, model owner, ...) to report on.
    #[arg(long, alias = "address")]
    contributor: alloy_primitives::Address,
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "ATTRINET_RPC")]
    rpc: String,
    /// The chain id.
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// The Registry contract.
    #[arg(long)]
    registry: alloy_primitives::Address,
    /// The Channels contract.
    #[arg(long)]
    channels: alloy_primitives::Address,
    /// The block the contracts were deployed in (where event scans start).
    #[arg(long, default_value_t = 0)]
    from_block: u64,
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
    /// A peer to join through, `/ip4/.../tcp/PORT/p2p/PEER_ID` (`attrinet devnet --keep`
    /// prints one).
    #[arg(long, required = true)]
    bootstrap: Vec<attrinet_p2p::Multiaddr>,
    /// How long to listen for adverts.
    #[arg(long, default_value_t = 5)]
    wait_secs: u64,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Store(StoreCommand::Audit) => {
            let dir = cli.data_dir.join("store");
            anyhow::ensure!(dir.exists(), "no store at {} (is --data-dir right?)", dir.display());
            let store = attrinet_node::SledStore::open(&dir)?;
            let audit = attrinet_node::audit(&store).context("store audit failed")?;
            println!("ok: {} channels, {} receipts, all consistent", audit.channels, audit.receipts);
        }
        Command::Keys(KeysCommand::New) => {
            let id = attrinet_node::keys::create(&cli.data_dir)?;
            print_identity(&id);
            println!("keys written to {} (mode 0600)", attrinet_node::keys::key_path(&cli.data_dir).display());
        }
        Command::Models(m) => {
            let id = match attrinet_node::keys::load(&cli.data_dir) {
                Ok(id) => id,
                // Listing needs no identity of its own: a throwaway one will do.
                Err(_) => attrinet_market::Identity::from_secrets(rand32()?, [7; 32])?,
            };
            let config = attrinet_p2p::NetConfig { listen: vec!["/ip4/0.0.0.0/tcp/0".parse()?], bootstrap: m.bootstrap, ..Default::default() };
            let (net, event_loop) = attrinet_p2p::new(id, config)?;
            tokio::spawn(event_loop.run());
            let bar = indicatif::ProgressBar::new_spinner().with_message("listening for adverts");
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            tokio::time::sleep(std::time::Duration::from_secs(m.wait_secs)).await;
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
            let deployment = attrinet_chain::Deployment { chain_id: e.chain_id, registry: e.registry, channels: e.channels, deploy_block: e.from_block };
            let earned = attrinet_node::earnings(&e.rpc, deployment, e.contributor).await?;
            print!("{}", earned.render(e.contributor));
        }
        Command::Datanet(DatanetCommand::Build(d)) => {
            let model = attrinet_compute::Model::load(&d.model).with_context(|| format!("cannot load {}", d.model.display()))?;
            let bar = indicatif::ProgressBar::new_spinner().with_message(format!("indexing {}", d.dir.display()));
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            let tok = model.tokenizer();
            let datanet = attrinet_chain::build_datanet_dir(&d.dir, d.min_span, |text| tok.encode(text, false))?;
            attrinet_chain::save_datanet(&datanet, &d.out)?;
            bar.finish_and_clear();
            let owners: std::collections::BTreeSet<_> = datanet.contributions().map(|(owner, _, _)| owner).collect();
            println!("{} contributions from {} owners, {} tokens", datanet.contributions().count(), owners.len(), datanet.contributions().map(|(_, _, t)| t.len()).sum::<usize>());
            println!("index written to {}", d.out.display());
            println!("datanet root: {}", datanet.root());
        }
        Command::Keys(KeysCommand::Show) => print_identity(&attrinet_node::keys::load(&cli.data_dir)?),
        Command::Devnet(a) => {
            let config = attrinet_node::devnet::DevnetConfig {
                nodes: usize::from(a.nodes),
                queries: a.queries,
                max_tokens: a.max_tokens,
                model: a.model,
                backend: a.backend,
                data_dir: cli.data_dir,
                challenge_window: a.challenge_window,
            };
            let (summary, live) = attrinet_node::devnet::run(&config).await?;
            println!("{}", summary.render());
            anyhow::ensure!(summary.consistent(), "on-chain credits differ from the receipts");
            if a.keep {
                let live = live.expect("devnet keeps its client");
                let gateway = attrinet_node::gateway::Gateway {
                    network: live.network.clone(),
                    payer: live.payer.clone(),
                    metrics: Arc::new(attrinet_node::Metrics::default()),
                };
                let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
                println!("gateway: http://{}/v1 (OpenAI-compatible; model names at /v1/models). Ctrl-C stops everything.", a.listen);
                if let Some(addr) = live.network.listen_addrs().await?.into_iter().next() {
                    println!("join the network: attrinet models --bootstrap {addr}");
                }
                if let Some((_, who, _, _)) = summary.contributors.first() {
                    println!(
                        "a contributor's earnings: attrinet earnings --rpc {} --registry {} --channels {} --contributor {who}",
                        live.endpoint, live.deployment.registry, live.deployment.channels
                    );
                }
                axum::serve(listener, attrinet_node::gateway::router(gateway))
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
                drop(live);
                println!("stopped");
            }
        }
    }
    Ok(())
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
        assert!(Cli::try_parse_from(["attrinet", "models"]).is_err(), "models needs a bootstrap peer");
        let cli = Cli::try_parse_from(["attrinet", "datanet", "build", "data/", "--min-span", "4"]).unwrap();
        let Command::Datanet(DatanetCommand::Build(b)) = cli.command else { panic!("datanet build") };
        assert_eq!((b.dir, b.min_span, b.out), (PathBuf::from("data/"), 4, PathBuf::from("datanet.idx")));
        assert!(Cli::try_parse_from(["attrinet", "datanet", "build"]).is_err(), "a folder is required");
        let a = "0x00000000000000000000000000000000000000aa";
        let cli = Cli::try_parse_from(["attrinet", "earnings", "--rpc", "http://127.0.0.1:8545", "--registry", a, "--channels", a, "--contributor", a]).unwrap();
        assert!(matches!(cli.command, Command::Earnings(EarningsArgs { chain_id: 31337, from_block: 0, .. })));
        assert!(Cli::try_parse_from(["attrinet", "earnings", "--rpc", "x", "--registry", a, "--channels", a, "--contributor", "0xnope"]).is_err());
        assert!(Cli::try_parse_from(["attrinet", "models", "--bootstrap", "not-an-address"]).is_err());
        let cli = Cli::try_parse_from(["attrinet", "models", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWE44BGKWaa2TbxruLPku6zmMh4t1cXJn3uRPfqTg9NYcS"]).unwrap();
        assert!(matches!(cli.command, Command::Models(ModelsArgs { wait_secs: 5, .. })));
    }
}
