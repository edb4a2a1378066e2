//! What the node's integration tests share.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 request with a JSON body; the status and the response body.
pub(crate) async fn http(base: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(base).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut out)).await.expect("response in time").unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The `attrinet` binary under test.
pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_attrinet")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills a child process however the test ends.
pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both outputs of a child, line by line, echoed to the test log with `prefix`.
pub(crate) fn lines(child: &mut std::process::Child, prefix: &'static str) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let forward = |out: Box<dyn std::io::Read + Send>, tx: std::sync::mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("{prefix}> {line}");
                let _ = tx.send(line);
            }
        })
    };
    forward(Box::new(child.stdout.take().expect("stdout piped")), tx.clone());
    forward(Box::new(child.stderr.take().expect("stderr piped")), tx);
    rx
}

const ETH: u128 = 1_000_000_000_000_000_000;

/// Anvil mining a block every second, as on a live L2 (chain time moves, so challenge
/// windows end without the test pushing the clock), on `host` (loopback when `None`), with
/// the contracts deployed: a 15 s challenge window and a thaw of `thaw_delay` s.
pub(crate) async fn chain(
    host: Option<std::net::Ipv4Addr>,
    thaw_delay: u64,
) -> (attrinet_chain::Anvil, attrinet_chain::Deployment, attrinet_market::Identity) {
    chain_with_window(host, thaw_delay, 15).await
}

/// [`chain`] with a challenge window of `challenge_window` s (the thaw must be at least
/// twice as long).
pub(crate) async fn chain_with_window(
    host: Option<std::net::Ipv4Addr>,
    thaw_delay: u64,
    challenge_window: u64,
) -> (attrinet_chain::Anvil, attrinet_chain::Deployment, attrinet_market::Identity) {
    use attrinet_chain::{Anvil, AnvilConfig, ChainClient, DeployConfig};
    let anvil = Anvil::spawn(AnvilConfig { block_time: Some(1), host, ..AnvilConfig::default() })
        .expect("anvil (scripts/setup-chain-tools)");
    let deployer = attrinet_market::Identity::from_secrets([9; 32], [9; 32]).unwrap();
    anvil.fund(deployer.address(), alloy_primitives::U256::from(100 * ETH)).await.unwrap();
    let deployment = ChainClient::deploy(
        &anvil.endpoint(),
        deployer.evm.clone(),
        DeployConfig {
            treasury: deployer.address(),
            challenge_window,
            thaw_delay,
            unbond_delay: 60,
            min_bond: attrinet_market::Wei(ETH / 10),
        },
    )
    .await
    .unwrap();
    (anvil, deployment, deployer)
}

/// A data dir `root/name` with new keys, funded with 100 ETH, and a config file naming the
/// chain, where to listen and whom to join.
pub(crate) async fn participant(
    root: &std::path::Path,
    name: &str,
    anvil: &attrinet_chain::Anvil,
    deployment: attrinet_chain::Deployment,
    listen: &str,
    bootstrap: Option<String>,
) -> (std::path::PathBuf, attrinet_market::Identity) {
    let dir = root.join(name);
    let keys = std::process::Command::new(bin()).arg("--data-dir").arg(&dir).args(["keys", "new"]).output().unwrap();
    assert!(keys.status.success(), "{}", text(&keys.stderr));
    let id = attrinet_node::keys::load(&dir).unwrap();
    anvil.fund(id.address(), alloy_primitives::U256::from(100 * ETH)).await.unwrap();
    let mut file = attrinet_node::config::FileConfig::default();
    file.chain.rpc = Some(anvil.endpoint());
    file.chain.registry = Some(deployment.registry);
    file.chain.channels = Some(deployment.channels);
    file.chain.deploy_block = Some(deployment.deploy_block);
    file.network.listen = Some(vec![listen.into()]);
    file.network.bootstrap = bootstrap.map(|b| vec![b]);
    file.client.deposit = Some("0.05eth".into());
    file.save(&attrinet_node::config::default_path(&dir)).unwrap();
    (dir, id)
}
