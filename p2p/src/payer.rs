//! The paying side of `/attrinet/infer/1`: pick a provider, send the request, take the
//! streamed tokens, check and co-sign the receipt, and fail over when a provider fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attrinet_market::{
    ChannelId, Datanet, Delivered, Demand, Identity, LedgerError, ModelAdvert, ModelId, PayerChannel, ProviderBook,
    PublicKey, Quote, Seq, SignedReceipt, SignedVoucher, Store, StoreError, encode, rank, request_hash, response_hash,
};
use libp2p::Stream;
use tracing::{debug, info, warn};

use crate::network::{Client, NetError, key_peer, unix_now};
use crate::wire::{
    ClientMsg, ErrorCode, ErrorReply, INFER_PROTOCOL, InferRequest, Logprobs, Prompt, Resync, Sampling, ServerMsg,
    WireError, read_msg, stop_reached, write_msg,
};

/// What the client asks for.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Model name or hex id.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Refuse offers whose maximum cost for this request is above this.
    pub max_cost: Option<attrinet_market::Wei>,
    /// Stop sequences ([`InferRequest::stop`]).
    pub stop: Vec<String>,
}

/// One streamed token, as [`Payer::infer`] hands it on: its text and, when the ask's
/// sampling asked for them, its log-probabilities.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    /// The token's text.
    pub text: &'a str,
    /// Its log-probabilities (only when asked for).
    pub logprobs: Option<&'a Logprobs>,
}

/// Counts a prompt's tokens exactly as a model's provider does: its own tokenizer and chat
/// template, run by the client ([`Payer::count_input_with`]).
pub trait PromptCounter: Send + Sync {
    /// The prompt's input tokens, or why they cannot be counted.
    fn count(&self, prompt: &Prompt) -> Result<u32, String>;
}

/// A completed inference.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Who served it.
    pub provider: ModelAdvert,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Each token's text, as streamed (together, `text`).
    pub token_texts: Vec<String>,
    /// Each token's log-probabilities, when the ask's sampling asked for them (else empty).
    pub logprobs: Vec<Logprobs>,
    /// The co-signed receipt (stored before this returns).
    pub receipt: SignedReceipt,
    /// The voucher signed for it.
    pub voucher: SignedVoucher,
    /// Providers tried before this one, and why they failed.
    pub failed: Vec<Failure>,
    /// The attribution weights the receipt commits to (empty when none).
    pub weights: attrinet_market::Weights,
}

