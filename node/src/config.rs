//! Configuration: a TOML file, then environment variables, then flags (flags win).
//!
//! The file is `--config PATH`, else `<data-dir>/config.toml` when it exists. Every key is
//! optional; a command says which ones it needs and fails with a message naming the flag,
//! the variable and the file key that would provide it. `attrinet devnet --keep` writes a
//! complete file for its chain and network.
//!
//! ```toml
//! [chain]
//! rpc = "http://127.0.0.1:8545"
//! chain_id = 31337
//! registry = "0x…"
//! channels = "0x…"
//! deploy_block = 0
//!
//! [network]
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! bootstrap = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3Koo…"]
//!
//! [serve]
//! model = "models/SmolLM2-135M-Instruct-Q4_1.gguf"
//! price_in = "0.0001eth"    # per 1,000 input tokens; wei, gwei or eth
//! price_out = "0.0004eth"   # per 1,000 output tokens
//! backend = "auto"
//!
//! [client]
//! deposit = "0.1eth"        # what a channel opened on demand holds
//! ```

use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use anyhow::{Context, bail};
use attrinet_chain::Deployment;
use attrinet_market::Wei;
use serde::{Deserialize, Serialize};

/// The whole file. Unknown keys are an error, so that a typo is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The chain and its contracts.
    #[serde(default)]
    pub chain: ChainConfig,
    /// The peer-to-peer network.
    #[serde(default)]
    pub network: NetworkConfig,
    /// `attrinet serve`.
    #[serde(default)]
    pub serve: ServeConfig,
    /// `attrinet query` and `attrinet gateway`.
    #[serde(default)]
    pub client: ClientConfig,
}

/// `[chain]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC endpoint.
    pub rpc: Option<String>,
    /// Chain id.
    pub chain_id: Option<u64>,
    /// Registry contract.
    pub registry: Option<Address>,
    /// Channels contract.
    pub channels: Option<Address>,
    /// Block the contracts were deployed in.
    pub deploy_block: Option<u64>,
}

/// `[network]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Listen addresses.
    pub listen: Option<Vec<String>>,
    /// Bootstrap peers.
    pub bootstrap: Option<Vec<String>>,
}

/// `[serve]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The GGUF file.
    pub model: Option<PathBuf>,
    /// Price per 1,000 input tokens.
    pub price_in: Option<String>,
    /// Price per 1,000 output tokens.
    pub price_out: Option<String>,
    /// auto, wgpu or cpu.
    pub backend: Option<String>,
    /// Requests generated at once (the old name of `max_batch`).
    pub capacity: Option<usize>,
    /// Requests generated at once.
    pub max_batch: Option<usize>,
    /// Memory for the KV cache, MiB.
    pub kv_memory_mib: Option<u64>,
    /// Memory the loaded models may take together, MiB.
    pub memory_budget_mib: Option<u64>,
    /// Requests that may wait for a generation slot.
    pub queue: Option<usize>,
    /// Most unpaid value per channel.
    pub exposure_limit: Option<String>,
    /// Bond posted when registering the node.
    pub bond: Option<String>,
    /// A datanet index built by `attrinet datanet build`.
    pub datanet: Option<PathBuf>,
    /// Seconds between settlement checks.
    pub settle_every_secs: Option<u64>,
    /// Unsettled value that triggers a settlement.
    pub settle_threshold: Option<String>,
}

/// `[client]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Deposit of a channel opened on demand.
    pub deposit: Option<String>,
}

