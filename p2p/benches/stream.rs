//! Request/stream round trip over libp2p for a fixed token stream (no model), next to the
//! same bytes over a plain tokio TCP socket in the same run, and the receipt exchange's
//! cost per request.
//!
//! Run: `cargo bench -p attrinet-p2p --bench stream`

use std::sync::Arc;
use std::time::{Duration, Instant};

use attrinet_market::{
    ChannelId, ChannelParams, ChannelState, Domain, Identity, MemStore, ModelId, Price, Store, Wei, encode,
};
use attrinet_p2p::{Ask, Generator, Limits, NetConfig, Offer, Payer, Prompt, Provider, Sampling, ServerMsg};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::StreamProtocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKENS: u32 = 256;
const ROUNDS: u32 = 200;
const RAW: StreamProtocol = StreamProtocol::new("/attrinet/bench-raw/1");

/// Emits `max_tokens` fixed tokens at once: the network is all that is measured.
struct Fixed;
impl Generator for Fixed {
    fn count_tokens(&self, _: &Prompt) -> Result<u32, attrinet_p2p::GenerateError> {
        Ok(16)
    }
    fn generate(
        &self,
        _: &Prompt,
        n: u32,
        _: &Sampling,
        on: &mut dyn FnMut(attrinet_p2p::Generated) -> bool,
    ) -> Result<(), attrinet_p2p::GenerateError> {
        for i in 0..n {
            if !on(attrinet_p2p::Generated { id: 1000 + i, text: " tok".into(), logprobs: None }) {
                break;
            }
        }
        Ok(())
    }
}

fn token_frames() -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..TOKENS {
        let body = encode(&ServerMsg::Token { id: 1000 + i, text: " tok".into() });
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    bytes
}

fn config() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        republish_every: Duration::from_secs(1),
        advert_ttl: Duration::from_secs(60),
        heartbeat: Duration::from_millis(300),
        nat: Default::default(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let request = vec![7u8; 200];
    let frames = token_frames();

    // Plain TCP: client writes a 200-byte request; server answers with the token frames.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_frames = frames.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let f = server_frames.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 200];
                while s.read_exact(&mut req).await.is_ok() {
                    s.write_all(&f).await.unwrap();
                }
            });
        }
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; frames.len()];
    let t = Instant::now();
    for _ in 0..ROUNDS {
        tcp.write_all(&request).await.unwrap();
        tcp.read_exact(&mut buf).await.unwrap();
    }
    let tcp_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);

    // libp2p: the same bytes on a fresh stream per request (as the inference protocol does).
    let node = Identity::from_secrets([1; 32], [2; 32]).unwrap();
    let client_id = Identity::from_secrets([3; 32], [4; 32]).unwrap();
    let (server, server_loop) = attrinet_p2p::new(node.clone(), config()).unwrap();
    tokio::spawn(server_loop.run());
    let (client, client_loop) = attrinet_p2p::new(client_id.clone(), config()).unwrap();
    tokio::spawn(client_loop.run());
    let mut incoming = server.streams().accept(RAW).unwrap();
    let server_frames = frames.clone();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let f = server_frames.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 200];
                if s.read_exact(&mut req).await.is_ok() {
                    let _ = s.write_all(&f).await;
                    let _ = s.close().await;
                }
            });
        }
    });
    let mut server_addr = None;
    while server_addr.is_none() {
        server_addr = server.listen_addrs().await.unwrap().into_iter().next();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.dial(server_addr.unwrap()).await.unwrap();
    let t = Instant::now();
    for _ in 0..ROUNDS {
        let mut s = client.open_stream(server.peer_id(), RAW).await.unwrap();
        s.write_all(&request).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
    }
    let p2p_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);

    // The inference protocol end to end: the same token stream plus the receipt exchange
    // (propose, check, co-sign, voucher, check back, store in memory on both sides, ack).
    let (ps, cs) = (Arc::new(MemStore::new()), Arc::new(MemStore::new()));
    let state = ChannelState::open(
        ChannelParams {
            domain: Domain { chain_id: 1, verifying_contract: Default::default() },
            id: ChannelId::from([9; 32]),
            payer: client_id.address(),
            provider: node.address(),
            payer_key: client_id.public_key(),
            provider_key: node.public_key(),
        },
        Wei(u128::MAX / 4),
    );
    ps.put_channel(&state).unwrap();
    cs.put_channel(&state).unwrap();
    let offer = Offer {
        model: ModelId::from([5; 32]),
        name: "bench".into(),
        price: Price { per_1k_input: Wei(1000), per_1k_output: Wei(2000) },
        context_length: 4096,
        decode_tokens_per_s: 1000,
        ttft_ms: 1,
        generator: Arc::new(Fixed),
        datanet: None,
    };
    let provider = Provider::new(
        node.clone(),
        ps,
        vec![offer],
        Limits { exposure_limit: Wei(u128::MAX / 8), ..Limits::default() },
    );
    tokio::spawn(provider.serve(server.clone()));
    let payer = Payer::new(client_id, cs, Duration::from_secs(10));
    let mut advert = None;
    while advert.is_none() {
        advert = client.market().await.unwrap().all(attrinet_p2p::unix_now()).into_iter().next();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let advert = advert.unwrap();
    let channel = payer.channel_with(&advert).unwrap().unwrap();
    let ask = Ask {
        model: "bench".into(),
        prompt: Prompt::Text("x".repeat(190)),
        max_tokens: TOKENS,
        sampling: Sampling::default(),
        max_cost: None,
        stop: Vec::new(),
    };
    let t = Instant::now();
    for _ in 0..ROUNDS {
        payer.infer_with(&client, &advert, channel.clone(), &ask, &mut |_| {}).await.unwrap();
    }
    let full_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);

    // The same with a single token, against a raw stream carrying a single token frame:
    // what remains is the receipt exchange (two more messages each way, signatures,
    // EIP-712 hashing, Merkle-sum root, both stores' checks).
    let one = Ask { max_tokens: 1, ..ask.clone() };
    let t = Instant::now();
    for _ in 0..ROUNDS {
        payer.infer_with(&client, &advert, channel.clone(), &one, &mut |_| {}).await.unwrap();
    }
    let one_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    let frame_len = frames.len() / TOKENS as usize;
    let t = Instant::now();
    for _ in 0..ROUNDS {
        let mut s = client.open_stream(server.peer_id(), RAW).await.unwrap();
        s.write_all(&request).await.unwrap();
        // The raw server writes all frames; read one and drop the stream.
        s.read_exact(&mut buf[..frame_len]).await.unwrap();
    }
    let raw_one_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);

    println!("{TOKENS} tokens per request ({} bytes of frames), {ROUNDS} sequential requests, loopback", frames.len());
    println!("plain tokio TCP (one socket)      {tcp_us:>9.1} µs/request");
    println!("libp2p stream (new stream each)    {p2p_us:>9.1} µs/request   ratio to TCP {:.2}", p2p_us / tcp_us);
    println!("inference protocol with receipt   {full_us:>9.1} µs/request   ratio to TCP {:.2}", full_us / tcp_us);
    println!(
        "per-token framing (a flushed frame per token) + receipt: {:.1} µs/request over the raw stream",
        full_us - p2p_us
    );
    println!("1-token request: protocol with receipt {one_us:.1} µs, raw stream {raw_one_us:.1} µs");
    println!("receipt co-signing overhead: {:.1} µs/request", one_us - raw_one_us);
}
