//! An OpenAI-compatible HTTP API over the network: `GET /v1/models`,
//! `POST /v1/chat/completions` (plain or `stream: true` as server-sent events),
//! `POST /v1/completions`, and `GET /metrics`. Every answer is paid through a channel
//! with a co-signed receipt before the response completes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use attrinet_p2p::{Answer, Ask, ChatMessage, Client, ErrorCode, InferError, Logprobs, Payer, Prompt, Sampling};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Tokens generated when a request names no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// What the gateway needs: the network, the paying client, and the counters.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// The network.
    pub network: Client,
    /// Pays for answers.
    pub payer: Payer,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Opens a channel with the best provider of a model when the client has none with
    /// any of them; without it, such requests fail with `no_channel`.
    pub opener: Option<crate::client::ChannelOpener>,
}

/// What the gateway bounds, whoever its clients and providers are. With the payer's own
/// bounds (at most `max_tokens` tokens of at most [`attrinet_p2p::MAX_TOKEN_TEXT_BYTES`]
/// each, within its deadline) they bound what one request holds: its answer, and at most
/// [`EVENT_BUFFER`] events waiting for a streaming client, for at most `slow_client` once
/// that client stops reading.
#[derive(Clone, Copy, Debug)]
pub struct GatewayLimits {
    /// Most tokens one request (each of its choices) may ask for: what the payer then
    /// accepts from a provider, so it bounds an answer's size (32,768: 16 MiB of text at
    /// most; honest providers allow 2,048 by default).
    pub max_tokens: u32,
    /// Longest a streaming client may leave an event unread before its stream is cut (the
    /// answer is still paid for: the provider delivered it).
    pub slow_client: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits { max_tokens: 32_768, slow_client: Duration::from_secs(30) }
    }
}

/// Events of a streamed answer waiting for its client: past this, the stream waits for
/// the client to read (up to [`GatewayLimits::slow_client`]).
pub const EVENT_BUFFER: usize = 16;

/// The router's state: handlers take the part they need.
#[derive(Clone, Debug)]
struct App {
    gateway: Gateway,
    limits: GatewayLimits,
}

impl FromRef<App> for Gateway {
    fn from_ref(app: &App) -> Gateway {
        app.gateway.clone()
    }
}

impl FromRef<App> for GatewayLimits {
    fn from_ref(app: &App) -> GatewayLimits {
        app.limits
    }
}

/// The routes, with the default [`GatewayLimits`].
pub fn router(gateway: Gateway) -> Router {
    router_with(gateway, GatewayLimits::default())
}

/// The routes, under `limits`.
pub fn router_with(gateway: Gateway, limits: GatewayLimits) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .with_state(App { gateway, limits })
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    /// Seconds a client should wait before trying again (`Retry-After`), when the network
    /// is only busy.
    retry_after: Option<u64>,
}

/// What `Retry-After` says when every provider's queue was full: generation slots free up
/// within seconds.
const BUSY_RETRY_AFTER_S: u64 = 2;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, code, message: message.into(), retry_after: None }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(s));
        }
        response
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        use StatusCode as S;
        let message = e.to_string();
        match &e {
            InferError::NoProvider(_) => {
                ApiError::new(S::NOT_FOUND, "invalid_request_error", "model_not_found", message)
            }
            InferError::NoChannel(_) => ApiError::new(S::PAYMENT_REQUIRED, "insufficient_quota", "no_channel", message),
            _ if is_unpaid(&e) => {
                ApiError::new(S::PAYMENT_REQUIRED, "insufficient_quota", "insufficient_deposit", message)
            }
            _ if is_busy(&e) => ApiError {
                retry_after: Some(BUSY_RETRY_AFTER_S),
                ..ApiError::new(S::SERVICE_UNAVAILABLE, "server_error", "busy", message)
            },
            InferError::Remote(r) if matches!(r.code, ErrorCode::TooLarge | ErrorCode::BadRequest) => {
                ApiError::new(S::BAD_REQUEST, "invalid_request_error", "bad_request", message)
            }
            InferError::Remote(_) | InferError::AllFailed(_) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "server_error", "no_provider_available", message)
            }
            _ => ApiError::new(S::BAD_GATEWAY, "server_error", "upstream_error", message),
        }
    }
}

