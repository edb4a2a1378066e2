//! The candle CPU backend: candle-transformers' quantized llama, the reference the wgpu
//! kernels are tested against and the fallback where no GPU exists.

use std::io::Cursor;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};

use crate::engine::{BackendKind, Engine, check_input};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::{SamplingParams, sample};

/// Whether candle's quantized kernels were compiled with their AVX2/FMA paths: they are
/// chosen at compile time (`.cargo/config.toml` enables them for x86-64), and without them
/// candle falls back to scalar code several times slower.
const SIMD: &str = if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
    "AVX2+FMA"
} else if cfg!(target_arch = "aarch64") {
    "NEON"
} else {
    "no AVX2/FMA: slow scalar kernels"
};

/// Runs a model with candle on the CPU.
pub struct CandleEngine {
    weights: ModelWeights,
    vocab_size: usize,
    context_length: usize,
    position: usize,
}

impl std::fmt::Debug for CandleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEngine")
            .field("context_length", &self.context_length)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl CandleEngine {
    /// Loads the model's weights into candle's CPU tensors.
    pub fn new(model: &Model) -> Result<Self> {
        let mut reader = Cursor::new(model.bytes());
        // ModelWeights takes the parsed header by value; parsing again is cheap (no tensors).
        let content = Content::read(&mut reader).map_err(Error::candle("parsing the GGUF header"))?;
        let weights = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)
            .map_err(Error::candle("loading the weights"))?;
        let config = model.config();
        Ok(CandleEngine {
            weights,
            vocab_size: config.vocab_size,
            // candle precomputes RoPE tables for MAX_SEQ_LEN positions only.
            context_length: config.context_length.min(MAX_SEQ_LEN),
            position: 0,
        })
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        check_input(tokens, self.vocab_size, self.position, self.context_length)?;
        let input = Tensor::new(tokens, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(Error::candle("building the input"))?;
        let logits = self
            .weights
            .forward(&input, self.position)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(Error::candle(format!("running {} tokens at position {}", tokens.len(), self.position)))?;
        self.position += tokens.len();
        Ok(logits)
    }
}

impl Engine for CandleEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn device_name(&self) -> String {
        format!("CPU ({} threads, {SIMD})", candle_core::utils::get_num_threads())
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn position(&self) -> usize {
        self.position
    }

    fn reset(&mut self) {
        self.weights.clear_kv_cache();
        self.position = 0;
    }

    fn prefill(&mut self, tokens: &[u32], sampling: &SamplingParams, step: u32) -> Result<u32> {
        let logits = self.forward(tokens)?;
        Ok(sample(&logits, sampling, step))
    }

    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward(tokens)
    }
}

#[cfg(test)]
mod tests {
    /// Guards `.cargo/config.toml`: an x86-64 build without AVX2/FMA makes the reference
    /// backend several times slower, silently.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_builds_enable_avx2_and_fma() {
        assert_eq!(super::SIMD, "AVX2+FMA");
    }
}