/// A provider that was tried and failed.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Its offer.
    pub provider: ModelAdvert,
    /// The error code it replied with, if it replied.
    pub code: Option<ErrorCode>,
    /// What went wrong.
    pub reason: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Nobody offers the model (within the price cap).
    #[error("no provider offers {0} (within your price cap)")]
    NoProvider(String),
    /// Offers exist, but no channel is open with any of them.
    #[error("no open channel with any provider of {0}: open one first")]
    NoChannel(String),
    /// The provider answered with an error.
    #[error("provider refused ({:?}): {}", .0.code, .0.message)]
    Remote(ErrorReply),
    /// This node's network could not reach the provider (dial, stream, event loop).
    #[error("network: {0}")]
    Network(#[from] NetError),
    /// The stream broke, timed out, or carried a frame that is not a message.
    #[error("stream: {0}")]
    Stream(#[from] WireError),
    /// The provider reset the stream before answering, every time it was asked.
    #[error("the provider dropped the stream {attempts} times; last: {last}")]
    Dropped {
        /// How many times the request was sent.
        attempts: u64,
        /// The last reset.
        #[source]
        last: std::io::Error,
    },
    /// The provider sent more than the request allows: a token past `max_tokens`, or more
    /// text in a token than [`MAX_TOKEN_TEXT_BYTES`].
    #[error("the provider sent {0}")]
    OverLimit(String),
    /// The provider did not complete its answer (receipt acknowledged) within the payer's
    /// deadline for a whole answer, however steadily it sent.
    #[error("no complete answer within {0:?}")]
    Deadline(Duration),
    /// The provider sent a well-formed message out of the protocol's order.
    #[error("protocol: {got} {when}")]
    OutOfOrder {
        /// What arrived.
        got: &'static str,
        /// Where in the exchange.
        when: &'static str,
    },
    /// The advert names a key that is not an ed25519 key, so no peer can be dialled.
    #[error("the advert's node key {0:?} is not an ed25519 key")]
    BadAdvertKey(PublicKey),
    /// The proposed receipt broke a rule; the client did not sign it.
    #[error("receipt refused: {0}")]
    BadReceipt(#[source] LedgerError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// Every provider tried failed.
    #[error("all {} providers failed; last: {}", .0.len(), .0.last().map(|f| f.reason.as_str()).unwrap_or(""))]
    AllFailed(Vec<Failure>),
}

impl InferError {
    /// Whether another provider might succeed where this one failed.
    fn try_next(&self) -> bool {
        match self {
            InferError::Remote(r) => !matches!(r.code, ErrorCode::TooLarge | ErrorCode::BadRequest),
            InferError::Network(_)
            | InferError::Stream(_)
            | InferError::Dropped { .. }
            | InferError::OutOfOrder { .. }
            | InferError::OverLimit(_)
            | InferError::Deadline(_)
            | InferError::BadAdvertKey(_)
            | InferError::BadReceipt(_) => true,
            InferError::NoProvider(_) | InferError::NoChannel(_) | InferError::Store(_) | InferError::AllFailed(_) => {
                false
            }
        }
    }
}

/// Longest a client waits in a provider's queue before it tries another provider: the
/// provider's own bound on a queue wait (`Limits::total_timeout`'s default).
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(600);

/// The payer's default deadline for one provider's whole answer, from opening the stream to
/// the acknowledged receipt: the provider's own bound on a request under its default limits
/// (twice `Limits::total_timeout`: a queue wait of up to [`MAX_QUEUE_WAIT`], then as long
/// again to answer).
pub const MAX_ANSWER_TIME: Duration = Duration::from_secs(1200);

/// The most bytes of text one streamed token may carry: its own text, or an alternative's in
/// its log-probabilities. The longest tokens of the vocabularies checked are runs of
/// whitespace: SmolLM2's (GPT-2 byte-level BPE, 49,152 tokens) decodes to 81 bytes, a newline
/// and 80 spaces; Gemma 3's (262,144 tokens) to 46. A streamed piece may carry up to 3 more
/// bytes of a character split across tokens, and an invalid byte decoded lossily becomes
/// U+FFFD (3 bytes), so the worst honest piece of those vocabularies is under 256 bytes;
/// twice that leaves room for other tokenizers. It bounds what a hostile provider can make
/// a client hold: `max_tokens` tokens of at most this much text each.
pub const MAX_TOKEN_TEXT_BYTES: usize = 512;

struct Inner {
    identity: Identity,
    store: Arc<dyn Store>,
    channels: Mutex<HashMap<ChannelId, Arc<tokio::sync::Mutex<PayerChannel>>>>,
    book: Mutex<ProviderBook>,
    idle_timeout: Duration,
    /// Deadline for one provider's whole answer.
    total_timeout: Duration,
    datanets: Mutex<HashMap<ModelId, Arc<Datanet>>>,
    counters: Mutex<HashMap<ModelId, Arc<dyn PromptCounter>>>,
    /// Channels whose newest receipt the provider acknowledged, as seen by this process. A
    /// channel not in it (its `Pay` unacknowledged, or not used since this process started)
    /// sends its newest receipt with the next request (`InferRequest::resync`).
    acknowledged: Mutex<std::collections::HashSet<ChannelId>>,
}

/// The client: pays for inference through its channels.
#[derive(Clone)]
pub struct Payer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payer").field("address", &self.inner.identity.address()).finish()
    }
}

impl Payer {
    /// A payer with its keys and store; `idle_timeout` bounds the wait for each message, and
    /// [`MAX_ANSWER_TIME`] one provider's whole answer.
    pub fn new(identity: Identity, store: Arc<dyn Store>, idle_timeout: Duration) -> Payer {
        Payer::with_timeouts(identity, store, idle_timeout, MAX_ANSWER_TIME)
    }

