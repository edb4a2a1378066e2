//! The compute engine as the network's [`Generator`]: tokenise the request (with the
//! model's chat template for chats), generate, and stream each token's text.

use std::sync::Arc;

use attrinet_compute::{
    Backend, BatchOptions, BatchStats, Batcher, ChatTurn, Engine, GenerateParams, Model, SamplingParams,
};
use attrinet_p2p::{GenerateError, Generated, Generator, Logprobs, Prompt, Sampling, TopLogprob};

/// One model on one engine, whose [`Batcher`] decodes the requests of every generation
/// slot together.
pub struct EngineGenerator {
    model: Arc<Model>,
    batcher: Batcher,
}

impl std::fmt::Debug for EngineGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineGenerator").field("model", &self.model.name()).finish()
    }
}

impl EngineGenerator {
    /// Opens `backend`'s engine on `model`, batching as `batch` says.
    pub fn open(
        model: impl Into<Arc<Model>>,
        backend: Backend,
        batch: BatchOptions,
    ) -> Result<EngineGenerator, attrinet_compute::Error> {
        let model = model.into();
        let engine = attrinet_compute::open_engine_with(&model, backend, batch)?;
        Ok(EngineGenerator::new(model, engine))
    }

    /// Wraps an engine opened on `model`.
    pub fn new(model: impl Into<Arc<Model>>, engine: Box<dyn Engine>) -> EngineGenerator {
        let model = model.into();
        let batcher = Batcher::new(engine, model.config().vocab_size);
        EngineGenerator { model, batcher }
    }

    /// The model, shared.
    pub fn model_arc(&self) -> Arc<Model> {
        self.model.clone()
    }

    /// What the batch is doing.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Sequences decoded together.
    pub fn max_batch(&self) -> usize {
        self.batcher.max_batch()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The device the engine runs on.
    pub fn device(&self) -> String {
        self.batcher.device_name().to_owned()
    }

    /// Prompt tokens: raw text as is (special tokens written in it are parsed, as
    /// llama.cpp does), chats through the model's template (`ChatTemplate`: the file's own
    /// Jinja, or a built-in rendering of ChatML and Zephyr).
    pub fn tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
        prompt_tokens(&self.model, prompt)
    }
}

/// `prompt`'s tokens for `model` (see [`EngineGenerator::tokens`]).
pub(crate) fn prompt_tokens(model: &Model, prompt: &Prompt) -> Result<Vec<u32>, GenerateError> {
    match prompt {
        Prompt::Text(t) => Ok(model.tokenizer().encode_prompt(t)),
        Prompt::Chat(messages) => {
            let turns: Vec<ChatTurn<'_>> =
                messages.iter().map(|m| ChatTurn { role: &m.role, content: &m.content }).collect();
            model.chat_tokens(&turns).map_err(|e| GenerateError::Prompt(Box::new(e)))
        }
    }
}

/// A client's exact count of a model's prompt tokens, with the model's own tokenizer and
/// chat template: the same code as the provider's, so an honest provider bills exactly
/// this many and a dishonest one can bill no more ([`attrinet_p2p::Payer::count_input_with`]).
#[derive(Debug)]
pub struct PromptCount(pub Arc<Model>);

impl attrinet_p2p::PromptCounter for PromptCount {
    fn count(&self, prompt: &Prompt) -> Result<u32, String> {
        prompt_tokens(&self.0, prompt).map(|t| t.len() as u32).map_err(|e| e.to_string())
    }
}

/// What a node advertises about its speed, measured on its own engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speed {
    /// Decode throughput after the first token.
    pub decode_tokens_per_s: u32,
    /// Time to the first token (prefill included), in milliseconds.
    pub ttft_ms: u32,
}

impl EngineGenerator {
    /// Generates `tokens` greedy tokens from a fixed prompt and times them: the figures a
    /// node advertises, so that clients rank it by what it does rather than by a claim.
    pub fn measure(&self, tokens: u32) -> Result<Speed, GenerateError> {
        let prompt = Prompt::Text("The history of the printing press begins".into());
        let start = std::time::Instant::now();
        let mut stamps = Vec::new();
        self.generate(&prompt, tokens.max(2), &Sampling::default(), &mut |_| {
            stamps.push(start.elapsed());
            true
        })?;
        let (Some(first), Some(last)) = (stamps.first(), stamps.last()) else {
            return Err(GenerateError::Engine("it produced no token".into()));
        };
        let decode = last.saturating_sub(*first).as_secs_f64();
        let per_s = if stamps.len() > 1 && decode > 0.0 { (stamps.len() - 1) as f64 / decode } else { 0.0 };
        Ok(Speed { decode_tokens_per_s: per_s.round().max(1.0) as u32, ttft_ms: first.as_millis().max(1) as u32 })
    }
}

impl Generator for EngineGenerator {
    fn count_tokens(&self, prompt: &Prompt) -> Result<u32, GenerateError> {
        Ok(self.tokens(prompt)?.len() as u32)
    }

    fn generate(
        &self,
        prompt: &Prompt,
        max_tokens: u32,
        sampling: &Sampling,
        on_token: &mut dyn FnMut(Generated) -> bool,
    ) -> Result<(), GenerateError> {
        let tokens = self.tokens(prompt)?;
        let tok = self.model.tokenizer();
        let stops = tok.stop_tokens().to_vec();
        let params = GenerateParams {
            max_tokens: max_tokens as usize,
            sampling: SamplingParams {
                temperature: sampling.temperature_milli as f32 / 1000.0,
                top_p: if sampling.top_p_milli == 0 { 1.0 } else { sampling.top_p_milli as f32 / 1000.0 },
                seed: sampling.seed,
            },
            stop_tokens: stops.clone(),
        };
        let mut decoder = tok.stream_decoder();
        let logprobs = sampling.logprobs.map(usize::from);
        self.batcher
            .generate(tokens, params, logprobs, &mut |id, lp| {
                // A stop token ends the answer; it is neither delivered nor billed.
                if stops.contains(&id) {
                    return true;
                }
                let text = decoder.push(id).unwrap_or_default();
                let logprobs = lp.map(|lp| Logprobs {
                    logprob_micros: Logprobs::micros(lp.logprob),
                    top: lp
                        .top
                        .into_iter()
                        .map(|(id, l)| TopLogprob {
                            id,
                            text: tok.decode(&[id]).unwrap_or_default(),
                            logprob_micros: Logprobs::micros(l),
                        })
                        .collect(),
                });
                // `false` once the client is gone: the sequence leaves the batch at the
                // next step.
                on_token(Generated { id, text, logprobs })
            })
            .map(|_| ())
            .map_err(|e| GenerateError::Engine(Box::new(e)))
    }
}
