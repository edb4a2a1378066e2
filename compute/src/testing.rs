//! Tiny llama models with random weights, written as GGUF files: for tests, examples and
//! benchmarks that must not depend on a downloaded model.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::Architecture;

/// The shape and storage of a random model of any supported architecture (llama unless
/// `architecture` says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyLlamaSpec {
    /// Which architecture's metadata and tensors the file has.
    pub architecture: Architecture,
    /// Width of one head, written as `attention.key_length` (else the width over the heads).
    pub head_dim: Option<usize>,
    /// Gemma 3's sliding window (its sixth layers are global).
    pub sliding_window: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual width (a multiple of 32 for quantized types).
    pub hidden: usize,
    /// SwiGLU width (a multiple of 32 for quantized types).
    pub ffn: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Context length written to the metadata.
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Type of the attention and feed-forward matrices.
    pub weight_type: GgmlDType,
    /// Type of the embedding (and output, when untied).
    pub embedding_type: GgmlDType,
    /// Whether the output projection reuses the embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Seed of the weights.
    pub seed: u64,
    /// Which kind of tokenizer the file carries.
    pub tokenizer: TinyTokenizer,
    /// Llama 3's RoPE frequency factors (`rope_freqs.weight`): 1 for the fastest rotating
    /// pairs of a head rising to 8 for the slowest, as Llama 3.x files have them.
    pub rope_freq_factors: bool,
    /// Pad the byte-level vocabulary with unused tokens to this many (a real model's
    /// embedding and output shapes); `None`: the tokenizer's own few hundred.
    pub vocab_size: Option<usize>,
}

/// The tokenizer of a tiny model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TinyTokenizer {
    /// Byte-level BPE with ChatML special tokens (like SmolLM2).
    #[default]
    ByteLevel,
    /// SentencePiece with `<0xXX>` byte fallback, BOS and a Zephyr template (like TinyLlama).
    SentencePiece,
    /// Byte-level BPE with Llama 3's special tokens and chat template ([`LLAMA3_TEMPLATE`]).
    Llama3,
}

/// Meta-Llama-3-8B-Instruct's chat template (`scripts/chat-template-reference` renders the
/// same text with Jinja2 for the tests).
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'\
+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}\
{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

impl Default for TinyLlamaSpec {
    fn default() -> Self {
        TinyLlamaSpec {
            architecture: Architecture::Llama,
            head_dim: None,
            sliding_window: 8,
            n_layers: 2,
            hidden: 64,
            ffn: 128,
            n_heads: 4,
            n_kv_heads: 2,
            context_length: 256,
            rope_theta: 10_000.0,
            weight_type: GgmlDType::Q4_1,
            embedding_type: GgmlDType::Q8_0,
            tied_embeddings: false,
            seed: 1,
            tokenizer: TinyTokenizer::ByteLevel,
            rope_freq_factors: false,
            vocab_size: None,
        }
    }
}