impl FileConfig {
    /// Reads `explicit`, else `<data_dir>/config.toml` if it exists, else the empty
    /// configuration.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<FileConfig> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = default_path(data_dir);
                if !p.exists() {
                    return Ok(FileConfig::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config {}", path.display()))?;
        FileConfig::from_toml(&text).with_context(|| format!("{} is not a valid attrinet config", path.display()))
    }

    /// Parses a config file's text (what [`FileConfig::load`] reads): an unknown key, or a
    /// value of the wrong type, is an error that names it.
    pub fn from_toml(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The file's text, as [`FileConfig::save`] writes it and [`FileConfig::from_toml`]
    /// reads it back.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("encoding config")
    }

    /// Writes the file (used by `devnet --keep`).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = self.to_toml()?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Where the configuration file of a data dir is.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("config.toml")
}

/// The chain settings a command ends up with: its flags (already merged with the
/// environment by clap) over the file.
#[derive(Clone, Debug, Default)]
pub struct ChainFlags {
    /// `--rpc` / `ATTRINET_RPC`.
    pub rpc: Option<String>,
    /// `--chain-id` / `ATTRINET_CHAIN_ID`.
    pub chain_id: Option<u64>,
    /// `--registry` / `ATTRINET_REGISTRY`.
    pub registry: Option<Address>,
    /// `--channels` / `ATTRINET_CHANNELS`.
    pub channels: Option<Address>,
    /// `--deploy-block` / `ATTRINET_DEPLOY_BLOCK`.
    pub deploy_block: Option<u64>,
}

impl ChainFlags {
    /// The endpoint and deployment, or an error naming what is missing and where to set it.
    pub fn resolve(&self, file: &ChainConfig) -> anyhow::Result<(String, Deployment)> {
        let missing = |flag: &str, var: &str, key: &str| {
            anyhow::anyhow!(
                "no {flag}: pass --{flag}, set {var}, or put `{key}` under [chain] in the config file (`attrinet devnet --keep` writes one)"
            )
        };
        let rpc = self.rpc.clone().or_else(|| file.rpc.clone()).ok_or_else(|| missing("rpc", "ATTRINET_RPC", "rpc"))?;
        let registry =
            self.registry.or(file.registry).ok_or_else(|| missing("registry", "ATTRINET_REGISTRY", "registry"))?;
        let channels =
            self.channels.or(file.channels).ok_or_else(|| missing("channels", "ATTRINET_CHANNELS", "channels"))?;
        let chain_id = self.chain_id.or(file.chain_id).unwrap_or(31337);
        let deploy_block = self.deploy_block.or(file.deploy_block).unwrap_or(0);
        Ok((rpc, Deployment { chain_id, registry, channels, deploy_block }))
    }
}

/// Flag (with environment) over file over default, for a list of multiaddrs.
pub fn addrs(
    flag: &[attrinet_p2p::Multiaddr],
    file: Option<&Vec<String>>,
    default: &[&str],
) -> anyhow::Result<Vec<attrinet_p2p::Multiaddr>> {
    if !flag.is_empty() {
        return Ok(flag.to_vec());
    }
    let parse = |s: &str| s.parse::<attrinet_p2p::Multiaddr>().with_context(|| format!("`{s}` is not a multiaddr"));
    match file {
        Some(list) => list.iter().map(|s| parse(s)).collect(),
        None => default.iter().map(|s| parse(s)).collect(),
    }
}

/// An amount of ether: a plain integer is wei; `gwei` and `eth` suffixes take decimals
/// (`0.05eth`, `1.5 gwei`). Exact: no floating point, and anything that is not a whole
/// number of wei, or does not fit in 128 bits, is refused.
pub fn parse_wei(s: &str) -> Result<Wei, String> {
    let t = s.trim().to_ascii_lowercase();
    let (number, decimals) = if let Some(n) = t.strip_suffix("gwei") {
        (n.trim(), 9u32)
    } else if let Some(n) = t.strip_suffix("eth").or_else(|| t.strip_suffix("ether")) {
        (n.trim(), 18)
    } else if let Some(n) = t.strip_suffix("wei") {
        (n.trim(), 0)
    } else {
        (t.as_str(), 0)
    };
    let bad = || format!("`{s}` is not an amount: use wei (`1000`), gwei (`1.5gwei`) or eth (`0.05eth`)");
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !whole.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > decimals as usize {
        return Err(format!("`{s}` has more decimals than a wei can hold"));
    }
    let scale = 10u128.pow(decimals);
    let too_big = || format!("`{s}` does not fit in 128 bits of wei");
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_big())? };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| bad())? * 10u128.pow(decimals - frac.len() as u32)
    };
    whole.checked_mul(scale).and_then(|w| w.checked_add(frac_value)).map(Wei).ok_or_else(too_big)
}

