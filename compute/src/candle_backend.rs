//! The candle CPU backend: the forward pass of every supported architecture in candle's
//! tensors and quantized kernels, the reference the wgpu kernels are tested against and the
//! fallback where no GPU exists.

mod quant;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{D, Device, Module, Tensor};

use crate::engine::{BackendKind, Engine, KvPool, Sampled, SeqChunk, TokenLogprobs, check_batch};
use crate::error::{Error, Result};
use crate::model::{Activation, Model, ModelConfig};
use crate::sampling::sample;
use quant::QuantMatrix;

/// Positions the RoPE tables (and so the context) cover when the model's own context is
/// longer: the same bound as the wgpu backend's default.
const MAX_CONTEXT: usize = crate::wgpu_backend::DEFAULT_MAX_CONTEXT;
/// Tokens per page of the KV budget: candle's caches grow by tensor, so pages are only
/// the unit of the budget, the same as the wgpu backend's.
const PAGE_TOKENS: usize = 32;

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

/// A weight matrix: candle's kernels, or this crate's for the types whose products candle
/// computes in scalar code (see [`quant`]).
enum Matrix {
    Candle(QMatMul),
    Own(QuantMatrix),
}

impl Matrix {
    /// `x` (`[..., cols]`) times the transposed matrix: `[..., rows]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = match self {
            Matrix::Candle(m) => return m.forward(x),
            Matrix::Own(w) => w,
        };
        let mut shape = x.dims().to_vec();
        if shape.last() != Some(&w.cols()) {
            candle_core::bail!("a {:?} input to a matrix of {} columns", x.shape(), w.cols());
        }
        let m = x.elem_count() / w.cols();
        let out = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
        *shape.last_mut().expect("checked above") = w.rows();
        Tensor::from_vec(out, shape, x.device())
    }
}

/// One transformer block's weights and KV cache.
struct Layer {
    attn_norm: Tensor,
    /// q, k, v, or one fused matrix.
    qkv: Vec<Matrix>,
    qkv_bias: Option<[Tensor; 3]>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: Matrix,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// gate, up, or one fused matrix.
    gate_up: Vec<Matrix>,
    down: Matrix,
    post_ffn_norm: Option<Tensor>,
    /// Index into the engine's RoPE tables.
    rope: usize,
    /// Per sequence slot, keys and values of its positions so far,
    /// `[1, kv_heads, positions, head_dim]`.
    kv: Vec<Option<(Tensor, Tensor)>>,
}

/// Runs a model with candle's tensors and quantized kernels on the CPU, one forward pass for
/// every architecture the crate knows (see [`ModelConfig`]); the reference the wgpu kernels
/// are tested against and the fallback where no GPU exists.
///
/// The pass is written here rather than taken from candle-transformers, whose quantized
/// Gemma 3 computes its MLP with SiLU instead of GELU and so leaves llama.cpp's greedy path
/// within a few tokens. The operations, and the order of floating-point work within them,
/// follow candle-transformers' quantized llama, so llama files give the logits they gave
/// there.
pub struct CandleEngine {
    config: ModelConfig,
    /// The embedding in its file type; rows are dequantized per token. Shared with the
    /// output projection when the embeddings are tied.
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Matrix,
    /// `(cos, sin)` tables, `[positions, head_dim / 2]`, one per distinct RoPE of the layers.
    ropes: Vec<(Tensor, Tensor)>,
    context_length: usize,
    /// Tokens in each sequence slot's cache.
    positions: Vec<usize>,
    pool_pages: usize,
}

impl std::fmt::Debug for CandleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleEngine")
            .field("architecture", &self.config.architecture)
            .field("context_length", &self.context_length)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    candle_nn::ops::rms_norm(x, w, eps).map_err(Error::candle("RMSNorm"))
}

