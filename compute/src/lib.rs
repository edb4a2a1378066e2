//! # attrinet-compute
//!
//! Inference for attrinet nodes: GGUF models (llama, qwen2, qwen3, gemma3, phi3), a tokenizer built from the GGUF
//! metadata, the model's chat template, and an [`Engine`] trait with two backends:
//!
//! - [`WgpuEngine`]: WGSL kernels through wgpu (Vulkan, Metal, DX12). Weights stay
//!   quantized on the device and are dequantized inside the matrix kernels; the KV cache
//!   and sampling live on the device; each decode step is one queue submission that reads
//!   back one token id.
//! - [`CandleEngine`]: the forward pass in candle's tensors on the CPU, the reference the
//!   wgpu kernels are tested against and the fallback where no GPU exists.
//!
//! A model's id is the SHA-256 of its file ([`ModelId`]); a generation's output is committed
//! to by [`TokensHash`], which receipts carry.
//!
//! ```
//! use attrinet_compute::testing::{write_random_llama, TinyLlamaSpec};
//! use attrinet_compute::{open_engine, Backend, GenerateParams, Model, SamplingParams};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.gguf");
//! write_random_llama(&path, &TinyLlamaSpec::default())?;
//!
//! let model = Model::load(&path)?;
//! let mut engine = open_engine(&model, Backend::Candle)?;
//! let prompt = model.chat_prompt("Hello there")?;
//! let params = GenerateParams {
//!     max_tokens: 8,
//!     sampling: SamplingParams { temperature: 0.8, top_p: 0.95, seed: 42 },
//!     stop_tokens: model.tokenizer().stop_tokens().to_vec(),
//! };
//! let first = engine.generate(&prompt, &params, &mut |_token| {})?;
//! let again = engine.generate(&prompt, &params, &mut |_token| {})?;
//! assert_eq!(first.tokens, again.tokens); // same seed, same tokens
//! assert_eq!(first.tokens_hash, again.tokens_hash);
//! println!("{}", model.tokenizer().decode(&first.tokens)?);
//! # Ok(())
//! # }
//! ```

mod batch;
mod candle_backend;
mod chat;
mod engine;
mod error;
mod gguf_check;
mod model;
mod sampling;
pub mod testing;
mod tokenizer;
mod wgpu_backend;

use std::fmt;
use std::str::FromStr;

pub use batch::{BatchStats, Batcher, Event, Stream};
pub use candle_backend::CandleEngine;
pub use candle_core::quantized::GgmlDType;
pub use chat::{ChatTemplate, ChatTurn};
pub use engine::{
    BackendKind, Engine, FinishReason, GenerateParams, Generation, KvPool, MAX_TOP_LOGPROBS, Sampled, SeqChunk,
    TokenLogprobs, TokensHash,
};
pub use error::{Error, Result};
pub use model::{Activation, Architecture, Model, ModelConfig, ModelHeader, ModelId, SUPPORTED_ARCHITECTURES};
pub use sampling::SamplingParams;
pub use tokenizer::{PreTokenizer, StreamDecoder, Tokenizer};
pub use wgpu_backend::{DEFAULT_MAX_CONTEXT, KernelStyle, MAX_BATCH, WgpuEngine, WgpuOptions};

/// Which backend to run a model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// wgpu on a real GPU adapter if there is one, else candle on the CPU. A software
    /// adapter (lavapipe, llvmpipe) is slower than candle, so `auto` never picks one.
    #[default]
    Auto,
    /// wgpu, on whatever adapter exists, software ones included (how CI tests the kernels).
    Wgpu,
    /// candle on the CPU.
    Candle,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "wgpu" => Ok(Backend::Wgpu),
            "candle" => Ok(Backend::Candle),
            other => Err(format!("unknown backend `{other}`: expected auto, wgpu or candle")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Wgpu => "wgpu",
            Backend::Candle => "candle",
        })
    }
}

/// How many sequences an engine batches and how much KV cache they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Sequences decoded together (1 to [`MAX_BATCH`]).
    pub max_batch: usize,
    /// Tokens of KV cache the sequences share (default: a full context each). At least
    /// one full context is always allocated, so any request that fits the context runs.
    pub kv_tokens: Option<usize>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 1, kv_tokens: None }
    }
}

/// Opens an engine for `model` on the chosen backend, for one sequence at a time.
pub fn open_engine(model: &Model, backend: Backend) -> Result<Box<dyn Engine>> {
    open_engine_with(model, backend, BatchOptions::default())
}

/// Opens an engine for `model` on the chosen backend that batches as `batch` says.
pub fn open_engine_with(model: &Model, backend: Backend, batch: BatchOptions) -> Result<Box<dyn Engine>> {
    let wgpu = |allow_software| WgpuOptions {
        allow_software,
        max_batch: Some(batch.max_batch),
        kv_tokens: batch.kv_tokens,
        ..Default::default()
    };
    let candle = || CandleEngine::with_batch(model, batch.max_batch, batch.kv_tokens);
    match backend {
        Backend::Candle => Ok(Box::new(candle()?)),
        Backend::Wgpu => Ok(Box::new(WgpuEngine::new(model, &wgpu(true))?)),
        Backend::Auto => match WgpuEngine::new(model, &wgpu(false)) {
            Ok(engine) => Ok(Box::new(engine)),
            Err(error) => {
                tracing::info!(target: "compute", %error, "no usable GPU; using candle on the CPU");
                Ok(Box::new(candle()?))
            }
        },
    }
}