/// [`parse_wei`] of an optional setting, or `default`.
pub fn wei_or(value: Option<&str>, what: &str, default: Wei) -> anyhow::Result<Wei> {
    match value {
        Some(v) => parse_wei(v).map_err(|e| anyhow::anyhow!("{what}: {e}")),
        None => Ok(default),
    }
}

/// Fails with a clear message when a required value is missing.
pub fn required<T>(value: Option<T>, flag: &str, key: &str) -> anyhow::Result<T> {
    match value {
        Some(v) => Ok(v),
        None => bail!("missing --{flag} (or `{key}` in the config file)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETH: u128 = 1_000_000_000_000_000_000;

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_wei("1000"), Ok(Wei(1000)));
        assert_eq!(parse_wei("0.05eth"), Ok(Wei(ETH / 20)));
        assert_eq!(parse_wei("1.5 ETH"), Ok(Wei(3 * ETH / 2)));
        assert_eq!(parse_wei("2gwei"), Ok(Wei(2_000_000_000)));
        assert_eq!(parse_wei(".5gwei"), Ok(Wei(500_000_000)));
        assert_eq!(parse_wei("0.000000000000000001eth"), Ok(Wei(1)));
        assert_eq!(parse_wei("7wei"), Ok(Wei(7)));
        for bad in [
            "",
            "eth",
            "1.5",
            "-1",
            "1e18",
            "0.0000000000000000001eth",
            "1.2.3eth",
            "abc",
            "340282366920938463463374607431768211456",
        ] {
            assert!(parse_wei(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_wei("340282366920938463463374607431768211455"), Ok(Wei(u128::MAX)));
        assert!(parse_wei("340282366920938463464eth").is_err(), "overflow after scaling");
    }

    #[test]
    fn flags_win_over_the_file_and_missing_values_are_named() {
        let a = Address::repeat_byte(1);
        let b = Address::repeat_byte(2);
        let file = ChainConfig {
            rpc: Some("http://file".into()),
            chain_id: Some(10),
            registry: Some(a),
            channels: Some(a),
            deploy_block: Some(5),
        };
        let flags = ChainFlags { rpc: Some("http://flag".into()), channels: Some(b), ..ChainFlags::default() };
        let (rpc, d) = flags.resolve(&file).unwrap();
        assert_eq!((rpc.as_str(), d.chain_id, d.registry, d.channels, d.deploy_block), ("http://flag", 10, a, b, 5));
        let err = ChainFlags::default().resolve(&ChainConfig::default()).unwrap_err().to_string();
        assert!(err.contains("--rpc") && err.contains("ATTRINET_RPC"), "{err}");
    }

    #[test]
    fn the_file_round_trips_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = FileConfig::default();
        c.chain.rpc = Some("http://127.0.0.1:8545".into());
        c.chain.registry = Some(Address::repeat_byte(3));
        c.network.bootstrap = Some(vec!["/ip4/127.0.0.1/tcp/1".into()]);
        c.client.deposit = Some("0.1eth".into());
        c.save(&default_path(dir.path())).unwrap();
        assert_eq!(FileConfig::load(None, dir.path()).unwrap(), c);
        assert_eq!(FileConfig::load(None, &dir.path().join("none")).unwrap(), FileConfig::default());
        std::fs::write(dir.path().join("bad.toml"), "[chain]\nrcp = \"x\"\n").unwrap();
        let err = format!("{:#}", FileConfig::load(Some(&dir.path().join("bad.toml")), dir.path()).unwrap_err());
        assert!(err.contains("rcp"), "{err}");
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml")), dir.path()).is_err());
    }
}