/// Grouped-query attention: each key/value head serves `n` query heads.
fn repeat_kv(x: Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, heads, len, hd) = x.dims4()?;
    // Concatenating along the sequence then reshaping is a plain copy, cheaper than a
    // strided broadcast.
    Tensor::cat(&vec![&x; n], 2)?.reshape((b, heads * n, len, hd))
}

/// Reads tensors out of the model, one at a time, into candle's CPU storage.
struct Loader<'a> {
    model: &'a Model,
}

impl Loader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        let (dtype, shape, data) = self.model.tensor_data(name)?;
        qtensor_from_ggml(dtype, &data, shape, &Device::Cpu).map_err(Error::candle(format!("loading `{name}`")))
    }

    fn matrix(&mut self, name: &str) -> Result<Matrix> {
        let (dtype, shape, data) = self.model.tensor_data(name)?;
        if let (true, &[rows, cols]) = (QuantMatrix::supports(dtype), shape.as_slice()) {
            return own_matrix(name, dtype, rows, cols, &data);
        }
        let q =
            qtensor_from_ggml(dtype, &data, shape, &Device::Cpu).map_err(Error::candle(format!("loading `{name}`")))?;
        QMatMul::from_qtensor(q).map(Matrix::Candle).map_err(Error::candle(format!("preparing `{name}`")))
    }

    /// A norm weight or bias, in f32.
    fn vector(&mut self, name: &str) -> Result<Tensor> {
        self.qtensor(name)?.dequantize(&Device::Cpu).map_err(Error::candle(format!("dequantizing `{name}`")))
    }

    fn optional(&mut self, name: &Option<String>) -> Result<Option<Tensor>> {
        name.as_deref().map(|n| self.vector(n)).transpose()
    }
}

fn own_matrix(name: &str, dtype: GgmlDType, rows: usize, cols: usize, data: &[u8]) -> Result<Matrix> {
    QuantMatrix::from_ggml(dtype, rows, cols, data)
        .map(Matrix::Own)
        .map_err(|reason| Error::BadTensor { tensor: name.to_owned(), reason })
}

impl CandleEngine {
    /// Loads the model's weights into candle's CPU tensors, for one sequence at a time.
    pub fn new(model: &Model) -> Result<Self> {
        Self::with_batch(model, 1, None)
    }