/// Whether every provider refused with `code`.
fn all_refused_with(e: &InferError, code: ErrorCode) -> bool {
    match e {
        InferError::AllFailed(f) => !f.is_empty() && f.iter().all(|f| f.code == Some(code)),
        InferError::Remote(r) => r.code == code,
        _ => false,
    }
}

/// Whether every provider refused because its slots and queue were full.
fn is_busy(e: &InferError) -> bool {
    all_refused_with(e, ErrorCode::Busy)
}

/// Whether every provider refused for lack of deposit or exposure room.
fn is_unpaid(e: &InferError) -> bool {
    all_refused_with(e, ErrorCode::Unpaid)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn metrics(State(g): State<Gateway>) -> impl IntoResponse {
    if let Ok(peers) = g.network.peers().await {
        g.metrics.peers.store(peers.len() as u64, Ordering::Relaxed);
    }
    ([("content-type", "text/plain; version=0.0.4")], g.metrics.render())
}

async fn models(State(g): State<Gateway>) -> Result<axum::Json<Value>, ApiError> {
    let view = g
        .network
        .market()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "network", e.to_string()))?;
    let mut by_name: std::collections::BTreeMap<String, Vec<attrinet_market::ModelAdvert>> = Default::default();
    for a in view.all(attrinet_p2p::unix_now()) {
        by_name.entry(a.model_name.clone()).or_default().push(a);
    }
    let data: Vec<Value> = by_name
        .into_iter()
        .map(|(name, offers)| {
            let cheapest = offers.iter().map(|a| a.price.per_1k_output.0).min().unwrap_or(0);
            json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "attrinet",
                "attrinet": {
                    "model_id": offers[0].model.to_string(),
                    "providers": offers.len(),
                    "min_price_per_1k_output_wei": cheapest.to_string(),
                },
            })
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessageIn>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    #[serde(flatten)]
    options: Options,
}

/// What chat and text completions share beyond the prompt: sampling and the response's shape.
#[derive(Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    stop: Option<StopIn>,
    n: Option<u32>,
    /// Chat: whether to return log-probabilities; completions: how many alternatives.
    logprobs: Option<LogprobsIn>,
    /// Chat: alternatives per token (0 to 20), with `logprobs: true`.
    top_logprobs: Option<u8>,
}

/// `logprobs`: a flag for chats, a count of alternatives for (legacy) completions.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum LogprobsIn {
    Flag(bool),
    Count(u8),
}

impl Options {
    fn sampling(&self, chat: bool) -> Result<Sampling, ApiError> {
        let mut s = sampling(self.temperature, self.top_p, self.seed)?;
        s.logprobs = self.logprobs(chat)?;
        Ok(s)
    }

    /// Alternatives asked for per token, `None` for no log-probabilities, in OpenAI's
    /// rules: chats take `logprobs: true` and `top_logprobs` up to 20, completions
    /// `logprobs` up to 5.
    fn logprobs(&self, chat: bool) -> Result<Option<u8>, ApiError> {
        let bad =
            |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value", message);
        let asked = match (chat, self.logprobs, self.top_logprobs) {
            (true, Some(LogprobsIn::Flag(true)), k) => Some(k.unwrap_or(0)),
            (true, _, Some(_)) => return Err(bad("top_logprobs needs logprobs: true".to_owned())),
            (true, Some(LogprobsIn::Count(_)), None) => {
                return Err(bad("logprobs is true or false for chats; top_logprobs says how many".to_owned()));
            }
            (true, _, None) => None,
            (false, Some(LogprobsIn::Count(k)), _) if k > 5 => {
                return Err(bad(format!("logprobs is at most 5 for completions, got {k}")));
            }
            (false, Some(LogprobsIn::Count(k)), _) => Some(k),
            (false, Some(LogprobsIn::Flag(true)), _) => {
                return Err(bad("logprobs is a number (0 to 5) for completions".to_owned()));
            }
            (false, _, _) => None,
        };
        match asked {
            Some(k) if k > attrinet_p2p::MAX_TOP_LOGPROBS => {
                Err(bad(format!("top_logprobs is at most {}, got {k}", attrinet_p2p::MAX_TOP_LOGPROBS)))
            }
            a => Ok(a),
        }
    }

