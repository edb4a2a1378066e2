//! The channel opener against a real chain (anvil) and a real network: it pays only the
//! node an advert's key belongs to.

use std::time::Duration;

use alloy_primitives::U256;
use attrinet_chain::{Anvil, AnvilConfig, ChainClient, DeployConfig};
use attrinet_market::{Identity, ModelAdvert, ModelId, Price, Store, Wei, encode};
use attrinet_node::SledStore;
use attrinet_node::client::ChannelOpener;
use attrinet_p2p::NetConfig;

const ETH: u128 = 1_000_000_000_000_000_000;

fn net(bootstrap: Vec<attrinet_p2p::Multiaddr>) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        republish_every: Duration::from_secs(1),
        advert_ttl: Duration::from_secs(60),
        heartbeat: Duration::from_millis(200),
        nat: Default::default(),
        ..Default::default()
    }
}

/// The contracts on a fresh anvil, deployed by `deployer`, with `funded` given 10 ETH each
/// and `registered` registered as a node.
async fn deployed(
    anvil: &Anvil,
    deployer: &Identity,
    funded: [&Identity; 3],
    registered: &Identity,
) -> attrinet_chain::Deployment {
    for who in funded {
        anvil.fund(who.address(), U256::from(10 * ETH)).await.unwrap();
    }
    let config = DeployConfig {
        treasury: deployer.address(),
        challenge_window: 15,
        thaw_delay: 60,
        unbond_delay: 60,
        min_bond: Wei(ETH / 10),
    };
    let deployment = ChainClient::deploy(&anvil.endpoint(), deployer.evm.clone(), config).await.unwrap();
    let chain = ChainClient::connect(&anvil.endpoint(), registered.evm.clone(), deployment).unwrap();
    chain.register_node(&registered.public_key(), Wei(ETH / 10)).await.unwrap();
    deployment
}

