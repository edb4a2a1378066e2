//! The node's two keys on disk: `keys.toml` in the data dir, readable by its owner only.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use attrinet_market::Identity;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// ed25519 secret (libp2p identity, receipt signatures), hex.
    ed25519: String,
    /// secp256k1 secret (EVM address, vouchers, transactions), hex.
    secp256k1: String,
}

/// Where the keys live in a data dir.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys.toml")
}

fn hex32(s: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = alloy_primitives::hex::decode(s.trim()).with_context(|| format!("{what} is not hex"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{what} is not 32 bytes"))
}

/// Creates new keys from the OS's randomness; refuses to overwrite existing ones.
pub fn create(data_dir: &Path) -> anyhow::Result<Identity> {
    let path = key_path(data_dir);
    if path.exists() {
        bail!("{} already exists: refusing to overwrite keys (delete it yourself if you mean it)", path.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let identity = loop {
        let mut ed = [0u8; 32];
        let mut evm = [0u8; 32];
        getrandom(&mut ed)?;
        getrandom(&mut evm)?;
        // A secp256k1 secret must be below the group order: retry the ~2^-128 misses.
        if let Ok(id) = Identity::from_secrets(ed, evm) {
            break id;
        }
    };
    write(&path, &identity)?;
    Ok(identity)
}

/// Writes keys to `path`, mode 0600.
pub fn write(path: &Path, identity: &Identity) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = KeyFile {
        ed25519: alloy_primitives::hex::encode(identity.ed25519.to_bytes()),
        secp256k1: alloy_primitives::hex::encode(identity.evm.to_bytes()),
    };
    let text = toml::to_string(&file).context("encoding keys")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Loads the keys of a data dir.
pub fn load(data_dir: &Path) -> anyhow::Result<Identity> {
    let path = key_path(data_dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no keys at {}: run `attrinet keys new` first", path.display()))?;
    let file: KeyFile = toml::from_str(&text).with_context(|| format!("{} is not a key file", path.display()))?;
    Ok(Identity::from_secrets(hex32(&file.ed25519, "ed25519")?, hex32(&file.secp256k1, "secp256k1")?)?)
}

/// Fills `buf` from the OS's random source.
fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).context("reading /dev/urandom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let id = create(dir.path()).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!((back.public_key(), back.address()), (id.public_key(), id.address()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(create(dir.path()).is_err());
        assert!(load(&dir.path().join("nowhere")).unwrap_err().to_string().contains("attrinet keys new"));
    }
}