    fn shape(self, chat: bool) -> Result<Shape, ApiError> {
        Ok(Shape {
            chat,
            n: choices(self.n, self.stream)?,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            stops: stops(self.stop)?,
        })
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// OpenAI's `stop`: one string or a list of up to four.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopIn {
    One(String),
    Many(Vec<String>),
}

/// The stop sequences, within what the protocol carries ([`attrinet_p2p::check_stops`]).
fn stops(stop: Option<StopIn>) -> Result<Vec<String>, ApiError> {
    let all = match stop {
        None => Vec::new(),
        Some(StopIn::One(s)) => vec![s],
        Some(StopIn::Many(v)) => v,
    };
    attrinet_p2p::check_stops(&all).map_err(|why| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            format!("stop takes 1 to {} strings: {why}", attrinet_p2p::MAX_STOPS),
        )
    })?;
    Ok(all)
}

/// What the response does beyond the network's answer: where its text stops, and whether a
/// stream ends with a usage chunk.
#[derive(Debug)]
pub struct Shape {
    /// A chat completion (else a text completion).
    pub chat: bool,
    /// Choices asked for (`n`), each a request of its own with seed `seed + index`.
    pub n: u32,
    /// Streamed as server-sent events.
    pub stream: bool,
    /// A stream ends with a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Where the text is cut (`stop`).
    pub stops: Vec<String>,
}

/// Cuts generated text at the first stop sequence, as it streams: text that might be the
/// start of a stop sequence is held back until the next piece shows whether it is one.
/// (The provider stops generating at the token that completes one, and bills up to it;
/// the text of that token past the stop is still cut here.)
#[derive(Debug)]
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopScanner {
    /// A scanner that cuts at any of `stops` (each non-empty, as [`attrinet_p2p::check_stops`]
    /// requires).
    pub fn new(stops: Vec<String>) -> Self {
        StopScanner { stops, held: String::new(), stopped: false }
    }

    /// Takes the next piece of text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        // Hold back the longest end of the text that begins some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// The end of the text: whatever was held back, unless a stop sequence was met.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop sequence ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[derive(Deserialize)]
struct ChatMessageIn {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: String,
    max_tokens: Option<u32>,
    #[serde(flatten)]
    options: Options,
}

/// At most this many choices per request: each is a request of its own on the network.
const MAX_CHOICES: u32 = 8;

fn choices(n: Option<u32>, stream: bool) -> Result<u32, ApiError> {
    let n = n.unwrap_or(1);
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value", m);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(bad(format!("n must be 1..={MAX_CHOICES}, got {n}")));
    }
    if n > 1 && stream {
        return Err(bad("n > 1 is not supported with stream yet: stream one choice, or leave stream off".into()));
    }
    Ok(n)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

/// A seed for a request that names none: the clock mixed with a counter (SplitMix64's
/// finaliser), distinct per request; not secret, only varied.
fn fresh_seed() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sampling(temperature: Option<f32>, top_p: Option<f32>, seed: Option<u64>) -> Result<Sampling, ApiError> {
    // OpenAI's default: sampled at temperature 1 unless the request says otherwise.
    let t = temperature.unwrap_or(1.0);
    let p = top_p.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) || !(0.0..=1.0).contains(&p) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            "temperature must be in [0, 2] and top_p in [0, 1]",
        ));
    }
    Ok(Sampling {
        temperature_milli: (t * 1000.0).round() as u32,
        top_p_milli: (p * 1000.0).round() as u32,
        // No seed: a fresh one, so that repeated sampled requests differ as OpenAI's do.
        seed: seed.unwrap_or_else(fresh_seed),
        logprobs: None,
    })
}

async fn chat(
    State(g): State<Gateway>,
    State(limits): State<GatewayLimits>,
    body: Bytes,
) -> Result<Response, ApiError> {
    g.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let Request { ask, shape } = chat_request(&body, &limits).inspect_err(|_| count_error(&g))?;
    respond(g, limits, ask, shape).await
}

async fn completions(
    State(g): State<Gateway>,
    State(limits): State<GatewayLimits>,
    body: Bytes,
) -> Result<Response, ApiError> {
    g.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let Request { ask, shape } = completion_request(&body, &limits).inspect_err(|_| count_error(&g))?;
    respond(g, limits, ask, shape).await
}

/// A request body, validated: what to ask the network, and how to shape the answer.
#[derive(Debug)]
pub struct Request {
    /// What the payer asks providers for (each choice asks it with its own seed).
    pub ask: Ask,
    /// How the answer is returned.
    pub shape: Shape,
}

