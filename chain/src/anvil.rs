//! A local L2 for tests and the devnet: the pinned anvil (npm `@foundry-rs/anvil-linux-amd64`,
//! installed by scripts/setup-chain-tools), started in OP Stack mode on a free loopback port
//! and killed when its guard is dropped, even when a test panics.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use crate::error::{AnvilError, Result, RpcError};

/// How to start anvil.
#[derive(Clone, Debug, Default)]
pub struct AnvilConfig {
    /// The binary; default: `$ATTRINET_ANVIL`, else `.tools/node_modules/.bin/anvil` at the
    /// repository root.
    pub binary: Option<PathBuf>,
    /// Chain id (anvil's default, 31337, when `None`).
    pub chain_id: Option<u64>,
    /// Interval mining every so many seconds; `None` mines a block per transaction.
    pub block_time: Option<u64>,
    /// The address it listens on; loopback when `None`. (A test whose nodes run in network
    /// namespaces gives the address of its side of their link.)
    pub host: Option<std::net::Ipv4Addr>,
}

/// A running anvil. Dropping it kills the process.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    host: std::net::Ipv4Addr,
    port: u16,
    provider: DynProvider,
}

impl Anvil {
    /// Where anvil is looked for when the config names no binary.
    pub fn default_binary() -> PathBuf {
        if let Some(p) = std::env::var_os("ATTRINET_ANVIL") {
            return PathBuf::from(p);
        }
        // Where scripts/setup-chain-tools puts it: .tools/ at the repository root, found
        // from the working directory (the `attrinet` binary run from a checkout), from the
        // crate directory cargo names at run time (tests), or from the one this crate was
        // compiled in (it sits one level below the root).
        let tail = ".tools/node_modules/.bin/anvil";
        let runtime_manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(|d| PathBuf::from(d).join("..").join(tail));
        let candidates = [
            Some(PathBuf::from(tail)),
            runtime_manifest,
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(tail)),
        ];
        let mut fallback = PathBuf::from(tail);
        for c in candidates.into_iter().flatten() {
            if c.exists() {
                return c;
            }
            fallback = c;
        }
        fallback
    }

    /// Starts anvil with `--optimism` on a free loopback port and waits until it answers.
    pub fn spawn(config: AnvilConfig) -> Result<Anvil> {
        let binary = config.binary.clone().unwrap_or_else(Anvil::default_binary);
        if !binary.exists() {
            return Err(AnvilError::NotFound(binary).into());
        }
        // Anvil picks its own port (0) and says which: probing for a free port first
        // raced with parallel tests, two of which could end up talking to one anvil.
        let host = config.host.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let mut cmd = Command::new(&binary);
        cmd.args(["--optimism", "--host", &host.to_string(), "--port", "0"]);
        if let Some(id) = config.chain_id {
            cmd.args(["--chain-id", &id.to_string()]);
        }
        if let Some(t) = config.block_time {
            cmd.args(["--block-time", &t.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| AnvilError::Spawn { binary: binary.clone(), source })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The reader drains anvil's output for as long as it runs (a full pipe would stall
        // it), handing over the port from its "Listening on HOST:PORT" line.
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if let Some(port) = line
                    .trim()
                    .strip_prefix("Listening on ")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AnvilError::NoPort(Duration::from_secs(30)).into());
            }
        };
        // The guard exists from here on, so an early return still kills the process.
        let url = format!("http://{host}:{port}").parse().expect("an IPv4 URL parses");
        let mut anvil = Anvil { child, host, port, provider: ProviderBuilder::new().connect_http(url).erased() };
        anvil.wait_listening(Duration::from_secs(30))?;
        tracing::info!(target: "chain::anvil", port, "anvil started");
        Ok(anvil)
    }

    fn wait_listening(&mut self, timeout: Duration) -> std::result::Result<(), AnvilError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AnvilError::Exited(status));
            }
            if TcpStream::connect((self.host, self.port)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(AnvilError::NotListening { port: self.port, within: timeout });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP JSON-RPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// A provider without a wallet, for reads and anvil's own methods.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Sets an account's balance (anvil_setBalance): how tests fund fresh keys.
    pub async fn fund(&self, account: Address, wei: U256) -> Result<()> {
        let _: () = self
            .provider
            .raw_request("anvil_setBalance".into(), (account, wei))
            .await
            .map_err(|source| RpcError::Call { call: "anvil_setBalance", source })?;
        Ok(())
    }

    /// Moves the chain's clock forward and mines a block at the new time, so that
    /// challenge windows and thaw delays can pass without waiting.
    pub async fn advance(&self, seconds: u64) -> Result<()> {
        let _: serde_json::Value = self
            .provider
            .raw_request("evm_increaseTime".into(), (seconds,))
            .await
            .map_err(|source| RpcError::Call { call: "evm_increaseTime", source })?;
        self.mine(1).await
    }

    /// Mines `blocks` empty blocks.
    pub async fn mine(&self, blocks: u64) -> Result<()> {
        let _: serde_json::Value = self
            .provider
            .raw_request("anvil_mine".into(), (blocks,))
            .await
            .map_err(|source| RpcError::Call { call: "anvil_mine", source })?;
        Ok(())
    }

    /// The timestamp of the latest block.
    pub async fn timestamp(&self) -> Result<u64> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|source| RpcError::Call { call: "eth_getBlockByNumber", source })?
            .ok_or(AnvilError::NoBlock)?;
        Ok(block.header.timestamp)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        // Kill and reap, so no anvil outlives its test, passed or failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
