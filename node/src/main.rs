//! `attrinet`: the command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// attrinet: a peer-to-peer marketplace for AI inference where the model itself earns.
#[derive(Debug, Parser)]
#[command(name = "attrinet", version, about, long_about = None)]
struct Cli {
    /// Where keys, receipts and channel state live.
    #[arg(long, global = true, default_value = "./attrinet-data", env = "ATTRINET_DATA_DIR")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the local receipt store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Re-check every stored channel: contiguous seqs, valid signatures, exact cumulative
    /// totals. Exits with status 1 if anything is wrong.
    Audit,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Store(StoreCommand::Audit) => {
            let dir = cli.data_dir.join("store");
            anyhow::ensure!(dir.exists(), "no store at {} (is --data-dir right?)", dir.display());
            let store = attrinet_node::SledStore::open(&dir)?;
            let audit = attrinet_node::audit(&store).context("store audit failed")?;
            println!("ok: {} channels, {} receipts, all consistent", audit.channels, audit.receipts);
            Ok(())
        }
    }
}

/// Exit codes: 0 success, 1 a command failed (the message says why), 2 bad usage (clap).
fn main() -> ExitCode {
    match run(Cli::parse()) {
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
    fn parses_store_audit_with_data_dir() {
        let cli = Cli::try_parse_from(["attrinet", "--data-dir", "/x", "store", "audit"]).unwrap();
        assert_eq!(cli.data_dir, PathBuf::from("/x"));
        assert!(matches!(cli.command, Command::Store(StoreCommand::Audit)));
        assert!(Cli::try_parse_from(["attrinet", "store", "bogus"]).is_err());
    }
}
