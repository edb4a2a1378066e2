//! Integration tests of attrinet-compute (one binary; helpers in `util`).

mod util;

mod bad_input;
mod batch;
mod candle_engine;
mod chat;
mod llama_reference;
mod tokenizer;
mod wgpu_engine;
