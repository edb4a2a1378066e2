//! Nodes on the in-process memory transport (what `benches/scale.rs` runs hundreds of):
//! the same stack as on TCP, and the meter counts what each node writes.

use std::time::Duration;

use attrinet_market::Wei;
use attrinet_p2p::{ByteMeter, Limits, NetConfig, Prompt, Transport};

use crate::util::*;

fn memory_config() -> NetConfig {
    NetConfig { listen: vec!["/memory/0".parse().unwrap()], ..fast_config(Duration::from_secs(60)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_the_memory_transport_gossip_adverts_and_serve_a_paid_query() {
    let meters = [ByteMeter::new(), ByteMeter::new(), ByteMeter::new()];
    let mut provider = Node::start_on(60, &[], memory_config(), Transport::Memory(meters[0].clone())).await;
    let boot = provider.addr_with("/memory/").await;
    assert!(
        provider.client.listen_addrs().await.unwrap().iter().all(|a| a.to_string().starts_with("/memory/")),
        "the node listens on memory addresses only"
    );
    // The client dials only a third node; the advert, with the provider's address, reaches it by gossip.
    let middle =
        Node::start_on(61, std::slice::from_ref(&boot), memory_config(), Transport::Memory(meters[1].clone())).await;
    let middle_addr = middle.addr_with("/memory/").await;
    let client = Node::start_on(62, &[middle_addr], memory_config(), Transport::Memory(meters[2].clone())).await;
    provider.serve(vec![offer(model(1), 1000, 2000, TestEngine::new(0))], Limits::default());
    open_channel(&client, &provider, Wei(10u128.pow(18)));
    let c = client.client.clone();
    wait_for(Duration::from_secs(30), "the client sees the provider's advert", || {
        let c = c.clone();
        async move { c.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 1 }
    })
    .await;

    let answer =
        client.payer.infer(&client.client, &ask("test-model", "over memory", 6), |_| {}).await.expect("answer");
    assert_eq!(answer.tokens, TestEngine::expected(&Prompt::Text("over memory".into()), 6));
    assert_eq!(answer.provider.node_key, provider.identity.public_key());
    // Each node wrote something (noise handshakes, gossip, the query's stream), and the
    // provider, which streamed the answer, wrote more than a noise handshake's few hundred bytes.
    assert!(
        meters.iter().all(|m| m.sent() > 0),
        "every meter counts: {:?}",
        meters.iter().map(ByteMeter::sent).collect::<Vec<_>>()
    );
    assert!(meters[0].sent() > 1000, "the provider's meter: {}", meters[0].sent());
}
