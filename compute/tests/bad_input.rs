//! Every kind of bad input gives its typed error, never a panic.

use attrinet_compute::testing::TinyLlamaSpec;
use attrinet_compute::{CandleEngine, Engine, Error, GgmlDType, Model};

use crate::util::{gemma3, greedy, smollm2, tiny};

#[test]
fn missing_file() {
    let err = Model::load("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"this is not a model, just some text").unwrap();
    let err = Model::load(&path).unwrap_err();
    assert!(matches!(err, Error::InvalidGguf { .. }), "{err}");
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn truncated_gguf() {
    let t = tiny(&TinyLlamaSpec::default());
    let bytes = std::fs::read(&t.path).unwrap();
    for len in [10, 200, bytes.len() / 2, bytes.len() - 1] {
        let err = Model::from_bytes("cut.gguf".into(), bytes[..len].to_vec()).unwrap_err();
        assert!(matches!(err, Error::InvalidGguf { .. }), "cut at {len}: {err}");
    }
}

#[test]
fn corrupt_header_bytes_never_panic() {
    let t = tiny(&TinyLlamaSpec::default());
    let bytes = std::fs::read(&t.path).unwrap();
    // Flip bytes all over the header: each must load or fail with an error, never abort.
    let mut state = 0x1234_5678_u32;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let i = (state as usize >> 4) % 4096.min(b.len());
            b[i] ^= (state >> 24) as u8 | 1;
        }
        let _ = Model::from_bytes("flipped.gguf".into(), b);
    }
}

#[test]
fn unsupported_architecture() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut bytes = std::fs::read(&t.path).unwrap();
    // Rename the architecture in place: "llama" -> "mamba" keeps every length the same.
    let needle = b"\x05\x00\x00\x00\x00\x00\x00\x00llama";
    let i = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    bytes[i + 8..i + 13].copy_from_slice(b"mamba");
    let err = Model::from_bytes("mamba.gguf".into(), bytes).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedArchitecture { architecture, supported }
            if architecture == "mamba" && supported.contains("gemma3") && supported.contains("qwen3")),
        "{err}"
    );
    // The message names the architecture and what would work instead.
    assert!(err.to_string().contains("`mamba`") && err.to_string().contains("phi3"), "{err}");
}

#[test]
fn unsupported_tensor_type() {
    // Q2_K and Q3_K are rare in the files people download, and not loaded yet.
    let spec = TinyLlamaSpec { weight_type: GgmlDType::Q3K, hidden: 256, ffn: 256, ..TinyLlamaSpec::default() };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q3.gguf");
    attrinet_compute::testing::write_random_llama(&path, &spec).unwrap();
    let err = Model::load(&path).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedTensorType { dtype, .. } if dtype == "Q3K"), "{err}");
}

#[test]
fn prompt_longer_than_the_context() {
    let t = tiny(&TinyLlamaSpec { context_length: 32, ..TinyLlamaSpec::default() });
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let prompt = vec![5u32; 40];
    let err = engine.generate(&prompt, &greedy(4), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::PromptTooLong { prompt_tokens: 40, context_length: 32 }), "{err}");
}

#[test]
fn zero_max_tokens() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let err = engine.generate(&[5, 6], &greedy(0), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::ZeroMaxTokens), "{err}");
}

#[test]
fn token_outside_the_vocabulary_and_empty_prompt() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let vocab = t.model.config().vocab_size;
    let err = engine.generate(&[5, vocab as u32], &greedy(2), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { .. }), "{err}");
    let err = engine.generate(&[], &greedy(2), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::EmptyPrompt), "{err}");
}

#[test]
fn unsupported_pre_tokenizer() {
    let t = tiny(&TinyLlamaSpec::default());
    let name = candle_core::quantized::gguf_file::Value::String("deepseek-llm".to_owned());
    let err = attrinet_compute::testing::tokenizer_with(&t.path, &[("tokenizer.ggml.pre", name)]).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedPreTokenizer { name, .. } if name == "deepseek-llm"), "{err}");
    assert!(err.to_string().contains("llama-bpe"), "the supported names are listed: {err}");
}

/// An engine reads the weights from the file after the model was hashed: a file rewritten
/// in between (same length, one weight byte changed) is refused, not run under the old id.
#[test]
fn a_file_that_changes_after_loading_is_refused() {
    let t = tiny(&TinyLlamaSpec::default());
    let model = Model::load(&t.path).unwrap();
    let mut bytes = std::fs::read(&t.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&t.path, &bytes).unwrap();
    let err = CandleEngine::new(&model).map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::ModelChanged { .. }), "candle: {err}");
    let options = attrinet_compute::WgpuOptions { allow_software: true, ..Default::default() };
    let err = attrinet_compute::WgpuEngine::new(&model, &options).map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::ModelChanged { .. }), "wgpu: {err}");
    // Loaded again, the changed file is a model of its own.
    assert_ne!(Model::load(&t.path).unwrap().id(), model.id());
}

/// The random models `scripts/bench-gpu` times in place of the real files have the real
/// files' shapes (what decode speed depends on): every dimension the engines read, and a
/// file size within a fifth of the real one's (Gemma's real matrices mix five types).
#[test]
fn shaped_models_have_the_real_models_shapes() {
    let dir = tempfile::tempdir().unwrap();
    for ((name, spec), real) in attrinet_compute::testing::shaped_specs().into_iter().zip([smollm2(), gemma3()]) {
        let path = dir.path().join(format!("{name}.gguf"));
        attrinet_compute::testing::write_random_llama(&path, &spec).unwrap();
        let shaped = Model::load(&path).unwrap();
        let (s, r) = (shaped.config(), real.config());
        assert_eq!(
            (s.architecture, s.n_layers, s.hidden, s.ffn, s.n_heads, s.n_kv_heads, s.head_dim, s.vocab_size),
            (r.architecture, r.n_layers, r.hidden, r.ffn, r.n_heads, r.n_kv_heads, r.head_dim, r.vocab_size),
            "{name}"
        );
        assert_eq!((s.context_length, s.sliding_window), (r.context_length, r.sliding_window), "{name}");
        let ratio = shaped.file_len() as f64 / real.file_len() as f64;
        assert!((0.8..1.2).contains(&ratio), "{name}: {} bytes against {}", shaped.file_len(), real.file_len());
    }
}