/// Merges of the tiny tokenizer: enough to exercise BPE on English-looking text.
const MERGES: &[(&str, &str)] = &[
    ("h", "e"),
    ("Ġ", "t"),
    ("Ġt", "he"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("l", "l"),
    ("Ġ", "s"),
];

/// Special tokens of the tiny tokenizer, ChatML-style.
const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const LLAMA3_SPECIALS: &[&str] = &["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

/// Vocabulary of the tiny models: 256 byte tokens, the merged tokens, then the specials.
fn tiny_vocab(specials: &[&str], size: Option<usize>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
        v.push(c.to_string());
    }
    for (a, b) in MERGES {
        v.push(format!("{a}{b}"));
    }
    // Tokens no merge reaches, before the specials (which stay last).
    let pad = size.unwrap_or(0).saturating_sub(v.len() + specials.len());
    v.extend((0..pad).map(|i| format!("<unused{i}>")));
    v.extend(specials.iter().map(|s| s.to_string()));
    v
}

fn byte_level_metadata(llama3: bool, size: Option<usize>) -> (usize, Vec<(&'static str, Value)>) {
    let specials = if llama3 { LLAMA3_SPECIALS } else { SPECIALS };
    let vocab = tiny_vocab(specials, size);
    let n = vocab.len();
    let token_types: Vec<Value> = (0..n).map(|i| Value::I32(if i >= n - specials.len() { 3 } else { 1 })).collect();
    let merges: Vec<Value> = MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect();
    let im_end = (n - 1) as u32;
    if llama3 {
        let first = (n - specials.len()) as u32;
        let md = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("llama-bpe".into())),
            ("tokenizer.ggml.tokens", Value::Array(vocab.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type", Value::Array(token_types)),
            ("tokenizer.ggml.merges", Value::Array(merges)),
            ("tokenizer.ggml.bos_token_id", Value::U32(first)),
            ("tokenizer.ggml.eos_token_id", Value::U32(first + 3)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.chat_template", Value::String(LLAMA3_TEMPLATE.into())),
        ];
        return (n, md);
    }
    let md = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(vocab.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(token_types)),
        ("tokenizer.ggml.merges", Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(im_end - 2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(im_end)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
                 message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                    .into(),
            ),
        ),
    ];
    (n, md)
}

/// SentencePiece pieces after the letters, best (highest score) first.
const PIECES: &[&str] = &["▁t", "he", "▁the", "▁a", "in", "er", "at", "▁c", "▁cat", "▁s", "on", "an", "▁m", "▁mat"];

/// A llama-style SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens,
/// `▁`, the lowercase letters and [`PIECES`].
fn sentencepiece_metadata() -> (usize, Vec<(&'static str, Value)>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let singles = std::iter::once("▁".to_owned()).chain(('a'..='z').map(String::from));
    for (i, t) in singles.enumerate() {
        tokens.push(t);
        types.push(1);
        scores.push(-1000.0 - i as f32);
    }
    for (i, p) in PIECES.iter().enumerate() {
        tokens.push((*p).to_owned());
        types.push(1);
        scores.push(-(i as f32));
    }
    let n = tokens.len();
    let md = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + \
                 message['content'] + eos_token }}{% endif %}{% if loop.last %}{{ '<|assistant|>' }}\
                 {% endif %}{% endfor %}"
                    .into(),
            ),
        ),
    ];
    (n, md)
}

/// xorshift64*: reproducible random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Uniform in [-1, 1).
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn tensor(&mut self, rows: usize, cols: usize, scale: f32, offset: f32) -> Result<Tensor> {
        let data: Vec<f32> = (0..rows * cols).map(|_| offset + scale * self.next_f32()).collect();
        let shape: Vec<usize> = if rows == 1 { vec![cols] } else { vec![rows, cols] };
        Tensor::from_vec(data, shape, &Device::Cpu).map_err(Error::candle("building a random tensor"))
    }
}