    /// [`Payer::new`], with `total_timeout` as the deadline for one provider's whole answer
    /// (past it the payer gives up on that provider with [`InferError::Deadline`] and tries
    /// the next).
    pub fn with_timeouts(
        identity: Identity,
        store: Arc<dyn Store>,
        idle_timeout: Duration,
        total_timeout: Duration,
    ) -> Payer {
        Payer {
            inner: Arc::new(Inner {
                identity,
                store,
                channels: Mutex::new(HashMap::new()),
                book: Mutex::new(ProviderBook::new()),
                idle_timeout,
                total_timeout,
                datanets: Mutex::new(HashMap::new()),
                counters: Mutex::new(HashMap::new()),
                acknowledged: Mutex::new(std::collections::HashSet::new()),
            }),
        }
    }

    /// Recomputes the attribution of `model`'s answers against `datanet` (the one the
    /// model is registered with) before co-signing, and refuses receipts whose weights
    /// differ: the client, who holds the output, need not take the node's word for who
    /// shaped it.
    pub fn check_attribution(&self, model: ModelId, datanet: Arc<Datanet>) {
        self.inner.datanets.lock().unwrap_or_else(|p| p.into_inner()).insert(model, datanet);
    }

    /// Counts prompts for `model` with `counter` (the model's own tokenizer, which the
    /// client holds): a provider's `Started` count must then be at most that exact count,
    /// where without it only the bound from the prompt's bytes holds
    /// ([`Prompt::max_input_tokens`]).
    pub fn count_input_with(&self, model: ModelId, counter: Arc<dyn PromptCounter>) {
        self.inner.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(model, counter);
    }

    /// The most input tokens a provider of `model` may bill for `prompt`: the exact count
    /// where the client can make it, else the bound from the prompt's bytes.
    fn input_allowance(&self, model: &ModelId, prompt: &Prompt) -> u32 {
        let bound = prompt.max_input_tokens();
        let counter = self.inner.counters.lock().unwrap_or_else(|p| p.into_inner()).get(model).cloned();
        match counter.map(|c| c.count(prompt)) {
            Some(Ok(n)) => n.min(bound),
            // The provider's template refuses it too; the bound stands until it says so.
            Some(Err(e)) => {
                debug!(target: "p2p::payer", %model, %e, "could not count the prompt");
                bound
            }
            None => bound,
        }
    }