/// Parses and validates a `POST /v1/chat/completions` body; anything refused is an
/// OpenAI-shaped 400.
pub fn chat_request(body: &[u8], limits: &GatewayLimits) -> Result<Request, ApiError> {
    let req: ChatRequest = parse(body)?;
    let sampling = req.options.sampling(true)?;
    let shape = req.options.shape(true)?;
    let ask = Ask {
        model: req.model,
        prompt: Prompt::Chat(
            req.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
        ),
        max_tokens: max_tokens(req.max_completion_tokens.or(req.max_tokens), limits)?,
        sampling,
        max_cost: None,
        stop: shape.stops.clone(),
    };
    Ok(Request { ask, shape })
}

/// Parses and validates a `POST /v1/completions` body; anything refused is an
/// OpenAI-shaped 400.
pub fn completion_request(body: &[u8], limits: &GatewayLimits) -> Result<Request, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let sampling = req.options.sampling(false)?;
    let shape = req.options.shape(false)?;
    let ask = Ask {
        model: req.model,
        prompt: Prompt::Text(req.prompt),
        max_tokens: max_tokens(req.max_tokens, limits)?,
        sampling,
        max_cost: None,
        stop: shape.stops.clone(),
    };
    Ok(Request { ask, shape })
}

/// The tokens asked for, within the gateway's limit.
fn max_tokens(asked: Option<u32>, limits: &GatewayLimits) -> Result<u32, ApiError> {
    match asked.unwrap_or(DEFAULT_MAX_TOKENS) {
        n if n > limits.max_tokens => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            format!("max_tokens is at most {} here, got {n}", limits.max_tokens),
        )),
        n => Ok(n),
    }
}

fn count_error(g: &Gateway) {
    g.metrics.request_errors.fetch_add(1, Ordering::Relaxed);
}

fn record(g: &Gateway, answer: &Answer) {
    g.metrics.tokens.fetch_add(answer.tokens.len() as u64, Ordering::Relaxed);
    g.metrics.receipts.fetch_add(1, Ordering::Relaxed);
    g.metrics.add_paid(answer.receipt.receipt.value);
}

fn finish_reason(answer: &Answer, ask: &Ask, stopped: bool) -> &'static str {
    if !stopped && answer.tokens.len() as u32 >= ask.max_tokens { "length" } else { "stop" }
}

/// OpenAI's usage: the tokens the answers' receipts billed.
fn usage(answers: &[Answer]) -> Value {
    let (input, output) = answers.iter().fold((0u64, 0u64), |(i, o), a| {
        let r = &a.receipt.receipt;
        // u64 sums of provider-given u32 counts: they cannot overflow, unlike u32 ones.
        (i.saturating_add(u64::from(r.input_tokens)), o.saturating_add(u64::from(r.output_tokens)))
    });
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input.saturating_add(output)})
}

/// A choice's `logprobs` in OpenAI's shape (chat's `content` list, or completions'
/// parallel lists), for the tokens within the first `kept` bytes of the answer (a stop
/// sequence may cut it); `null` when none were asked for.
fn logprobs_json(answer: &Answer, kept: usize, chat: bool) -> Value {
    if answer.logprobs.is_empty() {
        return Value::Null;
    }
    let mut offset = 0;
    let mut kept_tokens = Vec::new();
    let cut = kept < answer.text.len();
    for (text, l) in answer.token_texts.iter().zip(&answer.logprobs) {
        if cut && offset >= kept {
            break;
        }
        kept_tokens.push((offset, text, l));
        offset += text.len();
    }
    token_logprobs_json(&kept_tokens, chat)
}

