//! `attrinet`: the command-line entry point. `args` holds the command line, `commands`
//! what each command does; this file parses, sets up logging and the runtime, and
//! dispatches.

use std::process::ExitCode;

use attrinet_node::config::FileConfig;
use clap::Parser;

mod args;
mod commands;

use args::{Cli, Command, DatanetCommand, KeysCommand, ModelCommand, StoreCommand};

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref(), &cli.data_dir)?;
    let dir = cli.data_dir.as_path();
    match cli.command {
        Command::Store(StoreCommand::Audit) => commands::store_audit(dir),
        Command::Keys(KeysCommand::New) => commands::keys_new(dir),
        Command::Keys(KeysCommand::Show) => commands::keys_show(dir),
        Command::Models(m) => commands::models(dir, &file, m).await,
        Command::Earnings(e) => commands::earnings(dir, &file, e).await,
        Command::Datanet(DatanetCommand::Build(d)) => commands::datanet_build(d),
        Command::Serve(a) => commands::serve(dir, &file, *a).await,
        Command::Query(q) => commands::query(dir, &file, q).await,
        Command::Relay(r) => commands::relay(dir, &file, r).await,
        Command::Gateway(g) => commands::gateway(dir, &file, g).await,
        Command::Watch(w) => commands::watch(dir, &file, w).await,
        Command::Channel(c) => commands::channel(dir, &file, c).await,
        Command::Model(ModelCommand::Register(m)) => commands::model_register(dir, &file, m).await,
        Command::Devnet(a) => commands::devnet(dir, a).await,
    }
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
