//! The `Engine` trait that every backend implements, and generation on top of it.

use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// WGSL kernels through wgpu (Vulkan, Metal, DX12; lavapipe in CI).
    Wgpu,
    /// candle on the CPU: the reference and the fallback.
    Candle,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Candle => "candle",
        })
    }
}

/// The SHA-256 of generated token ids (each as 4 little-endian bytes), which receipts commit
/// to: both parties can recompute it from the tokens that were streamed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokensHash(pub [u8; 32]);

impl TokensHash {
    /// Hashes a token sequence.
    pub fn of(tokens: &[u32]) -> Self {
        let mut h = Sha256::new();
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        TokensHash(h.finalize().into())
    }
}

impl fmt::Display for TokensHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokensHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokensHash({self})")
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingParams,
    /// Tokens that end generation (they are included in the output); usually
    /// [`Tokenizer::stop_tokens`](crate::Tokenizer::stop_tokens).
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context filled up.
    ContextFull,
}

/// The result of [`Engine::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Generated tokens, in order (a final stop token included).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Hash of `tokens`, for receipts.
    pub tokens_hash: TokensHash,
    /// Time to first token: the prefill plus sampling the first token.
    pub time_to_first_token: Duration,
    /// Time spent in decode steps after the first token.
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens processed per second during prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.time_to_first_token.as_secs_f64().max(1e-9)
    }

    /// Tokens generated per second after the first one (decode steps only).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let steps = self.tokens.len().saturating_sub(1);
        if steps == 0 { 0.0 } else { steps as f64 / self.decode_time.as_secs_f64().max(1e-9) }
    }
}

/// One sequence's part of a batched forward pass ([`Engine::forward_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// The sequence's slot, below [`Engine::max_batch`].
    pub seq: usize,
    /// Tokens appended to that sequence's KV cache (at least one).
    pub tokens: &'a [u32],
    /// Whether to choose the sequence's next token after them, how, and at which
    /// generation step (the step feeds the seeded random numbers).
    pub sample: Option<(&'a SamplingParams, u32)>,
    /// With `sample`: also report the chosen token's log-probability and those of the
    /// `k` most likely tokens (`k` at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

impl<'a> SeqChunk<'a> {
    /// Tokens appended to sequence `seq` without choosing a next one (a prompt's first
    /// pieces).
    pub fn fill(seq: usize, tokens: &'a [u32]) -> Self {
        SeqChunk { seq, tokens, sample: None, logprobs: None }
    }

    /// Tokens appended to sequence `seq`, then its next token chosen by `sampling` at
    /// generation step `step`.
    pub fn sample(seq: usize, tokens: &'a [u32], sampling: &'a SamplingParams, step: u32) -> Self {
        SeqChunk { seq, tokens, sample: Some((sampling, step)), logprobs: None }
    }
}

/// The most alternatives a token's log-probabilities list (OpenAI's `top_logprobs` bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A chosen token's log-probability under the model's distribution (the log-softmax of
/// the logits, temperature 1), and the most likely tokens' with theirs, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's.
    pub logprob: f32,
    /// `(token, log-probability)` of the most likely tokens.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// From a row of logits: `chosen`'s log-probability and the `k` most likely tokens'
    /// (ties to the lower id), as the wgpu kernel computes them.
    pub fn from_logits(logits: &[f32], chosen: u32, k: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(logits.len());
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, by_logit);
        }
        order.truncate(k);
        order.sort_by(by_logit);
        TokenLogprobs {
            logprob: logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |l| l - lse),
            top: order.into_iter().map(|t| (t, logits[t as usize] - lse)).collect(),
        }
    }
}

/// A token a forward pass chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: u32,
    /// Its log-probabilities, when the chunk asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// The KV cache's pool of pages, shared by the sequences of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPool {
    /// Tokens per page.
    pub page_tokens: usize,
    /// Pages in the pool.
    pub pages: usize,
    /// Pages no sequence holds.
    pub free_pages: usize,
}

impl KvPool {
    /// Tokens the whole pool holds.
    pub fn tokens(&self) -> usize {
        self.pages * self.page_tokens
    }

    /// Pages a sequence of `tokens` positions holds.
    pub fn pages_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.page_tokens)
    }
}

/// A loaded model that runs forward passes over the KV caches of up to
/// [`max_batch`](Engine::max_batch) sequences at once.
///
/// [`forward_batch`](Engine::forward_batch) appends tokens to several sequences in one pass
/// (each weight is read once for all of them) and returns the next token of those that
/// sample. The single-sequence methods (`prefill`, `decode_step`, `generate`, ...) use
/// sequence 0; [`Batcher`](crate::Batcher) schedules many requests over the slots.
pub trait Engine: Send {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// A description of the device (the GPU adapter's name, or the CPU).
    fn device_name(&self) -> String;

    /// The most tokens one sequence's KV cache holds.
    fn context_length(&self) -> usize;

    /// Sequences a forward pass can hold.
    fn max_batch(&self) -> usize;

    /// Tokens a forward pass takes before it is split into several submissions: a
    /// scheduler fills steps up to this.
    fn step_tokens(&self) -> usize;

    /// The KV cache's pages.
    fn kv_pool(&self) -> KvPool;

