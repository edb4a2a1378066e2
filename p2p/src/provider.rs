//! The serving side of `/attrinet/infer/1`: admit, generate and stream, then exchange the
//! receipt, persisting it before acknowledging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use attrinet_market::{
    Admission, ChannelId, ChannelState, Identity, LedgerError, ModelAdvert, ModelId, Price, ProviderChannel, Store,
    Usage, Wei, encode, request_hash, response_hash,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::network::{Client, OfferTemplate, peer_key, unix_now};
use crate::slots::{Slot, Slots};
use crate::wire::{
    ClientMsg, ErrorCode, ErrorReply, INFER_PROTOCOL, InferRequest, Logprobs, MAX_TOP_LOGPROBS, Prompt, Sampling,
    ServerMsg, WireError, check_stops, read_msg, stop_reached, write_msg,
};

/// The error of a component plugged into this crate (an engine, a chain client): its type
/// is the plug-in's, kept whole as the source so that the chain of causes survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`Generator`] failed. The two are told apart because the client is told
/// differently: a prompt the model cannot take is the request's fault
/// ([`ErrorCode::BadRequest`]), an engine failure is the node's ([`ErrorCode::Engine`]).
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt cannot be rendered with the model's chat template or tokenised.
    #[error("the prompt cannot be used with this model: {0}")]
    Prompt(#[source] BoxError),
    /// The engine failed while generating.
    #[error("the engine failed: {0}")]
    Engine(#[source] BoxError),
}

/// Why a [`ChannelLookup`] could not answer (a channel that does not exist is not an
/// error: the lookup answers `None`).
#[derive(Debug, thiserror::Error)]
#[error("channel lookup failed: {0}")]
pub struct LookupError(#[source] pub BoxError);

/// A token a [`Generator`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Its log-probabilities, when the request's sampling asked for them.
    pub logprobs: Option<Logprobs>,
}

/// Something that generates tokens: the node plugs in a compute engine; tests plug in a
/// deterministic stand-in.
pub trait Generator: Send + Sync + 'static {
    /// Prompt tokens the prompt counts (with the chat template applied, for chats).
    fn count_tokens(&self, prompt: &Prompt) -> Result<u32, GenerateError>;

    /// Generates at most `max_tokens`, calling `on_token` with each as it comes (with its
    /// log-probabilities when `sampling.logprobs` asks); stops early when `on_token`
    /// returns `false`. Runs on a blocking thread.
    fn generate(
        &self,
        prompt: &Prompt,
        max_tokens: u32,
        sampling: &Sampling,
        on_token: &mut dyn FnMut(Generated) -> bool,
    ) -> Result<(), GenerateError>;

    /// Milliseconds to load the model before it can generate: 0 while it is loaded (what
    /// adverts say, so that clients count a cold start).
    fn cold_start_ms(&self) -> u32 {
        0
    }
}

/// One model this node serves.
#[derive(Clone)]
pub struct Offer {
    /// Model id (SHA-256 of the file).
    pub model: ModelId,
    /// Name shown to clients.
    pub name: String,
    /// Price per 1,000 input / output tokens.
    pub price: Price,
    /// Context length.
    pub context_length: u32,
    /// Measured decode speed, tokens/s (advertised).
    pub decode_tokens_per_s: u32,
    /// Measured time to first token, ms (advertised).
    pub ttft_ms: u32,
    /// The engine.
    pub generator: Arc<dyn Generator>,
    /// The model's datanet: with one, every output is attributed to its contributors and
    /// the receipt commits to the weights.
    pub datanet: Option<Arc<attrinet_market::Datanet>>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("model", &self.model)
            .field("name", &self.name)
            .field("price", &self.price)
            .finish()
    }
}

/// Longest a provider's adverts lag behind a change of its free capacity.
pub const CAPACITY_REFRESH: Duration = Duration::from_secs(2);

