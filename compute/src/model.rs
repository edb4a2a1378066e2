//! Loading a GGUF model file: its id, architecture, hyper-parameters, tokenizer and chat template.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use sha2::{Digest, Sha256};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf_check::HeaderCheck;
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

/// The transformer families this crate runs, named as `general.architecture` names them.
///
/// Each is described by the features of [`ModelConfig`] rather than by code of its own, so
/// both backends run every one through the same forward pass (llama.cpp's model graphs are
/// the reference for what each feature means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Llama 1-3 (with Llama 3's RoPE frequency factors), Mistral, SmolLM, TinyLlama.
    Llama,
    /// Qwen 2 and 2.5: biases on the query, key and value projections.
    Qwen2,
    /// Qwen 3: RMSNorm of each query and key head.
    Qwen3,
    /// Gemma 3: GeGLU, norms after attention and MLP, embedding scaling, interleaved
    /// sliding-window and global layers with their own RoPE bases.
    Gemma3,
    /// Phi-3: fused query/key/value and gate/up matrices.
    Phi3,
}

/// The architectures [`Architecture`] covers, as a person reads them.
pub const SUPPORTED_ARCHITECTURES: &str = "llama (also Mistral and Llama 3), qwen2, qwen3, gemma3, phi3";

impl Architecture {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "gemma3" => Architecture::Gemma3,
            "phi3" => Architecture::Phi3,
            _ => return None,
        })
    }

    /// The `general.architecture` value, which also prefixes the file's hyper-parameters.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
        }
    }
}

/// The MLP's activation on its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

/// Hyper-parameters and structural features of a model, read from GGUF metadata and
/// tensor names.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture the file declares.
    pub architecture: Architecture,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP's hidden layer.
    pub ffn: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head (`attention.key_length`, else the embedding over the heads).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency (of the global layers, where layers differ).
    pub rope_theta: f32,
    /// RoPE base frequency of sliding-window layers.
    pub rope_theta_local: f32,
    /// Linear RoPE position scaling of the global layers (1 = none).
    pub rope_scale: f32,
    /// Whether RoPE rotates the pairs (i, i + head_dim / 2) (GPT-NeoX style, as Qwen, Gemma
    /// and Phi-3 do) rather than adjacent pairs (2i, 2i + 1), the llama layout of GGUF.
    pub rope_neox: bool,
    /// Per-frequency divisors of RoPE (`rope_freqs.weight`, Llama 3.1's scaling).
    pub rope_freq_factors: bool,
    /// Keys a sliding-window layer sees, counting the query's own position.
    pub sliding_window: Option<usize>,
    /// Every this-many-th layer is global, the others slide (with `sliding_window`).
    pub sliding_pattern: usize,
    /// Scale of the attention scores.
    pub attention_scale: f32,
    /// Factor on the embedding rows (Gemma: the square root of the width).
    pub embedding_scale: Option<f32>,
    /// Activation of the MLP.
    pub activation: Activation,
    /// Biases on the q, k, v projections (`attn_q.bias`, ...).
    pub qkv_bias: bool,
    /// RMSNorm of every query and key head (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and MLP outputs before the residual add.
    pub post_norms: bool,
    /// One `attn_qkv` matrix instead of three.
    pub fused_qkv: bool,
    /// One `ffn_up` matrix holding gate then up, instead of two.
    pub fused_gate_up: bool,
}

impl ModelConfig {
    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of KV cache one token takes (f32 keys and values in every layer, on both
    /// backends): what sizes a KV budget.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layers * 2 * self.kv_width() * 4
    }