/// The first address `network` listens on, once it does.
async fn first_listen_addr(network: &attrinet_p2p::Client) -> attrinet_p2p::Multiaddr {
    loop {
        if let Some(a) = network.listen_addrs().await.unwrap().into_iter().next() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attack: a node publishes an advert signed with its own key that names another registered
/// node's EVM address, at a price that ranks it first. The opener used to open a channel to
/// that address (the deposit locked with a node the client never chose, and which would
/// not be the one serving it). Now an advert whose key is not the key registered for its
/// address is passed over, and no channel is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opener_pays_no_address_whose_registered_key_is_not_the_adverts() {
    let anvil = Anvil::spawn(AnvilConfig::default()).expect("anvil (scripts/setup-chain-tools)");
    let [deployer, victim, forger, payer] =
        [9u8, 10, 11, 12].map(|i| Identity::from_secrets([i; 32], [i; 32]).unwrap());
    let deployment = deployed(&anvil, &deployer, [&deployer, &victim, &payer], &victim).await;

    // The forger's node publishes, under its own key, an advert naming the victim's address.
    let (forger_net, forger_loop) = attrinet_p2p::new(forger.clone(), net(vec![])).unwrap();
    tokio::spawn(forger_loop.run());
    let addr = first_listen_addr(&forger_net).await;
    let (payer_net, payer_loop) = attrinet_p2p::new(payer.clone(), net(vec![addr])).unwrap();
    tokio::spawn(payer_loop.run());
    let advert = ModelAdvert {
        node_key: forger.public_key(),
        evm_address: victim.address(),
        model: ModelId::from([5; 32]),
        model_name: "bait".into(),
        price: Price { per_1k_input: Wei(1), per_1k_output: Wei(1) },
        context_length: 2048,
        free_capacity: 8,
        decode_tokens_per_s: 1000,
        ttft_ms: 1,
        cold_start_ms: 0,
        expires_at: attrinet_p2p::unix_now() + 60,
        seq: 1,
        addrs: vec![],
    }
    .sign(&forger.ed25519);
    let mut seen = false;
    for _ in 0..100 {
        let _ = forger_net.publish_raw_advert(encode(&advert)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !payer_net.market().await.unwrap().find("bait", attrinet_p2p::unix_now()).is_empty() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the payer never saw the advert");

    let dir = tempfile::tempdir().unwrap();
    let opener = ChannelOpener {
        identity: payer.clone(),
        chain: ChainClient::connect(&anvil.endpoint(), payer.evm.clone(), deployment).unwrap(),
        store: std::sync::Arc::new(SledStore::open(dir.path()).unwrap()),
        deposit: Wei(ETH / 100),
    };
    let opened = opener.ensure(&payer_net, "bait", 16, None).await;
    assert!(
        matches!(opened, Ok(None)),
        "a channel was opened to {} on the strength of another key's advert: {opened:?}",
        victim.address()
    );
    assert!(opener.store.channels().unwrap().is_empty(), "no channel is recorded either");
}

/// Issue 15's Sybil adverts, against the chain: a client that follows the chain
/// (`RegisteredPublishers`, what `query`, `gateway`, `watch` and `serve` use) takes the
/// adverts of a node registered in the Registry and none of a node that is not, however
/// often it republishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_follows_the_chain_takes_adverts_of_registered_nodes_only() {
    let anvil = Anvil::spawn(AnvilConfig::default()).expect("anvil (scripts/setup-chain-tools)");
    let [deployer, node, sybil, client] = [20u8, 21, 22, 23].map(|i| Identity::from_secrets([i; 32], [i; 32]).unwrap());
    let deployment = deployed(&anvil, &deployer, [&deployer, &node, &client], &node).await;

    let advert = |who: &Identity, seq: u64| {
        ModelAdvert {
            node_key: who.public_key(),
            evm_address: who.address(),
            model: ModelId::from([6; 32]),
            model_name: "m".into(),
            price: Price { per_1k_input: Wei(1), per_1k_output: Wei(1) },
            context_length: 2048,
            free_capacity: 8,
            decode_tokens_per_s: 100,
            ttft_ms: 10,
            cold_start_ms: 0,
            expires_at: attrinet_p2p::unix_now() + 60,
            seq,
            addrs: vec![],
        }
        .sign(&who.ed25519)
    };
    let (node_net, node_loop) = attrinet_p2p::new(node.clone(), net(vec![])).unwrap();
    tokio::spawn(node_loop.run());
    let addr = first_listen_addr(&node_net).await;
    let (sybil_net, sybil_loop) = attrinet_p2p::new(sybil.clone(), net(vec![addr.clone()])).unwrap();
    tokio::spawn(sybil_loop.run());
    let client_chain = ChainClient::connect(&anvil.endpoint(), client.evm.clone(), deployment).unwrap();
    let checked = NetConfig {
        publishers: Some(std::sync::Arc::new(attrinet_node::client::RegisteredPublishers(client_chain))),
        ..net(vec![addr])
    };
    let (client_net, client_loop) = attrinet_p2p::new(client.clone(), checked).unwrap();
    tokio::spawn(client_loop.run());

    let held = || async {
        let all = client_net.market().await.unwrap().all(attrinet_p2p::unix_now());
        all.iter().map(|a| (a.node_key, a.seq)).collect::<Vec<_>>()
    };
    // Both publish a round every 200 ms; five rounds after the registered node's first
    // advert got through, the unregistered node's lookup has long been answered.
    let mut seq = attrinet_p2p::unix_now();
    let mut first = None;
    for round in 0..100 {
        seq += 1;
        let _ = node_net.publish_raw_advert(encode(&advert(&node, seq))).await;
        let _ = sybil_net.publish_raw_advert(encode(&advert(&sybil, seq))).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if first.is_none() && held().await.iter().any(|(k, _)| *k == node.public_key()) {
            first = Some(round);
        }
        if first.is_some_and(|f| round >= f + 5) {
            break;
        }
    }
    let held = held().await;
    assert!(held.iter().any(|(k, _)| *k == node.public_key()), "the registered node's advert is held: {held:?}");
    assert!(held.iter().all(|(k, _)| *k != sybil.public_key()), "the unregistered node's advert was taken: {held:?}");
}