    /// Tokens in sequence `seq`'s KV cache.
    fn seq_position(&self, seq: usize) -> usize;

    /// Empties sequence `seq`'s KV cache and returns its pages to the pool.
    fn release(&mut self, seq: usize);

    /// Appends each chunk's tokens to its sequence, and returns the next token of every
    /// chunk that samples, in the order of `chunks`. Nothing changes when it fails on
    /// bad input (a slot out of range or named twice, a token outside the vocabulary, a
    /// full context or pool).
    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Sampled>>;

    /// Tokens currently in sequence 0's KV cache.
    fn position(&self) -> usize {
        self.seq_position(0)
    }

    /// Empties sequence 0's KV cache.
    fn reset(&mut self) {
        self.release(0)
    }

    /// Appends `tokens` to sequence 0 and returns the next token.
    fn prefill(&mut self, tokens: &[u32], sampling: &SamplingParams, step: u32) -> Result<u32> {
        sampling.validate()?;
        let next = self.forward_batch(&[SeqChunk::sample(0, tokens, sampling, step)])?;
        next.first().map(|s| s.token).ok_or_else(|| Error::Device("the engine chose no token".to_owned()))
    }

    /// Appends one token to sequence 0 and returns the next.
    fn decode_step(&mut self, token: u32, sampling: &SamplingParams, step: u32) -> Result<u32> {
        self.prefill(&[token], sampling, step)
    }

    /// Appends `tokens` to sequence 0 and returns the logits of the last position. Reads
    /// the whole vocabulary back from the device: for tests and diagnostics, not for
    /// serving.
    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Resets the cache, runs the prompt and generates up to `params.max_tokens` tokens,
    /// calling `on_token` with each as soon as it is known.
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        let context_length = self.context_length();
        check_request(prompt, params, context_length)?;
        self.reset();
        let start = Instant::now();
        let mut token = self.prefill(prompt, &params.sampling, 0)?;
        let time_to_first_token = start.elapsed();
        let decode_start = Instant::now();
        let mut tokens = vec![token];
        on_token(token);
        let finish = loop {
            if params.stop_tokens.contains(&token) {
                break FinishReason::Stop;
            }
            if tokens.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            if self.position() >= context_length {
                break FinishReason::ContextFull;
            }
            token = self.decode_step(token, &params.sampling, tokens.len() as u32)?;
            tokens.push(token);
            on_token(token);
        };
        Ok(Generation {
            prompt_tokens: prompt.len(),
            tokens_hash: TokensHash::of(&tokens),
            tokens,
            finish,
            time_to_first_token,
            decode_time: decode_start.elapsed(),
        })
    }
}

/// Checks a request before it runs: a token or more asked for, a prompt that is not empty
/// and leaves room in the context for one generated token, valid sampling.
pub(crate) fn check_request(prompt: &[u32], params: &GenerateParams, context_length: usize) -> Result<()> {
    if params.max_tokens == 0 {
        return Err(Error::ZeroMaxTokens);
    }
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    params.sampling.validate()?;
    if prompt.len() >= context_length {
        return Err(Error::PromptTooLong { prompt_tokens: prompt.len(), context_length });
    }
    Ok(())
}

/// Checks a batch before a forward pass: slots in range and distinct, every chunk's tokens
/// in the vocabulary and within its sequence's context.
pub(crate) fn check_batch(engine: &dyn Engine, vocab_size: usize, chunks: &[SeqChunk<'_>]) -> Result<()> {
    if chunks.is_empty() {
        return Err(Error::InvalidBatch("no sequence in the batch".to_owned()));
    }
    let max = engine.max_batch();
    if chunks.len() > max {
        return Err(Error::InvalidBatch(format!("{} sequences, but the engine batches at most {max}", chunks.len())));
    }
    for (i, c) in chunks.iter().enumerate() {
        if c.seq >= max {
            return Err(Error::InvalidBatch(format!("sequence slot {} is not below {max}", c.seq)));
        }
        if chunks[..i].iter().any(|o| o.seq == c.seq) {
            return Err(Error::InvalidBatch(format!("sequence slot {} appears twice", c.seq)));
        }
        if let Some((s, _)) = c.sample {
            s.validate()?;
        }
        match c.logprobs {
            Some(_) if c.sample.is_none() => {
                return Err(Error::InvalidBatch(format!(
                    "sequence slot {} asks for logprobs but samples nothing",
                    c.seq
                )));
            }
            Some(k) if k > MAX_TOP_LOGPROBS => {
                return Err(Error::InvalidBatch(format!("{k} top logprobs asked; at most {MAX_TOP_LOGPROBS}")));
            }
            _ => {}
        }
        check_input(c.tokens, vocab_size, engine.seq_position(c.seq), engine.context_length())?;
    }
    Ok(())
}

/// Checks that tokens fit the vocabulary and the context before a forward pass.
pub(crate) fn check_input(tokens: &[u32], vocab_size: usize, position: usize, context_length: usize) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(Error::TokenOutOfRange { token: bad, vocab_size });
    }
    if position + tokens.len() > context_length {
        return Err(Error::ContextFull { position, requested: tokens.len(), context_length });
    }
    Ok(())
}