    /// Whether layer `l` attends within the sliding window only.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window.is_some() && !(l + 1).is_multiple_of(self.sliding_pattern)
    }

    /// RoPE base and linear position scale of layer `l`.
    pub fn rope_of_layer(&self, l: usize) -> (f32, f32) {
        if self.is_sliding(l) { (self.rope_theta_local, 1.0) } else { (self.rope_theta, self.rope_scale) }
    }

    /// Keys layer `l` sees from a query at position `pos`: `first..=pos`.
    pub fn first_key(&self, l: usize, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) if self.is_sliding(l) => (pos + 1).saturating_sub(w),
            _ => 0,
        }
    }

    /// The cos/sin tables of the layers for positions `0..positions`, each distinct
    /// (base, scale) once, computed in f32 as llama.cpp does (`freq_factors` are the values
    /// of `rope_freqs.weight`, when the file has it).
    pub(crate) fn rope_tables(&self, positions: usize, freq_factors: Option<&[f32]>) -> RopeTables {
        let mut keys: Vec<(f32, f32)> = Vec::new();
        let mut tables = Vec::new();
        let mut of_layer = Vec::with_capacity(self.n_layers);
        for l in 0..self.n_layers {
            let key = self.rope_of_layer(l);
            let i = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    tables.push(self.rope_table(key, positions, freq_factors));
                    keys.push(key);
                    keys.len() - 1
                }
            };
            of_layer.push(i);
        }
        RopeTables { tables, of_layer }
    }

    fn rope_table(
        &self,
        (theta, scale): (f32, f32),
        positions: usize,
        freq_factors: Option<&[f32]>,
    ) -> Vec<(f32, f32)> {
        let hd = self.head_dim;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| {
                let f = 1f32 / theta.powf((2 * i) as f32 / hd as f32);
                f / freq_factors.map_or(1.0, |ff| ff[i])
            })
            .collect();
        let mut t = Vec::with_capacity(positions * hd / 2);
        for pos in 0..positions {
            for f in &inv {
                let a = (pos as f32 * scale) * f;
                t.push((a.cos(), a.sin()));
            }
        }
        t
    }
}

