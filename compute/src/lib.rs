//! # attrinet-compute
//!
//! Inference for attrinet nodes. This crate will own:
//!
//! - GGUF loading (through candle-core) of llama-family models, the tokenizer built from the
//!   GGUF metadata and the model's chat template; a model's id is the SHA-256 of its file;
//! - the `Engine` trait (prefill, decode, generate with seeded sampling, streaming tokens)
//!   with a wgpu backend (WGSL kernels, KV cache and sampling on the device) and a candle
//!   CPU backend that is both the reference and the fallback;
//! - the hash of generated tokens that receipts commit to.
