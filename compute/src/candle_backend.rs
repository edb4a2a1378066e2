//! The candle CPU backend: the forward pass of every supported architecture on the CPU,
//! the reference the wgpu kernels are tested against and the fallback where no GPU exists.
//!
//! Weights are loaded with candle. Products with Q4_1 and Q8_0 weights (all of SmolLM2's)
//! run in this crate's kernels ([`quant`]), the others in candle's `QMatMul`; everything
//! between the products (norms, RoPE, attention over a KV cache kept per sequence slot, the
//! activations) runs on plain slices ([`ops`]) in buffers the engine keeps, so that once
//! warm a step whose products are all this crate's allocates nothing but the caches' growth.

mod ops;
mod quant;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Module, Tensor};

use crate::engine::{BackendKind, Engine, KvPool, Sampled, SeqChunk, TokenLogprobs, check_batch};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::sampling::sample;
use ops::{Heads, Keys, KvCache};
use quant::{Kernel, QuantMatrix};

/// Positions the RoPE tables (and so the context) cover when the model's own context is
/// longer: the same bound as the wgpu backend's default.
const MAX_CONTEXT: usize = crate::wgpu_backend::DEFAULT_MAX_CONTEXT;
/// Tokens per page of the KV budget: the caches grow by token, so pages are only the unit
/// of the budget, the same as the wgpu backend's.
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
/// computes in scalar code or one row at a time (see [`quant`]).
enum Matrix {
    Candle { matmul: QMatMul, rows: usize, cols: usize },
    Own(QuantMatrix),
}

impl Matrix {
    fn rows(&self) -> usize {
        match self {
            Matrix::Candle { rows, .. } => *rows,
            Matrix::Own(w) => w.rows(),
        }
    }

    /// `x` (`m × cols`) times the transposed matrix into `out` (`m × rows`).
    fn forward(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32], s: &mut quant::Scratch) -> CResult<()> {
        match self {
            Matrix::Own(w) => w.matmul_into(kernel, x, m, out, s),
            Matrix::Candle { matmul, cols, .. } => {
                // `[1, m, cols]` as the tensor pass gave it: candle's products for other types,
                // one allocation each.
                let y = matmul.forward(&Tensor::from_slice(x, (1, m, *cols), &Device::Cpu)?)?;
                out.copy_from_slice(&y.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(())
    }
}

type CResult<T> = candle_core::Result<T>;

/// What a [`Projection`] of separate parts needs: a buffer for one part's output, and the
/// products' scratch.
type Buffers<'a> = (&'a mut Vec<f32>, &'a mut quant::Scratch);

/// q, k and v (or gate and up): one stacked matrix where their types allow, else one each.
struct Projection(Vec<Matrix>);

impl Projection {
    /// Stacks the parts into one product when all are this crate's of one type and width.
    fn new(parts: Vec<Matrix>) -> Self {
        let own: Option<Vec<&QuantMatrix>> = parts
            .iter()
            .map(|p| match p {
                Matrix::Own(w) => Some(w),
                Matrix::Candle { .. } => None,
            })
            .collect();
        match own.filter(|o| o.len() > 1).and_then(|o| QuantMatrix::stack(&o)) {
            Some(stacked) => Projection(vec![Matrix::Own(stacked)]),
            None => Projection(parts),
        }
    }

    /// `x` (`m × cols`) times each part, the parts' outputs side by side in `out`.
    fn forward(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32], s: Buffers<'_>) -> CResult<()> {
        let (part_out, mat) = s;
        if let [one] = self.0.as_slice() {
            return one.forward(kernel, x, m, out, mat);
        }
        let width: usize = self.0.iter().map(Matrix::rows).sum();
        let mut at = 0;
        for part in &self.0 {
            let rows = part.rows();
            let buf = sized(part_out, m * rows);
            part.forward(kernel, x, m, buf, mat)?;
            for (o, p) in out.chunks_exact_mut(width).zip(buf.chunks_exact(rows)) {
                o[at..at + rows].copy_from_slice(p);
            }
            at += rows;
        }
        Ok(())
    }
}

/// One transformer block's weights and KV caches.
struct Layer {
    attn_norm: Vec<f32>,
    qkv: Projection,
    qkv_bias: Option<[Vec<f32>; 3]>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Matrix,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: Projection,
    down: Matrix,
    post_ffn_norm: Option<Vec<f32>>,
    /// Index into the engine's RoPE tables.
    rope: usize,
    /// Per sequence slot, keys and values of its positions so far.
    kv: Vec<KvCache>,
}

/// RoPE angles of one (base, scale): `[positions, head_dim / 2]` each.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// The buffers of a forward pass, `tokens × width` each, kept between passes.
#[derive(Debug, Default)]
struct Scratch {
    /// The residual stream.
    x: Vec<f32>,
    /// A normed copy of it.
    h: Vec<f32>,
    qkv: Vec<f32>,
    attention: Vec<f32>,
    /// A block's output before the residual add.
    o: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// One part's output of a projection whose parts are separate products.
    part: Vec<f32>,
    /// Per token, its sequence slot and position.
    rows: Vec<(usize, usize)>,
    /// Per token, the keys it attends to in the current layer.
    keys: Vec<Keys>,
    /// The logits of the sampled rows, `rows × vocabulary`.
    logits: Vec<f32>,
    mat: quant::Scratch,
}

/// `v` as a slice of `n` values: grown when needed, never shrunk below its capacity.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    v
}

