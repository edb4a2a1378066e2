//! Multi-node tests on loopback, in one process. Every wait is bounded and panics with
//! what it was waiting for.

mod memory;
mod util;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use attrinet_market::{ChannelId, ChannelState, ModelAdvert, Price, Seq, Store, Wei, encode};
use attrinet_p2p::{
    Ask, BatchRequest, ChatMessage, ConnectionBounds, ErrorCode, FetchError, InferError, Limits, NetConfig, Payer,
    Prompt, ServerMsg, fetch_batch, read_msg, write_msg,
};
use util::*;

/// Stated bound: with 300 ms gossipsub heartbeats and 1 s republishing, 10 nodes bootstrapped
/// from one know every advert within 30 s (typically 3–6 s here).
const PROPAGATION_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_see_every_advert_and_expired_ones_disappear() {
    let mut nodes = Vec::new();
    let boot = Node::start(0, &[], fast_config(Duration::from_secs(4))).await;
    let boot_addr = boot.tcp_addr().await;
    nodes.push(boot);
    for i in 1..10 {
        nodes.push(Node::start(i, std::slice::from_ref(&boot_addr), fast_config(Duration::from_secs(4))).await);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        n.serve(vec![offer(model(i as u8), 10, 20, TestEngine::new(0))], Limits::default());
    }
    let start = std::time::Instant::now();
    for n in &nodes {
        let client = n.client.clone();
        wait_for(PROPAGATION_BOUND, "every node lists all 10 adverts", || {
            let client = client.clone();
            async move { client.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 10 }
        })
        .await;
    }
    println!("10 nodes: every advert everywhere after {:?}", start.elapsed());

    // Node 9 goes away: its last advert expires (TTL 4 s) and drops out of every view.
    let gone = nodes.pop().unwrap();
    let gone_key = gone.identity.public_key();
    drop(gone);
    for n in &nodes {
        let client = n.client.clone();
        wait_for(Duration::from_secs(15), "the stopped node's advert expires", || {
            let client = client.clone();
            async move {
                let all = client.market().await.unwrap().all(attrinet_p2p::unix_now());
                all.iter().all(|a| a.node_key != gone_key)
            }
        })
        .await;
    }
    // The DHT knows providers too.
    let providers = nodes[3].client.dht_providers(model(5)).await.unwrap();
    assert!(providers.contains(&nodes[5].client.peer_id()), "DHT providers of model 5: {providers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_streams_and_both_sides_store_identical_receipts() {
    let (client, providers) = market_of(3, Limits::default(), 0).await;
    let mut streamed = String::new();
    let answer = client
        .payer
        .infer(&client.client, &ask("test-model", "tell me a story", 12), |t| streamed.push_str(t.text))
        .await
        .expect("answer");
    assert_eq!(answer.tokens.len(), 12);
    assert_eq!(streamed, answer.text);
    assert_eq!(answer.tokens, TestEngine::expected(&Prompt::Text("tell me a story".into()), 12));
    let provider = providers.iter().find(|p| p.identity.public_key() == answer.provider.node_key).unwrap();
    let id = answer.receipt.receipt.channel;
    let mine = client.store.receipts_after(&id, Seq::ZERO).unwrap();
    let theirs = provider.store.receipts_after(&id, Seq::ZERO).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(encode(&mine), encode(&theirs), "stores differ");
    mine[0].receipt.verify().unwrap();
    mine[0].voucher.verify(client.identity.address()).unwrap();
    // The stand-in engine counts words: 4 prompt tokens, 12 generated.
    assert_eq!(mine[0].receipt.receipt.input_tokens, 4);
    let expected = answer.provider.price.value(4, 12).unwrap();
    assert_eq!(mine[0].receipt.receipt.value, expected);

    // A second query goes to the same provider (still the best ranked: cheapest, and now
    // with a success) and continues the channel's sequence.
    let again = client.payer.infer(&client.client, &ask("test-model", "and another", 5), |_| {}).await.unwrap();
    assert_eq!(again.receipt.receipt.channel, id);
    assert_eq!(again.receipt.receipt.seq, Seq(2));

    // Anyone may ask the provider for the receipts behind a settlement: they are its
    // stored ones; a channel it does not serve, or an empty range, is refused.
    let peer = provider.client.peer_id();
    let req = BatchRequest { channel: id, after: Seq::ZERO, upto: Seq(2) };
    let fetched = fetch_batch(&client.client, peer, req, idle(5)).await.unwrap();
    let stored: Vec<_> =
        provider.store.receipts_after(&id, Seq::ZERO).unwrap().into_iter().map(|r| r.receipt).collect();
    assert_eq!(fetched.receipts, stored);
    let one = fetch_batch(&client.client, peer, BatchRequest { after: Seq(1), ..req }, idle(5)).await.unwrap();
    assert_eq!(one.receipts, stored[1..]);
    let refused = |e: FetchError| match e {
        FetchError::Refused(r) => r.code,
        other => panic!("expected a refusal, got {other}"),
    };
    let other = attrinet_market::ChannelId(alloy_primitives::B256::repeat_byte(7));
    let err = fetch_batch(&client.client, peer, BatchRequest { channel: other, ..req }, idle(5)).await.unwrap_err();
    assert_eq!(refused(err), ErrorCode::UnknownChannel);
    let err = fetch_batch(&client.client, peer, BatchRequest { upto: Seq::ZERO, ..req }, idle(5)).await.unwrap_err();
    assert_eq!(refused(err), ErrorCode::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_when_its_provider_dies_mid_stream() {
    // Provider 0 is cheapest, so it is chosen first; tokens come every 20 ms.
    let (client, mut providers) = market_of(3, Limits::default(), 20).await;
    let first = providers[0].identity.public_key();
    let killer = providers[0].kill_switch();
    let mut seen = 0;
    let answer = client
        .payer
        .infer(&client.client, &ask("test-model", "a long answer please", 30), |_| {
            seen += 1;
            if seen == 5 {
                killer.kill();
            }
        })
        .await
        .expect("fails over and completes");
    assert_eq!(answer.failed.len(), 1, "{:?}", answer.failed);
    assert_eq!(answer.failed[0].provider.node_key, first);
    assert_ne!(answer.provider.node_key, first);
    assert_eq!(answer.tokens.len(), 30);
    // No receipt for the aborted request anywhere; one for the completed one.
    let dead = providers.remove(0);
    for c in dead.store.channels().unwrap() {
        assert_eq!(c.last_seq, Seq::ZERO);
        assert!(client.store.receipts_after(&c.params.id, Seq::ZERO).unwrap().is_empty());
    }
    let paid: usize = client.store.channels().unwrap().iter().map(|c| c.last_seq.0 as usize).sum();
    assert_eq!(paid, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_adverts_are_rejected_and_their_sender_penalised() {
    let a = Node::start(0, &[], fast_config(Duration::from_secs(60))).await;
    let a_addr = a.tcp_addr().await;
    let mut honest = Node::start(1, std::slice::from_ref(&a_addr), fast_config(Duration::from_secs(60))).await;
    honest.serve(vec![offer(model(1), 10, 20, TestEngine::new(0))], Limits::default());
    let evil = Node::start(2, std::slice::from_ref(&a_addr), fast_config(Duration::from_secs(60))).await;
    wait_for(Duration::from_secs(20), "a sees the honest advert", || {
        let c = a.client.clone();
        async move { c.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 1 }
    })
    .await;
    let now = attrinet_p2p::unix_now();
    let advert = |node_key, seq, expires_at| ModelAdvert {
        node_key,
        evm_address: evil.identity.address(),
        model: model(9),
        model_name: "evil".into(),
        price: Price { per_1k_input: Wei(1), per_1k_output: Wei(1) },
        context_length: 2048,
        free_capacity: 1,
        decode_tokens_per_s: 1000,
        ttft_ms: 1,
        cold_start_ms: 0,
        expires_at,
        seq,
        addrs: vec![],
    };
    let score = || async { a.client.peer_score(evil.client.peer_id()).await.unwrap().unwrap_or(0.0) };
    let base = score().await;

    // 1. Forged: claims to be the honest node, signed by the evil one.
    let forged = advert(honest.identity.public_key(), now + 10, now + 60).sign(&evil.identity.ed25519);
    evil.publish_until_seen(&a, encode(&forged)).await;
    // 2. Oversized.
    let mut big = advert(evil.identity.public_key(), now + 11, now + 60);
    big.model_name = "x".repeat(3000);
    evil.publish_until_seen(&a, encode(&big.sign(&evil.identity.ed25519))).await;
    // 3. A replay of an old, expired advert.
    let old = advert(evil.identity.public_key(), 1, now - 10).sign(&evil.identity.ed25519);
    evil.publish_until_seen(&a, encode(&old)).await;

    wait_for(Duration::from_secs(10), "the evil peer's score drops", || async { score().await < base - 1.0 }).await;
    let view = a.client.market().await.unwrap().all(attrinet_p2p::unix_now());
    assert_eq!(view.len(), 1, "only the honest advert is in the view: {view:?}");
    assert_eq!(view[0].node_key, honest.identity.public_key());
    let honest_score = a.client.peer_score(honest.client.peer_id()).await.unwrap().unwrap_or(0.0);
    assert!(honest_score >= 0.0, "the honest peer is not penalised: {honest_score}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dishonest_receipts_and_oversized_prompts_are_refused_and_nothing_stored() {
    let (client, providers) = market_of(1, Limits { max_prompt_bytes: 64, ..Limits::default() }, 0).await;
    let provider = &providers[0];
    let id = client.store.channels().unwrap()[0].params.id;

    // Oversized prompt: a clear error, nothing stored.
    let err = client.payer.infer(&client.client, &ask("test-model", &"word ".repeat(40), 4), |_| {}).await.unwrap_err();
    assert!(matches!(&err, InferError::Remote(r) if r.code == ErrorCode::TooLarge), "{err}");

    // One honest query, so that there is something to replay.
    client.payer.infer(&client.client, &ask("test-model", "hello", 4), |_| {}).await.unwrap();
    assert_eq!(client.store.channel(&id).unwrap().unwrap().last_seq, Seq(1));

    // A rogue provider proposes, after one honest receipt: a wrong value, a wrong seq, a
    // replay of its receipt 1, and weights that are not the ones the receipt commits to. The client refuses each and stores nothing.
    let tampers = [Tamper::Value, Tamper::Seq, Tamper::Replay, Tamper::Weights];
    for (tamper, err) in tampers.iter().zip(rogue_rounds(&client, &tampers).await) {
        assert!(matches!(err, InferError::BadReceipt(_)), "{tamper:?}: {err}");
    }
    // A rogue client pays the real provider with a tampered co-signed receipt.
    let code = rogue_payment(&client, provider).await;
    assert_eq!(code, ErrorCode::BadPayment);

    for s in [client.store.as_ref(), provider.store.as_ref()] {
        let c = s.channel(&id).unwrap().unwrap();
        assert_eq!(c.last_seq, Seq(1), "nothing but the honest receipt is stored");
        assert_eq!(s.receipts_after(&id, Seq::ZERO).unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_respect_the_limit() {
    // No queue: what a slot cannot take at once is Busy.
    let limits = Limits { capacity: 4, queue: 0, max_per_peer: 50, ..Limits::default() };
    let (client, providers) = market_of(1, limits, 2).await;
    let engine = providers[0].engine.clone().unwrap();
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (payer, net, advert) = (client.payer.clone(), client.client.clone(), advert.clone());
        let channel = client.channel_with(&advert).await;
        tasks.push(tokio::spawn(async move {
            payer.infer_with(&net, &advert, channel, &ask("test-model", &format!("request {i}"), 8), &mut |_| {}).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t).await.expect("bounded").unwrap() {
            Ok(a) => {
                a.receipt.verify().unwrap();
                ok += 1;
            }
            Err(InferError::Remote(r)) if r.code == ErrorCode::Busy => busy += 1,
            Err(e) => panic!("neither a receipt nor busy: {e}"),
        }
    }
    println!("50 concurrent: {ok} served, {busy} busy, peak concurrency {}", engine.peak.load(Ordering::SeqCst));
    assert_eq!(ok + busy, 50);
    assert!(ok >= 4, "at least the first 4 are served");
    assert!(engine.peak.load(Ordering::SeqCst) <= 4, "never more than 4 generating");
    let id = client.store.channels().unwrap()[0].params.id;
    let mine = client.store.receipts_after(&id, Seq::ZERO).unwrap();
    let theirs = providers[0].store.receipts_after(&id, Seq::ZERO).unwrap();
    assert_eq!(mine.len(), ok);
    assert_eq!(encode(&mine), encode(&theirs));
    for (i, r) in mine.iter().enumerate() {
        assert_eq!(r.receipt.receipt.seq, Seq(i as u64 + 1));
    }
}

/// One slot and a queue of three: four concurrent requests all complete in their turn, the
/// last after waiting about three generations (4.5 s), longer than the client's 2 s idle
/// timeout, which the provider's `Queued` messages keep from firing; a fifth, with the slot
/// and the queue full, is Busy at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_wait_their_turn_and_only_a_full_queue_is_busy() {
    let idle = Duration::from_secs(2);
    let limits = Limits { capacity: 1, queue: 3, max_per_peer: 50, idle_timeout: idle, ..Limits::default() };
    let (client, providers) = market_of(1, limits, 200).await;
    let provider = providers[0].provider.clone().unwrap();
    let engine = providers[0].engine.clone().unwrap();
    let payer = attrinet_p2p::Payer::new(client.identity.clone(), client.store.clone(), idle);
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    assert_eq!(advert.free_capacity, 4, "the advert counts the slot and the queue");
    let channel = payer.channel_with(&advert).unwrap().expect("channel open");
    let ask_nth = |i: usize| {
        let (payer, net, advert, channel) = (payer.clone(), client.client.clone(), advert.clone(), channel.clone());
        tokio::spawn(async move {
            payer.infer_with(&net, &advert, channel, &ask("test-model", &format!("request {i}"), 8), &mut |_| {}).await
        })
    };
    let tasks: Vec<_> = (0..4).map(ask_nth).collect();
    wait_for(Duration::from_secs(10), "one request generates and three wait", || {
        let p = provider.clone();
        async move { p.load() == (1, 3) }
    })
    .await;
    let fifth = tokio::time::timeout(Duration::from_secs(2), ask_nth(4)).await.expect("answered at once").unwrap();
    assert!(matches!(&fifth, Err(InferError::Remote(r)) if r.code == ErrorCode::Busy), "{fifth:?}");
    // A request that would be refused is refused before it could take a place: a peer
    // cannot fill the queue with requests on a channel it does not have.
    let stranger =
        first_reply_to(&client, &providers[0], |r| r.channel = attrinet_market::ChannelId::from([7; 32])).await;
    assert!(
        matches!(&stranger, ServerMsg::Error(e) if e.code == ErrorCode::UnknownChannel),
        "checked before queueing: {stranger:?}"
    );
    for t in tasks {
        let answer = tokio::time::timeout(Duration::from_secs(30), t).await.expect("bounded").unwrap().unwrap();
        answer.receipt.verify().unwrap();
        assert_eq!(answer.tokens.len(), 8);
    }
    assert_eq!(engine.peak.load(Ordering::SeqCst), 1, "one generation at a time");
    assert_eq!(provider.load(), (0, 0), "nothing left running or queued");
    let id = client.store.channels().unwrap()[0].params.id;
    assert_eq!(client.store.receipts_after(&id, Seq::ZERO).unwrap().len(), 4);
}

/// The advert's free capacity follows the provider's load (slots plus queue places, within
/// `CAPACITY_REFRESH`): a client sees a full provider at 0, and its ranking passes over it
/// rather than being refused Busy; once the work is done the capacity is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adverts_tell_clients_when_a_provider_is_full() {
    let limits = Limits { capacity: 1, queue: 1, max_per_peer: 50, ..Limits::default() };
    let (client, providers) = market_of(1, limits, 250).await;
    let provider = providers[0].provider.clone().unwrap();
    let capacity = || {
        let net = client.client.clone();
        async move { net.market().await.unwrap().all(attrinet_p2p::unix_now())[0].free_capacity }
    };
    assert_eq!(capacity().await, 2);
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let (payer, net) = (client.payer.clone(), client.client.clone());
            tokio::spawn(async move { payer.infer(&net, &ask("test-model", &format!("long {i}"), 12), |_| {}).await })
        })
        .collect();
    wait_for(Duration::from_secs(10), "the provider's slot and queue are taken", || {
        let p = provider.clone();
        async move { p.load() == (1, 1) }
    })
    .await;
    wait_for(Duration::from_secs(10), "the client sees no free capacity", || async { capacity().await == 0 }).await;
    let err = client.payer.infer(&client.client, &ask("test-model", "one more", 4), |_| {}).await.unwrap_err();
    assert!(matches!(err, InferError::NoProvider(_)), "ranking leaves the full provider out: {err}");
    for t in tasks {
        t.await.unwrap().unwrap().receipt.verify().unwrap();
    }
    wait_for(Duration::from_secs(10), "the capacity is back", || async { capacity().await == 2 }).await;
}

/// A client that hangs up mid-answer frees its generation slot at the next token: the
/// engine stops (a few of the 200 tokens asked for are generated, not all), and the request
/// queued behind it is served. (Dropping a libp2p stream resets it, so the provider's next
/// token write fails and the generator's token callback returns false.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_its_slot_at_the_next_token() {
    let limits = Limits { capacity: 1, queue: 4, max_per_peer: 50, ..Limits::default() };
    let (client, providers) = market_of(1, limits, 20).await;
    let engine = providers[0].engine.clone().unwrap();
    let (_, mut s) = send_raw_request_with(&client, &providers[0], |r| {
        r.max_tokens = 200;
        r.quote.max_output_tokens = 200;
    })
    .await;
    loop {
        match read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Started { .. } => {}
            ServerMsg::Token { .. } => break,
            other => panic!("expected the answer to start, got {other:?}"),
        }
    }
    let (payer, net) = (client.payer.clone(), client.client.clone());
    let next = tokio::spawn(async move { payer.infer(&net, &ask("test-model", "next please", 4), |_| {}).await });
    let provider = providers[0].provider.clone().unwrap();
    wait_for(Duration::from_secs(10), "the second request waits in the queue", || {
        let p = provider.clone();
        async move { p.load() == (1, 1) }
    })
    .await;
    drop(s);
    let next = tokio::time::timeout(Duration::from_secs(30), next).await.expect("served").unwrap();
    next.unwrap().receipt.verify().unwrap();
    let generated = engine.generated.load(Ordering::SeqCst);
    println!("tokens generated: {generated} (4 of them for the second request)");
    assert!(generated < 100, "the engine went on for the hung-up client: {generated} tokens");
    assert_eq!(providers[0].provider.as_ref().unwrap().load(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_carries_a_query() {
    let quic = || attrinet_p2p::NetConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        ..fast_config(Duration::from_secs(60))
    };
    let mut provider = Node::start_with(1, &[], quic()).await;
    provider.serve(vec![offer(model(1), 1000, 2000, TestEngine::new(0))], Limits::default());
    let addr = provider.addr_with("/quic-v1").await;
    let client = Node::start_with(2, &[addr], quic()).await;
    open_channel(&client, &provider, Wei(10u128.pow(18)));
    wait_for(Duration::from_secs(20), "client sees the advert over QUIC", || {
        let c = client.client.clone();
        async move { !c.market().await.unwrap().all(attrinet_p2p::unix_now()).is_empty() }
    })
    .await;
    let answer = client.payer.infer(&client.client, &ask("test-model", "over quic", 6), |_| {}).await.unwrap();
    assert_eq!(answer.tokens.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_not_for_the_offer_or_a_prompt_past_it_is_refused_and_reserves_nothing() {
    // One request's worth of exposure (8 wei, as below): a refusal that reserved anything
    // would leave no room for the honest request at the end.
    let limits = Limits { exposure_limit: Wei(8), ..Limits::default() };
    let (client, providers) = market_of(1, limits, 0).await;
    let provider = &providers[0];
    let code = |m: attrinet_p2p::ServerMsg| match m {
        attrinet_p2p::ServerMsg::Error(e) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Another price, or fewer output tokens than asked for: the quote is not for this offer.
    let reply = first_reply_to(&client, provider, |r| r.quote.price.per_1k_output.0 += 1).await;
    assert_eq!(code(reply), ErrorCode::QuoteRejected);
    let reply = first_reply_to(&client, provider, |r| r.quote.max_output_tokens = r.max_tokens - 1).await;
    assert_eq!(code(reply), ErrorCode::QuoteRejected);
    // A prompt of more tokens than the quote allows does not fit.
    let reply = first_reply_to(&client, provider, |r| r.quote.max_input_tokens = 1).await;
    assert_eq!(code(reply), ErrorCode::BadRequest);
    // Nothing was reserved: the honest request is served up to its proposal.
    assert_eq!(refusing_round(&client, provider).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_the_model_cannot_take_is_a_bad_request_and_an_engine_failure_is_the_nodes() {
    let limits = Limits { exposure_limit: Wei(8), ..Limits::default() };
    let (client, providers) = market_of(1, limits, 0).await;
    // The request's fault: not retried elsewhere, nothing billed.
    let err = client.payer.infer(&client.client, &ask("test-model", UNUSABLE_PROMPT, 3), |_| {}).await.unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::BadRequest);
    // The node's fault: the client is told the engine failed (and would try another node).
    let err = client.payer.infer(&client.client, &ask("test-model", ENGINE_FAILS, 3), |_| {}).await.unwrap_err();
    let InferError::AllFailed(failed) = err else { panic!("expected every provider to have failed, got {err}") };
    assert_eq!(failed.iter().map(|f| f.code).collect::<Vec<_>>(), [Some(ErrorCode::Engine)]);
    // Neither was billed or left a reservation: an honest request is served in full.
    assert_eq!(client.store.channels().unwrap()[0].last_seq, Seq::ZERO);
    assert_eq!(refusing_round(&client, &providers[0]).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_that_does_not_cosign_is_refused_at_the_exposure_limit() {
    // Each request is worth (2 × 1000 + 3 × 2000) / 1000 = 8 wei at most; the limit allows
    // 20 wei unpaid: two refused receipts (16 wei written off), then no more service.
    let limits = Limits { exposure_limit: Wei(20), ..Limits::default() };
    let (client, providers) = market_of(1, limits, 0).await;
    assert_eq!(refusing_round(&client, &providers[0]).await, Ok(()));
    assert_eq!(refusing_round(&client, &providers[0]).await, Ok(()));
    assert_eq!(refusing_round(&client, &providers[0]).await, Err(ErrorCode::Unpaid));
    // Even an honest request on that channel is now refused, and nothing was stored.
    let err = client.payer.infer(&client.client, &ask("test-model", "pay me", 3), |_| {}).await.unwrap_err();
    assert!(matches!(&err, InferError::AllFailed(f) if f[0].code == Some(ErrorCode::Unpaid)), "{err}");
    let id = client.store.channels().unwrap()[0].params.id;
    assert_eq!(providers[0].store.channel(&id).unwrap().unwrap().last_seq, Seq::ZERO);
}

/// A provider learns of channels through its lookup (the chain, in a node): a channel it
/// has never stored is served; one whose params name another provider, or whose payer key
/// is not the requester's, is refused and nothing is stored; a deposit topped up since it
/// was last seen is read again when a request would pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_learnt_through_the_lookup_and_checked() {
    let lookup = Arc::new(TableLookup::default());
    let mut provider = Node::start(70, &[], fast_config(Duration::from_secs(60))).await;
    provider.serve_with_lookup(
        vec![offer(model(1), 1000, 2000, TestEngine::new(0))],
        Limits::default(),
        lookup.clone(),
    );
    let boot = [provider.tcp_addr().await];
    let client = Node::start(71, &boot, fast_config(Duration::from_secs(60))).await;
    let other = Node::start(72, &boot, fast_config(Duration::from_secs(60))).await;
    let c = client.client.clone();
    wait_for(Duration::from_secs(30), "the client sees the advert", || {
        let c = c.clone();
        async move { c.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 1 }
    })
    .await;
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    // Each request is worth at most (4 × 1000 + 5 × 2000) / 1000 = 14 wei: a deposit of
    // 20 covers one.
    let state = channel_state(&client, &provider, Wei(20));
    let id = state.params.id;
    client.store.put_channel(&state).unwrap();

    // The lookup does not know it yet: refused, nothing stored.
    let err = client
        .payer
        .infer_with(
            &client.client,
            &advert,
            client.channel_with(&advert).await,
            &ask("test-model", "one two three", 5),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::UnknownChannel);
    assert!(provider.store.channel(&id).unwrap().is_none());

    // The chain says the channel belongs to another provider: refused, nothing stored.
    let mut foreign = state.clone();
    foreign.params.provider = other.identity.address();
    lookup.0.lock().unwrap().insert(id, foreign);
    let err = client
        .payer
        .infer_with(
            &client.client,
            &advert,
            client.channel_with(&advert).await,
            &ask("test-model", "one two three", 5),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::UnknownChannel);
    assert!(provider.store.channel(&id).unwrap().is_none());

    // A channel whose record on chain names another payer key than the requester's
    // (here: a third node's channel, bound to `other`'s key): refused, nothing served.
    let third = Node::start(73, &boot, fast_config(Duration::from_secs(60))).await;
    let theirs = channel_state(&third, &provider, Wei(20));
    third.store.put_channel(&theirs).unwrap();
    let mut bound = theirs.clone();
    bound.params.payer_key = other.identity.public_key();
    lookup.0.lock().unwrap().insert(theirs.params.id, bound);
    let err = third
        .payer
        .infer_with(
            &third.client,
            &advert,
            third.channel_with(&advert).await,
            &ask("test-model", "one two three", 5),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::UnknownChannel);
    assert!(provider.store.channel(&theirs.params.id).unwrap().is_none(), "nothing served, nothing stored");

    // The true channel: served, and both stores agree.
    lookup.0.lock().unwrap().insert(id, state.clone());
    let answer = client
        .payer
        .infer_with(
            &client.client,
            &advert,
            client.channel_with(&advert).await,
            &ask("test-model", "one two three", 5),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(answer.receipt.receipt.seq, Seq(1));
    assert_eq!(provider.store.channel(&id).unwrap().unwrap().last_seq, Seq(1));

    // The deposit cannot cover a second request; once topped up on "chain" it can.
    let err = client
        .payer
        .infer_with(
            &client.client,
            &advert,
            client.channel_with(&advert).await,
            &ask("test-model", "one two three", 5),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::Unpaid);
    let topped = ChannelState { deposit: Wei(100), ..state.clone() };
    lookup.0.lock().unwrap().insert(id, topped.clone());
    client.store.put_channel(&topped).unwrap();
    let client2 = Payer::new(client.identity.clone(), client.store.clone(), Duration::from_secs(10));
    let channel = client2.channel_with(&advert).unwrap().unwrap();
    let again = client2
        .infer_with(&client.client, &advert, channel, &ask("test-model", "one two three", 5), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.receipt.receipt.seq, Seq(2));
    assert_eq!(provider.store.channel(&id).unwrap().unwrap().deposit, Wei(100));
}

#[test]
fn wire_messages_roundtrip() {
    use attrinet_market::{ChannelId, ModelId, Quote, decode};
    use attrinet_p2p::{ClientMsg, ErrorReply, InferRequest, Sampling, ServerMsg};
    let req = InferRequest {
        model: ModelId::from([1; 32]),
        prompt: Prompt::Chat(vec![ChatMessage { role: "user".into(), content: "hi ✓".into() }]),
        max_tokens: 7,
        sampling: Sampling { temperature_milli: 800, top_p_milli: 950, seed: u64::MAX, logprobs: None },
        stop: vec!["\n\n".into(), "END".into()],
        channel: ChannelId::from([2; 32]),
        quote: Quote {
            model: ModelId::from([1; 32]),
            price: Price::default(),
            max_input_tokens: 1,
            max_output_tokens: 7,
        },
        resync: None,
    };
    assert_eq!(decode::<InferRequest>(&encode(&req)).unwrap(), req);
    for m in [
        ServerMsg::Started { input_tokens: 3 },
        ServerMsg::Token { id: 42, text: " Paris".into() },
        ServerMsg::Ack { seq: Seq(9) },
        ServerMsg::Error(ErrorReply { code: ErrorCode::Busy, message: "full".into() }),
    ] {
        assert_eq!(decode::<ServerMsg>(&encode(&m)).unwrap(), m);
    }
    let refuse = ClientMsg::Refuse { reason: "no".into() };
    assert_eq!(decode::<ClientMsg>(&encode(&refuse)).unwrap(), refuse);
    assert!(decode::<InferRequest>(&encode(&req)[..10]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_weights_travel_with_the_receipt() {
    use attrinet_market::{Contribution, Datanet, PPM_WHOLE};
    let copied = Prompt::Text("copy this please".into());
    let owner_a = alloy_primitives::Address::repeat_byte(0xaa);
    let owner_b = alloy_primitives::Address::repeat_byte(0xbb);
    // Contributor A's text is exactly what the stand-in engine answers to that prompt;
    // B's shares nothing with it.
    let datanet = Datanet::build(
        8,
        vec![
            Contribution { owner: owner_a, name: "a".into(), tokens: TestEngine::expected(&copied, 40) },
            Contribution { owner: owner_b, name: "b".into(), tokens: (500_000..500_040).collect() },
        ],
    )
    .unwrap();
    let mut provider = Node::start(10, &[], fast_config(Duration::from_secs(60))).await;
    let boot = provider.tcp_addr().await;
    let mut o = offer(model(1), 1000, 2000, TestEngine::new(0));
    let datanet = std::sync::Arc::new(datanet);
    o.datanet = Some(datanet.clone());
    provider.serve(vec![o], Limits::default());
    let client = Node::start(50, &[boot], fast_config(Duration::from_secs(60))).await;
    open_channel(&client, &provider, Wei(10u128.pow(18)));
    let c = client.client.clone();
    wait_for(Duration::from_secs(20), "the client sees the advert", || {
        let c = c.clone();
        async move { !c.market().await.unwrap().all(attrinet_p2p::unix_now()).is_empty() }
    })
    .await;

    let answer = client.payer.infer(&client.client, &ask("test-model", "copy this please", 12), |_| {}).await.unwrap();
    assert_eq!(answer.weights.ppm_of(&owner_a), PPM_WHOLE, "A's passage was copied");
    assert_eq!(answer.weights.ppm_of(&owner_b), 0);
    let root = answer.receipt.receipt.attribution_root;
    assert_eq!(root, answer.weights.root());
    assert_ne!(root, alloy_primitives::B256::ZERO);
    assert_eq!(provider.provider.as_ref().unwrap().weights(&root), Some(answer.weights.clone()));

    // An output that shares nothing with the datanet carries no weights and a zero root.
    let other =
        client.payer.infer(&client.client, &ask("test-model", "something else entirely", 12), |_| {}).await.unwrap();
    assert!(other.weights.is_empty());
    assert_eq!(other.receipt.receipt.attribution_root, alloy_primitives::B256::ZERO);

    // A node that attributes with another datanet (B claims A's passage): its weights are
    // consistent with its receipt, so only a client holding the true datanet can tell.
    // That client refuses to co-sign and nothing is stored on either side.
    let forged = Datanet::build(
        8,
        vec![Contribution { owner: owner_b, name: "b".into(), tokens: TestEngine::expected(&copied, 40) }],
    )
    .unwrap();
    let mut cheat = Node::start(11, &[], fast_config(Duration::from_secs(60))).await;
    let mut o = offer(model(1), 1000, 2000, TestEngine::new(0));
    o.datanet = Some(std::sync::Arc::new(forged));
    cheat.serve(vec![o], Limits::default());
    let careful = Node::start(51, &[cheat.tcp_addr().await], fast_config(Duration::from_secs(60))).await;
    careful.payer.check_attribution(model(1), datanet);
    let id = open_channel(&careful, &cheat, Wei(10u128.pow(18)));
    let c = careful.client.clone();
    wait_for(Duration::from_secs(20), "the careful client sees the advert", || {
        let c = c.clone();
        async move { !c.market().await.unwrap().all(attrinet_p2p::unix_now()).is_empty() }
    })
    .await;
    let advert = careful.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    let channel = careful.channel_with(&advert).await;
    let err = careful
        .payer
        .infer_with(&careful.client, &advert, channel, &ask("test-model", "copy this please", 12), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(&err, InferError::BadReceipt(attrinet_market::LedgerError::WrongWeights { .. })), "{err}");
    assert_eq!(careful.store.channel(&id).unwrap().unwrap().last_seq, Seq::ZERO);
    assert_eq!(cheat.store.channel(&id).unwrap().unwrap().last_seq, Seq::ZERO);
    // The same node's honest answers (nothing attributed) are paid as usual.
    let channel = careful.channel_with(&advert).await;
    let fine = careful
        .payer
        .infer_with(&careful.client, &advert, channel, &ask("test-model", "something else entirely", 12), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(fine.receipt.receipt.seq, Seq(1));
}

/// Attack: a payer holds the receipt proposal unanswered until the provider's total
/// timeout drops the exchange. That used to leave the proposal pending for good, and every
/// later request on the channel was generated and streamed, then refused
/// (`ProposalInFlight`): free output until a restart. Now the dropped payment phase writes
/// the proposal off (its value stays unpaid exposure) and the channel serves, and bills,
/// the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_cut_by_the_total_timeout_is_written_off_and_the_channel_bills_again() {
    let limits = Limits {
        total_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let (client, providers) = market_of(1, limits, 0).await;
    let (_, mut stream) = send_raw_request(&client, &providers[0]).await;
    loop {
        match read_msg::<ServerMsg>(&mut stream, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Propose { .. } => break,
            ServerMsg::Error(e) => panic!("refused: {e:?}"),
            _ => {}
        }
    }
    // Silent past twice the total timeout: the provider drops the exchange mid-payment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut streamed = 0;
    let answer = client.payer.infer(&client.client, &ask("test-model", "and now pay", 3), |_| streamed += 1).await;
    let answer = answer.unwrap_or_else(|e| panic!("after {streamed} free tokens: {e}"));
    answer.receipt.verify().unwrap();
    assert_eq!(answer.receipt.receipt.seq, Seq(1), "the written-off proposal's seq is reused");
    drop(stream);
}

/// Attack: a payer reads most of each answer and hangs up before the receipt, so nothing is
/// ever proposed. That used to release the reservation and count nothing: read, hang up,
/// repeat, for free without end. Now the tokens sent before the hang-up count as unpaid
/// exposure (as a proposal written off does), so such a payer runs into its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_that_hangs_up_before_each_receipt_runs_into_its_exposure_limit() {
    // Provider 0 of `market_of` charges 1,000 / 2,000 wei per 1,000 input / output tokens; a
    // request of the 2-token prompt "pay me" for 20 tokens reserves its most, 42 wei. The
    // limit leaves 60 wei of room for unpaid tokens on top of one reservation: two or three
    // cut-off answers (10 to 20 tokens sent each).
    let price = Price { per_1k_input: Wei(1000), per_1k_output: Wei(2000) };
    let reservation = price.value(2, 20).unwrap();
    let limits = Limits { exposure_limit: Wei(reservation.0 + 60), ..Limits::default() };
    let (client, providers) = market_of(1, limits, 30).await;
    let id = channel_state(&client, &providers[0], Wei::ZERO).params.id;
    let (round, free_tokens) = hang_up_until_refused(&client, &providers[0], |_| id).await;
    assert!(round <= 4, "cut off after {round} hang-ups ({free_tokens} tokens)");
}

/// Issue 14, attack 11: a lost `Pay`. The payer stores the co-signed receipt before sending
/// `Pay`; when `Pay` never reaches the provider, the provider writes the proposal off and
/// proposes the same seq again, which the payer (already at that seq) refused for good: the
/// channel was dead. Now the payer's next request carries the receipt the provider may
/// lack, and the provider takes it in (its own signature, the payer's, the voucher), so both
/// go on from the same seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pay_is_resynchronised_by_the_next_request() {
    use attrinet_market::{Delivered, request_hash, response_hash};
    let (client, providers) = market_of(1, Limits::default(), 0).await;
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    let channel = client.channel_with(&advert).await;
    let id = channel.lock().await.state().params.id;

    // The payer co-signs and stores receipt 1 as it does, but its `Pay` is lost.
    let mut sent = None;
    let (_, mut s) = send_raw_request_with(&client, &providers[0], |r| sent = Some(r.clone())).await;
    let request = sent.unwrap();
    let (mut input, mut tokens) = (None, Vec::new());
    let (proposal, batch_start) = loop {
        match read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Started { input_tokens } => input = Some(input_tokens),
            ServerMsg::Token { id, .. } => tokens.push(id),
            ServerMsg::Propose { proposal, batch_start, .. } => break (proposal, batch_start),
            other => panic!("{other:?}"),
        }
    };
    {
        let mut ch = channel.lock().await;
        let delivered =
            Delivered::plain(request_hash(&encode(&request)), response_hash(&tokens), tokens.len() as u32, input);
        let (receipt, voucher) = ch
            .accept(proposal, batch_start, &request.quote, &delivered, attrinet_p2p::unix_now(), &client.identity)
            .unwrap();
        let stored = client.store.record_receipt(&receipt, &voucher).unwrap();
        ch.commit(&stored, &receipt);
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(providers[0].store.channel(&id).unwrap().unwrap().last_seq, Seq::ZERO, "the provider never got it");

    // The next request is answered and paid as receipt 2, and the provider now holds 1 too.
    let answer = client
        .payer
        .infer_with(&client.client, &advert, channel.clone(), &ask("test-model", "after the loss", 3), &mut |_| {})
        .await
        .unwrap_or_else(|e| panic!("the channel is stuck after a lost Pay: {e}"));
    assert_eq!(answer.receipt.receipt.seq, Seq(2));
    let held = providers[0].store.receipts_after(&id, Seq::ZERO).unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].receipt, client.store.receipt(&id, Seq(1)).unwrap().unwrap().receipt);
}

/// A new channel `[k; 32]` from `client` to `provider`, in both stores.
fn fresh_channel(client: &Node, provider: &Node, k: u8) -> ChannelId {
    let mut state = channel_state(client, provider, Wei(10u128.pow(18)));
    state.params.id = ChannelId::from([k; 32]);
    client.store.put_channel(&state).unwrap();
    provider.store.put_channel(&state).unwrap();
    state.params.id
}

/// Asks `provider` for 20 tokens on channel `id`, reads 10 and hangs up: the tokens read,
/// or the tokens read and the error it answered instead.
async fn hang_up(client: &Node, provider: &Node, id: ChannelId) -> Result<usize, (usize, ErrorCode)> {
    let (_, mut s) = send_raw_request_with(client, provider, |r| {
        r.channel = id;
        r.max_tokens = 20;
        r.quote.max_output_tokens = 20;
    })
    .await;
    let mut read = 0;
    while read < 10 {
        match read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Token { .. } => read += 1,
            ServerMsg::Error(e) => return Err((read, e.code)),
            _ => {}
        }
    }
    drop(s);
    // Time for the provider to notice the hang-up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(read)
}

/// Hangs up on up to 8 requests, on the channel `channel(round)` each, until the provider
/// refuses one; asserts that it was refused for the payer's unpaid exposure. Returns the
/// round it was refused in and the tokens taken free until then.
async fn hang_up_until_refused(client: &Node, provider: &Node, channel: impl Fn(u8) -> ChannelId) -> (u8, usize) {
    let mut free_tokens = 0;
    for round in 0..8u8 {
        match hang_up(client, provider, channel(round)).await {
            Ok(read) => free_tokens += read,
            Err((read, code)) => {
                assert_eq!(code, ErrorCode::Unpaid, "refused for its unpaid exposure");
                return (round, free_tokens + read);
            }
        }
    }
    panic!("never refused: {free_tokens} tokens taken free");
}

/// Issue 14, attack 9: the exposure limit is the payer's, not a channel's, and outlives a
/// restart. A payer hangs up before each receipt as above, but on a fresh channel each
/// time: each channel used to start with nothing written off, so it was never refused; and a
/// restarted provider forgot every write-off. Now write-offs are kept per payer, in the
/// store, and count on every channel of that payer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_cannot_widen_its_exposure_limit_with_more_channels_or_a_restart() {
    let price = Price { per_1k_input: Wei(1000), per_1k_output: Wei(2000) };
    let reservation = price.value(2, 20).unwrap();
    let limits = Limits { exposure_limit: Wei(reservation.0 + 60), ..Limits::default() };
    let (client, mut providers) = market_of(1, limits, 30).await;
    let (round, free_tokens) =
        hang_up_until_refused(&client, &providers[0], |round| fresh_channel(&client, &providers[0], 100 + round)).await;
    assert!(round <= 4, "cut off after {round} channels ({free_tokens} tokens)");

    // The provider restarts over the same store: it still knows what this payer owes.
    let engine = providers[0].engine.clone().unwrap();
    providers[0].serve(vec![offer(model(1), 1000, 2000, engine.clone())], limits);
    providers[0].engine = Some(engine);
    tokio::time::sleep(Duration::from_millis(300)).await;
    match hang_up(&client, &providers[0], fresh_channel(&client, &providers[0], 200)).await {
        Err((0, code)) => assert_eq!(code, ErrorCode::Unpaid),
        other => panic!("a restarted provider served the payer again: {other:?}"),
    }
}

/// Attack: a provider counts a short prompt as 1,500 input tokens and bills them. The payer's
/// quote allowed input up to the advertised context, so it co-signed. Now the quote allows
/// at most what the prompt's bytes can make (a token of text is at least one byte, plus the
/// chat template's overhead), so the inflated count is refused and nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_bill_more_input_than_the_prompt_can_make() {
    let (client, _providers) = market_of(1, Limits::default(), 0).await;
    let prompt = format!("a short {INFLATED_INPUT} prompt");
    let answer = client.payer.infer(&client.client, &ask("test-model", &prompt, 4), |_| {}).await;
    match answer {
        Ok(a) => panic!("billed {} input tokens for a {}-byte prompt", a.receipt.receipt.input_tokens, prompt.len()),
        Err(e) => assert!(e.to_string().contains("does not fit"), "refused for its input count: {e}"),
    }
    let id = client.store.channels().unwrap()[0].params.id;
    assert!(client.store.receipts_after(&id, Seq::ZERO).unwrap().is_empty(), "nothing signed");
    // An honest count of the same length of prompt is served.
    let honest = client.payer.infer(&client.client, &ask("test-model", "a short honest prompt", 4), |_| {}).await;
    assert_eq!(honest.unwrap().receipt.receipt.input_tokens, 4);
}

/// Attack 2, within the bound: a count the prompt's bytes could make but its tokenizer does
/// not. A client holding the model's tokenizer counts the prompt itself
/// (`Payer::count_input_with`), so the inflated count is refused, nothing is signed, and an
/// honest provider is paid for exactly the tokens the client counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_bill_more_input_than_the_clients_tokenizer_counts() {
    let (client, providers) = market_of(1, Limits::default(), 0).await;
    let prompt = format!("a short {INFLATED_WITHIN_BOUND} prompt");
    let bound = Prompt::Text(prompt.clone()).max_input_tokens();
    let exact = TestEngine::honest_count(&Prompt::Text(prompt.clone()));
    assert!(exact < bound, "{exact} < {bound}: the attack needs room under the bound");
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    client.payer.count_input_with(advert.model, Arc::new(HonestCounter));

    let answer = client.payer.infer(&client.client, &ask("test-model", &prompt, 4), |_| {}).await;
    match answer {
        Ok(a) => panic!("billed {} input tokens for a prompt of {exact}", a.receipt.receipt.input_tokens),
        Err(e) => assert!(e.to_string().contains("does not fit"), "refused for its input count: {e}"),
    }
    let id = client.store.channels().unwrap()[0].params.id;
    assert!(client.store.receipts_after(&id, Seq::ZERO).unwrap().is_empty(), "nothing signed");
    assert!(providers[0].store.receipts_after(&id, Seq::ZERO).unwrap().is_empty());

    // The honest count is exactly the client's, and that is what is billed.
    let chat = Prompt::Chat(vec![ChatMessage { role: "user".into(), content: "three honest words".into() }]);
    let honest = Ask { prompt: chat.clone(), ..ask("test-model", "", 4) };
    let answer = client.payer.infer(&client.client, &honest, |_| {}).await.unwrap();
    assert_eq!(answer.receipt.receipt.input_tokens, TestEngine::honest_count(&chat));
}

/// A stop sequence ends the answer at the token that completes it, and only the tokens up
/// to it are billed; a provider that streams on past it is refused and nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_answer_and_its_bill() {
    let (client, _providers) = market_of(1, Limits::default(), 0).await;
    let prompt = Prompt::Text("stop after the third".into());
    let expected = TestEngine::expected(&prompt, 12);
    // The third token's text, less its first byte: completed by the third token only.
    let third = TestEngine::text_of(expected[2]);
    let mut stopping = ask("test-model", "stop after the third", 12);
    stopping.stop = vec!["never streamed".into(), third[1..].to_owned()];
    let mut streamed = String::new();
    let answer = client.payer.infer(&client.client, &stopping, |t| streamed.push_str(t.text)).await.unwrap();
    assert_eq!(answer.tokens, expected[..3]);
    assert_eq!(answer.receipt.receipt.output_tokens, 3);
    assert!(streamed.ends_with(&third[1..]), "{streamed:?}");

    // Stop sequences the protocol does not carry are refused before anything is generated.
    let mut too_many = ask("test-model", "one", 4);
    too_many.stop = (0..5).map(|i| format!("s{i}")).collect();
    let err = client.payer.infer(&client.client, &too_many, |_| {}).await.unwrap_err();
    assert!(matches!(&err, InferError::Remote(r) if r.code == ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("at most 4"), "{err}");

    // A provider that ignores the stop and streams on.
    let errors = rogue_rounds(&client, &[Tamper::PastStop]).await;
    assert!(errors[0].to_string().contains("after a stop sequence"), "{}", errors[0]);
}

/// Issue 15, bounds under abuse: a provider streams far more tokens than asked for. The
/// payer took every one (and handed it on), so a hostile provider could grow a client's
/// memory without bound; now the token past `max_tokens` is refused and nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_stream_past_max_tokens() {
    let client = Node::start(50, &[], fast_config(Duration::from_secs(60))).await;
    let (rogue, advert) = rogue_node(&client, 61).await;
    let server = rogue_script(&rogue, 1, |_, mut s| async move {
        let _ = write_msg(&mut s, &ServerMsg::Started { input_tokens: 1 }).await;
        for id in 0..10_000 {
            if write_msg(&mut s, &ServerMsg::Token { id, text: "x".into() }).await.is_err() {
                return;
            }
        }
    });
    let channel = client.channel_with(&advert).await;
    let mut streamed = 0;
    let asked = ask("test-model", "five tokens, please", 5);
    let err = client
        .payer
        .infer_with(&client.client, &advert, channel, &asked, &mut |_| streamed += 1)
        .await
        .expect_err("an answer longer than asked for is refused");
    assert_eq!(streamed, 5, "tokens handed on for max_tokens 5 (then: {err})");
    assert!(err.to_string().contains("max_tokens"), "{err}");
    server.await.unwrap();
    let id = channel_state(&client, &rogue, Wei::ZERO).params.id;
    assert!(client.store.receipts_after(&id, Seq::ZERO).unwrap().is_empty(), "nothing signed");
}

/// Issue 15: a provider streams tokens whose text is far longer than any tokenizer's
/// token (up to a whole frame, 256 KiB each), or log-probability alternatives with such
/// text. The payer kept and handed on all of it; now a token or alternative over
/// `MAX_TOKEN_TEXT_BYTES` is refused before it is handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_stream_more_text_than_a_token_has() {
    use attrinet_p2p::{Logprobs, MAX_TOKEN_TEXT_BYTES, TopLogprob};
    let client = Node::start(50, &[], fast_config(Duration::from_secs(60))).await;
    let (rogue, advert) = rogue_node(&client, 61).await;
    let long = "y".repeat(MAX_TOKEN_TEXT_BYTES + 1);
    let server = rogue_script(&rogue, 2, move |req, mut s| {
        let long = long.clone();
        async move {
            let _ = write_msg(&mut s, &ServerMsg::Started { input_tokens: 1 }).await;
            if req.sampling.logprobs.is_none() {
                // The token's own text.
                let _ = write_msg(&mut s, &ServerMsg::Token { id: 1, text: long }).await;
            } else {
                // An alternative's.
                let _ = write_msg(&mut s, &ServerMsg::Token { id: 1, text: "ok".into() }).await;
                let top = vec![TopLogprob { id: 2, text: long, logprob_micros: -1 }];
                let _ = write_msg(&mut s, &ServerMsg::Logprobs(Logprobs { logprob_micros: -1, top })).await;
            }
            // Held open: the client decides.
            let _ = read_msg::<attrinet_p2p::ClientMsg>(&mut s, Duration::from_secs(15)).await;
        }
    });
    let channel = client.channel_with(&advert).await;
    for logprobs in [None, Some(1)] {
        let mut longest = 0;
        let mut asked = ask("test-model", "short tokens", 4);
        asked.sampling.logprobs = logprobs;
        let err = client
            .payer
            .infer_with(&client.client, &advert, channel.clone(), &asked, &mut |p| {
                let alternatives = p.logprobs.map_or(0, |l| l.top.iter().map(|t| t.text.len()).max().unwrap_or(0));
                longest = longest.max(p.text.len()).max(alternatives);
            })
            .await
            .expect_err("a token longer than any tokenizer's is refused");
        assert!(longest <= MAX_TOKEN_TEXT_BYTES, "logprobs {logprobs:?}: handed on {longest} bytes of one token");
        assert!(err.to_string().contains(&format!("{MAX_TOKEN_TEXT_BYTES} bytes")), "logprobs {logprobs:?}: {err}");
    }
    server.await.unwrap();
}

/// Issue 15: a provider keeps a client waiting, each message within the idle timeout: tokens
/// trickled one by one (max_tokens × the idle timeout: 17 hours at the defaults), or
/// `Queued` for up to `MAX_QUEUE_WAIT`. The payer waited as long as the provider liked; now
/// a whole answer from one provider has a deadline, and the client tries the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_trickling_within_the_idle_timeout_is_cut_at_the_answers_deadline() {
    const DEADLINE: Duration = Duration::from_secs(3);
    let client = Node::start(50, &[], fast_config(Duration::from_secs(60))).await;
    let (rogue, advert) = rogue_node(&client, 61).await;
    let server = rogue_script(&rogue, 2, |req, mut s| async move {
        let queue = req.prompt == Prompt::Text("queue".into());
        if !queue {
            let _ = write_msg(&mut s, &ServerMsg::Started { input_tokens: 1 }).await;
        }
        for id in 0..req.max_tokens {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let msg = if queue { ServerMsg::Queued { position: 1 } } else { ServerMsg::Token { id, text: "z".into() } };
            if write_msg(&mut s, &msg).await.is_err() {
                return;
            }
        }
    });
    let payer = Payer::with_timeouts(client.identity.clone(), client.store.clone(), Duration::from_secs(2), DEADLINE);
    let channel = client.channel_with(&advert).await;
    for prompt in ["trickle", "queue"] {
        let asked = ask("test-model", prompt, 200);
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            payer.infer_with(&client.client, &advert, channel.clone(), &asked, &mut |_| {}),
        )
        .await
        .unwrap_or_else(|_| panic!("{prompt}: still waiting after 30 s (deadline {DEADLINE:?})"));
        let err = outcome.expect_err("no answer");
        assert!(matches!(err, InferError::Deadline(d) if d == DEADLINE), "{prompt}: {err}");
    }
    server.await.unwrap();
}

/// Issue 15, bounds under abuse: a watcher fetching a batch from a hostile provider. It
/// trickled frames within the idle timeout (empty ones: no progress at all) for as long as
/// it liked; it sent as many receipts as the settled voucher's seq claimed (a voucher far
/// ahead of the last settlement claims billions); and as many weights as the range had
/// seqs, matching no receipt. Now a fetch has a deadline, asks for at most
/// `MAX_BATCH_RECEIPTS` however far the voucher claims, and takes weights only for the
/// receipts' roots, each once, within `MAX_BATCH_BYTES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fetch_is_bounded_in_time_receipts_and_weights_whatever_the_provider_sends() {
    use attrinet_p2p::{BATCH_PROTOCOL, BatchMsg, FetchTimeouts, MAX_BATCH_RECEIPTS};
    let (client, providers) = market_of(1, Limits::default(), 0).await;
    let answer = client.payer.infer(&client.client, &ask("test-model", "one receipt", 2), |_| {}).await.unwrap();
    let receipt = providers[0].store.receipt(&answer.receipt.receipt.channel, Seq(1)).unwrap().unwrap().receipt;
    let (rogue, _) = rogue_node(&client, 61).await;
    let mut incoming = rogue.client.streams().accept(BATCH_PROTOCOL).unwrap();
    let server = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some((_, mut s)) = incoming.next().await {
            let receipt = receipt.clone();
            tokio::spawn(async move {
                let Ok(req) = read_msg::<BatchRequest>(&mut s, Duration::from_secs(5)).await else { return };
                let frames: Box<dyn Iterator<Item = BatchMsg> + Send> = match req.after.0 {
                    // Trickle: an empty frame every 300 ms, for ever.
                    0 => Box::new(std::iter::repeat(BatchMsg::Receipts(Vec::new()))),
                    // Flood: 400 receipts a frame, as many as asked for and one more.
                    1 => Box::new(std::iter::repeat_n(
                        BatchMsg::Receipts(vec![receipt; 400]),
                        MAX_BATCH_RECEIPTS as usize / 400 + 1,
                    )),
                    // One receipt with no weights, then weights for nothing in it.
                    _ => {
                        let w = attrinet_market::Weights::new(vec![attrinet_market::Weight {
                            contributor: alloy_primitives::Address::repeat_byte(0xee),
                            ppm: attrinet_market::PPM_WHOLE,
                        }])
                        .unwrap();
                        Box::new(
                            std::iter::once(BatchMsg::Receipts(vec![receipt]))
                                .chain(std::iter::repeat_n(BatchMsg::Weights(vec![w]), 999)),
                        )
                    }
                };
                for f in frames {
                    if req.after.0 == 0 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if write_msg(&mut s, &f).await.is_err() {
                        return;
                    }
                }
                let _ = write_msg(&mut s, &BatchMsg::End).await;
            });
        }
    });
    let peer = rogue.client.peer_id();
    let channel = answer.receipt.receipt.channel;
    let timeouts = FetchTimeouts { idle: Duration::from_secs(1), total: Duration::from_secs(3) };
    let fetch = |after: u64, upto: u64| {
        let req = BatchRequest { channel, after: Seq(after), upto: Seq(upto) };
        let network = client.client.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), fetch_batch(&network, peer, req, timeouts))
                .await
                .unwrap_or_else(|_| panic!("fetch after {after}: still going after 30 s (deadline 3 s)"))
        }
    };

    let trickled = fetch(0, 10).await;
    assert!(matches!(trickled, Err(FetchError::Deadline(d)) if d == timeouts.total), "{trickled:?}");

    match fetch(1, 1_000_000_001).await {
        Ok(b) => panic!("took {} receipts for a claimed batch of a billion", b.receipts.len()),
        Err(e) => assert!(matches!(e, FetchError::Oversized(1_000_000_000)), "{e}"),
    }
    match fetch(2, 1002).await {
        Ok(b) => panic!("took {} weights for 1 receipt with none", b.weights.len()),
        Err(e) => assert!(e.to_string().contains("weights"), "{e}"),
    }
    server.abort();
}