/// The RoPE tables of a model's layers (see [`ModelConfig::rope_tables`]).
pub(crate) struct RopeTables {
    /// `[pos][pair]` as `(cos, sin)`, one per distinct (base, scale) of the layers.
    pub tables: Vec<Vec<(f32, f32)>>,
    /// Which of `tables` each layer uses.
    pub of_layer: Vec<usize>,
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

/// A GGUF model: its id, metadata, tokenizer and template, and where its tensors are.
///
/// A model loaded from a file keeps the file open, not its bytes: an engine reads one tensor
/// at a time from it, so building an engine holds no second copy of the weights in host
/// memory (a GPU engine ends with none). The id must describe what runs, so each engine
/// hashes the file again once its weights are in and refuses a file that changed meanwhile
/// ([`Error::ModelChanged`]).
pub struct Model {
    path: PathBuf,
    id: ModelId,
    source: Source,
    content: Content,
    config: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    name: Option<String>,
    /// Whether the file carries `tokenizer.chat_template`.
    own_chat_template: bool,
    /// The file's length.
    len: u64,
}

/// What a GGUF header says, checked as loading checks it ([`Model::read_header`]).
#[derive(Debug, Clone)]
pub struct ModelHeader {
    /// The hyper-parameters and structure.
    pub config: ModelConfig,
    /// The tokenizer built from the metadata.
    pub tokenizer: Tokenizer,
    /// How chats are rendered.
    pub chat_template: ChatTemplate,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Whether the file carries `tokenizer.chat_template`.
    pub own_chat_template: bool,
}

/// Where a model's tensor data is read from.
enum Source {
    File(Mutex<std::fs::File>),
    Memory(Vec<u8>),
}

/// The first read of a header: enough for most files' (Gemma 3's 262k-token vocabulary takes
/// about 6 MB); a longer header is read again, four times longer, until it fits.
const HEADER_PREFIX: u64 = 16 << 20;

/// Reads a file by in chunks of this many bytes when hashing it.
const HASH_CHUNK: usize = 8 << 20;

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("config", &self.config)
            .field("bytes", &self.len)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads, hashes and validates a GGUF file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_progress(path, &mut |_, _| {})
    }

    /// [`Model::load`], calling `progress(bytes hashed, file length)` as it reads the file
    /// (hashing is most of loading: the whole file is read once for its id).
    pub fn load_with_progress(path: impl AsRef<Path>, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let id = hash_file(&mut file, &mut |done| progress(done, len)).map_err(io)?;
        let mut prefix_len = HEADER_PREFIX.min(len);
        let header = loop {
            let mut prefix = vec![0; prefix_len as usize];
            file.seek(SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut prefix)).map_err(io)?;
            match crate::gguf_check::check_header_prefix(&prefix, len) {
                Ok(()) => break prefix,
                // Only a header that goes on past what was read is read again, longer.
                Err(HeaderCheck::NeedMore) if prefix_len < len => prefix_len = prefix_len.saturating_mul(4).min(len),
                Err(HeaderCheck::NeedMore) => {
                    return Err(Error::InvalidGguf { path, reason: "the header runs past the end of the file".into() });
                }
                Err(HeaderCheck::Invalid(reason)) => return Err(Error::InvalidGguf { path, reason }),
            }
        };
        let content = Self::parse_header(&path, &header)?;
        Self::finish(path, id, content, len, Source::File(Mutex::new(file)))
    }

    /// Validates a GGUF file already in memory; `path` only names it in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let id = ModelId::of_bytes(&bytes);
        crate::gguf_check::check_header(&bytes).map_err(|reason| Error::InvalidGguf { path: path.clone(), reason })?;
        let len = bytes.len() as u64;
        // The header is parsed from the bytes before they move into the model.
        let content = Self::parse_header(&path, &bytes)?;
        Self::finish(path, id, content, len, Source::Memory(bytes))
    }

    fn parse_header(path: &Path, header: &[u8]) -> Result<Content> {
        Content::read(&mut Cursor::new(header))
            .map_err(|e| Error::InvalidGguf { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Checks the first bytes of a GGUF file of `file_len` bytes as [`Model::load`] does, up
    /// to its tokenizer and chat template, without reading (or hashing) its tensor data: the
    /// tensors must lie inside `file_len` bytes, and a header that goes on past `header` is
    /// refused. `path` only names the file in errors.
    pub fn read_header(path: &Path, header: &[u8], file_len: u64) -> Result<ModelHeader> {
        let invalid = |reason| Error::InvalidGguf { path: path.to_path_buf(), reason };
        crate::gguf_check::check_header_prefix(header, file_len).map_err(|e| match e {
            HeaderCheck::NeedMore => invalid(format!("the header runs past the {} bytes given", header.len())),
            HeaderCheck::Invalid(reason) => invalid(reason),
        })?;
        let content = Self::parse_header(path, header)?;
        Self::read_parts(path, &content, file_len)
    }

    /// What loading derives from a parsed header; the one path [`Model::load`],
    /// [`Model::from_bytes`] and [`Model::read_header`] share.
    fn read_parts(path: &Path, content: &Content, len: u64) -> Result<ModelHeader> {
        let md = &content.metadata;
        let config = read_config(content)?;
        check_tensors(path, content, &config, len as usize)?;
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
        let own_chat_template = jinja.is_some();
        let chat_template = ChatTemplate::detect(jinja.map(String::as_str), &tokenizer);
        let name = md.get("general.name").and_then(|v| v.to_string().ok()).cloned();
        Ok(ModelHeader { config, tokenizer, chat_template, name, own_chat_template })
    }

    fn finish(path: PathBuf, id: ModelId, content: Content, len: u64, source: Source) -> Result<Self> {
        let ModelHeader { config, tokenizer, chat_template, name, own_chat_template } =
            Self::read_parts(&path, &content, len)?;
        Ok(Model { path, id, source, content, config, tokenizer, chat_template, own_chat_template, name, len })
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
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

    /// The hyper-parameters and structure.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer built from the GGUF metadata.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether the file carries a chat template of its own: files without one are mostly
    /// base models (Gemma 3 270M's is), which complete text rather than answer chats.
    pub fn has_own_chat_template(&self) -> bool {
        self.own_chat_template
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

    /// A tensor's type and candle-order shape from the header, without reading its data.
    pub(crate) fn tensor_layout(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.content.tensor_infos.get(name).map(|t| (t.ggml_dtype, t.shape.dims().to_vec()))
    }

    /// The raw bytes of a tensor's data (GGML blocks), with its type and candle-order shape
    /// (`[rows, columns]` for matrices): read from the file, or borrowed from memory.
    pub(crate) fn tensor_data(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, Cow<'_, [u8]>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::BadTensor { tensor: name.to_owned(), reason: "absent from the file".to_owned() })?;
        let size = tensor_size(info.ggml_dtype, info.shape.elem_count());
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        // check_tensors already proved every tensor lies inside the file.
        let data = match &self.source {
            Source::Memory(bytes) => Cow::Borrowed(&bytes[start..start + size]),
            Source::File(file) => {
                let mut data = vec![0; size];
                let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                file.seek(SeekFrom::Start(start as u64))
                    .and_then(|_| file.read_exact(&mut data))
                    .map_err(|source| Error::Io { path: self.path.clone(), source })?;
                Cow::Owned(data)
            }
        };
        Ok((info.ggml_dtype, info.shape.dims().to_vec(), data))
    }

    /// Hashes the file again: an engine calls this once its weights are in, so that what it
    /// runs is the file its id names.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        let Source::File(file) = &self.source else { return Ok(()) };
        let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = hash_file(&mut file, &mut |_| {}).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        if id != self.id {
            return Err(Error::ModelChanged { path: self.path.clone() });
        }
        Ok(())
    }

    /// The embedding matrix doubles as the output projection when `output.weight` is absent
    /// (tied embeddings, as in SmolLM2).
    pub(crate) fn output_tensor_name(&self) -> &'static str {
        if self.content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" }
    }
}

/// The SHA-256 of a whole file, read from its start in chunks.
fn hash_file(file: &mut std::fs::File, progress: &mut dyn FnMut(u64)) -> std::io::Result<ModelId> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; HASH_CHUNK];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(ModelId(hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
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

fn read_config(content: &Content) -> Result<ModelConfig> {
    let md = &content.metadata;
    let arch_name = get_str(md, "general.architecture")?;
    let architecture = Architecture::from_name(arch_name).ok_or_else(|| Error::UnsupportedArchitecture {
        architecture: arch_name.to_owned(),
        supported: SUPPORTED_ARCHITECTURES,
    })?;
    let a = architecture.name();
    let key = |k: &str| format!("{a}.{k}");
    if md.get(&key("expert_count")).and_then(|v| v.to_u32().ok()).unwrap_or(0) > 1 {
        return Err(Error::UnsupportedArchitecture {
            architecture: format!("{a} with a mixture of experts"),
            supported: SUPPORTED_ARCHITECTURES,
        });
    }
    let n_layers = get_usize(md, &key("block_count"))?;
    // Every layer has tensors of its own, so a count past the file's tensors is damage; it
    // is refused before anything is sized by it (the expected shapes list every layer's).
    if n_layers > content.tensor_infos.len() {
        return Err(Error::metadata(
            &key("block_count"),
            format!("{n_layers} layers, but the file has only {} tensors", content.tensor_infos.len()),
        ));
    }
    let hidden = get_usize(md, &key("embedding_length"))?;
    let ffn = get_usize(md, &key("feed_forward_length"))?;
    let n_heads = get_usize(md, &key("attention.head_count"))?;
    let n_kv_heads = get_usize(md, &key("attention.head_count_kv")).unwrap_or(n_heads);
    let context_length = get_usize(md, &key("context_length"))?;
    let rms_eps = get_f32(md, &key("attention.layer_norm_rms_epsilon"))?;
    let rope_theta = get_f32(md, &key("rope.freq_base")).unwrap_or(10_000.0);
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

    for k in ["block_count", "embedding_length", "feed_forward_length", "attention.head_count", "context_length"] {
        if get_usize(md, &key(k))? == 0 {
            return Err(Error::metadata(&key(k), "must be positive"));
        }
    }
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::metadata(
            &key("attention.head_count_kv"),
            format!("{n_kv_heads} key/value heads do not divide {n_heads} query heads"),
        ));
    }
    let head_dim = match get_usize(md, &key("attention.key_length")) {
        Ok(k) => k,
        Err(_) if hidden % n_heads == 0 => hidden / n_heads,
        Err(_) => {
            return Err(Error::metadata(
                &key("attention.head_count"),
                format!("{n_heads} heads do not divide the embedding length {hidden}"),
            ));
        }
    };
    if let Ok(v) = get_usize(md, &key("attention.value_length"))
        && v != head_dim
    {
        return Err(Error::metadata(
            &key("attention.value_length"),
            format!("value heads of {v} differ from key heads of {head_dim}, which is not supported"),
        ));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(Error::metadata(
            &key("attention.key_length"),
            format!("head width {head_dim} is not a positive even number; RoPE rotates pairs"),
        ));
    }
    if let Ok(rope_dim) = get_usize(md, &key("rope.dimension_count"))
        && rope_dim != head_dim
    {
        return Err(Error::metadata(
            &key("rope.dimension_count"),
            format!("partial RoPE ({rope_dim} of {head_dim} dimensions) is not supported"),
        ));
    }
    let rope_scale = match md.get(&key("rope.scaling.type")).and_then(|v| v.to_string().ok()).map(String::as_str) {
        None | Some("none") => 1.0,
        Some("linear") => 1.0 / get_f32(md, &key("rope.scaling.factor")).unwrap_or(1.0),
        Some(other) => {
            return Err(Error::UnsupportedArchitecture {
                architecture: format!("{a} with {other} RoPE scaling"),
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
    };
    if !(rope_scale.is_finite() && rope_scale > 0.0) {
        return Err(Error::metadata(&key("rope.scaling.factor"), "must be a positive number"));
    }
    let has = |name: &str| content.tensor_infos.contains_key(name);
    let gemma = architecture == Architecture::Gemma3;
    // What llama.cpp hard-codes for Gemma 3: five sliding layers to one global, a local
    // RoPE base of 10,000, and (for all sizes but 27B) scores scaled by the head width.
    let sliding_window =
        if gemma { Some(get_usize(md, &key("attention.sliding_window"))?).filter(|&w| w > 0) } else { None };
    let attention_scale =
        if gemma && n_layers == 62 { 1.0 / ((hidden / n_heads) as f32).sqrt() } else { 1.0 / (head_dim as f32).sqrt() };
    Ok(ModelConfig {
        architecture,
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
        rope_theta_local: if gemma { 10_000.0 } else { rope_theta },
        rope_scale,
        rope_neox: architecture != Architecture::Llama,
        rope_freq_factors: has("rope_freqs.weight"),
        sliding_window,
        sliding_pattern: if gemma { 6 } else { 1 },
        attention_scale,
        embedding_scale: gemma.then(|| (hidden as f32).sqrt()),
        activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
        qkv_bias: architecture == Architecture::Qwen2 || has("blk.0.attn_q.bias"),
        qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
        post_norms: gemma,
        fused_qkv: architecture == Architecture::Phi3,
        fused_gate_up: architecture == Architecture::Phi3,
    })
}

/// Names of one layer's tensors, by role; `None` where the architecture has no such tensor.
#[derive(Debug, Clone)]
pub(crate) struct LayerNames {
    pub attn_norm: String,
    /// q, k, v as separate matrices, or one fused `attn_qkv` (rows q, then k, then v).
    pub qkv: Vec<String>,
    pub qkv_bias: Option<[String; 3]>,
    pub q_norm: Option<String>,
    pub k_norm: Option<String>,
    pub attn_output: String,
    pub post_attn_norm: Option<String>,
    pub ffn_norm: String,
    /// gate, up as separate matrices, or one fused `ffn_up` (rows gate, then up).
    pub gate_up: Vec<String>,
    pub down: String,
    pub post_ffn_norm: Option<String>,
}

impl ModelConfig {
    pub(crate) fn layer_names(&self, l: usize) -> LayerNames {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        LayerNames {
            attn_norm: n("attn_norm"),
            qkv: if self.fused_qkv { vec![n("attn_qkv")] } else { vec![n("attn_q"), n("attn_k"), n("attn_v")] },
            qkv_bias: self.qkv_bias.then(|| ["attn_q", "attn_k", "attn_v"].map(|t| format!("blk.{l}.{t}.bias"))),
            q_norm: self.qk_norm.then(|| n("attn_q_norm")),
            k_norm: self.qk_norm.then(|| n("attn_k_norm")),
            attn_output: n("attn_output"),
            post_attn_norm: self.post_norms.then(|| n("post_attention_norm")),
            ffn_norm: n("ffn_norm"),
            gate_up: if self.fused_gate_up { vec![n("ffn_up")] } else { vec![n("ffn_gate"), n("ffn_up")] },
            down: n("ffn_down"),
            post_ffn_norm: self.post_norms.then(|| n("post_ffw_norm")),
        }
    }
}

/// Expected `[rows, columns]` (candle order) of every tensor the engines read.
pub(crate) fn expected_shapes(c: &ModelConfig, has_output: bool) -> Vec<(String, Vec<usize>)> {
    let (q, kv, d, f) = (c.q_width(), c.kv_width(), c.hidden, c.ffn);
    let mut v =
        vec![("token_embd.weight".to_owned(), vec![c.vocab_size, d]), ("output_norm.weight".to_owned(), vec![d])];
    if has_output {
        v.push(("output.weight".to_owned(), vec![c.vocab_size, d]));
    }
    if c.rope_freq_factors {
        v.push(("rope_freqs.weight".to_owned(), vec![c.head_dim / 2]));
    }
    for l in 0..c.n_layers {
        let n = c.layer_names(l);
        v.push((n.attn_norm, vec![d]));
        match n.qkv.as_slice() {
            [qkv] => v.push((qkv.clone(), vec![q + 2 * kv, d])),
            [wq, wk, wv] => {
                v.push((wq.clone(), vec![q, d]));
                v.push((wk.clone(), vec![kv, d]));
                v.push((wv.clone(), vec![kv, d]));
            }
            _ => unreachable!("layer_names gives one or three"),
        }
        if let Some([bq, bk, bv]) = n.qkv_bias {
            v.extend([(bq, vec![q]), (bk, vec![kv]), (bv, vec![kv])]);
        }
        v.extend(n.q_norm.into_iter().chain(n.k_norm).map(|t| (t, vec![c.head_dim])));
        v.push((n.attn_output, vec![d, q]));
        v.extend(n.post_attn_norm.into_iter().chain(n.post_ffn_norm).map(|t| (t, vec![d])));
        v.push((n.ffn_norm, vec![d]));
        match n.gate_up.as_slice() {
            [up] => v.push((up.clone(), vec![2 * f, d])),
            [gate, up] => {
                v.push((gate.clone(), vec![f, d]));
                v.push((up.clone(), vec![f, d]));
            }
            _ => unreachable!("layer_names gives one or two"),
        }
        v.push((n.down, vec![d, f]));
    }
    v
}

fn check_tensors(path: &Path, content: &Content, config: &ModelConfig, file_len: usize) -> Result<()> {
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
