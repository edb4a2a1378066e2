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

/// A loaded model that can run forward passes over a KV cache.
///
/// One sequence at a time: `prefill` appends tokens to the cache, `decode_step` appends one,
/// and both return the next token chosen by `sampling` at generation step `step` (the step
/// index feeds the seeded random numbers, so a sequence is reproducible).
pub trait Engine: Send {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// A description of the device (the GPU adapter's name, or the CPU).
    fn device_name(&self) -> String;

    /// The most tokens the KV cache holds.
    fn context_length(&self) -> usize;

    /// Tokens currently in the KV cache.
    fn position(&self) -> usize;

    /// Empties the KV cache.
    fn reset(&mut self);

    /// Appends `tokens` to the sequence and returns the next token.
    fn prefill(&mut self, tokens: &[u32], sampling: &SamplingParams, step: u32) -> Result<u32>;

    /// Appends one token and returns the next.
    fn decode_step(&mut self, token: u32, sampling: &SamplingParams, step: u32) -> Result<u32> {
        self.prefill(&[token], sampling, step)
    }

    /// Appends `tokens` and returns the logits of the last position. Reads the whole
    /// vocabulary back from the device: for tests and diagnostics, not for serving.
    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Resets the cache, runs the prompt and generates up to `params.max_tokens` tokens,
    /// calling `on_token` with each as soon as it is known.
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        if params.max_tokens == 0 {
            return Err(Error::ZeroMaxTokens);
        }
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        params.sampling.validate()?;
        let context_length = self.context_length();
        if prompt.len() >= context_length {
            return Err(Error::PromptTooLong { prompt_tokens: prompt.len(), context_length });
        }
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