/// Issue 15: a client of the batch server asks for a large batch and never reads. The
/// server's writes waited for ever, each holding one of its few answer slots, so a handful
/// of such streams had every other watcher refused as busy for good. Now each write has
/// the idle timeout and a whole answer the fetch deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_client_that_never_reads_cannot_hold_the_batch_server() {
    use attrinet_p2p::BATCH_PROTOCOL;
    let limits = Limits { idle_timeout: Duration::from_secs(1), ..Limits::default() };
    let (client, providers) = market_of(1, limits, 0).await;
    let answer = client.payer.infer(&client.client, &ask("test-model", "one receipt", 2), |_| {}).await.unwrap();
    let id = answer.receipt.receipt.channel;
    // 2,000 receipts: over 1 MB, well past what a stream buffers for a reader that reads
    // nothing.
    add_receipts(&client, &providers[0], id, 1999);
    let peer = providers[0].client.peer_id();
    let req = BatchRequest { channel: id, after: Seq::ZERO, upto: Seq(2000) };
    // Abusers (one stream each, on a connection of its own) filling the server's answer
    // slots, and more: each asks and never reads.
    let provider_addr = providers[0].tcp_addr().await;
    let mut held = Vec::new();
    for i in 0..6u8 {
        let abuser = Node::start(70 + i, &[], fast_config(Duration::from_secs(60))).await;
        abuser.client.dial(provider_addr.clone()).await.unwrap();
        let mut s = abuser.client.open_stream(peer, BATCH_PROTOCOL).await.unwrap();
        // Past the server's slots the stream is refused as busy and closed at once.
        let _ = write_msg(&mut s, &req).await;
        held.push((abuser, s));
    }
    let mut last = None;
    for _ in 0..40 {
        match fetch_batch(&client.client, peer, req, idle(5)).await {
            Ok(b) => {
                assert_eq!(b.receipts.len(), 2000);
                drop(held);
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("an honest fetch was refused for 20 s while 6 abusers left their streams unread: {last:?}");
}

/// Issue 15's connection flood: ever new keys dial one node. libp2p's connection limits
/// hold its incoming connections to the bound it is given (256 by default); on the code
/// before the bound, the node took every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_from_new_keys_is_held_to_the_inbound_bound() {
    const BOUND: usize = 6;
    const FLOOD: usize = 18;
    let bounds = ConnectionBounds { max_established_incoming: BOUND as u32, ..Default::default() };
    let target = Node::start(0, &[], NetConfig { connections: bounds, ..fast_config(Duration::from_secs(60)) }).await;
    let addr = target.tcp_addr().await;
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let node = Node::start(100 + i as u8, &[], fast_config(Duration::from_secs(60))).await;
        // Refused connections are dropped by the target after the handshake: the dial may
        // succeed and the connection then close, or fail.
        let _ = node.client.dial(addr.clone()).await;
        flood.push(node);
    }
    let target_peer = target.client.peer_id();
    // Settled: the target's connections are exactly the flooders that still hold one.
    let connected = || async {
        let mut n = 0;
        for f in &flood {
            n += usize::from(f.client.peers().await.unwrap().contains(&target_peer));
        }
        n
    };
    wait_for(Duration::from_secs(20), "the target's connections settle", || async {
        connected().await == target.client.peers().await.unwrap().len()
    })
    .await;
    let held = target.client.peers().await.unwrap().len();
    println!("{FLOOD} keys dialled; the target holds {held} connections (bound {BOUND})");
    assert!(held <= BOUND, "{held} connections held, the bound is {BOUND}");
    assert!(held > 0, "the bound leaves room for some");
}