/// What a provider enforces on each request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest prompt, in bytes of text.
    pub max_prompt_bytes: usize,
    /// Most tokens one request may generate.
    pub max_tokens: u32,
    /// Requests generating at once, over all peers.
    pub capacity: usize,
    /// Admitted requests that may wait, first come first served, for a generation slot
    /// when all are taken; past that a request is answered `Busy`.
    pub queue: usize,
    /// Requests in flight from one peer, generating or queued.
    pub max_per_peer: u32,
    /// Longest wait for the client's next message.
    pub idle_timeout: Duration,
    /// Longest a whole request may take.
    pub total_timeout: Duration,
    /// Most value served to one channel without a co-signed receipt.
    pub exposure_limit: Wei,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_bytes: 32 * 1024,
            max_tokens: 2048,
            capacity: 4,
            queue: 64,
            // Half the queue: one peer (a gateway with many users of its own) can keep a
            // provider busy, and another still finds room.
            max_per_peer: 32,
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
            exposure_limit: Wei(10u128.pow(16)),
        }
    }
}

/// Where a provider learns of a channel it has not stored yet, and of a channel's new
/// deposit: in a node, the chain. A client opens a channel on chain and queries at once;
/// the provider looks the channel up on the first request instead of waiting for a
/// follower to catch up.
pub trait ChannelLookup: Send + Sync + 'static {
    /// The channel's parameters and current deposit, or `None` when there is no such open
    /// channel. The provider checks that it names this provider and its key.
    fn lookup(&self, id: ChannelId) -> BoxFuture<'static, Result<Option<ChannelState>, LookupError>>;
}

struct Inner {
    identity: Identity,
    lookup: OnceLock<Arc<dyn ChannelLookup>>,
    store: Arc<dyn Store>,
    offers: HashMap<ModelId, Offer>,
    /// Offers no longer served, with why (`Provider::withdraw`).
    withdrawn: Mutex<HashMap<ModelId, String>>,
    limits: Limits,
    /// Generation slots: a FIFO queue in which a peer past its fair share gives way.
    slots: Slots,
    /// Requests waiting for a slot.
    queued: AtomicUsize,
    per_peer: Mutex<HashMap<PeerId, u32>>,
    channels: Mutex<HashMap<ChannelId, Arc<tokio::sync::Mutex<ProviderChannel>>>>,
    /// Prompts being counted: at most [`TOKENISERS`] at once, each on a blocking thread.
    tokenisers: Arc<tokio::sync::Semaphore>,
}

/// Prompts counted at once. Counting runs the model's tokenizer and chat template over up to
/// `Limits::max_prompt_bytes`: milliseconds to, for a hostile prompt and template, much
/// longer. On the async threads it would stall every stream of this node; on the blocking
/// pool without a bound, a burst of large prompts would take every core.
pub const TOKENISERS: usize = 4;

impl Inner {
    /// Adds `value`, served to `payer` and not paid, to the payer's total in the store, which
    /// every channel of that payer counts against the exposure limit, after restarts too.
    fn write_off(&self, payer: alloy_primitives::Address, value: Wei) {
        if value == Wei::ZERO {
            return;
        }
        if let Err(e) = self.store.add_written_off(&payer, value) {
            // The channel's own ledger still counts it until a restart.
            warn!(target: "p2p::provider", %payer, %value, %e, "could not store a write-off");
        }
    }

    /// What `payer` left unpaid outside the ledger `ch`: the store's total for it, less what
    /// `ch` itself wrote off since it was restored (counted by `ch` already).
    fn unpaid_elsewhere(&self, ch: &ProviderChannel) -> Result<Wei, ErrorReply> {
        let payer = ch.state().params.payer;
        let total = self.store.written_off(&payer).map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
        Ok(Wei(total.0.saturating_sub(ch.written_off().0)))
    }
}

/// The provider: serves inference requests arriving on the network.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("offers", &self.inner.offers.len()).finish()
    }
}

/// What the client is told of a generator's failure.
fn generate_error_code(e: &GenerateError) -> ErrorCode {
    match e {
        GenerateError::Prompt(_) => ErrorCode::BadRequest,
        GenerateError::Engine(_) => ErrorCode::Engine,
    }
}

