//! `attrinet`: the command-line entry point. `args` holds the command line, `commands`
//! the long-running and chain-changing commands; the short ones are dispatched here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use attrinet_market::Identity;
use attrinet_node::SledStore;
use attrinet_node::client::ChannelOpener;
use attrinet_node::config::{self, FileConfig};
use clap::Parser;

mod args;
mod commands;

use args::{Cli, Command, DatanetCommand, KeysCommand, ModelCommand, StoreCommand};
use commands::{
    DEFAULT_DEPOSIT, channel, client_network, ctrl_c, devnet, open_store, payer_with_datanets, query, rand32, serve,
    watch,
};

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
        }
        Command::Earnings(e) => {
            let (rpc, deployment) = e.chain.resolve(&file)?;
            let who = match e.contributor {
                Some(a) => a,
                None => attrinet_node::keys::load(&cli.data_dir)
                    .context("pass --contributor, or use a data dir with keys")?
                    .address(),
            };
            let earned = attrinet_node::earnings(&rpc, deployment, who).await?;
            print!("{}", earned.render(who));
        }
        Command::Datanet(DatanetCommand::Build(d)) => {
            let model = attrinet_compute::Model::load(&d.model)
                .with_context(|| format!("cannot load {}", d.model.display()))?;
            let bar = indicatif::ProgressBar::new_spinner().with_message(format!("indexing {}", d.dir.display()));
            bar.enable_steady_tick(Duration::from_millis(100));
            let tok = model.tokenizer();
            let datanet =
                attrinet_node::datanet::build_datanet_dir(&d.dir, d.min_span, |text| tok.encode(text, false))?;
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
                payer: payer_with_datanets(identity.clone(), store.clone(), &chain, &g.check.datanet).await?,
                metrics: Arc::new(attrinet_node::Metrics::default()),
                opener: Some(ChannelOpener { identity, chain, store: store.clone(), deposit }),
            };
            let listener = tokio::net::TcpListener::bind(g.listen)
                .await
                .with_context(|| format!("cannot listen on {}", g.listen))?;
            println!(
                "gateway: http://{}/v1 (OpenAI-compatible; model names at /v1/models). Ctrl-C stops.",
                listener.local_addr()?
            );
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
                Some(p) => attrinet_node::datanet::load_datanet(p)
                    .with_context(|| format!("cannot load datanet {}", p.display()))?
                    .root(),
                None => alloy_primitives::B256::ZERO,
            };
            anyhow::ensure!(chain.terms(id).await?.is_none(), "model {id} is already registered");
            let price = attrinet_market::Price { per_1k_input: m.price_in, per_1k_output: m.price_out };
            let out = chain
                .register_model(id, price, m.terms.split, root, m.terms.data_pool.unwrap_or(identity.address()))
                .await?;
            println!(
                "registered model {id} ({}) owned by {}; gas {}",
                model.name().unwrap_or("model"),
                identity.address(),
                out.gas_used
            );
        }
        Command::Devnet(a) => devnet(&cli.data_dir, a).await?,
    }
    Ok(())
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