/// Runs a model on the CPU, one forward pass for every architecture the crate knows (see
/// [`ModelConfig`]); the reference the wgpu kernels are tested against and the fallback
/// where no GPU exists.
///
/// The pass is written here rather than taken from candle-transformers, whose quantized
/// Gemma 3 computes its MLP with SiLU instead of GELU and so leaves llama.cpp's greedy path
/// within a few tokens. The operations, and the order of floating-point work within them,
/// follow candle-transformers' quantized llama (but for attention's sums, see [`ops`]), so
/// llama files give the logits they gave there.
pub struct CandleEngine {
    config: ModelConfig,
    /// The embedding in its file type; rows are dequantized per token. Shared with the
    /// output projection when the embeddings are tied and candle computes it.
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
    /// One per distinct RoPE of the layers.
    ropes: Vec<Rope>,
    context_length: usize,
    /// Tokens in each sequence slot's cache.
    positions: Vec<usize>,
    pool_pages: usize,
    kernel: Kernel,
    scratch: Scratch,
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
        let &[rows, cols] = shape.as_slice() else {
            return Err(Error::BadTensor { tensor: name.to_owned(), reason: format!("shape {shape:?} is no matrix") });
        };
        let q =
            qtensor_from_ggml(dtype, &data, shape, &Device::Cpu).map_err(Error::candle(format!("loading `{name}`")))?;
        let matmul = QMatMul::from_qtensor(q).map_err(Error::candle(format!("preparing `{name}`")))?;
        Ok(Matrix::Candle { matmul, rows, cols })
    }

    fn projection(&mut self, names: &[String]) -> Result<Projection> {
        Ok(Projection::new(names.iter().map(|t| self.matrix(t)).collect::<Result<Vec<_>>>()?))
    }

    /// A norm weight or bias, in f32.
    fn vector(&mut self, name: &str) -> Result<Vec<f32>> {
        self.qtensor(name)?
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(Error::candle(format!("dequantizing `{name}`")))
    }

    fn optional(&mut self, name: &Option<String>) -> Result<Option<Vec<f32>>> {
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
        let freq_factors = if config.rope_freq_factors { Some(load.vector("rope_freqs.weight")?) } else { None };
        let rope_tables = config.rope_tables(context_length, freq_factors.as_deref());
        let ropes = rope_tables
            .tables
            .into_iter()
            .map(|table| {
                let (cos, sin) = table.into_iter().unzip();
                Rope { cos, sin }
            })
            .collect();
        let mut layers = Vec::with_capacity(config.n_layers);
        for (l, &rope) in rope_tables.of_layer.iter().enumerate() {
            let n = config.layer_names(l);
            let qkv_bias = match &n.qkv_bias {
                Some([q, k, v]) => Some([load.vector(q)?, load.vector(k)?, load.vector(v)?]),
                None => None,
            };
            layers.push(Layer {
                attn_norm: load.vector(&n.attn_norm)?,
                qkv: load.projection(&n.qkv)?,
                qkv_bias,
                q_norm: load.optional(&n.q_norm)?,
                k_norm: load.optional(&n.k_norm)?,
                wo: load.matrix(&n.attn_output)?,
                post_attn_norm: load.optional(&n.post_attn_norm)?,
                ffn_norm: load.vector(&n.ffn_norm)?,
                gate_up: load.projection(&n.gate_up)?,
                down: load.matrix(&n.down)?,
                post_ffn_norm: load.optional(&n.post_ffn_norm)?,
                rope,
                kv: (0..max_batch).map(|_| KvCache::default()).collect(),
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
                (_, dims) => {
                    let (rows, cols) = (dims[0], dims[dims.len() - 1]);
                    let matmul =
                        QMatMul::from_arc(embedding.clone()).map_err(Error::candle("the output projection"))?;
                    Matrix::Candle { matmul, rows, cols }
                }
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
            kernel: Kernel::detect(),
            scratch: Scratch::default(),
        })
    }

    /// Rows of the embedding for `tokens` appended to `x` (`hidden` each), dequantized one
    /// row at a time so the whole matrix (671 MB in f32 for Gemma 3's 262k vocabulary) never
    /// is: Q8_0 and F32 rows here, as candle dequantizes them, other types through candle.
    fn embed(&self, tokens: &[u32], x: &mut Vec<f32>) -> Result<()> {
        let d = self.config.hidden;
        let dtype: GgmlDType = self.embedding.dtype();
        let row_bytes = d / dtype.block_size() * dtype.type_size();
        let data = self.embedding.data().map_err(Error::candle("reading the embedding"))?;
        let start = x.len();
        for &t in tokens {
            let raw = &data[t as usize * row_bytes..(t as usize + 1) * row_bytes];
            match dtype {
                GgmlDType::Q8_0 => {
                    for block in raw.chunks_exact(2 + 32) {
                        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        x.extend(block[2..].iter().map(|&q| q as i8 as f32 * scale));
                    }
                }
                GgmlDType::F32 => {
                    x.extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
                }
                _ => {
                    let row = qtensor_from_ggml(dtype, raw, vec![d], &Device::Cpu)
                        .and_then(|q| q.dequantize(&Device::Cpu))
                        .and_then(|r| r.to_vec1::<f32>())
                        .map_err(Error::candle("dequantizing an embedding row"))?;
                    x.extend_from_slice(&row);
                }
            }
        }
        if let Some(s) = self.config.embedding_scale {
            x[start..].iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// Pages the sequences hold: one per `PAGE_TOKENS` positions begun.
    fn pages_in_use(&self) -> usize {
        self.positions.iter().map(|p| p.div_ceil(PAGE_TOKENS)).sum()
    }

    /// Runs the batch and leaves the logits of each chunk that samples (all of them when
    /// `all_last`), in order, in the scratch's `logits`; returns how many rows there are.
    /// The matrix products run over every chunk's tokens at once; RoPE and attention per
    /// token, over its sequence's own cache.
    fn forward(&mut self, chunks: &[SeqChunk<'_>], all_last: bool) -> Result<usize> {
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
        let mut s = std::mem::take(&mut self.scratch);
        // On one of rayon's threads, so that the parallel loops of the products and of
        // attention start from a worker, which takes its share at once, rather than from this
        // thread, which would sleep and be woken after each of them (about 150 per token).
        let sampled = rayon::scope(|_| self.forward_with(chunks, all_last, &mut s));
        self.scratch = s;
        let sampled = sampled?;
        for c in chunks {
            self.positions[c.seq] += c.tokens.len();
        }
        Ok(sampled)
    }

    fn forward_with(&mut self, chunks: &[SeqChunk<'_>], all_last: bool, s: &mut Scratch) -> Result<usize> {
        s.rows.clear();
        for c in chunks {
            let p = self.positions[c.seq];
            s.rows.extend((p..p + c.tokens.len()).map(|pos| (c.seq, pos)));
        }
        s.x.clear();
        for c in chunks {
            self.embed(c.tokens, &mut s.x)?;
        }
        for l in 0..self.layers.len() {
            self.block(l, s).map_err(Error::candle(format!("layer {l}")))?;
        }
        let d = self.config.hidden;
        let mut n = 0;
        let mut end = 0;
        for c in chunks {
            end += c.tokens.len();
            if all_last || c.sample.is_some() {
                // Rows are gathered in order, so row `end - 1` is at or after row `n`.
                s.x.copy_within((end - 1) * d..end * d, n * d);
                n += 1;
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let h = sized(&mut s.h, n * d);
        ops::rms_norm(&s.x[..n * d], &self.output_norm, self.config.rms_eps, h);
        let logits = sized(&mut s.logits, n * self.config.vocab_size);
        self.output
            .forward(self.kernel, h, n, logits, &mut s.mat)
            .map_err(Error::candle(format!("the output of {n} sequences")))?;
        Ok(n)
    }

    /// One transformer block over the scratch's residual stream (`tokens × hidden`), the
    /// chunks' tokens in order.
    fn block(&mut self, l: usize, s: &mut Scratch) -> CResult<()> {
        let c = &self.config;
        let layer = &mut self.layers[l];
        let kernel = self.kernel;
        let (d, qw, kvw, hd, eps) = (c.hidden, c.q_width(), c.kv_width(), c.head_dim, c.rms_eps);
        let n = s.rows.len();

        let h = sized(&mut s.h, n * d);
        ops::rms_norm(&s.x, &layer.attn_norm, eps, h);
        let width = qw + 2 * kvw;
        let qkv = sized(&mut s.qkv, n * width);
        layer.qkv.forward(kernel, &s.h, n, qkv, (&mut s.part, &mut s.mat))?;
        let rope = &self.ropes[layer.rope];
        let half = hd / 2;
        for (row, &(slot, pos)) in qkv.chunks_exact_mut(width).zip(&s.rows) {
            let (q, kv) = row.split_at_mut(qw);
            let (k, v) = kv.split_at_mut(kvw);
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                ops::add(q, bq);
                ops::add(k, bk);
                ops::add(v, bv);
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops::rms_norm_in_place(q, qn, eps);
                ops::rms_norm_in_place(k, kn, eps);
            }
            let (cos, sin) = (&rope.cos[pos * half..][..half], &rope.sin[pos * half..][..half]);
            ops::rope(q, hd, cos, sin, c.rope_neox);
            ops::rope(k, hd, cos, sin, c.rope_neox);
            let cache = &mut layer.kv[slot];
            // Truncated first, so that a pass that failed half-way leaves no stale rows.
            cache.k.truncate(pos * kvw);
            cache.v.truncate(pos * kvw);
            cache.k.extend_from_slice(k);
            cache.v.extend_from_slice(v);
        }
        s.keys.clear();
        s.keys.extend(s.rows.iter().map(|&(slot, pos)| Keys { slot, first: c.first_key(l, pos), last: pos }));
        let heads = Heads { n: c.n_heads, kv: c.n_kv_heads, dim: hd, scale: c.attention_scale };
        let attention = sized(&mut s.attention, n * qw);
        ops::attention(heads, &s.qkv, width, &s.keys, &layer.kv, attention);

        let o = sized(&mut s.o, n * d);
        layer.wo.forward(kernel, &s.attention, n, o, &mut s.mat)?;
        if let Some(pn) = &layer.post_attn_norm {
            ops::rms_norm_in_place(o, pn, eps);
        }
        ops::add(&mut s.x, o);

        let h = sized(&mut s.h, n * d);
        ops::rms_norm(&s.x, &layer.ffn_norm, eps, h);
        let gate_up = sized(&mut s.gate_up, n * 2 * c.ffn);
        layer.gate_up.forward(kernel, &s.h, n, gate_up, (&mut s.part, &mut s.mat))?;
        let act = sized(&mut s.act, n * c.ffn);
        ops::gated(c.activation, &s.gate_up, c.ffn, act);
        let o = sized(&mut s.o, n * d);
        layer.down.forward(kernel, &s.act, n, o, &mut s.mat)?;
        if let Some(pn) = &layer.post_ffn_norm {
            ops::rms_norm_in_place(o, pn, eps);
        }
        ops::add(&mut s.x, o);
        Ok(())
    }
}

impl Engine for CandleEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn device_name(&self) -> String {
        let own = self.kernel.name();
        format!("CPU ({} threads, {SIMD}; Q4_1/Q8_0 products: {own})", rayon::current_num_threads())
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn max_batch(&self) -> usize {
        self.positions.len()
    }

    fn step_tokens(&self) -> usize {
        // Matrix products over more rows read each weight once for more of them, but a
        // longer step delays every decoding sequence's next token.
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
                // Freed, not kept: the pool's budget is of tokens held.
                layer.kv[seq] = KvCache::default();
            }
            self.positions[seq] = 0;
        }
    }

    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Sampled>> {
        let n = self.forward(chunks, false)?;
        let sampled = chunks.iter().filter_map(|c| c.sample.map(|s| (s, c.logprobs)));
        let logits = self.scratch.logits[..n * self.config.vocab_size].chunks_exact(self.config.vocab_size);
        Ok(logits
            .zip(sampled)
            .map(|(l, ((s, step), logprobs))| {
                let token = sample(l, s, step);
                Sampled { token, logprobs: logprobs.map(|k| TokenLogprobs::from_logits(l, token, k)) }
            })
            .collect())
    }

    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        match self.forward(&[SeqChunk::fill(0, tokens)], true)? {
            0 => Err(Error::Device("no logits".to_owned())),
            _ => Ok(self.scratch.logits[..self.config.vocab_size].to_vec()),
        }
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