impl Provider {
    /// Counts `prompt`'s tokens off the async threads, at most [`TOKENISERS`] at once.
    async fn count_tokens(&self, offer: &Offer, prompt: &Prompt) -> Result<u32, ErrorReply> {
        let stopping = |_| reply(ErrorCode::Internal, "the provider is stopping");
        let _permit = self.inner.tokenisers.clone().acquire_owned().await.map_err(stopping)?;
        let (generator, prompt) = (offer.generator.clone(), prompt.clone());
        tokio::task::spawn_blocking(move || generator.count_tokens(&prompt))
            .await
            .map_err(|e| reply(ErrorCode::Internal, format!("counting the prompt failed: {e}")))?
            .map_err(|e| reply(generate_error_code(&e), e.to_string()))
    }
}

/// A failed request, as told to the client.
fn reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply { code, message: message.into() }
}

/// A channel's ledger through a receipt's payment phase. Dropped, by an error or by the
/// total timeout dropping the exchange halfway, it writes off a proposal still waiting for
/// the payer: its value keeps counting as unpaid exposure and its seq is reused, so the
/// channel is never left refusing every later receipt (which served those requests free).
/// After a payment is committed nothing is pending and the write-off does nothing.
/// What is written off is also added to the payer's total in the store (`Inner::write_off`).
struct Paying<'a> {
    ch: tokio::sync::MutexGuard<'a, ProviderChannel>,
    inner: &'a Inner,
}

impl Drop for Paying<'_> {
    fn drop(&mut self) {
        // Only an overflow of the written-off total fails, and then nothing changed.
        if let Ok(value) = self.ch.abandon() {
            let payer = self.ch.state().params.payer;
            self.inner.write_off(payer, value);
        }
    }
}

impl std::ops::Deref for Paying<'_> {
    type Target = ProviderChannel;
    fn deref(&self) -> &ProviderChannel {
        &self.ch
    }
}

impl std::ops::DerefMut for Paying<'_> {
    fn deref_mut(&mut self) -> &mut ProviderChannel {
        &mut self.ch
    }
}

/// Decrements a peer's in-flight count when a request ends, however it ends.
struct PeerSlot<'a> {
    map: &'a Mutex<HashMap<PeerId, u32>>,
    peer: PeerId,
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

impl Provider {
    /// A provider of `offers`, storing receipts in `store`.
    pub fn new(identity: Identity, store: Arc<dyn Store>, offers: Vec<Offer>, limits: Limits) -> Provider {
        Provider {
            inner: Arc::new(Inner {
                identity,
                lookup: OnceLock::new(),
                store,
                offers: offers.into_iter().map(|o| (o.model, o)).collect(),
                withdrawn: Mutex::new(HashMap::new()),
                slots: Slots::new(limits.capacity),
                queued: AtomicUsize::new(0),
                limits,
                per_peer: Mutex::new(HashMap::new()),
                channels: Mutex::new(HashMap::new()),
                tokenisers: Arc::new(tokio::sync::Semaphore::new(TOKENISERS)),
            }),
        }
    }

    /// Looks channels up with `lookup` when they are not in the store, and their deposit
    /// when a request would pass it. Set once, before serving; later calls are ignored.
    pub fn with_lookup(self, lookup: Arc<dyn ChannelLookup>) -> Provider {
        let _ = self.inner.lookup.set(lookup);
        self
    }

    /// Stops serving `model` for good (until restart), saying `why` to whoever asks for it;
    /// every other offer goes on. Its advert is republished with no free capacity, so that
    /// clients rank it out at once rather than when it expires. A model not offered here
    /// is not recorded.
    pub fn withdraw(&self, model: ModelId, why: impl Into<String>) {
        if self.inner.offers.contains_key(&model) {
            self.inner.withdrawn.lock().unwrap_or_else(|p| p.into_inner()).insert(model, why.into());
        }
    }

    /// Why `model` is no longer served, if it was withdrawn.
    pub fn withdrawn(&self, model: &ModelId) -> Option<String> {
        self.inner.withdrawn.lock().unwrap_or_else(|p| p.into_inner()).get(model).cloned()
    }