    /// Loads the model for `max_batch` sequences at once whose caches hold `kv_tokens` in
    /// all (default: a full context each; at least one full context).
    pub fn with_batch(model: &Model, max_batch: usize, kv_tokens: Option<usize>) -> Result<Self> {
        if !(1..=crate::wgpu_backend::MAX_BATCH).contains(&max_batch) {
            return Err(Error::InvalidBatch(format!(
                "max_batch {max_batch} is not within 1..={}",
                crate::wgpu_backend::MAX_BATCH
            )));
        }
        let config = model.config().clone();
        let mut load = Loader { model };
        let context_length = config.context_length.min(MAX_CONTEXT);
        let freq_factors = if config.rope_freq_factors {
            let f = load.vector("rope_freqs.weight")?;
            Some(f.to_vec1::<f32>().map_err(Error::candle("reading rope_freqs.weight"))?)
        } else {
            None
        };
        let rope_tables = config.rope_tables(context_length, freq_factors.as_deref());
        let shape = (context_length, config.head_dim / 2);
        let tensor = |v: Vec<f32>| Tensor::from_vec(v, shape, &Device::Cpu).map_err(Error::candle("RoPE table"));
        let mut ropes = Vec::with_capacity(rope_tables.tables.len());
        for table in rope_tables.tables {
            let (cos, sin): (Vec<f32>, Vec<f32>) = table.into_iter().unzip();
            ropes.push((tensor(cos)?, tensor(sin)?));
        }
        let mut layers = Vec::with_capacity(config.n_layers);
        for (l, &rope) in rope_tables.of_layer.iter().enumerate() {
            let n = config.layer_names(l);
            let qkv = n.qkv.iter().map(|t| load.matrix(t)).collect::<Result<Vec<_>>>()?;
            let gate_up = n.gate_up.iter().map(|t| load.matrix(t)).collect::<Result<Vec<_>>>()?;
            let qkv_bias = match &n.qkv_bias {
                Some([q, k, v]) => Some([load.vector(q)?, load.vector(k)?, load.vector(v)?]),
                None => None,
            };
            layers.push(Layer {
                attn_norm: load.vector(&n.attn_norm)?,
                qkv,
                qkv_bias,
                q_norm: load.optional(&n.q_norm)?,
                k_norm: load.optional(&n.k_norm)?,
                wo: load.matrix(&n.attn_output)?,
                post_attn_norm: load.optional(&n.post_attn_norm)?,
                ffn_norm: load.vector(&n.ffn_norm)?,
                gate_up,
                down: load.matrix(&n.down)?,
                post_ffn_norm: load.optional(&n.post_ffn_norm)?,
                rope,
                kv: vec![None; max_batch],
            });
        }
        let output_norm = load.vector("output_norm.weight")?;
        let embedding = Arc::new(load.qtensor("token_embd.weight")?);
        let output = if model.output_tensor_name() == "token_embd.weight" {
            match (QuantMatrix::supports(embedding.dtype()), embedding.shape().dims()) {
                // A second copy of the embedding, in this module's layout.
                (true, &[rows, cols]) => {
                    let data = embedding.data().map_err(Error::candle("reading the embedding"))?;
                    own_matrix("token_embd.weight", embedding.dtype(), rows, cols, &data)?
                }
                _ => Matrix::Candle(
                    QMatMul::from_arc(embedding.clone()).map_err(Error::candle("the output projection"))?,
                ),
            }
        } else {
            load.matrix("output.weight")?
        };
        model.check_unchanged()?;
        let pages_per_seq = context_length.div_ceil(PAGE_TOKENS);
        let pool_pages = kv_tokens.unwrap_or(context_length * max_batch).div_ceil(PAGE_TOKENS).max(pages_per_seq);
        Ok(CandleEngine {
            config,
            embedding,
            layers,
            output_norm,
            output,
            ropes,
            context_length,
            positions: vec![0; max_batch],
            pool_pages,
        })
    }

