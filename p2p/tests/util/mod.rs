//! Test nodes on loopback, a deterministic stand-in engine, and bounded waits.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attrinet_market::{
    Admission, ChannelId, ChannelParams, ChannelState, Domain, Identity, MemStore, ModelAdvert, ModelId, PayerChannel,
    Price, ProviderChannel, Quote, Seq, Store, Usage, Wei, encode, request_hash, response_hash,
};
use attrinet_p2p::{
    Ask, Client, ClientMsg, ErrorCode, Generated, Generator, INFER_PROTOCOL, InferError, InferRequest, Limits,
    Multiaddr, NetConfig, Offer, Payer, Prompt, Provider, Sampling, ServerMsg, read_msg, write_msg,
};
use futures::StreamExt;
use tokio::task::JoinHandle;

pub fn model(i: u8) -> ModelId {
    ModelId::from([i; 32])
}

/// A prompt the test engine cannot take (as a chat template that raises would).
pub const UNUSABLE_PROMPT: &str = "unusable-prompt";
/// A prompt on which the test engine fails after its first token.
pub const ENGINE_FAILS: &str = "engine-fails";
/// A prompt containing this is counted as 1,500 input tokens: a provider billing input it
/// did not get.
pub const INFLATED_INPUT: &str = "inflated-input";
/// A prompt containing this is counted as the most its bytes allow
/// ([`Prompt::max_input_tokens`]): inflated, but within what a client without the model's
/// tokenizer can check.
pub const INFLATED_WITHIN_BOUND: &str = "inflated-within-bound";

/// A prompt containing this is counted only once the test releases the tokenizer
/// ([`TestEngine::release_tokenizer`]): a tokenizer or chat template that takes its time.
pub const SLOW_TOKENIZER: &str = "slow-tokenizer";

/// Stands in for a model in these tests only: the tokens are a function of the prompt, each
/// takes `delay_ms`, and it records how many generations ever ran at once.
#[derive(Debug, Default)]
pub struct TestEngine {
    delay_ms: u64,
    running: AtomicUsize,
    pub peak: AtomicUsize,
    /// Tokens handed out, over all generations.
    pub generated: AtomicUsize,
    /// Whether [`SLOW_TOKENIZER`] prompts are held, and how many are being counted.
    tokenizer: std::sync::Mutex<(bool, usize)>,
    tokenizer_moved: std::sync::Condvar,
}

impl TestEngine {
    pub fn new(delay_ms: u64) -> Arc<TestEngine> {
        Arc::new(TestEngine { delay_ms, ..Default::default() })
    }

    /// Holds [`SLOW_TOKENIZER`] prompts in the tokenizer until released.
    pub fn hold_tokenizer(&self) {
        self.tokenizer.lock().unwrap().0 = true;
    }

    pub fn release_tokenizer(&self) {
        self.tokenizer.lock().unwrap().0 = false;
        self.tokenizer_moved.notify_all();
    }

    /// [`SLOW_TOKENIZER`] prompts in the tokenizer now.
    pub fn tokenizing(&self) -> usize {
        self.tokenizer.lock().unwrap().1
    }

    fn says(prompt: &Prompt, what: &str) -> bool {
        match prompt {
            Prompt::Text(t) => t.contains(what),
            Prompt::Chat(m) => m.iter().any(|m| m.content.contains(what)),
        }
    }

    /// What this "model's tokenizer" counts: the words, and two per chat message.
    pub fn honest_count(prompt: &Prompt) -> u32 {
        match prompt {
            Prompt::Text(t) => t.split_whitespace().count() as u32,
            Prompt::Chat(m) => m.iter().map(|m| m.content.split_whitespace().count() as u32 + 2).sum(),
        }
    }

    /// The text the engine streams for token `id`.
    pub fn text_of(id: u32) -> String {
        format!(" t{id}")
    }

    pub fn expected(prompt: &Prompt, n: u32) -> Vec<u32> {
        let seed = request_hash(&encode(prompt));
        (0..n).map(|i| u32::from(seed[(i % 32) as usize]) * 1000 + i).collect()
    }
}