    /// The open channel with a provider (from the store) that has deposit left, if any.
    pub fn channel_with(
        &self,
        provider: &ModelAdvert,
    ) -> Result<Option<Arc<tokio::sync::Mutex<PayerChannel>>>, InferError> {
        let me = self.inner.identity.address();
        let Some(state) = self
            .inner
            .store
            .channels()?
            .into_iter()
            // Another channel with this provider may still have deposit where one is spent.
            .find(|c| {
                c.params.provider_key == provider.node_key
                    && c.params.payer == me
                    && c.params.provider == provider.evm_address
                    && c.has_deposit_left()
            })
        else {
            return Ok(None);
        };
        let mut map = self.inner.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&state.params.id) {
            return Ok(Some(c.clone()));
        }
        let receipts = self.inner.store.receipts_after(&state.params.id, state.settled_seq)?;
        let id = state.params.id;
        let ch = Arc::new(tokio::sync::Mutex::new(PayerChannel::restore(state, &receipts)));
        map.insert(id, ch.clone());
        Ok(Some(ch))
    }

    /// Finds the model's providers in the market view, ranks them, and asks them in turn
    /// until one completes with a co-signed receipt. `on_token` sees tokens as they stream
    /// (from a failed provider too; `Answer::text` is the final one's).
    pub async fn infer(
        &self,
        network: &Client,
        ask: &Ask,
        mut on_token: impl FnMut(Piece<'_>) + Send,
    ) -> Result<Answer, InferError> {
        let view = network.market().await?;
        let offers = view.find(&ask.model, unix_now());
        // The input cost counts too, at the most any of these providers may bill.
        let demand = Demand {
            input_tokens: offers
                .iter()
                .map(|o| self.input_allowance(&o.model, &ask.prompt))
                .max()
                .unwrap_or_else(|| ask.prompt.max_input_tokens()),
            max_output_tokens: ask.max_tokens,
            max_cost: ask.max_cost,
        };
        let ranked = {
            let book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
            rank(&offers, &demand, &book)
        };
        if ranked.is_empty() {
            return Err(InferError::NoProvider(ask.model.clone()));
        }
        let mut failed = Vec::new();
        let mut any_channel = false;
        for provider in ranked {
            let Some(channel) = self.channel_with(&provider)? else { continue };
            any_channel = true;
            match self.infer_with(network, &provider, channel, ask, &mut on_token).await {
                Ok(mut answer) => {
                    self.inner.book.lock().unwrap_or_else(|p| p.into_inner()).success(provider.node_key);
                    answer.failed = failed;
                    return Ok(answer);
                }
                Err(e) => {
                    self.inner.book.lock().unwrap_or_else(|p| p.into_inner()).failure(provider.node_key);
                    warn!(target: "p2p::payer", provider = %provider.evm_address, %e, "provider failed");
                    let retry = e.try_next();
                    let code = match &e {
                        InferError::Remote(r) => Some(r.code),
                        _ => None,
                    };
                    failed.push(Failure { provider, code, reason: e.to_string() });
                    if !retry {
                        return Err(e);
                    }
                }
            }
        }
        if !any_channel {
            return Err(InferError::NoChannel(ask.model.clone()));
        }
        Err(InferError::AllFailed(failed))
    }

    /// Opens a stream, sends the request and reads the first answer. A stream the
    /// provider's side drops before answering (its accept buffer was full) had no effect
    /// there, so it is retried a few times with a growing pause.
    async fn open(
        &self,
        network: &Client,
        peer: libp2p::PeerId,
        request: &InferRequest,
    ) -> Result<(Stream, ServerMsg), InferError> {
        const ATTEMPTS: u64 = 6;
        network.connect(peer).await?;
        let mut attempt = 1;
        loop {
            let mut stream = network.open_stream(peer, INFER_PROTOCOL).await?;
            // A reset shows on the write as well as on the read.
            let sent = write_msg(&mut stream, request).await;
            let first = match sent {
                Ok(()) => read_msg::<ServerMsg>(&mut stream, self.inner.idle_timeout).await,
                Err(e) => Err(e),
            };
            match first {
                Ok(first) => return Ok((stream, first)),
                Err(WireError::Io(last)) if attempt == ATTEMPTS => {
                    return Err(InferError::Dropped { attempts: ATTEMPTS, last });
                }
                Err(WireError::Io(_)) => {
                    tokio::time::sleep(Duration::from_millis(25 * attempt * attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn acknowledged(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ChannelId>> {
        self.inner.acknowledged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks one provider, giving up on it at the payer's deadline for a whole answer.
    ///
    /// What a provider sends is bounded: at most `ask.max_tokens` tokens of at most
    /// [`MAX_TOKEN_TEXT_BYTES`] of text each (and as many log-probabilities, each with at
    /// most the alternatives asked for, as bounded); every other message is dropped once
    /// read, and each is one frame of at most [`crate::MAX_FRAME_BYTES`]. So an answer holds
    /// at most about `max_tokens × MAX_TOKEN_TEXT_BYTES × (2 + alternatives)` bytes, however
    /// the provider behaves, and for at most the deadline.
    pub async fn infer_with(
        &self,
        network: &Client,
        provider: &ModelAdvert,
        channel: Arc<tokio::sync::Mutex<PayerChannel>>,
        ask: &Ask,
        on_token: &mut (impl FnMut(Piece<'_>) + Send),
    ) -> Result<Answer, InferError> {
        let deadline = self.inner.total_timeout;
        // Cancelling is safe at every await below: from co-signing to storing the receipt
        // nothing awaits, and a `Pay` cut off is a lost `Pay`, which the next request's
        // resync repairs.
        tokio::time::timeout(deadline, self.answer(network, provider, channel, ask, on_token))
            .await
            .map_err(|_| InferError::Deadline(deadline))?
    }

    async fn answer(
        &self,
        network: &Client,
        provider: &ModelAdvert,
        channel: Arc<tokio::sync::Mutex<PayerChannel>>,
        ask: &Ask,
        on_token: &mut (impl FnMut(Piece<'_>) + Send),
    ) -> Result<Answer, InferError> {
        let peer = key_peer(&provider.node_key).ok_or(InferError::BadAdvertKey(provider.node_key))?;
        let (channel_id, last_seq) = {
            let ch = channel.lock().await;
            (ch.state().params.id, ch.state().last_seq)
        };
        let resync = if last_seq == Seq::ZERO || self.acknowledged().contains(&channel_id) {
            None
        } else {
            self.inner
                .store
                .receipt(&channel_id, last_seq)?
                .map(|s| Box::new(Resync { receipt: s.receipt, voucher: s.voucher }))
        };
        let request = InferRequest {
            model: provider.model,
            prompt: ask.prompt.clone(),
            max_tokens: ask.max_tokens,
            sampling: ask.sampling,
            stop: ask.stop.clone(),
            channel: channel_id,
            quote: Quote {
                model: provider.model,
                price: provider.price,
                // No more input than the prompt makes: a provider billing more is refused.
                max_input_tokens: provider.context_length.min(self.input_allowance(&provider.model, &ask.prompt)),
                max_output_tokens: ask.max_tokens,
            },
            resync,
        };
        let idle = self.inner.idle_timeout;
        let (mut stream, first) = self.open(network, peer, &request).await?;
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut token_texts = Vec::new();
        // Asked for: every token is followed by its log-probabilities.
        let top = ask.sampling.logprobs;
        let mut owed_logprobs = false;
        let mut stopped = false;
        let mut input_tokens = None;
        let mut queued_since = None;
        let mut first = Some(first);
        let (proposal, batch_start, weights) = loop {
            let msg = match first.take() {
                Some(m) => m,
                None => read_msg::<ServerMsg>(&mut stream, idle).await?,
            };
            match msg {
                ServerMsg::Queued { position } if input_tokens.is_none() => {
                    debug!(target: "p2p::payer", position, "waiting in the provider's queue");
                    // A provider could keep a client waiting forever with `Queued`: past the
                    // longest wait, fail over.
                    if queued_since.get_or_insert_with(std::time::Instant::now).elapsed() > MAX_QUEUE_WAIT {
                        return Err(InferError::Remote(ErrorReply {
                            code: ErrorCode::Busy,
                            message: format!("still queued after {MAX_QUEUE_WAIT:?}"),
                        }));
                    }
                }
                ServerMsg::Queued { .. } => {
                    return Err(InferError::OutOfOrder {
                        got: "a place in the queue",
                        when: "after the request started",
                    });
                }
                ServerMsg::Started { input_tokens: n } if n > request.quote.max_input_tokens => {
                    return Err(InferError::OutOfOrder {
                        got: "a prompt count over what the prompt can make",
                        when: "when the request started",
                    });
                }
                ServerMsg::Started { input_tokens: n } => input_tokens = Some(n),
                ServerMsg::Token { id, text: t } => {
                    if input_tokens.is_none() {
                        return Err(InferError::OutOfOrder { got: "a token", when: "before the request was admitted" });
                    }
                    if owed_logprobs {
                        return Err(InferError::OutOfOrder { got: "a token", when: "where log-probabilities belong" });
                    }
                    // The answer ended at the token that completed a stop sequence: more
                    // would be billed for text nobody asked for.
                    if stopped {
                        return Err(InferError::OutOfOrder { got: "a token", when: "after a stop sequence" });
                    }
                    if tokens.len() >= request.max_tokens as usize {
                        return Err(InferError::OverLimit(format!("a token past max_tokens ({})", request.max_tokens)));
                    }
                    if t.len() > MAX_TOKEN_TEXT_BYTES {
                        return Err(InferError::OverLimit(format!(
                            "a token of {} bytes of text; a token has at most {MAX_TOKEN_TEXT_BYTES} bytes",
                            t.len()
                        )));
                    }
                    text.push_str(&t);
                    stopped = stop_reached(&text, t.len(), &request.stop);
                    if top.is_none() {
                        on_token(Piece { text: &t, logprobs: None });
                    }
                    token_texts.push(t);
                    tokens.push(id);
                    owed_logprobs = top.is_some();
                }
                ServerMsg::Logprobs(lp) => {
                    let fits = top.is_some_and(|k| lp.top.len() <= usize::from(k))
                        && lp.logprob_micros <= 0
                        && lp.top.iter().all(|t| t.logprob_micros <= 0);
                    if !owed_logprobs || !fits {
                        return Err(InferError::OutOfOrder {
                            got: "log-probabilities",
                            when: "not asked for, or more alternatives than asked",
                        });
                    }
                    if let Some(long) = lp.top.iter().find(|a| a.text.len() > MAX_TOKEN_TEXT_BYTES) {
                        return Err(InferError::OverLimit(format!(
                            "an alternative token of {} bytes of text; a token has at most {MAX_TOKEN_TEXT_BYTES} bytes",
                            long.text.len()
                        )));
                    }
                    owed_logprobs = false;
                    let t = token_texts.last().map_or("", String::as_str);
                    on_token(Piece { text: t, logprobs: Some(&lp) });
                    logprobs.push(lp);
                }
                ServerMsg::Propose { .. } if owed_logprobs => {
                    return Err(InferError::OutOfOrder { got: "a receipt", when: "where log-probabilities belong" });
                }
                ServerMsg::Propose { proposal, batch_start, weights } => break (proposal, batch_start, weights),
                ServerMsg::Error(e) => return Err(InferError::Remote(e)),
                ServerMsg::Ack { .. } => {
                    return Err(InferError::OutOfOrder { got: "an acknowledgement", when: "before any receipt" });
                }
            }
        };
        // The ledger checks the weights: they must be the ones the receipt commits to and,
        // when this client holds the model's datanet, the ones it gives for this output;
        // otherwise whoever holds it (a watcher) checks them later.
        let datanet = self.inner.datanets.lock().unwrap_or_else(|p| p.into_inner()).get(&request.model).cloned();
        let delivered = Delivered {
            request_hash: request_hash(&encode(&request)),
            response_hash: response_hash(&tokens),
            output_tokens: tokens.len() as u32,
            // The receipt must bill what `Started` declared (within the quote).
            input_tokens,
            expected_weights: datanet.map(|d| d.attribute(&tokens).weights),
            weights,
        };
        let mut ch = channel.lock().await;
        // A settlement or top-up recorded in the store since the ledger was loaded.
        if let Some(s) = self.inner.store.channel(&channel_id)? {
            ch.settled(&s);
        }
        let (receipt, voucher) =
            match ch.accept(proposal, batch_start, &request.quote, &delivered, unix_now(), &self.inner.identity) {
                Ok(signed) => signed,
                Err(e) => {
                    let _ = write_msg(&mut stream, &ClientMsg::Refuse { reason: e.to_string() }).await;
                    return Err(InferError::BadReceipt(e));
                }
            };
        // Store what we signed before handing it over: our record of what we owe must never
        // be behind the provider's.
        if !delivered.weights.is_empty() {
            self.inner.store.put_weights(&delivered.weights)?;
        }
        let stored = self.inner.store.record_receipt(&receipt, &voucher)?;
        ch.commit(&stored, &receipt);
        drop(ch);
        // Until the provider acknowledges it, this receipt goes with the next request too.
        self.acknowledged().remove(&channel_id);
        write_msg(&mut stream, &ClientMsg::Pay { receipt: receipt.clone(), voucher: voucher.clone() }).await?;
        match read_msg::<ServerMsg>(&mut stream, idle).await? {
            ServerMsg::Ack { seq } if seq == receipt.receipt.seq => {
                self.acknowledged().insert(channel_id);
            }
            ServerMsg::Error(e) => return Err(InferError::Remote(e)),
            ServerMsg::Queued { .. }
            | ServerMsg::Started { .. }
            | ServerMsg::Token { .. }
            | ServerMsg::Logprobs(_)
            | ServerMsg::Propose { .. }
            | ServerMsg::Ack { .. } => {
                return Err(InferError::OutOfOrder {
                    got: "another message",
                    when: "where the acknowledgement of the receipt belongs",
                });
            }
        }
        info!(target: "p2p::payer", seq = %receipt.receipt.seq, value = %receipt.receipt.value, tokens = tokens.len(), "paid");
        Ok(Answer {
            provider: provider.clone(),
            tokens,
            text,
            token_texts,
            logprobs,
            receipt,
            voucher,
            failed: Vec::new(),
            weights: delivered.weights,
        })
    }
}