    /// The adverts for this provider's offers (seq and expiry are set when published).
    pub fn adverts(&self) -> Vec<OfferTemplate> {
        let me = &self.inner.identity;
        let withdrawn = self.inner.withdrawn.lock().unwrap_or_else(|p| p.into_inner());
        self.inner
            .offers
            .values()
            .map(|o| OfferTemplate {
                advert: ModelAdvert {
                    node_key: me.public_key(),
                    evm_address: me.address(),
                    model: o.model,
                    model_name: o.name.clone(),
                    price: o.price,
                    context_length: o.context_length,
                    free_capacity: if withdrawn.contains_key(&o.model) { 0 } else { self.free_capacity() },
                    decode_tokens_per_s: o.decode_tokens_per_s,
                    ttft_ms: o.ttft_ms,
                    cold_start_ms: o.generator.cold_start_ms(),
                    expires_at: 0,
                    seq: 0,
                    addrs: vec![],
                },
            })
            .collect()
    }

    /// Free generation slots plus free places in the queue: what adverts say, so that
    /// clients pass over a provider with none.
    pub fn free_capacity(&self) -> u32 {
        let (running, queued) = self.load();
        let l = &self.inner.limits;
        u32::try_from(l.capacity.saturating_sub(running).saturating_add(l.queue.saturating_sub(queued)))
            .unwrap_or(u32::MAX)
    }

    /// Requests generating and requests waiting for a slot, now.
    pub fn load(&self) -> (usize, usize) {
        (self.inner.slots.running(), self.inner.queued.load(Ordering::SeqCst))
    }