/// Log-probabilities of `tokens` (start offset in the text, text, log-probabilities) in
/// OpenAI's shape: a whole answer's, or one streamed chunk's.
fn token_logprobs_json(kept_tokens: &[(usize, &String, &Logprobs)], chat: bool) -> Value {
    let lp = |micros: i32| f64::from(micros) / 1e6;
    if chat {
        let content: Vec<Value> = kept_tokens
            .iter()
            .map(|(_, text, l)| {
                let top: Vec<Value> = l
                    .top
                    .iter()
                    .map(|t| json!({"token": t.text, "logprob": lp(t.logprob_micros), "bytes": t.text.as_bytes()}))
                    .collect();
                json!({"token": text, "logprob": lp(l.logprob_micros), "bytes": text.as_bytes(), "top_logprobs": top})
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let top: Vec<Value> = kept_tokens
            .iter()
            .map(|(_, _, l)| {
                let m: serde_json::Map<String, Value> =
                    l.top.iter().map(|t| (t.text.clone(), json!(lp(t.logprob_micros)))).collect();
                Value::Object(m)
            })
            .collect();
        json!({
            "tokens": kept_tokens.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(),
            "token_logprobs": kept_tokens.iter().map(|(_, _, l)| lp(l.logprob_micros)).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": kept_tokens.iter().map(|(o, _, _)| *o).collect::<Vec<_>>(),
        })
    }
}

/// The receipt of an answer, as the `attrinet` field shows it.
fn receipt(answer: &Answer) -> Value {
    let r = &answer.receipt.receipt;
    json!({
        "provider": answer.provider.evm_address.to_string(),
        "channel": r.channel.to_string(),
        "seq": r.seq.0,
        "value_wei": r.value.0.to_string(),
        "cumulative_wei": r.cumulative.0.to_string(),
        "failed_over": answer.failed.len(),
    })
}

async fn respond(g: Gateway, limits: GatewayLimits, ask: Ask, shape: Shape) -> Result<Response, ApiError> {
    let chat = shape.chat;
    let id = format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, now());
    let created = now();
    if let Some(opener) = &g.opener {
        // Room for every choice's answer at once.
        let max_tokens = ask.max_tokens.saturating_mul(shape.n);
        opener.ensure(&g.network, &ask.model, max_tokens, ask.max_cost).await.map_err(|e| {
            count_error(&g);
            ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "channel_open_failed",
                format!("cannot open a channel: {e:#}"),
            )
        })?;
    }
    if !shape.stream {
        // Each choice is a request of its own, all at once; choice i samples with seed + i,
        // so that sampled choices differ.
        let asks: Vec<Ask> = (0..shape.n)
            .map(|i| {
                let mut a = ask.clone();
                a.sampling.seed = a.sampling.seed.wrapping_add(u64::from(i));
                a
            })
            .collect();
        let results = futures::future::join_all(asks.iter().map(|a| g.payer.infer(&g.network, a, |_| {}))).await;
        let mut answers = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(a) => answers.push(a),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        // Choices already answered were paid for: they count, whatever else failed.
        for a in &answers {
            record(&g, a);
        }
        if let Some(e) = failure {
            count_error(&g);
            return Err(ApiError::from(e));
        }
        let mut choices = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            let mut scanner = StopScanner::new(shape.stops.clone());
            let text = scanner.push(&answer.text) + &scanner.finish();
            let finish = finish_reason(answer, &ask, scanner.stopped());
            let logprobs = logprobs_json(answer, text.len(), chat);
            choices.push(if chat {
                json!({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish})
            } else {
                json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
            });
        }
        let object = if chat { "chat.completion" } else { "text_completion" };
        // One choice keeps its receipt as an object, as before; several give a list.
        let receipts = match &answers[..] {
            [one] => receipt(one),
            all => Value::Array(all.iter().map(receipt).collect()),
        };
        let body = json!({"id": id, "object": object, "created": created, "model": ask.model, "choices": choices, "usage": usage(&answers), "attrinet": receipts});
        return Ok(axum::Json(body).into_response());
    }

    let mut scanner = StopScanner::new(shape.stops.clone());
    // Streaming: the answer runs on its own task and its tokens become events. The first
    // token is awaited before answering, so that a refusal is still an HTTP error rather
    // than an event in a 200 stream. The payer hands on at most `max_tokens` pieces (it
    // refuses a provider's token past them), so this channel, bounded at that, never finds
    // itself full; the bound is on the events below.
    let (token_tx, mut tokens) = mpsc::channel::<(String, Option<Logprobs>)>((ask.max_tokens as usize).max(1));
    let (g2, ask2) = (g.clone(), ask.clone());
    let job = tokio::spawn(async move {
        g2.payer
            .infer(&g2.network, &ask2, move |t| {
                let _ = token_tx.try_send((t.text.to_owned(), t.logprobs.cloned()));
            })
            .await
    });
    let first = match tokens.recv().await {
        Some(t) => Some(t),
        None => {
            // No token at all: either a refusal or an empty answer.
            match job.await {
                Ok(Err(e)) => {
                    count_error(&g);
                    return Err(ApiError::from(e));
                }
                Ok(Ok(answer)) => {
                    let events = final_events(&g, &answer, &ask, &id, created, &shape, false);
                    return Ok(Sse::new(futures::stream::iter(events)).into_response());
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "internal",
                        e.to_string(),
                    ));
                }
            }
        }
    };
    let (event_tx, events) = mpsc::channel::<Event>(EVENT_BUFFER);
    let model = ask.model.clone();
    tokio::spawn(async move {
        // A piece held back by the stop scanner is sent with the next: chunks stay one per
        // token where no stop sequence could begin. A chunk carries the log-probabilities
        // of the tokens its text begins, as a whole answer keeps those of the tokens that
        // begin before its cut.
        let mut shown = ShownLogprobs::default();
        // Gone (`None`) once the client left or read nothing for `slow_client`: dropping the
        // sender ends the response, and the rest of the answer is read and paid, not kept.
        let mut out = Some(Events { tx: event_tx, within: limits.slow_client, metrics: g.metrics.clone() });
        let mut next = first;
        loop {
            let (t, lp) = match next.take() {
                Some(t) => t,
                None => match tokens.recv().await {
                    Some(t) => t,
                    None => break,
                },
            };
            shown.push(&t, lp);
            // The token that completes a stop may carry text past it: not shown.
            let piece = scanner.push(&t);
            let logprobs = shown.take(piece.len(), false, shape.chat);
            if !(piece.is_empty() && logprobs.is_null()) {
                Events::send(&mut out, chunk(&id, created, &model, &shape, &piece, &logprobs, None).to_string()).await;
            }
        }
        let rest = scanner.finish();
        let logprobs = shown.take(rest.len(), !scanner.stopped(), shape.chat);
        if !(rest.is_empty() && logprobs.is_null()) {
            Events::send(&mut out, chunk(&id, created, &model, &shape, &rest, &logprobs, None).to_string()).await;
        }
        match job.await {
            Ok(Ok(answer)) => {
                for e in final_events(&g, &answer, &ask, &id, created, &shape, scanner.stopped()) {
                    let e = e.unwrap_or_else(|never| match never {});
                    if let Some(o) = &out
                        && o.tx.send_timeout(e, o.within).await.is_err()
                    {
                        out = None;
                    }
                }
            }
            Ok(Err(e)) => {
                // An error after streaming began: said in the stream, OpenAI-style.
                count_error(&g);
                Events::send(&mut out, ApiError::from(e).body().to_string()).await;
                Events::send(&mut out, "[DONE]".to_owned()).await;
            }
            Err(_) => {}
        }
    });
    let stream =
        futures::stream::unfold(events, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).into_response())
}

