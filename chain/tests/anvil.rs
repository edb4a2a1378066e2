//! The anvil guard: the chain runs while the guard lives and is gone after it is dropped,
//! also when the test that owns it panics.

use std::net::TcpStream;

use attrinet_chain::{Anvil, AnvilConfig};

fn listening(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://");
    TcpStream::connect(addr).is_ok()
}

#[tokio::test]
async fn anvil_is_killed_when_its_guard_drops_even_on_panic() {
    let anvil = Anvil::spawn(AnvilConfig { chain_id: Some(4242), ..AnvilConfig::default() }).unwrap();
    let endpoint = anvil.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "loopback only: {endpoint}");
    assert!(listening(&endpoint));
    use alloy::providers::Provider;
    assert_eq!(anvil.provider().get_chain_id().await.unwrap(), 4242);
    drop(anvil);
    assert!(!listening(&endpoint), "anvil still listening after drop");

    // A test that panics while holding the guard still stops its chain.
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let anvil = Anvil::spawn(AnvilConfig::default()).unwrap();
        tx.send(anvil.endpoint()).unwrap();
        panic!("a failing test");
    })
    .join();
    assert!(result.is_err());
    let endpoint = rx.recv().unwrap();
    assert!(!listening(&endpoint), "anvil outlived a panicking test");
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let err =
        Anvil::spawn(AnvilConfig { binary: Some("/nonexistent/anvil".into()), ..AnvilConfig::default() }).unwrap_err();
    assert!(err.to_string().contains("scripts/setup-chain-tools"), "{err}");
}