    /// Takes a generation slot: at once if one is free, else after the requests queued
    /// before this one (unless their peer holds its fair share, see [`Slots`]), telling the
    /// client its place while it waits (which also keeps its idle timeout from firing);
    /// `Busy` when the queue is full too.
    async fn take_slot(&self, peer: PeerId, stream: &mut Stream) -> Result<Slot, ErrorReply> {
        let limits = self.inner.limits;
        if let Some(slot) = self.inner.slots.try_take(peer) {
            return Ok(slot);
        }
        let queued = &self.inner.queued;
        let ahead = queued.fetch_add(1, Ordering::SeqCst);
        // Leaves the count right however this ends (the client gone, a write failed).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(queued);
        if ahead >= limits.queue {
            return Err(reply(
                ErrorCode::Busy,
                format!("all {} generation slots are busy and {} requests are queued", limits.capacity, limits.queue),
            ));
        }
        let mut acquire = self.inner.slots.wait(peer);
        let deadline = tokio::time::Instant::now() + limits.total_timeout;
        let every = limits.idle_timeout / 3;
        let mut position = ahead as u32 + 1;
        loop {
            match tokio::time::timeout(limits.idle_timeout, write_msg(stream, &ServerMsg::Queued { position })).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(reply(ErrorCode::Internal, format!("cannot tell the client its place: {e}"))),
                Err(_) => return Err(reply(ErrorCode::Timeout, "the client does not read its place in the queue")),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(reply(
                    ErrorCode::Busy,
                    format!("waited {:?} in the queue without a generation slot", limits.total_timeout),
                ));
            }
            tokio::select! {
                slot = &mut acquire => return slot.map_err(|_| reply(ErrorCode::Internal, "the provider is stopping")),
                () = tokio::time::sleep(every) => {
                    // Somewhere among those now waiting; a bound, not an exact place.
                    position = position.min(queued.load(Ordering::SeqCst) as u32).max(1);
                }
            }
        }
    }

    /// Republishes the adverts when the free capacity or a model's cold start changed, at most once per
    /// [`CAPACITY_REFRESH`]: often enough for clients to route around a full provider, rare
    /// enough that a busy node does not flood the advert topic.
    async fn refresh_capacity(self, network: Client) {
        let mut published: Vec<(u32, u32)> =
            self.adverts().iter().map(|a| (a.advert.free_capacity, a.advert.cold_start_ms)).collect();
        let mut tick = tokio::time::interval(CAPACITY_REFRESH);
        loop {
            tick.tick().await;
            let adverts = self.adverts();
            let now: Vec<(u32, u32)> =
                adverts.iter().map(|a| (a.advert.free_capacity, a.advert.cold_start_ms)).collect();
            if now != published {
                if network.update_adverts(adverts).await.is_err() {
                    return; // the network stopped
                }
                published = now;
            }
        }
    }

    /// The attribution weights of a receipt this provider proposed, by their root (from
    /// its store).
    pub fn weights(&self, root: &alloy_primitives::B256) -> Option<attrinet_market::Weights> {
        self.inner.store.weights(root).ok().flatten()
    }

    /// Advertises the offers and serves requests until the network stops.
    pub async fn serve(self, network: Client) -> Result<(), crate::NetError> {
        let mut incoming = network
            .streams()
            .accept(INFER_PROTOCOL)
            .map_err(|e| crate::NetError::Setup(format!("cannot accept {INFER_PROTOCOL}: {e}")))?;
        tokio::spawn(crate::batches::serve_batches(
            network.clone(),
            self.inner.store.clone(),
            self.inner.identity.address(),
            self.inner.limits.idle_timeout,
        ));
        network.advertise(self.adverts()).await?;
        info!(target: "p2p::provider", offers = self.inner.offers.len(), "serving");
        // The refresher lives as long as this future: aborting `serve` stops it too, rather
        // than leaving it holding the provider (and its engine) and publishing stale adverts.
        let refresh = self.clone().refresh_capacity(network.clone());
        let accept = async {
            while let Some((peer, stream)) = incoming.next().await {
                let this = self.clone();
                tokio::spawn(async move { this.handle(peer, stream).await });
            }
        };
        tokio::select! {
            () = accept => {}
            () = refresh => {}
        }
        Ok(())
    }

    async fn handle(&self, peer: PeerId, mut stream: Stream) {
        let limits = self.inner.limits;
        // The wait in the queue is bounded by `total_timeout` on its own (`take_slot`), so
        // that a request that waited long still has about that long to be answered.
        let outcome =
            tokio::time::timeout(limits.total_timeout.saturating_mul(2), self.exchange(peer, &mut stream)).await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => reply(ErrorCode::Timeout, format!("request took longer than {:?}", limits.total_timeout)),
        };
        debug!(target: "p2p::provider", %peer, code = ?error.code, message = %error.message, "request failed");
        // The client may be gone already; nothing more to do then.
        let _ = write_msg(&mut stream, &ServerMsg::Error(error)).await;
    }

    async fn channel(
        &self,
        id: &ChannelId,
        peer: &PeerId,
    ) -> Result<Arc<tokio::sync::Mutex<ProviderChannel>>, ErrorReply> {
        if let Some(c) = self.inner.channels.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(c.clone());
        }
        let store = &self.inner.store;
        let internal = |e: attrinet_market::StoreError| reply(ErrorCode::Internal, e.to_string());
        let state = match store.channel(id).map_err(internal)? {
            Some(s) => s,
            None => self.look_up(id, peer).await?,
        };
        let receipts = store.receipts_after(id, state.settled_seq).map_err(internal)?;
        let mut map = self.inner.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have restored it meanwhile: keep the first.
        let ch = map.entry(*id).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(ProviderChannel::restore(
                state,
                &receipts,
                self.inner.limits.exposure_limit,
            )))
        });
        Ok(ch.clone())
    }

    /// Asks the lookup for a channel and stores what it says, when the channel is this
    /// provider's and `peer` its payer (anyone else asking about it changes nothing here).
    async fn look_up(&self, id: &ChannelId, peer: &PeerId) -> Result<ChannelState, ErrorReply> {
        let unknown = || reply(ErrorCode::UnknownChannel, format!("channel {id} is not open with this node"));
        let lookup = self.inner.lookup.get().ok_or_else(unknown)?;
        let state = lookup
            .lookup(*id)
            .await
            .map_err(|e| reply(ErrorCode::Internal, format!("cannot look channel {id} up: {e}")))?
            .ok_or_else(unknown)?;
        let me = &self.inner.identity;
        if state.params.id != *id
            || state.params.provider != me.address()
            || state.params.provider_key != me.public_key()
        {
            return Err(reply(ErrorCode::UnknownChannel, format!("channel {id} is not with this node")));
        }
        if Some(state.params.payer_key) != peer_key(peer) {
            return Err(reply(ErrorCode::UnknownChannel, format!("channel {id} does not belong to you and this node")));
        }
        // put_channel keeps stored progress and takes the new deposit.
        self.inner.store.put_channel(&state).map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
        Ok(self.inner.store.channel(id).map_err(|e| reply(ErrorCode::Internal, e.to_string()))?.unwrap_or(state))
    }

    /// Takes in what changed in the store behind the ledger's back: a settlement (the
    /// next voucher's batch starts after it) or a new deposit, both recorded by the
    /// settlement loop or the chain follower.
    fn refresh(&self, ch: &mut ProviderChannel) -> Result<(), ErrorReply> {
        let id = ch.state().params.id;
        let stored = self.inner.store.channel(&id).map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
        if let Some(s) = stored {
            ch.settled(&s);
        }
        Ok(())
    }

    /// Takes in the payer's newest co-signed receipt when this node lacks it (its `Pay` was
    /// lost): checked like a payment, persisted, then committed. A receipt this node already
    /// holds changes nothing; a bad one is refused as a bad payment.
    fn resync(&self, ch: &mut ProviderChannel, r: &crate::wire::Resync) -> Result<(), ErrorReply> {
        let next = ch.check_resync(&r.receipt, &r.voucher).map_err(|e| reply(ErrorCode::BadPayment, e.to_string()))?;
        if next {
            let stored = self
                .inner
                .store
                .record_receipt(&r.receipt, &r.voucher)
                .map_err(|e| reply(ErrorCode::Internal, format!("could not store receipt: {e}")))?;
            ch.commit(&stored, &r.receipt);
            info!(target: "p2p::provider", seq = %r.receipt.receipt.seq, "took in a receipt whose payment was lost");
        }
        Ok(())
    }

    async fn exchange(&self, peer: PeerId, stream: &mut Stream) -> Result<(), ErrorReply> {
        let limits = self.inner.limits;
        let request: InferRequest = read_msg(stream, limits.idle_timeout).await.map_err(|e| match e {
            WireError::TooLarge(n) => {
                reply(ErrorCode::TooLarge, format!("request of {n} bytes is over the frame limit"))
            }
            WireError::Timeout(t) => reply(ErrorCode::Timeout, format!("no request within {t:?}")),
            e => reply(ErrorCode::BadRequest, e.to_string()),
        })?;
        let req_hash = request_hash(&encode(&request));

        // Admission: per-peer (answered "busy" at once, so the client can fail over); the
        // generation slot, or a place in the queue for one, once the request is checked.
        let _peer_slot = {
            let mut map = self.inner.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(peer).or_insert(0);
            if *n >= limits.max_per_peer {
                return Err(reply(
                    ErrorCode::Busy,
                    format!("{} requests from you are already in flight", limits.max_per_peer),
                ));
            }
            *n += 1;
            PeerSlot { map: &self.inner.per_peer, peer }
        };

        let offer = self
            .inner
            .offers
            .get(&request.model)
            .ok_or_else(|| reply(ErrorCode::UnknownModel, format!("model {} is not served here", request.model)))?;
        if let Some(why) = self.withdrawn(&request.model) {
            return Err(reply(
                ErrorCode::UnknownModel,
                format!("model {} is no longer served here: {why}", request.model),
            ));
        }
        let prompt_len = request.prompt.text_len();
        if prompt_len > limits.max_prompt_bytes {
            return Err(reply(
                ErrorCode::TooLarge,
                format!("prompt of {prompt_len} bytes is over the {}-byte limit", limits.max_prompt_bytes),
            ));
        }
        if request.max_tokens == 0 || request.max_tokens > limits.max_tokens {
            return Err(reply(
                ErrorCode::BadRequest,
                format!("max_tokens must be 1..={}, got {}", limits.max_tokens, request.max_tokens),
            ));
        }
        if let Some(k) = request.sampling.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(reply(
                ErrorCode::BadRequest,
                format!("{k} top log-probabilities asked for; at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        check_stops(&request.stop).map_err(|why| reply(ErrorCode::BadRequest, why))?;
        let quote = request.quote;
        let input_tokens = self.count_tokens(offer, &request.prompt).await?;
        // The ledger's rule for the quote against this offer and the request against both,
        // applied first here so that a bad request is refused before any channel lookup
        // (`reserve` applies it again; it is a few comparisons).
        let admission = Admission {
            model: request.model,
            price: offer.price,
            context_length: offer.context_length,
            input_tokens,
            max_tokens: request.max_tokens,
        };
        let refused = |e: LedgerError| {
            let code = match e {
                LedgerError::QuoteMismatch { .. } => ErrorCode::QuoteRejected,
                LedgerError::DoesNotFit { .. } => ErrorCode::BadRequest,
                _ => ErrorCode::Unpaid,
            };
            reply(code, e.to_string())
        };
        admission.admit(quote).map_err(refused)?;

        // The requester must be the channel's payer: only it can co-sign.
        let channel = self.channel(&request.channel, &peer).await?;
        // Only a request that would be served waits for a slot, and it holds no exposure
        // while it waits: a peer cannot fill the queue with requests bound to be refused.
        let _slot = self.take_slot(peer, stream).await?;
        let reservation = {
            let mut ch = channel.lock().await;
            self.refresh(&mut ch)?;
            let p = &ch.state().params;
            if Some(p.payer_key) != peer_key(&peer) || p.provider != self.inner.identity.address() {
                return Err(reply(
                    ErrorCode::UnknownChannel,
                    format!("channel {} does not belong to you and this node", request.channel),
                ));
            }
            if let Some(r) = &request.resync {
                self.resync(&mut ch, r)?;
            }
            let elsewhere = self.inner.unpaid_elsewhere(&ch)?;
            match ch.reserve_with(quote, admission, elsewhere) {
                // The payer may have topped the deposit up since it was last seen.
                Err(LedgerError::DepositExceeded { .. }) if self.inner.lookup.get().is_some() => {
                    self.look_up(&request.channel, &peer).await?;
                    self.refresh(&mut ch)?;
                    ch.reserve_with(quote, admission, elsewhere)
                }
                r => r,
            }
            .map_err(refused)?
        };

        write_msg(stream, &ServerMsg::Started { input_tokens })
            .await
            .map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
        let tokens = match self.generate(offer, &request, stream).await {
            Ok(t) => t,
            Err(Cut { error, sent_before_hang_up: Some(sent) }) if sent > 0 => {
                // The payer had `sent` tokens and left before the receipt: they count as
                // unpaid, or hanging up would take answers for free.
                let mut ch = channel.lock().await;
                let served = ch.cut_off(reservation, input_tokens, sent);
                if let Ok(value) = served {
                    self.inner.write_off(ch.state().params.payer, value);
                }
                drop(ch);
                warn!(target: "p2p::provider", %peer, sent, served = ?served, "the payer hung up before the receipt");
                return Err(error);
            }
            Err(Cut { error, .. }) => {
                // Nothing delivered, or the engine failed (not the payer's doing).
                channel.lock().await.release(reservation);
                return Err(error);
            }
        };

        // Receipt exchange, one at a time per channel so seqs stay contiguous. However it
        // ends, even by the timeout dropping this future, a proposal left unanswered is
        // written off (`Paying`).
        let mut ch = Paying { ch: channel.lock().await, inner: &self.inner };
        let weights = offer.datanet.as_ref().map(|d| d.attribute(&tokens).weights).unwrap_or_default();
        let attribution_root = weights.root();
        if !weights.is_empty() {
            // Stored before the receipt is proposed: settling it needs them, after a restart too.
            self.inner
                .store
                .put_weights(&weights)
                .map_err(|e| reply(ErrorCode::Internal, format!("could not store weights: {e}")))?;
        }
        let usage = Usage {
            request_hash: req_hash,
            response_hash: response_hash(&tokens),
            input_tokens,
            output_tokens: tokens.len() as u32,
            attribution_root,
        };
        // A settlement submitted while this request ran moves the batch start: take it in
        // now, so that this voucher commits to the batch after it.
        self.refresh(&mut ch)?;
        let (proposal, batch_start) = ch
            .propose(reservation, &usage, unix_now(), &self.inner.identity)
            .map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
        let seq = proposal.receipt.seq;
        let answer = async {
            write_msg(stream, &ServerMsg::Propose { proposal, batch_start, weights })
                .await
                .map_err(|e| reply(ErrorCode::Internal, e.to_string()))?;
            match read_msg::<ClientMsg>(stream, limits.idle_timeout).await {
                Ok(ClientMsg::Pay { receipt, voucher }) => {
                    ch.check_cosigned(&receipt, &voucher).map_err(|e| reply(ErrorCode::BadPayment, e.to_string()))?;
                    Ok((receipt, voucher))
                }
                Ok(ClientMsg::Refuse { reason }) => {
                    Err(reply(ErrorCode::BadPayment, format!("client refused to sign: {reason}")))
                }
                Err(e) => Err(reply(ErrorCode::Timeout, format!("no payment for receipt {seq}: {e}"))),
            }
        }
        .await;
        let (receipt, voucher) = match answer {
            Ok(a) => a,
            Err(e) => {
                // Served but not paid: written off, and it counts against the payer's limit.
                warn!(target: "p2p::provider", %peer, %seq, message = %e.message, "receipt not co-signed");
                return Err(e);
            }
        };
        // Persist, then acknowledge: an acknowledged receipt is on disk.
        let stored = self
            .inner
            .store
            .record_receipt(&receipt, &voucher)
            .map_err(|e| reply(ErrorCode::Internal, format!("could not store receipt: {e}")))?;
        ch.commit(&stored, &receipt);
        drop(ch);
        info!(target: "p2p::provider", %peer, %seq, value = %receipt.receipt.value, tokens = tokens.len(), "receipt stored");
        write_msg(stream, &ServerMsg::Ack { seq }).await.map_err(|e| reply(ErrorCode::Internal, e.to_string()))
    }

    /// Runs the generator on a blocking thread, streaming each token as it comes. Stops
    /// generating when the client goes away.
    async fn generate(&self, offer: &Offer, request: &InferRequest, stream: &mut Stream) -> Result<Vec<u32>, Cut> {
        let (tx, mut rx) = mpsc::channel::<Generated>(32);
        let generator = offer.generator.clone();
        let (prompt, max_tokens, sampling) = (request.prompt.clone(), request.max_tokens, request.sampling);
        let job = tokio::task::spawn_blocking(move || {
            generator.generate(&prompt, max_tokens, &sampling, &mut |token| tx.blocking_send(token).is_ok())
        });
        let mut tokens = Vec::new();
        let mut send_failed = None;
        let asked = request.sampling.logprobs;
        // The text so far, to find the token that completes a stop sequence.
        let mut so_far = String::new();
        while let Some(Generated { id, text, logprobs }) = rx.recv().await {
            if send_failed.is_some() {
                continue;
            }
            so_far.push_str(&text);
            let stops_here = stop_reached(&so_far, text.len(), &request.stop);
            let sent = match write_msg(stream, &ServerMsg::Token { id, text }).await {
                // What was asked for, and only that: the client refuses anything else.
                Ok(()) => match (asked, logprobs) {
                    (Some(k), Some(mut lp)) => {
                        lp.top.truncate(usize::from(k));
                        write_msg(stream, &ServerMsg::Logprobs(lp)).await
                    }
                    (Some(_), None) => {
                        // Dropping the receiver stops the generator at its next token.
                        let error = reply(ErrorCode::Engine, "the engine gave no log-probabilities");
                        return Err(Cut { error, sent_before_hang_up: None });
                    }
                    (None, _) => Ok(()),
                },
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => {
                    tokens.push(id);
                    // An engine that yields more than asked is cut here: the payer refuses
                    // a token past max_tokens.
                    if stops_here || tokens.len() >= request.max_tokens as usize {
                        // Closing the receiver stops the generator at its next token,
                        // which is neither sent nor billed.
                        rx.close();
                        break;
                    }
                }
                Err(e) => {
                    // Dropping the receiver stops the generator at its next token.
                    send_failed = Some(e);
                    rx.close();
                }
            }
        }
        let engine_failed = |error| Cut { error, sent_before_hang_up: None };
        let result = job.await.map_err(|e| engine_failed(reply(ErrorCode::Engine, format!("engine panicked: {e}"))))?;
        if let Some(e) = send_failed {
            let error = reply(ErrorCode::Internal, format!("client went away: {e}"));
            return Err(Cut { error, sent_before_hang_up: Some(tokens.len() as u32) });
        }
        result.map_err(|e| engine_failed(reply(generate_error_code(&e), e.to_string())))?;
        Ok(tokens)
    }
}

/// Why a generation ended without an answer to bill.
struct Cut {
    error: ErrorReply,
    /// Tokens the payer had been sent when it hung up; `None` when the payer did not hang
    /// up (the engine failed).
    sent_before_hang_up: Option<u32>,
}