    /// Rows of the embedding for `tokens`, `[1, tokens, hidden]`, dequantized one row at a
    /// time so the whole matrix (671 MB in f32 for Gemma 3's 262k vocabulary) never is.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let d = self.config.hidden;
        let dtype: GgmlDType = self.embedding.dtype();
        let row_bytes = d / dtype.block_size() * dtype.type_size();
        let data = self.embedding.data().map_err(Error::candle("reading the embedding"))?;
        let mut rows = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let raw = &data[t as usize * row_bytes..(t as usize + 1) * row_bytes];
            let row = qtensor_from_ggml(dtype, raw, vec![d], &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|r| r.to_vec1::<f32>())
                .map_err(Error::candle("dequantizing an embedding row"))?;
            rows.extend_from_slice(&row);
        }
        let x = Tensor::from_vec(rows, (1, tokens.len(), d), &Device::Cpu).map_err(Error::candle("embedding"))?;
        match self.config.embedding_scale {
            Some(s) => x.affine(s as f64, 0.0).map_err(Error::candle("scaling the embedding")),
            None => Ok(x),
        }
    }

    /// Pages the sequences hold: one per `PAGE_TOKENS` positions begun.
    fn pages_in_use(&self) -> usize {
        self.positions.iter().map(|p| p.div_ceil(PAGE_TOKENS)).sum()
    }

    /// Runs the batch and returns the logits of each chunk that samples (all of them when
    /// `all_last`), in order. The matrix products run over every chunk's tokens at once;
    /// RoPE and attention run per sequence, over its own cache.
    fn forward(&mut self, chunks: &[SeqChunk<'_>], all_last: bool) -> Result<Vec<Vec<f32>>> {
        check_batch(self, self.config.vocab_size, chunks)?;
        let needed: usize = chunks
            .iter()
            .map(|c| {
                let p = self.positions[c.seq];
                (p + c.tokens.len()).div_ceil(PAGE_TOKENS) - p.div_ceil(PAGE_TOKENS)
            })
            .sum();
        let free = self.pool_pages - self.pages_in_use();
        if needed > free {
            return Err(Error::KvCacheFull { needed, free, page_tokens: PAGE_TOKENS });
        }
        let tokens: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let mut x = self.embed(&tokens)?;
        for l in 0..self.layers.len() {
            x = self.block(l, &x, chunks).map_err(Error::candle(format!("layer {l}")))?;
        }
        let mut rows = Vec::new();
        let mut end = 0;
        for c in chunks {
            end += c.tokens.len();
            if all_last || c.sample.is_some() {
                rows.push((end - 1) as u32);
            }
        }
        for c in chunks {
            self.positions[c.seq] += c.tokens.len();
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let what = || format!("the output of {n} sequences");
        let index = Tensor::new(rows.as_slice(), &Device::Cpu).map_err(Error::candle(what()))?;
        let last = x.index_select(&index, 1).map_err(Error::candle(what()))?;
        let last = rms_norm(&last, &self.output_norm, self.config.rms_eps)?;
        self.output
            .forward(&last)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(Error::candle(what()))
    }

    /// One transformer block over `x` (`[1, tokens, hidden]`), the chunks' tokens in order.
    fn block(&mut self, l: usize, x: &Tensor, chunks: &[SeqChunk<'_>]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let layer = &mut self.layers[l];
        let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, c.rms_eps);
        let (qw, kvw) = (c.q_width(), c.kv_width());

        let h = norm(x, &layer.attn_norm)?;
        let (mut q, mut k, mut v) = match layer.qkv.as_slice() {
            [wq, wk, wv] => (wq.forward(&h)?, wk.forward(&h)?, wv.forward(&h)?),
            [fused] => {
                let qkv = fused.forward(&h)?;
                (qkv.narrow(D::Minus1, 0, qw)?, qkv.narrow(D::Minus1, qw, kvw)?, qkv.narrow(D::Minus1, qw + kvw, kvw)?)
            }
            _ => unreachable!("one or three projections"),
        };
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut ys = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks {
            let t = chunk.tokens.len();
            let part = |x: &Tensor| x.narrow(1, row, t);
            let pos = self.positions[chunk.seq];
            let y = attention(c, l, layer, &self.ropes[layer.rope], chunk.seq, pos, [part(&q)?, part(&k)?, part(&v)?])?;
            ys.push(y);
            row += t;
        }
        let y = if ys.len() == 1 { ys.pop().expect("one") } else { Tensor::cat(&ys, 1)? };
        let mut o = layer.wo.forward(&y)?;
        if let Some(pn) = &layer.post_attn_norm {
            o = norm(&o, pn)?;
        }
        let x = (x + o)?;

        let h = norm(&x, &layer.ffn_norm)?;
        let (gate, up) = match layer.gate_up.as_slice() {
            [g, u] => (g.forward(&h)?, u.forward(&h)?),
            [fused] => {
                let gu = fused.forward(&h)?;
                (gu.narrow(D::Minus1, 0, c.ffn)?, gu.narrow(D::Minus1, c.ffn, c.ffn)?)
            }
            _ => unreachable!("one or two projections"),
        };
        let act = match c.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            // candle's gelu is the tanh approximation, as GGML's.
            Activation::GeluTanh => gate.gelu()?,
        };
        let mut m = layer.down.forward(&(act * up)?)?;
        if let Some(pn) = &layer.post_ffn_norm {
            m = norm(&m, pn)?;
        }
        x + m
    }
}