/// Writes a random model (of `spec.architecture`) to `path`.
pub fn write_random_llama(path: &Path, spec: &TinyLlamaSpec) -> Result<()> {
    let (n_vocab, tokenizer_md) = match spec.tokenizer {
        TinyTokenizer::ByteLevel => byte_level_metadata(false, spec.vocab_size),
        TinyTokenizer::Llama3 => byte_level_metadata(true, spec.vocab_size),
        TinyTokenizer::SentencePiece => sentencepiece_metadata(),
    };
    if spec.vocab_size.is_some_and(|v| v != n_vocab) {
        return Err(Error::Tokenizer {
            reason: format!("a vocabulary of {:?} tokens cannot be made for {:?}", spec.vocab_size, spec.tokenizer),
        });
    }
    let head_dim = spec.head_dim.unwrap_or(spec.hidden / spec.n_heads);
    let kv = spec.n_kv_heads * head_dim;
    let q = spec.n_heads * head_dim;
    let arch = spec.architecture;
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);

    let quantize = |t: Tensor, dtype: GgmlDType| {
        QTensor::quantize(&t, dtype).map_err(Error::candle(format!("quantizing to {dtype:?}")))
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let h = spec.hidden;
    // Scales keep activations of order 1 through the layers and give the logits a spread
    // wide enough that greedy decoding is not a coin toss between near-equal tokens.
    let s_in = 1.0 / (h as f32).sqrt();
    // Tied embeddings are kept small and the final norm large: otherwise the residual
    // stream is dominated by the current token's embedding, and a model whose output
    // matrix is that embedding predicts its input token forever. Gemma multiplies its
    // embedding by the square root of the width, so its rows start that much smaller.
    let (mut embd_scale, out_norm) = if spec.tied_embeddings { (0.15, 3.0) } else { (0.5, 1.0) };
    if arch == Architecture::Gemma3 {
        embd_scale /= (h as f32).sqrt();
    }
    let f32t = GgmlDType::F32;
    tensors
        .push(("token_embd.weight".into(), quantize(rng.tensor(n_vocab, h, embd_scale, 0.0)?, spec.embedding_type)?));
    tensors.push(("output_norm.weight".into(), quantize(rng.tensor(1, h, 0.2, out_norm)?, f32t)?));
    if !spec.tied_embeddings {
        tensors.push(("output.weight".into(), quantize(rng.tensor(n_vocab, h, 0.5, 0.0)?, spec.embedding_type)?));
    }
    if spec.rope_freq_factors {
        let n = head_dim / 2;
        let factors: Vec<f32> = (0..n).map(|i| 1.0 + 7.0 * i as f32 / (n - 1).max(1) as f32).collect();
        let t = Tensor::from_vec(factors, n, &Device::Cpu).map_err(Error::candle("rope factors"))?;
        tensors.push(("rope_freqs.weight".into(), quantize(t, f32t)?));
    }
    let s_ffn = 1.0 / (spec.ffn as f32).sqrt();
    let s_q = 1.0 / (q as f32).sqrt();
    for l in 0..spec.n_layers {
        let p = format!("blk.{l}");
        let w = spec.weight_type;
        let mut push = |name: &str, t: Tensor, dtype: GgmlDType| -> Result<()> {
            tensors.push((format!("{p}.{name}"), quantize(t, dtype)?));
            Ok(())
        };
        push("attn_norm.weight", rng.tensor(1, h, 0.2, 1.0)?, f32t)?;
        if arch == Architecture::Phi3 {
            push("attn_qkv.weight", rng.tensor(q + 2 * kv, h, 2.0 * s_in, 0.0)?, w)?;
        } else {
            push("attn_q.weight", rng.tensor(q, h, 2.0 * s_in, 0.0)?, w)?;
            push("attn_k.weight", rng.tensor(kv, h, 2.0 * s_in, 0.0)?, w)?;
            push("attn_v.weight", rng.tensor(kv, h, s_in, 0.0)?, w)?;
        }
        if arch == Architecture::Qwen2 {
            push("attn_q.bias", rng.tensor(1, q, 0.5, 0.0)?, f32t)?;
            push("attn_k.bias", rng.tensor(1, kv, 0.5, 0.0)?, f32t)?;
            push("attn_v.bias", rng.tensor(1, kv, 0.2, 0.0)?, f32t)?;
        }
        if matches!(arch, Architecture::Qwen3 | Architecture::Gemma3) {
            // Normalised heads have entries of order 1, so scores of order 1 after the
            // 1/sqrt(head width) scale: attention neither uniform nor one-hot.
            push("attn_q_norm.weight", rng.tensor(1, head_dim, 0.2, 1.0)?, f32t)?;
            push("attn_k_norm.weight", rng.tensor(1, head_dim, 0.2, 1.0)?, f32t)?;
        }
        push("attn_output.weight", rng.tensor(h, q, s_q, 0.0)?, w)?;
        if arch == Architecture::Gemma3 {
            push("post_attention_norm.weight", rng.tensor(1, h, 0.2, 1.0)?, f32t)?;
            push("post_ffw_norm.weight", rng.tensor(1, h, 0.2, 1.0)?, f32t)?;
        }
        push("ffn_norm.weight", rng.tensor(1, h, 0.2, 1.0)?, f32t)?;
        if arch == Architecture::Phi3 {
            push("ffn_up.weight", rng.tensor(2 * spec.ffn, h, s_in, 0.0)?, w)?;
        } else {
            push("ffn_gate.weight", rng.tensor(spec.ffn, h, s_in, 0.0)?, w)?;
            push("ffn_up.weight", rng.tensor(spec.ffn, h, s_in, 0.0)?, w)?;
        }
        push("ffn_down.weight", rng.tensor(h, spec.ffn, s_ffn, 0.0)?, w)?;
    }

    let u32v = |x: usize| Value::U32(x as u32);
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(format!("tiny random {a} (seed {})", spec.seed))),
        (key("block_count"), u32v(spec.n_layers)),
        (key("context_length"), u32v(spec.context_length)),
        (key("embedding_length"), u32v(h)),
        (key("feed_forward_length"), u32v(spec.ffn)),
        (key("attention.head_count"), u32v(spec.n_heads)),
        (key("attention.head_count_kv"), u32v(spec.n_kv_heads)),
        (key("rope.freq_base"), Value::F32(spec.rope_theta)),
        (key("rope.dimension_count"), u32v(head_dim)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
    ];
    if spec.head_dim.is_some() {
        metadata.push((key("attention.key_length"), u32v(head_dim)));
        metadata.push((key("attention.value_length"), u32v(head_dim)));
    }
    if arch == Architecture::Gemma3 {
        metadata.push((key("attention.sliding_window"), u32v(spec.sliding_window)));
    }
    metadata.extend(tokenizer_md.into_iter().map(|(k, v)| (k.to_owned(), v)));
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    gguf_file::write(&mut file, &md, &ts).map_err(Error::candle("writing the GGUF file"))?;
    std::io::Write::flush(&mut file).map_err(io)?;
    Ok(())
}