/// Where a streamed answer's events go: a bounded channel to the response, waiting at most
/// `within` for the client to take each.
struct Events {
    tx: mpsc::Sender<Event>,
    within: Duration,
    metrics: Arc<Metrics>,
}

impl Events {
    /// Sends `data` as an event; a client gone or too slow is cut (`out` becomes `None`)
    /// and nothing more is sent to it.
    async fn send(out: &mut Option<Events>, data: String) {
        if let Some(o) = out
            && let Err(e) = o.tx.send_timeout(Event::default().data(data), o.within).await
        {
            if matches!(e, mpsc::error::SendTimeoutError::Timeout(_)) {
                o.metrics.streams_cut.fetch_add(1, Ordering::Relaxed);
            }
            *out = None;
        }
    }
}

/// Streamed tokens' log-probabilities not yet sent with a chunk.
#[derive(Default)]
struct ShownLogprobs {
    /// Bytes of token text received, and of text sent in chunks.
    received: usize,
    sent: usize,
    /// Tokens not yet sent: start offset, text, log-probabilities.
    pending: std::collections::VecDeque<(usize, String, Logprobs)>,
}

impl ShownLogprobs {
    fn push(&mut self, text: &str, logprobs: Option<Logprobs>) {
        if let Some(lp) = logprobs {
            self.pending.push_back((self.received, text.to_owned(), lp));
        }
        self.received += text.len();
    }

