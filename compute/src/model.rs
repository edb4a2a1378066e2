//! Loading a GGUF model file: its id, its llama hyper-parameters, tokenizer and chat template.

use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use sha2::{Digest, Sha256};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A model's identity on the network: the SHA-256 of its GGUF file.
///
/// Two nodes that host byte-identical files advertise the same id, so a client can compare
/// providers of one model; any change to the weights or metadata makes a new model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(pub [u8; 32]);

impl ModelId {
    /// The id of a file's content.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ModelId(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

/// Hyper-parameters of a llama-family model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the SwiGLU hidden layer.
    pub ffn: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
}

/// The tensor types that can be loaded at all (the candle backend runs all of them; see each
/// backend for what it computes with).
pub(crate) const LOADABLE_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// [`LOADABLE_TYPES`] as a person reads them.
pub(crate) const LOADABLE_NAMES: &str = "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K";

/// A GGUF model loaded into memory: metadata, tokenizer and the raw file.
///
/// The file's bytes are kept so that engines can read tensors from memory without the file
/// changing under them between hashing and loading (the id must describe what runs).
pub struct Model {
    path: PathBuf,
    id: ModelId,
    bytes: Vec<u8>,
    content: Content,
    config: LlamaConfig,
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    name: Option<String>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("config", &self.config)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads, hashes and validates a GGUF file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        Self::from_bytes(path, bytes)
    }

    /// Validates a GGUF file already in memory; `path` only names it in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let id = ModelId::of_bytes(&bytes);
        crate::gguf_check::check_header(&bytes).map_err(|reason| Error::InvalidGguf { path: path.clone(), reason })?;
        let content = Content::read(&mut Cursor::new(&bytes))
            .map_err(|e| Error::InvalidGguf { path: path.clone(), reason: e.to_string() })?;
        let md = &content.metadata;

        let arch = get_str(md, "general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture { architecture: arch.to_owned() });
        }
        if md.get("llama.expert_count").and_then(|v| v.to_u32().ok()).unwrap_or(0) > 1 {
            return Err(Error::UnsupportedArchitecture { architecture: "llama with mixture of experts".to_owned() });
        }

        let config = read_config(&content)?;
        check_tensors(&path, &content, &config, bytes.len())?;
        let tokenizer = Tokenizer::from_gguf(md)?;
        if tokenizer.vocab_size() != config.vocab_size {
            return Err(Error::Tokenizer {
                reason: format!(
                    "{} tokens in tokenizer.ggml.tokens but the embedding has {} rows",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let jinja = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok());
        let chat_template = ChatTemplate::detect(jinja.map(String::as_str), &tokenizer);
        let name = md.get("general.name").and_then(|v| v.to_string().ok()).cloned();
        Ok(Model { path, id, bytes, content, config, tokenizer, chat_template, name })
    }

    /// The SHA-256 of the file.
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.name`, if the file has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The llama hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer built from the GGUF metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// How chats are rendered for this model (see [`ChatTemplate`]).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat_template
    }

    /// Tokens of a user message wrapped in the model's chat template, ready to generate the
    /// assistant's answer.
    pub fn chat_prompt(&self, user_message: &str) -> Result<Vec<u32>> {
        self.chat_template.encode_user_turn(&self.tokenizer, user_message)
    }

    /// Tokens of a conversation in the model's chat template, ready to generate the
    /// assistant's next answer.
    pub fn chat_tokens(&self, messages: &[crate::ChatTurn<'_>]) -> Result<Vec<u32>> {
        self.chat_template.encode(&self.tokenizer, messages)
    }

    /// The GGML type of a tensor, if the file has it.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw bytes of a tensor's data (GGML blocks), with its type and candle-order shape
    /// (`[rows, columns]` for matrices).
    pub(crate) fn tensor_data(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, &[u8])> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::BadTensor { tensor: name.to_owned(), reason: "absent from the file".to_owned() })?;
        let size = tensor_size(info.ggml_dtype, info.shape.elem_count());
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        // check_tensors already proved every tensor lies inside the file.
        let data = &self.bytes[start..start + size];
        Ok((info.ggml_dtype, info.shape.dims().to_vec(), data))
    }

    /// The embedding matrix doubles as the output projection when `output.weight` is absent
    /// (tied embeddings, as in SmolLM2).
    pub(crate) fn output_tensor_name(&self) -> &'static str {
        if self.content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" }
    }
}

fn tensor_size(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value> {
    md.get(key).ok_or_else(|| Error::metadata(key, "absent"))
}

fn get_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str> {
    get(md, key)?.to_string().map(String::as_str).map_err(|e| Error::metadata(key, e.to_string()))
}

fn get_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    let v = get(md, key)?;
    // Writers disagree on integer widths; accept any non-negative integer.
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => {
            return Err(Error::metadata(key, format!("expected a non-negative integer, found {other:?}")));
        }
    };
    usize::try_from(n).map_err(|_| Error::metadata(key, format!("{n} does not fit in usize")))
}

fn get_f32(md: &HashMap<String, Value>, key: &str) -> Result<f32> {
    match get(md, key)? {
        Value::F32(x) => Ok(*x),
        Value::F64(x) => Ok(*x as f32),
        other => Err(Error::metadata(key, format!("expected a float, found {other:?}"))),
    }
}

fn read_config(content: &Content) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let n_layers = get_usize(md, "llama.block_count")?;
    let hidden = get_usize(md, "llama.embedding_length")?;
    let ffn = get_usize(md, "llama.feed_forward_length")?;
    let n_heads = get_usize(md, "llama.attention.head_count")?;
    let n_kv_heads = get_usize(md, "llama.attention.head_count_kv").unwrap_or(n_heads);
    let context_length = get_usize(md, "llama.context_length")?;
    let rms_eps = get_f32(md, "llama.attention.layer_norm_rms_epsilon")?;
    let rope_theta = get_f32(md, "llama.rope.freq_base").unwrap_or(10_000.0);
    let embd = content.tensor_infos.get("token_embd.weight").ok_or_else(|| Error::BadTensor {
        tensor: "token_embd.weight".to_owned(),
        reason: "absent from the file".to_owned(),
    })?;
    let vocab_size = match embd.shape.dims() {
        [rows, _] => *rows,
        dims => {
            return Err(Error::BadTensor {
                tensor: "token_embd.weight".to_owned(),
                reason: format!("expected a matrix, found shape {dims:?}"),
            });
        }
    };

    let positive = [
        ("llama.block_count", n_layers),
        ("llama.embedding_length", hidden),
        ("llama.feed_forward_length", ffn),
        ("llama.attention.head_count", n_heads),
        ("llama.attention.head_count_kv", n_kv_heads),
        ("llama.context_length", context_length),
    ];
    for (key, v) in positive {
        if v == 0 {
            return Err(Error::metadata(key, "must be positive"));
        }
    }
    if hidden % n_heads != 0 {
        return Err(Error::metadata(
            "llama.attention.head_count",
            format!("{n_heads} heads do not divide the embedding length {hidden}"),
        ));
    }
    if n_heads % n_kv_heads != 0 {
        return Err(Error::metadata(
            "llama.attention.head_count_kv",
            format!("{n_kv_heads} key/value heads do not divide {n_heads} query heads"),
        ));
    }
    let head_dim = hidden / n_heads;
    if head_dim % 2 != 0 {
        return Err(Error::metadata(
            "llama.attention.head_count",
            format!("head width {head_dim} is odd; RoPE rotates pairs"),
        ));
    }
    if let Ok(rope_dim) = get_usize(md, "llama.rope.dimension_count")
        && rope_dim != head_dim
    {
        return Err(Error::metadata(
            "llama.rope.dimension_count",
            format!("partial RoPE ({rope_dim} of {head_dim} dimensions) is not supported"),
        ));
    }
    Ok(LlamaConfig {
        n_layers,
        hidden,
        ffn,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        context_length,
        rms_eps,
        rope_theta,
    })
}

/// Expected `[rows, columns]` of every tensor the engines read.
pub(crate) fn expected_shapes(c: &LlamaConfig, has_output: bool) -> Vec<(String, Vec<usize>)> {
    let kv = c.n_kv_heads * c.head_dim;
    let mut v = vec![
        ("token_embd.weight".to_owned(), vec![c.vocab_size, c.hidden]),
        ("output_norm.weight".to_owned(), vec![c.hidden]),
    ];
    if has_output {
        v.push(("output.weight".to_owned(), vec![c.vocab_size, c.hidden]));
    }
    for l in 0..c.n_layers {
        let p = format!("blk.{l}");
        v.push((format!("{p}.attn_norm.weight"), vec![c.hidden]));
        v.push((format!("{p}.attn_q.weight"), vec![c.hidden, c.hidden]));
        v.push((format!("{p}.attn_k.weight"), vec![kv, c.hidden]));
        v.push((format!("{p}.attn_v.weight"), vec![kv, c.hidden]));
        v.push((format!("{p}.attn_output.weight"), vec![c.hidden, c.hidden]));
        v.push((format!("{p}.ffn_norm.weight"), vec![c.hidden]));
        v.push((format!("{p}.ffn_gate.weight"), vec![c.ffn, c.hidden]));
        v.push((format!("{p}.ffn_up.weight"), vec![c.ffn, c.hidden]));
        v.push((format!("{p}.ffn_down.weight"), vec![c.hidden, c.ffn]));
    }
    v
}

fn check_tensors(path: &Path, content: &Content, config: &LlamaConfig, file_len: usize) -> Result<()> {
    for (name, info) in &content.tensor_infos {
        if !LOADABLE_TYPES.contains(&info.ggml_dtype) {
            return Err(Error::UnsupportedTensorType {
                tensor: name.clone(),
                dtype: format!("{:?}", info.ggml_dtype),
                backend: "any",
                supported: LOADABLE_NAMES,
            });
        }
        let elems = info.shape.elem_count();
        if elems % info.ggml_dtype.block_size() != 0 {
            return Err(Error::BadTensor {
                tensor: name.clone(),
                reason: format!(
                    "{elems} elements are not a whole number of {:?} blocks of {}",
                    info.ggml_dtype,
                    info.ggml_dtype.block_size()
                ),
            });
        }
        let end =
            (content.tensor_data_offset as u128) + (info.offset as u128) + tensor_size(info.ggml_dtype, elems) as u128;
        if end > file_len as u128 {
            return Err(Error::InvalidGguf {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated?)"),
            });
        }
    }
    let has_output = content.tensor_infos.contains_key("output.weight");
    for (name, shape) in expected_shapes(config, has_output) {
        let info = content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| Error::BadTensor { tensor: name.clone(), reason: "absent from the file".to_owned() })?;
        if info.shape.dims() != shape.as_slice() {
            return Err(Error::BadTensor {
                tensor: name.clone(),
                reason: format!("shape {:?} does not match {:?} implied by the metadata", info.shape.dims(), shape),
            });
        }
    }
    Ok(())
}