/// Every tensor type a model file may use, each of which both backends compute with.
pub const TENSOR_TYPES: &[GgmlDType] = crate::model::LOADABLE_TYPES;

/// The types llama.cpp's Q4_K_M gives a llama model's tensors, as far as a tensor's width
/// allows: a matrix whose rows cannot hold 256-value K-quant blocks falls back to Q5_0 (the
/// embedding, to Q8_0); ffn_down is Q4_K, and Q6_K in every other layer, as llama.cpp spends
/// more bits on some; norms stay F32. For SmolLM2 (576 wide) that is Q5_0, Q8_0, Q4_K and
/// Q6_K, the types llama.cpp's own Q4_K_M of it has.
pub fn q4_k_m_types(name: &str, shape: &[usize]) -> GgmlDType {
    let k_blocks = shape.last().is_some_and(|c| c.is_multiple_of(256));
    let layer: usize = name.split('.').nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
    match name {
        n if n.ends_with("norm.weight") => GgmlDType::F32,
        "token_embd.weight" | "output.weight" if k_blocks => GgmlDType::Q6K,
        "token_embd.weight" | "output.weight" => GgmlDType::Q8_0,
        n if n.ends_with("ffn_down.weight") && k_blocks && layer.is_multiple_of(2) => GgmlDType::Q6K,
        _ if k_blocks => GgmlDType::Q4K,
        _ => GgmlDType::Q5_0,
    }
}

/// Writes a copy of the GGUF file at `src` to `dst` with every tensor re-quantized to the
/// type `choose` gives for its name and shape (metadata unchanged): real models in the mix
/// of types a quantizer makes, e.g. Q4_K_M's, from the one file the tests download.
pub fn requantize(src: &Path, dst: &Path, choose: &dyn Fn(&str, &[usize]) -> GgmlDType) -> Result<()> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io { path: path.to_path_buf(), source }
    }
    let mut reader = std::io::BufReader::new(std::fs::File::open(src).map_err(io(src))?);
    let content = gguf_file::Content::read(&mut reader).map_err(Error::candle("reading the GGUF file"))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let q = content.tensor(&mut reader, name, &Device::Cpu).map_err(Error::candle(format!("reading {name}")))?;
        let dtype = choose(name, q.shape().dims());
        let values = q.dequantize(&Device::Cpu).map_err(Error::candle(format!("dequantizing {name}")))?;
        let q = QTensor::quantize(&values, dtype).map_err(Error::candle(format!("quantizing {name} to {dtype:?}")))?;
        tensors.push((name.as_str(), q));
    }
    let md: Vec<(&str, &Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dst).map_err(io(dst))?);
    gguf_file::write(&mut file, &md, &ts).map_err(Error::candle("writing the GGUF file"))?;
    std::io::Write::flush(&mut file).map_err(io(dst))?;
    Ok(())
}