impl Generator for TestEngine {
    fn count_tokens(&self, prompt: &Prompt) -> Result<u32, attrinet_p2p::GenerateError> {
        if TestEngine::says(prompt, UNUSABLE_PROMPT) {
            return Err(attrinet_p2p::GenerateError::Prompt("the template refuses this prompt".into()));
        }
        if TestEngine::says(prompt, INFLATED_INPUT) {
            return Ok(1500);
        }
        if TestEngine::says(prompt, INFLATED_WITHIN_BOUND) {
            return Ok(prompt.max_input_tokens());
        }
        if TestEngine::says(prompt, SLOW_TOKENIZER) {
            // Blocks the thread it runs on, as a slow tokenizer does (bounded, so a test that
            // fails cannot hang here).
            let mut state = self.tokenizer.lock().unwrap();
            state.1 += 1;
            self.tokenizer_moved.notify_all();
            let (mut state, _) =
                self.tokenizer_moved.wait_timeout_while(state, Duration::from_secs(30), |s| s.0).unwrap();
            state.1 -= 1;
        }
        Ok(TestEngine::honest_count(prompt))
    }

    fn generate(
        &self,
        prompt: &Prompt,
        max_tokens: u32,
        _: &Sampling,
        on_token: &mut dyn FnMut(Generated) -> bool,
    ) -> Result<(), attrinet_p2p::GenerateError> {
        if TestEngine::says(prompt, ENGINE_FAILS) {
            on_token(Generated { id: 1, text: " t1".into(), logprobs: None });
            return Err(attrinet_p2p::GenerateError::Engine("device lost".into()));
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        for id in TestEngine::expected(prompt, max_tokens) {
            if self.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.delay_ms));
            }
            self.generated.fetch_add(1, Ordering::SeqCst);
            if !on_token(Generated { id, text: TestEngine::text_of(id), logprobs: None }) {
                break;
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

pub fn offer(model: ModelId, price_in: u128, price_out: u128, engine: Arc<TestEngine>) -> Offer {
    Offer {
        model,
        name: "test-model".into(),
        price: Price { per_1k_input: Wei(price_in), per_1k_output: Wei(price_out) },
        context_length: 2048,
        decode_tokens_per_s: 50,
        ttft_ms: 20,
        generator: engine,
        datanet: None,
    }
}

pub fn fast_config(ttl: Duration) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: Vec::new(),
        // Republish four times per lifetime so a slow scheduler never lets a live advert lapse.
        republish_every: Duration::from_secs(2).min(ttl / 4),
        advert_ttl: ttl,
        heartbeat: Duration::from_millis(300),
        nat: Default::default(),
        ..Default::default()
    }
}

/// The code of a provider's refusal (panics on any other failure).
pub fn remote_code(e: InferError) -> ErrorCode {
    match e {
        InferError::Remote(r) => r.code,
        other => panic!("expected the provider's refusal, got {other}"),
    }
}

pub fn ask(model: &str, prompt: &str, max_tokens: u32) -> Ask {
    Ask {
        model: model.into(),
        prompt: Prompt::Text(prompt.into()),
        max_tokens,
        sampling: Sampling::default(),
        max_cost: None,
        stop: vec![],
    }
}

/// Polls `check` every 100 ms; panics naming `what` if it is not true within `bound`.
pub async fn wait_for<F: Future<Output = bool>>(bound: Duration, what: &str, mut check: impl FnMut() -> F) {
    let polled = tokio::time::timeout(bound, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if polled.is_err() {
        panic!("timed out after {bound:?} waiting until {what}");
    }
}

/// Aborts a node's tasks: what a crash looks like to its peers.
#[derive(Clone)]
pub struct KillSwitch(Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>);

impl KillSwitch {
    pub fn kill(&self) {
        for h in self.0.lock().unwrap().iter() {
            h.abort();
        }
    }
}

pub struct Node {
    pub identity: Identity,
    pub client: Client,
    pub store: Arc<MemStore>,
    pub payer: Payer,
    pub engine: Option<Arc<TestEngine>>,
    pub provider: Option<Provider>,
    provider_task: Option<tokio::task::AbortHandle>,
    tasks: KillSwitch,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.tasks.kill();
    }
}

impl Node {
    pub async fn start(i: u8, bootstrap: &[Multiaddr], config: NetConfig) -> Node {
        Node::start_with(i, bootstrap, config).await
    }

    pub async fn start_with(i: u8, bootstrap: &[Multiaddr], config: NetConfig) -> Node {
        Node::start_on(i, bootstrap, config, attrinet_p2p::Transport::Network).await
    }