/// RoPE, the cache update and attention for one sequence's `t` new tokens (`qkv`, each
/// `[1, t, width]`), the first at `pos`: returns `[1, t, q_width]`.
fn attention(
    c: &ModelConfig,
    l: usize,
    layer: &mut Layer,
    (cos, sin): &(Tensor, Tensor),
    seq: usize,
    pos: usize,
    [q, k, v]: [Tensor; 3],
) -> candle_core::Result<Tensor> {
    let norm = |x: &Tensor, w: &Tensor| candle_nn::ops::rms_norm(x, w, c.rms_eps);
    let (_, t, _) = q.dims3()?;
    let hd = c.head_dim;
    let heads = |x: Tensor, n: usize| x.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous();
    let mut q = heads(q, c.n_heads)?;
    let mut k = heads(k, c.n_kv_heads)?;
    let v = heads(v, c.n_kv_heads)?;
    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
        q = norm(&q, qn)?;
        k = norm(&k, kn)?;
    }
    let (cos, sin) = (cos.narrow(0, pos, t)?, sin.narrow(0, pos, t)?);
    let rope = if c.rope_neox { candle_nn::rotary_emb::rope } else { candle_nn::rotary_emb::rope_i };
    let q = rope(&q, &cos, &sin)?;
    let k = rope(&k, &cos, &sin)?;
    let (k, v) = match &layer.kv[seq] {
        Some((kc, vc)) if pos > 0 => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
        _ => (k, v),
    };
    layer.kv[seq] = Some((k.clone(), v.clone()));
    let k = repeat_kv(k, c.n_heads / c.n_kv_heads)?;
    let v = repeat_kv(v, c.n_heads / c.n_kv_heads)?;
    let att = (q.matmul(&k.t()?)? * c.attention_scale as f64)?;
    // Causal, and within the window on sliding layers: query i (at pos + i) sees keys
    // first_key..=pos + i.
    let len = pos + t;
    let masked = |i: usize, j: usize| j > pos + i || j < c.first_key(l, pos + i);
    let att = if (0..t).any(|i| masked(i, 0) || masked(i, len - 1)) {
        let mask: Vec<u8> = (0..t).flat_map(|i| (0..len).map(move |j| masked(i, j) as u8)).collect();
        let mask = Tensor::from_vec(mask, (t, len), att.device())?.broadcast_as(att.shape())?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, att.device())?.broadcast_as(att.shape())?;
        mask.where_cond(&neg_inf, &att)?
    } else {
        att
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    att.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((1, t, c.q_width()))
}

impl Engine for CandleEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn device_name(&self) -> String {
        let own = quant::Kernel::detect().name();
        format!("CPU ({} threads, {SIMD}; Q4_1 products: {own})", candle_core::utils::get_num_threads())
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn max_batch(&self) -> usize {
        self.positions.len()
    }

    fn step_tokens(&self) -> usize {
        // Matrix products over more rows amortise candle's per-call overhead further, but
        // a longer step delays every decoding sequence's next token.
        64
    }

    fn kv_pool(&self) -> KvPool {
        KvPool { page_tokens: PAGE_TOKENS, pages: self.pool_pages, free_pages: self.pool_pages - self.pages_in_use() }
    }

    fn seq_position(&self, seq: usize) -> usize {
        self.positions.get(seq).copied().unwrap_or(0)
    }

    fn release(&mut self, seq: usize) {
        if seq < self.positions.len() {
            for layer in &mut self.layers {
                layer.kv[seq] = None;
            }
            self.positions[seq] = 0;
        }
    }

    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Sampled>> {
        let logits = self.forward(chunks, false)?;
        let sampled = chunks.iter().filter_map(|c| c.sample.map(|s| (s, c.logprobs)));
        Ok(logits
            .iter()
            .zip(sampled)
            .map(|(l, ((s, step), logprobs))| {
                let token = sample(l, s, step);
                Sampled { token, logprobs: logprobs.map(|k| TokenLogprobs::from_logits(l, token, k)) }
            })
            .collect())
    }

    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut logits = self.forward(&[SeqChunk::fill(0, tokens)], true)?;
        logits.pop().ok_or_else(|| Error::Device("no logits".to_owned()))
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