/// A node past its share of the host's memory takes no new connection (libp2p's
/// memory-based limit); the same dial to a node within its share stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_its_memory_share_takes_no_new_connections() {
    // Any process uses more than a millionth of the host's memory.
    let bounds = ConnectionBounds { max_memory_percent: 0.0001, ..Default::default() };
    let full = Node::start(0, &[], NetConfig { connections: bounds, ..fast_config(Duration::from_secs(60)) }).await;
    let roomy = Node::start(1, &[], fast_config(Duration::from_secs(60))).await;
    let dialer = Node::start(2, &[], fast_config(Duration::from_secs(60))).await;
    dialer.client.dial(roomy.tcp_addr().await).await.expect("a node within its share takes the connection");
    let _ = dialer.client.dial(full.tcp_addr().await).await;
    let (full_peer, roomy_peer) = (full.client.peer_id(), roomy.client.peer_id());
    wait_for(Duration::from_secs(10), "the full node's connection, if any, is gone", || async {
        !dialer.client.peers().await.unwrap().contains(&full_peer) && full.client.peers().await.unwrap().is_empty()
    })
    .await;
    assert!(dialer.client.peers().await.unwrap().contains(&roomy_peer), "the connection within its share stays");
}

/// Issue 15's republish storm: every node used to republish all its adverts whenever a
/// peer subscribed, so each join cost the network a round of everyone's adverts. Now a node
/// that connects pulls one peer's view (`/attrinet/view/1`) and nobody republishes for it:
/// with periodic republishing off, three nodes join, each through the one before, and each
/// holds the provider's advert at the seq it was first published with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_pull_the_market_and_nobody_republishes_for_them() {
    let config = || NetConfig {
        republish_every: Duration::from_secs(3600),
        ..fast_config(Duration::from_secs(attrinet_market::MAX_ADVERT_TTL_SECS))
    };
    let mut provider = Node::start(0, &[], config()).await;
    provider.serve(vec![offer(model(1), 10, 20, TestEngine::new(0))], Limits::default());
    let own = || async { provider.client.market().await.unwrap().all(attrinet_p2p::unix_now()) };
    wait_for(Duration::from_secs(10), "the provider holds its own advert", || async { own().await.len() == 1 }).await;
    let first_seq = own().await[0].seq;
    let mut joined: Vec<Node> = Vec::new();
    for i in 1..=3u8 {
        let through = match joined.last() {
            Some(n) => n.tcp_addr().await,
            None => provider.tcp_addr().await,
        };
        let node = Node::start(i, &[through], config()).await;
        let c = node.client.clone();
        wait_for(Duration::from_secs(20), "the joining node holds the provider's advert", || {
            let c = c.clone();
            async move { c.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 1 }
        })
        .await;
        let seen = node.client.market().await.unwrap().all(attrinet_p2p::unix_now());
        assert_eq!(seen[0].seq, first_seq, "node {i} got a republished advert");
        joined.push(node);
    }
    assert_eq!(own().await[0].seq, first_seq, "the provider republished for the joining nodes");
}

