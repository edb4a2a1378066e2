//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong loading a model or running inference.
///
/// Every variant names the values involved, so that a message reaching a node operator says
/// what was wrong with their input and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The model file changed on disk while an engine was loading its weights.
    #[error(
        "model file {path} changed while its weights were being loaded: load it again (and do not write to a file a node serves)"
    )]
    ModelChanged {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a GGUF file, or its header or tensor data are damaged or truncated.
    #[error("{path} is not a valid GGUF file: {reason}")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What the parser found wrong.
        reason: String,
    },
    /// A metadata key the llama architecture needs is absent or has the wrong type.
    #[error("GGUF metadata key `{key}` is missing or malformed: {reason}")]
    Metadata {
        /// The key, such as `llama.block_count`.
        key: String,
        /// Why it could not be used.
        reason: String,
    },
    /// The model is not of an architecture this crate runs.
    #[error("unsupported model architecture `{architecture}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The value of `general.architecture` (with a note, e.g. for mixtures of experts).
        architecture: String,
        /// The architectures this crate runs.
        supported: &'static str,
    },
    /// A tensor uses a storage type the selected backend cannot compute with.
    #[error(
        "tensor `{tensor}` has type {dtype}, which the {backend} backend does not support (supported: {supported})"
    )]
    UnsupportedTensorType {
        /// The tensor's name.
        tensor: String,
        /// Its GGML type, e.g. `Q5K`.
        dtype: String,
        /// The backend that refused it.
        backend: &'static str,
        /// The types that backend accepts.
        supported: &'static str,
    },
    /// A tensor the model needs is absent, or its shape does not match the metadata.
    #[error("tensor `{tensor}`: {reason}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF's tokenizer is of a kind this crate does not implement.
    #[error(
        "unsupported tokenizer `{model}` (tokenizer.ggml.model); supported: byte-level BPE (`gpt2`) and SentencePiece (`llama`)"
    )]
    UnsupportedTokenizer {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// The GGUF's byte-level tokenizer splits text in a way this crate does not implement.
    #[error(
        "unsupported pre-tokenizer `{name}` (tokenizer.ggml.pre); supported: {supported}. Its tokens would differ from the model's training, so the file is refused"
    )]
    UnsupportedPreTokenizer {
        /// The value of `tokenizer.ggml.pre`.
        name: String,
        /// The names that are supported.
        supported: String,
    },
    /// The tokenizer data in the GGUF is inconsistent.
    #[error("invalid tokenizer data: {reason}")]
    Tokenizer {
        /// What is inconsistent.
        reason: String,
    },
    /// A token id outside the vocabulary was given to the engine or the decoder.
    #[error("token id {token} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The model's chat template cannot be compiled or refused the conversation (its
    /// `raise_exception`, e.g. for roles that do not alternate); raw prompts still work.
    #[error("the model's chat template failed: {reason}")]
    ChatTemplate {
        /// The template's message, or the template engine's.
        reason: String,
    },
    /// The prompt tokenized to nothing.
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    /// The prompt does not leave room for a single generated token in the context.
    #[error(
        "the prompt has {prompt_tokens} tokens but the context holds {context_length}: \
         shorten it to at most {} tokens",
        context_length.saturating_sub(1)
    )]
    PromptTooLong {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The engine's context length.
        context_length: usize,
    },
    /// The cache is full: the engine cannot take `requested` more tokens at `position`.
    #[error("context full: {requested} more tokens at position {position} exceed the context of {context_length}")]
    ContextFull {
        /// Tokens already in the KV cache.
        position: usize,
        /// Tokens that were to be added.
        requested: usize,
        /// The engine's context length.
        context_length: usize,
    },
    /// A batched forward pass was malformed: a sequence slot out of range or named twice,
    /// more sequences than the engine batches, or an empty chunk.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The KV-cache pool has too few free pages for the tokens a step adds.
    #[error(
        "the KV cache is full: this step needs {needed} more pages of {page_tokens} tokens and {free} are free;          give the engine a larger KV budget or fewer concurrent sequences"
    )]
    KvCacheFull {
        /// Pages the step needed.
        needed: usize,
        /// Pages free in the pool.
        free: usize,
        /// Tokens per page.
        page_tokens: usize,
    },
    /// A request needs more KV cache than the whole pool holds, so it could never start.
    #[error(
        "the request needs {needed} tokens of KV cache but the engine's pool holds {pool}:          ask for fewer tokens or give the engine a larger KV budget"
    )]
    KvPoolTooSmall {
        /// Tokens of cache the request reserves (prompt plus max_tokens, within the context).
        needed: usize,
        /// Tokens the pool holds.
        pool: usize,
    },
    /// The batch scheduler has stopped (its engine failed or it was shut down).
    #[error("the engine's scheduler has stopped: {0}")]
    SchedulerStopped(String),
    /// `max_tokens` was 0: a request must ask for at least one token.
    #[error("max_tokens is 0: ask for at least one token")]
    ZeroMaxTokens,
    /// A sampling parameter is out of its range.
    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),
    /// `wgpu` was requested but no adapter (not even a software one) could be found.
    #[error(
        "no wgpu adapter found{detail}; install a Vulkan driver (scripts/setup-vulkan gives lavapipe) or use the candle backend"
    )]
    NoAdapter {
        /// Extra information, such as which adapters were rejected.
        detail: String,
    },
    /// The GPU device reported an error (out of memory, validation, lost device).
    #[error("wgpu device error: {0}")]
    Device(String),
    /// candle failed while loading or running the model.
    #[error("candle error while {context}: {source}")]
    Candle {
        /// What the engine was doing.
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| Error::Candle { context, source }
    }

    pub(crate) fn metadata(key: &str, reason: impl Into<String>) -> Self {
        Error::Metadata { key: key.to_owned(), reason: reason.into() }
    }
}