    /// The log-probabilities to send with a chunk of `sent` more bytes: of the tokens that
    /// begin in the text sent so far, or every one left when `all`; `null` when none.
    fn take(&mut self, sent: usize, all: bool, chat: bool) -> Value {
        self.sent += sent;
        let n = if all { self.pending.len() } else { self.pending.iter().take_while(|p| p.0 < self.sent).count() };
        if n == 0 {
            return Value::Null;
        }
        let taken: Vec<_> = self.pending.drain(..n).collect();
        let refs: Vec<(usize, &String, &Logprobs)> = taken.iter().map(|(o, t, l)| (*o, t, l)).collect();
        token_logprobs_json(&refs, chat)
    }
}

/// One streamed chunk; with `include_usage` every chunk has `"usage": null` but the last.
fn chunk(
    id: &str,
    created: u64,
    model: &str,
    shape: &Shape,
    text: &str,
    logprobs: &Value,
    finish: Option<&str>,
) -> Value {
    let (object, choice) = if shape.chat {
        let delta = if text.is_empty() { json!({}) } else { json!({"role": "assistant", "content": text}) };
        ("chat.completion.chunk", json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}))
    } else {
        ("text_completion", json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}))
    };
    let mut c = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
    if shape.include_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// The closing chunk (finish reason and receipt), with `include_usage` OpenAI's usage chunk
/// (no choices), and the `[DONE]` terminator.
fn final_events(
    g: &Gateway,
    answer: &Answer,
    ask: &Ask,
    id: &str,
    created: u64,
    shape: &Shape,
    stopped: bool,
) -> Vec<Result<Event, Infallible>> {
    record(g, answer);
    let mut last = chunk(id, created, &ask.model, shape, "", &Value::Null, Some(finish_reason(answer, ask, stopped)));
    last["attrinet"] = receipt(answer);
    let mut events = vec![Ok(Event::default().data(last.to_string()))];
    if shape.include_usage {
        let mut u = chunk(id, created, &ask.model, shape, "", &Value::Null, None);
        u["choices"] = json!([]);
        u["usage"] = usage(std::slice::from_ref(answer));
        events.push(Ok(Event::default().data(u.to_string())));
    }
    events.push(Ok(Event::default().data("[DONE]")));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrinet_p2p::ErrorReply;

    fn response(e: InferError) -> Response {
        ApiError::from(e).into_response()
    }

    /// A provider whose slots and queue are full answers Busy; OpenAI clients retry a 503
    /// after `Retry-After`, which any other refusal does not carry.
    #[test]
    fn busy_is_503_with_retry_after_and_nothing_else_is() {
        let busy = || ErrorReply { code: ErrorCode::Busy, message: "queue full".into() };
        let r = response(InferError::Remote(busy()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(axum::http::header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("2"));
        let engine = ErrorReply { code: ErrorCode::Engine, message: "device lost".into() };
        let r = response(InferError::Remote(engine));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(axum::http::header::RETRY_AFTER).is_none(), "an engine failure is not busy");
        let r = response(InferError::Remote(ErrorReply { code: ErrorCode::Unpaid, message: "deposit".into() }));
        assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(r.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }

    fn scan(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        out.push(s.finish());
        (out, s.stopped())
    }

    #[test]
    fn text_stops_at_the_first_stop_sequence_even_across_pieces() {
        // No stop: every piece passes at once.
        assert_eq!(scan(&[], &["a", "b"]), (vec!["a".into(), "b".into(), String::new()], false));
        // "\n\n" split over two pieces: the first newline is held, then both are cut.
        let (out, stopped) = scan(&["\n\n"], &["Paris.", "\n", "\nQuestion", " more"]);
        assert_eq!(out.concat(), "Paris.");
        assert!(stopped);
        // A held piece that turns out not to be a stop is released with the next.
        let (out, stopped) = scan(&["END"], &["the E", "ngine", " runs"]);
        assert_eq!(out, ["the ", "Engine", " runs", ""]);
        assert!(!stopped);
        // The earliest of several, inside one piece; multi-byte text is cut on its boundary.
        let (out, _) = scan(&["zz", "é"], &["caf", "é zz"]);
        assert_eq!(out.concat(), "caf");
        // Text held at the end is released when nothing stopped it.
        assert_eq!(scan(&["abc"], &["xab"]).0.concat(), "xab");
    }
}
