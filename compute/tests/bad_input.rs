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

/// `bytes` (a GGUF v3 file written with the default alignment, 32) with `general.alignment`
/// of type `ty` and value `value` as its first metadata entry, and a string entry whose
/// length makes the whole insertion 64 bytes: everything after moves by 64, so with an
/// alignment of 32 the tensor data still starts where the header says.
fn with_alignment(bytes: &[u8], ty: u32, value: &[u8]) -> Vec<u8> {
    let mut entries = Vec::new();
    let key = |e: &mut Vec<u8>, k: &str| {
        e.extend_from_slice(&(k.len() as u64).to_le_bytes());
        e.extend_from_slice(k.as_bytes());
    };
    key(&mut entries, "general.alignment");
    entries.extend_from_slice(&ty.to_le_bytes());
    entries.extend_from_slice(value);
    key(&mut entries, "x.pad");
    entries.extend_from_slice(&8u32.to_le_bytes()); // a string
    let pad = 64 - (entries.len() + 8);
    entries.extend_from_slice(&(pad as u64).to_le_bytes());
    entries.extend(std::iter::repeat_n(b' ', pad));
    assert_eq!(entries.len(), 64);
    let mut out = bytes[..24].to_vec();
    let n_kv = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    out[16..24].copy_from_slice(&(n_kv + 2).to_le_bytes());
    out.extend_from_slice(&entries);
    out.extend_from_slice(&bytes[24..]);
    out
}

/// A `general.alignment` of 0 made candle's GGUF loader divide by zero, a panic that no
/// caller could catch (issue 15: "a `general.alignment` of 0 panics candle's loader"). It
/// is refused with a typed error, as is one that is not a power of two or not an integer,
/// whether the file is loaded from disk, from memory, or only its header is read.
#[test]
fn an_alignment_of_zero_or_not_a_power_of_two_is_refused() {
    let t = tiny(&TinyLlamaSpec::default());
    let bytes = std::fs::read(&t.path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (ty, value, says) in [
        (4u32, 0u32.to_le_bytes().to_vec(), "is 0"),
        (4, 48u32.to_le_bytes().to_vec(), "is 48"),
        (0, vec![0u8], "is 0"),
        (5, (-32i32).to_le_bytes().to_vec(), "is -32"),
        (10, 32u64.to_le_bytes().to_vec(), "value type 10"),
    ] {
        let b = with_alignment(&bytes, ty, &value);
        let path = dir.path().join("aligned.gguf");
        std::fs::write(&path, &b).unwrap();
        let errors = [
            Model::from_bytes("aligned.gguf".into(), b.clone()).unwrap_err(),
            Model::load(&path).unwrap_err(),
            Model::read_header(&path, &b, b.len() as u64).unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, Error::InvalidGguf { .. }), "{err}");
            let message = err.to_string();
            assert!(message.contains("general.alignment") && message.contains(says), "{message}");
        }
    }
    // A power of two loads.
    let b = with_alignment(&bytes, 4, &32u32.to_le_bytes());
    let model = Model::from_bytes("aligned.gguf".into(), b).unwrap();
    assert_eq!(model.config(), t.model.config());
}

/// Reading only a header checks what loading checks, without the tensor data: the tiny
/// model's header with its file length gives the loaded model's config and vocabulary, and
/// the same header claiming to be the whole file is refused (its tensors lie past the end).
#[test]
fn a_header_alone_is_checked_as_the_whole_file() {
    let t = tiny(&TinyLlamaSpec::default());
    let bytes = std::fs::read(&t.path).unwrap();
    let len = bytes.len() as u64;
    let header_len = (1..bytes.len()).find(|&n| Model::read_header(&t.path, &bytes[..n], len).is_ok()).unwrap();
    let header = Model::read_header(&t.path, &bytes[..header_len], len).unwrap();
    assert_eq!(&header.config, t.model.config());
    assert_eq!(header.tokenizer.vocab_size(), t.model.tokenizer().vocab_size());
    assert_eq!(header.chat_template, *t.model.chat_template());
    let err = Model::read_header(&t.path, &bytes[..header_len], header_len as u64).unwrap_err();
    assert!(matches!(err, Error::InvalidGguf { .. }) && err.to_string().contains("larger than the file"), "{err}");
    let err = Model::read_header(&t.path, &bytes[..header_len - 1], len).unwrap_err();
    assert!(err.to_string().contains("runs past"), "{err}");
}

/// A header claiming billions of layers made the loader list every layer's expected
/// tensors before comparing them with the file's few, allocating until the process died
/// (found by the gguf_header fuzz target, issue 15). The layer count is held to the
/// tensors the file has.
#[test]
fn a_layer_count_beyond_the_files_tensors_is_refused_before_anything_is_allocated() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut bytes = std::fs::read(&t.path).unwrap();
    let key = b"llama.block_count\x04\x00\x00\x00";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = Model::from_bytes("layers.gguf".into(), bytes).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("block_count") && message.contains("4294967295"), "{message}");
}