/// The tokenizer of the GGUF file at `path` with some of its metadata replaced: another
/// pre-tokenizer over a real vocabulary, say, without writing a second file.
pub fn tokenizer_with(path: &Path, overrides: &[(&str, Value)]) -> Result<crate::Tokenizer> {
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?,
    );
    let mut content = gguf_file::Content::read(&mut reader).map_err(Error::candle("reading the GGUF file"))?;
    for (key, value) in overrides {
        content.metadata.insert((*key).to_owned(), value.clone());
    }
    crate::Tokenizer::from_gguf(&content.metadata)
}

/// Random models with the shapes of the real ones this project serves (SmolLM2-135M
/// Instruct Q4_1, Gemma 3 270M Q4_K_M, whose most common matrix type is Q5_0): for speed
/// measurements where only the shapes matter (`scripts/bench-gpu` writes them on a machine
/// that has no copy of the real files). Greedy output from them is noise.
pub fn shaped_specs() -> Vec<(&'static str, TinyLlamaSpec)> {
    vec![
        (
            "smollm2-135m-shaped",
            TinyLlamaSpec {
                n_layers: 30,
                hidden: 576,
                ffn: 1536,
                n_heads: 9,
                n_kv_heads: 3,
                context_length: 8192,
                rope_theta: 100_000.0,
                weight_type: GgmlDType::Q4_1,
                embedding_type: GgmlDType::Q8_0,
                tied_embeddings: true,
                vocab_size: Some(49_152),
                ..TinyLlamaSpec::default()
            },
        ),
        (
            "gemma3-270m-shaped",
            TinyLlamaSpec {
                architecture: Architecture::Gemma3,
                head_dim: Some(256),
                sliding_window: 512,
                n_layers: 18,
                hidden: 640,
                ffn: 2048,
                n_heads: 4,
                n_kv_heads: 1,
                context_length: 32_768,
                rope_theta: 1_000_000.0,
                weight_type: GgmlDType::Q5_0,
                embedding_type: GgmlDType::Q8_0,
                tied_embeddings: true,
                vocab_size: Some(262_144),
                ..TinyLlamaSpec::default()
            },
        ),
    ]
}

/// One tiny model of every architecture (and llama with Llama 3's RoPE factors), in F32 (so that only the architectures' arithmetic,
/// not quantization, can differ from another implementation): what
/// `scripts/llama-reference` has llama.cpp run (the files written by the `write-tiny`
/// example) and the tests compare both backends with. Changing one changes its file's hash,
/// which the tests check against the reference, so the reference must then be remade.
///
/// No Phi-3: llama.cpp's vocabulary loader refuses a tiny Phi-3 file with either tiny
/// tokenizer (`unordered_map::at`, a token it looks up by name), so phi3 is compared with
/// the candle path only.
pub fn reference_specs() -> Vec<(&'static str, TinyLlamaSpec)> {
    let f32 = TinyLlamaSpec { weight_type: GgmlDType::F32, embedding_type: GgmlDType::F32, ..TinyLlamaSpec::default() };
    vec![
        ("llama", TinyLlamaSpec { seed: 201, ..f32.clone() }),
        ("llama3", TinyLlamaSpec { rope_freq_factors: true, seed: 206, ..f32.clone() }),
        ("qwen2", TinyLlamaSpec { architecture: Architecture::Qwen2, seed: 202, ..f32.clone() }),
        ("qwen3", TinyLlamaSpec { architecture: Architecture::Qwen3, head_dim: Some(32), seed: 203, ..f32.clone() }),
        (
            "gemma3",
            TinyLlamaSpec { architecture: Architecture::Gemma3, head_dim: Some(32), n_layers: 6, seed: 204, ..f32 },
        ),
    ]
}