    /// A node on the given transports.
    pub async fn start_on(
        i: u8,
        bootstrap: &[Multiaddr],
        mut config: NetConfig,
        transport: attrinet_p2p::Transport,
    ) -> Node {
        let identity = Identity::from_secrets([i.wrapping_add(1); 32], [i.wrapping_add(1) % 0x7f + 1; 32]).unwrap();
        config.bootstrap = bootstrap.to_vec();
        let (client, event_loop) =
            attrinet_p2p::new_with_transport(identity.clone(), config, transport).expect("network starts");
        let handle = tokio::spawn(event_loop.run());
        let store = Arc::new(MemStore::new());
        let payer = Payer::new(identity.clone(), store.clone(), Duration::from_secs(10));
        Node {
            identity,
            client,
            store,
            payer,
            engine: None,
            provider: None,
            provider_task: None,
            tasks: KillSwitch(Arc::new(std::sync::Mutex::new(vec![handle.abort_handle()]))),
        }
    }

    /// Serves `offers`; called again, it stops the provider it started before (a restart
    /// over the same store).
    pub fn serve(&mut self, offers: Vec<Offer>, limits: Limits) {
        self.engine = None;
        if let Some(previous) = self.provider_task.take() {
            previous.abort();
            // Until the old task is dropped it holds the protocol's acceptor, and the new
            // provider's `accept` would be refused (leaving nobody to answer).
            while !previous.is_finished() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let provider = Provider::new(self.identity.clone(), self.store.clone(), offers, limits);
        self.provider = Some(provider.clone());
        let h: JoinHandle<_> = tokio::spawn(provider.serve(self.client.clone()));
        self.provider_task = Some(h.abort_handle());
        self.tasks.0.lock().unwrap().push(h.abort_handle());
    }

    /// Serves with `lookup` telling of channels the store does not hold.
    pub fn serve_with_lookup(
        &mut self,
        offers: Vec<Offer>,
        limits: Limits,
        lookup: Arc<dyn attrinet_p2p::ChannelLookup>,
    ) {
        let provider = Provider::new(self.identity.clone(), self.store.clone(), offers, limits).with_lookup(lookup);
        self.provider = Some(provider.clone());
        let h: JoinHandle<_> = tokio::spawn(provider.serve(self.client.clone()));
        self.tasks.0.lock().unwrap().push(h.abort_handle());
    }

    pub fn kill_switch(&self) -> KillSwitch {
        self.tasks.clone()
    }

    pub async fn tcp_addr(&self) -> Multiaddr {
        self.addr_with("/tcp/").await
    }

    /// The first listen address containing `part`, once the listener is up.
    pub async fn addr_with(&self, part: &str) -> Multiaddr {
        for _ in 0..100 {
            if let Some(a) =
                self.client.listen_addrs().await.unwrap().into_iter().find(|a| a.to_string().contains(part))
            {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node never listened");
    }

    /// Publishes raw advert bytes, retrying while gossipsub has no peer to send them to.
    pub async fn publish_until_seen(&self, _to: &Node, bytes: Vec<u8>) {
        for _ in 0..100 {
            if self.client.publish_raw_advert(bytes.clone()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not publish");
    }

    pub async fn channel_with(&self, advert: &ModelAdvert) -> Arc<tokio::sync::Mutex<PayerChannel>> {
        self.payer.channel_with(advert).unwrap().expect("channel open")
    }
}

pub const DOMAIN: Domain = Domain { chain_id: 31337, verifying_contract: alloy_primitives::Address::ZERO };

/// Opens a channel between `client` and `provider` in both stores (what the chain
/// follower will do when it sees the channel opened on chain).
pub fn open_channel(client: &Node, provider: &Node, deposit: Wei) -> ChannelId {
    let state = channel_state(client, provider, deposit);
    client.store.put_channel(&state).unwrap();
    provider.store.put_channel(&state).unwrap();
    state.params.id
}

/// The state of a new channel from `client` to `provider`.
pub fn channel_state(client: &Node, provider: &Node, deposit: Wei) -> ChannelState {
    let id = ChannelId(request_hash(&[client.identity.public_key().0, provider.identity.public_key().0].concat()));
    ChannelState::open(
        ChannelParams {
            domain: DOMAIN,
            id,
            payer: client.identity.address(),
            provider: provider.identity.address(),
            payer_key: client.identity.public_key(),
            provider_key: provider.identity.public_key(),
        },
        deposit,
    )
}

/// What a chain would answer a provider's lookup: whatever the test put there.
#[derive(Default)]
pub struct TableLookup(pub std::sync::Mutex<std::collections::HashMap<ChannelId, ChannelState>>);

impl attrinet_p2p::ChannelLookup for TableLookup {
    fn lookup(
        &self,
        id: ChannelId,
    ) -> futures::future::BoxFuture<'static, Result<Option<ChannelState>, attrinet_p2p::LookupError>> {
        let found = self.0.lock().unwrap().get(&id).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// `n` providers of "test-model" (provider 0 cheapest) and a client with a channel to each,
/// once the client sees every advert.
pub async fn market_of(n: u8, limits: Limits, delay_ms: u64) -> (Node, Vec<Node>) {
    let mut providers = Vec::new();
    let mut boot = Vec::new();
    for i in 0..n {
        let mut p = Node::start(10 + i, &boot, fast_config(Duration::from_secs(60))).await;
        let engine = TestEngine::new(delay_ms);
        let price = 1000 * (u128::from(i) + 1);
        p.serve(vec![offer(model(1), price, 2 * price, engine.clone())], limits);
        p.engine = Some(engine);
        if boot.is_empty() {
            boot.push(p.tcp_addr().await);
        }
        providers.push(p);
    }
    let client = Node::start(50, &boot, fast_config(Duration::from_secs(60))).await;
    for p in &providers {
        open_channel(&client, p, Wei(10u128.pow(18)));
    }
    let c = client.client.clone();
    wait_for(Duration::from_secs(30), "the client sees every provider's advert", || {
        let c = c.clone();
        async move { c.market().await.unwrap().all(attrinet_p2p::unix_now()).len() == n as usize }
    })
    .await;
    (client, providers)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    Value,
    Seq,
    Replay,
    Weights,
    /// Streams every token, past the client's stop sequence "xx" (each token is "x").
    PastStop,
}

/// The advert a rogue node `rogue` would publish for "test-model" (never published: the
/// client is handed it).
pub fn rogue_advert(rogue: &Node) -> ModelAdvert {
    ModelAdvert {
        node_key: rogue.identity.public_key(),
        evm_address: rogue.identity.address(),
        model: model(1),
        model_name: "test-model".into(),
        price: Price { per_1k_input: Wei(1000), per_1k_output: Wei(2000) },
        context_length: 2048,
        free_capacity: 1,
        decode_tokens_per_s: 50,
        ttft_ms: 20,
        cold_start_ms: 0,
        expires_at: u64::MAX,
        seq: 1,
        addrs: vec![],
    }
}

/// A rogue provider node (`i`) with a channel from `client`, connected to it.
pub async fn rogue_node(client: &Node, i: u8) -> (Node, ModelAdvert) {
    let rogue = Node::start(i, &[], fast_config(Duration::from_secs(60))).await;
    open_channel(client, &rogue, Wei(10u128.pow(18)));
    client.client.dial(rogue.tcp_addr().await).await.unwrap();
    let advert = rogue_advert(&rogue);
    (rogue, advert)
}

/// Answers the next `n` inference streams to `rogue` with `script`, which writes whatever
/// it likes; a write failing (the client gone) ends the script's round.
pub fn rogue_script<F, Fut>(rogue: &Node, n: usize, script: F) -> JoinHandle<()>
where
    F: Fn(InferRequest, libp2p::Stream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut incoming = rogue.client.streams().accept(INFER_PROTOCOL).unwrap();
    tokio::spawn(async move {
        for _ in 0..n {
            let (_, mut s) = incoming.next().await.unwrap();
            let req: InferRequest = read_msg(&mut s, Duration::from_secs(5)).await.unwrap();
            script(req, s).await;
        }
    })
}

/// A provider that serves one honest request (so there is a receipt to replay), then one
/// request per tamper with a dishonest receipt; returns what the honest client said of each.
pub async fn rogue_rounds(client: &Node, tampers: &[Tamper]) -> Vec<InferError> {
    let (rogue, advert) = rogue_node(client, 60).await;
    let mut incoming = rogue.client.streams().accept(INFER_PROTOCOL).unwrap();
    let (store, me) = (rogue.store.clone(), rogue.identity.clone());
    let plan: Vec<Option<Tamper>> = std::iter::once(None).chain(tampers.iter().copied().map(Some)).collect();
    let server = tokio::spawn(async move {
        for tamper in plan {
            let (_, mut s) = incoming.next().await.unwrap();
            let req: InferRequest = read_msg(&mut s, Duration::from_secs(5)).await.unwrap();
            let state = store.channel(&req.channel).unwrap().unwrap();
            let receipts = store.receipts_after(&req.channel, Seq::ZERO).unwrap();
            let mut ch = ProviderChannel::restore(state, &receipts, Wei(u128::MAX));
            write_msg(&mut s, &ServerMsg::Started { input_tokens: 1 }).await.unwrap();
            let tokens = TestEngine::expected(&req.prompt, req.max_tokens);
            for id in &tokens {
                write_msg(&mut s, &ServerMsg::Token { id: *id, text: "x".into() }).await.unwrap();
            }
            if tamper == Some(Tamper::PastStop) {
                // The client hangs up at the token past its stop: no receipt to propose.
                continue;
            }
            let quote = Quote { max_input_tokens: 1, ..req.quote };
            let r = ch.reserve(quote, Admission::of(&quote)).unwrap();
            let usage = Usage {
                request_hash: request_hash(&encode(&req)),
                response_hash: response_hash(&tokens),
                input_tokens: 1,
                output_tokens: tokens.len() as u32,
                attribution_root: Default::default(),
            };
            let (honest, start) = ch.propose(r, &usage, attrinet_p2p::unix_now(), &me).unwrap();
            let proposal = match tamper {
                None => honest,
                Some(Tamper::Value) => {
                    let mut r = honest.receipt;
                    r.value = Wei(r.value.0 + 1);
                    r.cumulative = Wei(r.cumulative.0 + 1);
                    r.propose(&me.ed25519)
                }
                Some(Tamper::Seq) => {
                    let mut r = honest.receipt;
                    r.seq = Seq(r.seq.0 + 1);
                    r.propose(&me.ed25519)
                }
                Some(Tamper::Replay) => receipts[0].receipt.proposal(),
                Some(Tamper::Weights | Tamper::PastStop) => honest,
            };
            let weights = match tamper {
                // Weights that are not the ones the receipt commits to (zero root).
                Some(Tamper::Weights) => attrinet_market::Weights::new(vec![attrinet_market::Weight {
                    contributor: alloy_primitives::Address::repeat_byte(0xee),
                    ppm: attrinet_market::PPM_WHOLE,
                }])
                .unwrap(),
                _ => attrinet_market::Weights::default(),
            };
            write_msg(&mut s, &ServerMsg::Propose { proposal, batch_start: start, weights }).await.unwrap();
            match read_msg::<ClientMsg>(&mut s, Duration::from_secs(5)).await {
                Ok(ClientMsg::Pay { receipt, voucher }) => {
                    ch.check_cosigned(&receipt, &voucher).unwrap();
                    let stored = store.record_receipt(&receipt, &voucher).unwrap();
                    ch.commit(&stored, &receipt);
                    write_msg(&mut s, &ServerMsg::Ack { seq: receipt.receipt.seq }).await.unwrap();
                }
                Ok(ClientMsg::Refuse { .. }) | Err(_) => {}
            }
        }
    });
    let channel = client.channel_with(&advert).await;
    let first = client
        .payer
        .infer_with(&client.client, &advert, channel.clone(), &ask("test-model", "honest one", 3), &mut |_| {})
        .await;
    assert!(first.is_ok(), "the honest round works: {first:?}");
    let mut errors = Vec::new();
    for tamper in tampers {
        let mut again = ask("test-model", "again", 3);
        if *tamper == Tamper::PastStop {
            again.stop = vec!["xx".into()];
        }
        let r = client.payer.infer_with(&client.client, &advert, channel.clone(), &again, &mut |_| {}).await;
        errors.push(r.expect_err("a dishonest receipt is refused"));
    }
    server.await.unwrap();
    // Only the honest receipt is stored, on both sides.
    let id = channel.lock().await.state().params.id;
    assert_eq!(client.store.channel(&id).unwrap().unwrap().last_seq, Seq(1));
    assert_eq!(rogue.store.channel(&id).unwrap().unwrap().last_seq, Seq(1));
    errors
}

/// Sends a small request on the client's channel with the first advertised provider,
/// by hand (no payer logic), and returns the channel and the open stream.
pub async fn send_raw_request(client: &Node, provider: &Node) -> (attrinet_market::ChannelId, libp2p::Stream) {
    send_raw_request_with(client, provider, |_| {}).await
}

/// The provider's first answer to a request that `edit` changed before it was sent.
pub async fn first_reply_to(client: &Node, provider: &Node, edit: impl FnOnce(&mut InferRequest)) -> ServerMsg {
    let (_, mut s) = send_raw_request_with(client, provider, edit).await;
    read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap()
}

/// [`send_raw_request`], with the request changed by `edit` before it is sent.
pub async fn send_raw_request_with(
    client: &Node,
    provider: &Node,
    edit: impl FnOnce(&mut InferRequest),
) -> (attrinet_market::ChannelId, libp2p::Stream) {
    let advert = client.client.market().await.unwrap().all(attrinet_p2p::unix_now()).remove(0);
    let channel = client.channel_with(&advert).await;
    let id = channel.lock().await.state().params.id;
    let req = InferRequest {
        model: advert.model,
        prompt: Prompt::Text("pay me".into()),
        max_tokens: 3,
        sampling: Sampling::default(),
        stop: vec![],
        channel: id,
        quote: Quote { model: advert.model, price: advert.price, max_input_tokens: 2048, max_output_tokens: 3 },
        resync: None,
    };
    let mut req = req;
    edit(&mut req);
    let peer = attrinet_p2p::key_peer(&provider.identity.public_key()).unwrap();
    let mut s = client.client.open_stream(peer, INFER_PROTOCOL).await.unwrap();
    write_msg(&mut s, &req).await.unwrap();
    (id, s)
}

/// Pays the real provider with a co-signed receipt tampered after signing; returns the
/// provider's error code.
pub async fn rogue_payment(client: &Node, provider: &Node) -> ErrorCode {
    let (id, mut s) = send_raw_request(client, provider).await;
    loop {
        match read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Propose { proposal, .. } => {
                let mut signed = proposal.cosign(&client.identity.ed25519);
                signed.receipt.value = Wei(signed.receipt.value.0.saturating_sub(1));
                let voucher = attrinet_market::Voucher {
                    domain: DOMAIN,
                    channel: id,
                    seq: signed.receipt.seq,
                    cumulative: signed.receipt.cumulative,
                    receipts_root: Default::default(),
                }
                .sign(&client.identity.evm);
                write_msg(&mut s, &ClientMsg::Pay { receipt: signed, voucher }).await.unwrap();
            }
            ServerMsg::Error(e) => return e.code,
            ServerMsg::Ack { .. } => panic!("a tampered payment was acknowledged"),
            _ => {}
        }
    }
}

/// Sends a request to `provider` and, when the receipt is proposed, refuses to sign it.
/// Returns `Ok(())` if a receipt was proposed (and refused), or the provider's error code.
pub async fn refusing_round(client: &Node, provider: &Node) -> Result<(), ErrorCode> {
    let (_, mut s) = send_raw_request(client, provider).await;
    loop {
        match read_msg::<ServerMsg>(&mut s, Duration::from_secs(5)).await.unwrap() {
            ServerMsg::Propose { .. } => {
                write_msg(&mut s, &ClientMsg::Refuse { reason: "not paying".into() }).await.unwrap();
                return Ok(());
            }
            ServerMsg::Error(e) => return Err(e.code),
            _ => {}
        }
    }
}

/// The client holding the test model's "tokenizer": counts prompts as [`TestEngine`] does
/// when it is honest.
pub struct HonestCounter;

impl attrinet_p2p::PromptCounter for HonestCounter {
    fn count(&self, prompt: &Prompt) -> Result<u32, String> {
        Ok(TestEngine::honest_count(prompt))
    }
}

/// Fetch timeouts of `secs` per message and the default deadline.
pub fn idle(secs: u64) -> attrinet_p2p::FetchTimeouts {
    attrinet_p2p::FetchTimeouts { idle: Duration::from_secs(secs), ..Default::default() }
}

/// Appends `n` receipts co-signed by `payer` and `provider` to channel `id` in the
/// provider's store, each a copy of its newest one with the next seq (what `n` honest
/// queries would leave there, made without the network).
pub fn add_receipts(payer: &Node, provider: &Node, id: ChannelId, n: u64) {
    let store = &provider.store;
    let last = store.channel(&id).unwrap().unwrap().last_seq;
    let mut r = store.receipt(&id, last).unwrap().expect("a receipt to copy").receipt.receipt;
    for _ in 0..n {
        r.seq = Seq(r.seq.0 + 1);
        r.cumulative = Wei(r.cumulative.0 + r.value.0);
        let signed = r.clone().propose(&provider.identity.ed25519).cosign(&payer.identity.ed25519);
        let voucher = attrinet_market::Voucher {
            domain: r.domain,
            channel: id,
            seq: r.seq,
            cumulative: r.cumulative,
            receipts_root: Default::default(),
        }
        .sign(&payer.identity.evm);
        store.record_receipt(&signed, &voucher).unwrap();
    }
}