/// Which keys are registered: what a chain would answer, and how often it was asked.
#[derive(Debug, Default)]
struct TableRegistry {
    registered: std::sync::Mutex<std::collections::HashSet<attrinet_market::PublicKey>>,
    asked: std::sync::Mutex<std::collections::HashMap<attrinet_market::PublicKey, usize>>,
}

impl attrinet_p2p::PublisherCheck for TableRegistry {
    fn registered(&self, key: attrinet_market::PublicKey) -> futures::future::BoxFuture<'static, Result<bool, String>> {
        *self.asked.lock().unwrap().entry(key).or_default() += 1;
        let registered = self.registered.lock().unwrap().contains(&key);
        Box::pin(async move { Ok(registered) })
    }
}

/// Issue 15's Sybil adverts: keys cost nothing, so without a check anyone's valid adverts
/// fill every view. A node that checks publishers takes adverts only from registered nodes,
/// gossiped or handed over by a view sync, asks once per publisher (cached), and does not
/// penalise the peer that forwarded an unregistered node's advert. A node without the check
/// takes both (what every node did before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_nodes_adverts_are_taken_by_a_node_that_checks() {
    let mut registered = Node::start(0, &[], fast_config(Duration::from_secs(60))).await;
    registered.serve(vec![offer(model(1), 10, 20, TestEngine::new(0))], Limits::default());
    let boot = registered.tcp_addr().await;
    let mut sybil = Node::start(1, std::slice::from_ref(&boot), fast_config(Duration::from_secs(60))).await;
    sybil.serve(vec![offer(model(2), 1, 1, TestEngine::new(0))], Limits::default());
    let plain = Node::start(2, std::slice::from_ref(&boot), fast_config(Duration::from_secs(60))).await;
    let both = || async { plain.client.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == 2 };
    wait_for(Duration::from_secs(20), "a node that does not check holds both adverts", both).await;

    let table = Arc::new(TableRegistry::default());
    table.registered.lock().unwrap().insert(registered.identity.public_key());
    let checked = NetConfig { publishers: Some(table.clone()), ..fast_config(Duration::from_secs(60)) };
    // Joins through the registered node, whose view (pulled at once) holds both adverts.
    let checker = Node::start(3, std::slice::from_ref(&boot), checked).await;
    let view = || async { checker.client.market().await.unwrap().all(attrinet_p2p::unix_now()) };
    wait_for(Duration::from_secs(20), "the checking node holds the registered node's advert", || async {
        view().await.iter().any(|a| a.node_key == registered.identity.public_key())
    })
    .await;
    // Rounds of republishing later (every 2 s here), the Sybil's adverts are still refused.
    let sybil_key = sybil.identity.public_key();
    let asked = |key| table.asked.lock().unwrap().get(&key).copied().unwrap_or(0);
    wait_for(Duration::from_secs(20), "the Sybil's key was looked up", || async { asked(sybil_key) > 0 }).await;
    let seq_then = |v: Vec<ModelAdvert>| v.iter().find(|a| a.node_key != sybil_key).map(|a| a.seq).unwrap();
    let then = seq_then(view().await);
    wait_for(Duration::from_secs(20), "three more rounds of adverts arrive", || async {
        seq_then(view().await) >= then + 3
    })
    .await;
    let held = view().await;
    assert!(held.iter().all(|a| a.node_key != sybil_key), "an unregistered node's advert was taken: {held:?}");
    assert_eq!(held.len(), 1);
    // One lookup per publisher: the answers are cached.
    assert_eq!((asked(registered.identity.public_key()), asked(sybil_key)), (1, 1));
    let score = checker.client.peer_score(registered.client.peer_id()).await.unwrap().unwrap_or(0.0);
    assert!(score >= 0.0, "the peer that forwarded the unregistered advert is not penalised: {score}");
}

/// Issue 15's admission: counting a prompt runs the model's tokenizer and template, which
/// can take long. It ran on the async threads, so two slow prompts (as many as this
/// runtime has threads) stalled the whole node: no other request, no network event moved
/// until they were counted. Now counting runs on the blocking pool, at most
/// `TOKENISERS` at once, and another request is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tokenising_does_not_stall_the_provider() {
    let limits = Limits { max_per_peer: 50, ..Limits::default() };
    let (client, providers) = market_of(1, limits, 0).await;
    let engine = providers[0].engine.clone().unwrap();
    engine.hold_tokenizer();
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    let mut slow = Vec::new();
    for i in 0..2 {
        let (payer, net, advert) = (client.payer.clone(), client.client.clone(), advert.clone());
        let channel = client.channel_with(&advert).await;
        let prompt = format!("{SLOW_TOKENIZER} {i}");
        slow.push(tokio::spawn(async move {
            payer.infer_with(&net, &advert, channel, &ask("test-model", &prompt, 4), &mut |_| {}).await
        }));
    }
    wait_for(Duration::from_secs(10), "both slow prompts are being counted", || async { engine.tokenizing() == 2 })
        .await;
    let channel = client.channel_with(&advert).await;
    let (quick, mut on_token) = (ask("test-model", "quick", 4), |_: attrinet_p2p::Piece<'_>| {});
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client.payer.infer_with(&client.client, &advert, channel, &quick, &mut on_token),
    )
    .await
    .expect("a request is served while two prompts are being counted")
    .expect("answer");
    assert_eq!(answer.tokens.len(), 4);
    assert_eq!(engine.tokenizing(), 2, "the slow prompts are still being counted");
    engine.release_tokenizer();
    for s in slow {
        let a = tokio::time::timeout(Duration::from_secs(20), s).await.expect("bounded").unwrap().expect("answer");
        assert_eq!(a.tokens.len(), 4);
    }
}
