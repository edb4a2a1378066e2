//! The wgpu backend: the forward pass of every supported architecture as WGSL compute kernels.
//!
//! Weights are uploaded once in their GGUF block formats (repacked so every block's data is
//! 4-byte aligned) and dequantized inside the matrix kernels. Activations, the KV cache, the
//! logits and the sampler's state stay on the device. A forward pass over a chunk of tokens
//! is recorded as one compute pass in one command buffer, submitted once; a decode step
//! reads back a single u32, the chosen token.
//!
//! Dispatches per decoded token: 1 (embedding) + 10 per layer (two RMSNorms and the SwiGLU
//! that also quantize their output for the next product, the quantization of the attention
//! output, four matrix-vector products: q/k/v stacked into one, the attention output,
//! gate/up stacked into one, down; RoPE with the KV-cache write, attention) + 3 (final
//! norm, output projection, sampling); for SmolLM2-135M's 30 layers, 304. Layers whose
//! weights are F32/F16 skip the quantization; q/k/v (or gate/up) of different types take
//! one product each. Architectures add theirs: a bias (Qwen 2) or a per-head norm (Qwen 3,
//! Gemma 3) after the q/k/v product, a norm after each sublayer (Gemma 3: two per layer),
//! and one embedding and output dispatch per block of rows where a matrix exceeds the
//! adapter's binding size.

mod kernels;
mod weights;

use std::sync::{Arc, Mutex};

use crate::engine::{BackendKind, Engine, KvPool, MAX_TOP_LOGPROBS, Sampled, SeqChunk, TokenLogprobs, check_batch};
use crate::error::{Error, Result};
use crate::model::{Activation, Model};
use crate::sampling::SamplingParams;
use kernels::{Kernel, Pipelines, is_quantized};
use weights::{WeightBuffer, upload_f32, upload_stacked, upload_weight};

/// Tokens per submission: bounds the activation and attention-score buffers, and so the
/// tokens of one batched step (the step uniform has a row per token).
const PREFILL_CHUNK: usize = 64;
/// Sequences one engine batches at most (the step uniform has a row per sampled sequence).
pub const MAX_BATCH: usize = 64;
/// Tokens per KV-cache page (`PAGE` in common.wgsl).
const PAGE_TOKENS: usize = 32;
/// Floats per sampled sequence in the log-probabilities buffer (`STRIDE` in logprobs.wgsl).
const LOGPROBS_STRIDE: usize = 2 + 2 * MAX_TOP_LOGPROBS;
/// Context used when the model's own is longer, unless [`WgpuOptions::max_context`] says
/// otherwise (the candle backend uses the same bound).
pub const DEFAULT_MAX_CONTEXT: usize = 4096;

/// How to open a [`WgpuEngine`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Accept a software adapter (lavapipe, llvmpipe) when no GPU is present; tests and CI
    /// set this to run the kernels on the CPU.
    pub allow_software: bool,
    /// The most tokens the KV cache holds (default: the model's context, at most 4096).
    pub max_context: Option<usize>,
    /// How the matrix kernels spread work (default: chosen by the adapter's type).
    pub kernels: KernelStyle,
    /// Sequences decoded together (default 1; at most [`MAX_BATCH`]).
    pub max_batch: Option<usize>,
    /// Tokens of KV cache shared by the sequences, in pages of 32 (default: a full
    /// context for each sequence; at least one full context).
    pub kv_tokens: Option<usize>,
}

/// How the matrix kernels map rows onto invocations.
///
/// GPUs want many lanes cooperating on a row and workgroup-memory tiles for prefill;
/// software rasterizers (lavapipe) vectorize across invocations but implement workgroup
/// barriers slowly, so there one invocation per row is several times faster. Both compute
/// the same products; tests run both on lavapipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelStyle {
    /// `PerRow` on CPU adapters, `Cooperative` on GPUs.
    #[default]
    Auto,
    /// 32 lanes per row for decode, 32x32 tiles for prefill.
    Cooperative,
    /// One lane per row for decode and prefill.
    PerRow,
}

/// A model running on a wgpu device.
pub struct WgpuEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_name: String,
    context_length: usize,
    vocab_size: usize,
    max_batch: usize,
    /// Each slot's position and pages, in order.
    seqs: Vec<SeqState>,
    free_pages: Vec<u32>,
    pool_pages: usize,
    pages_per_seq: usize,
    ops: Vec<Op>,
    pipelines: Vec<wgpu::ComputePipeline>,
    step_buf: wgpu::Buffer,
    /// The step uniform of the tail (final norm, output, sampling), which runs over the
    /// sampled sequences' rows rather than the chunk's tokens.
    tail_step_buf: wgpu::Buffer,
    /// Each slot's row of page numbers, `pages_per_seq` entries.
    pages_buf: wgpu::Buffer,
    tokens_buf: wgpu::Buffer,
    out_buf: wgpu::Buffer,
    logits_buf: wgpu::Buffer,
    token_readback: wgpu::Buffer,
    logits_readback: wgpu::Buffer,
    logprobs_buf: wgpu::Buffer,
    logprobs_readback: wgpu::Buffer,
    /// The first error the device reported outside an error scope.
    device_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for WgpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuEngine")
            .field("adapter", &self.adapter_name)
            .field("context_length", &self.context_length)
            .field("max_batch", &self.max_batch)
            .field("positions", &self.seqs.iter().map(|s| s.position).collect::<Vec<_>>())
            .field("dispatches_per_token", &self.dispatches_per_token())
            .finish_non_exhaustive()
    }
}

/// How a recorded dispatch is sized for a chunk of `n` tokens.
#[derive(Debug, Clone, Copy)]
enum Size {
    /// One workgroup per token.
    PerToken,
    /// A matrix product with `rows` output rows: matrix-vector (`rows_per_wg` rows per
    /// workgroup) for one token, the `alt` matrix-matrix pipeline for more, tiled 32x32
    /// or one row per invocation.
    Rows { rows: u32, rows_per_wg: u32, tiled: bool },
    /// `per_token * n` invocations in workgroups of `wg`.
    Elems { per_token: u32, wg: u32 },
    /// One workgroup row of `x` per token.
    GridPerToken(u32),
}

#[derive(Debug)]
struct Op {
    kernel: Kernel,
    alt_kernel: Option<Kernel>,
    pipeline: usize,
    /// The matrix-matrix pipeline used instead when a chunk has several tokens.
    alt: Option<usize>,
    bind_group: wgpu::BindGroup,
    size: Size,
    /// Part of the tail that turns the last position into logits.
    final_only: bool,
}

impl Op {
    /// The pipeline and workgroup grid for a chunk of `n` tokens.
    fn grid(&self, n: u32) -> (usize, (u32, u32)) {
        match self.size {
            Size::PerToken => (self.pipeline, (n, 1)),
            Size::GridPerToken(x) => (self.pipeline, (x, n)),
            Size::Elems { per_token, wg } => (self.pipeline, ((per_token * n).div_ceil(wg), 1)),
            Size::Rows { rows, rows_per_wg, tiled } => match self.alt {
                Some(alt) if n > 1 && tiled => (alt, (rows.div_ceil(32), n.div_ceil(32))),
                Some(alt) if n > 1 => (alt, (rows.div_ceil(64), 1)),
                _ => {
                    let groups = rows.div_ceil(rows_per_wg);
                    (self.pipeline, (groups.min(32768), groups.div_ceil(32768)))
                }
            },
        }
    }

    fn kernel_for(&self, n: u32) -> Kernel {
        match (self.alt_kernel, self.alt) {
            (Some(k), Some(_)) if n > 1 => k,
            _ => self.kernel,
        }
    }
}

/// A sequence's tokens so far and the pages holding them.
#[derive(Debug, Clone, Default)]
struct SeqState {
    position: usize,
    pages: Vec<u32>,
}

/// `Seq` in common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SeqUniform {
    row: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    greedy: u32,
    temperature: f32,
    top_p: f32,
    logprobs: u32,
}

/// `Step` in common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepUniform {
    n_tok: u32,
    n_seq: u32,
    pages_per_seq: u32,
    _a: u32,
    tok: [[u32; 4]; PREFILL_CHUNK],
    seq: [SeqUniform; MAX_BATCH],
}

impl SeqUniform {
    fn new(row: usize, sampling: &SamplingParams, step: u32, logprobs: Option<usize>) -> Self {
        SeqUniform {
            row: row as u32,
            seed_lo: sampling.seed as u32,
            seed_hi: (sampling.seed >> 32) as u32,
            step,
            greedy: sampling.is_greedy() as u32,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            logprobs: logprobs.map_or(0, |k| k as u32 + 1),
        }
    }
}

/// One submission's share of a sequence: tokens, and whether its last one samples.
struct Piece<'a> {
    seq: usize,
    tokens: &'a [u32],
    sample: Option<(&'a SamplingParams, u32)>,
    logprobs: Option<usize>,
}

/// Splits a batch into submissions of at most `PREFILL_CHUNK` tokens, in order; a chunk
/// longer than the room left continues in the next submission, and only its final piece
/// samples.
fn split_submissions<'a>(chunks: &[SeqChunk<'a>]) -> Vec<Vec<Piece<'a>>> {
    let mut subs: Vec<Vec<Piece<'a>>> = vec![Vec::new()];
    let mut room = PREFILL_CHUNK;
    for c in chunks {
        let mut rest = c.tokens;
        while !rest.is_empty() {
            if room == 0 {
                subs.push(Vec::new());
                room = PREFILL_CHUNK;
            }
            let (now, later) = rest.split_at(rest.len().min(room));
            room -= now.len();
            rest = later;
            let (sample, logprobs) = if rest.is_empty() { (c.sample, c.logprobs) } else { (None, None) };
            subs.last_mut().expect("one at least").push(Piece { seq: c.seq, tokens: now, sample, logprobs });
        }
    }
    subs
}

/// Builds the ops of the forward pass; holds what recording needs.
struct Builder<'a> {
    device: &'a wgpu::Device,
    cache: Pipelines,
    pipelines: Vec<wgpu::ComputePipeline>,
    index: std::collections::HashMap<Kernel, usize>,
    ops: Vec<Op>,
    step_buf: &'a wgpu::Buffer,
    pages: &'a wgpu::Buffer,
    dummy: wgpu::Buffer,
    per_row: bool,
}

impl Builder<'_> {
    fn pipeline(&mut self, kernel: Kernel) -> usize {
        if let Some(&i) = self.index.get(&kernel) {
            return i;
        }
        let p = self.cache.get(self.device, kernel);
        self.pipelines.push(p);
        self.index.insert(kernel, self.pipelines.len() - 1);
        self.pipelines.len() - 1
    }

    fn params(&self, words: &[u32]) -> wgpu::Buffer {
        let mut data = words.to_vec();
        // Uniform structs are at least 16 bytes.
        data.resize(words.len().max(4).next_multiple_of(4), 0);
        wgpu::util::DeviceExt::create_buffer_init(
            self.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(&data),
                usage: wgpu::BufferUsages::UNIFORM,
            },
        )
    }

    fn push(&mut self, kernel: Kernel, alt: Option<Kernel>, params: &[u32], buffers: &[&wgpu::Buffer], size: Size) {
        let alt_kernel = alt;
        let pipeline = self.pipeline(kernel);
        let alt = alt.map(|k| self.pipeline(k));
        let params = self.params(params);
        let layout = self.cache.layout(self.device, kernel.signature());
        let mut entries = vec![
            wgpu::BindGroupEntry { binding: 0, resource: self.step_buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: params.as_entire_binding() },
        ];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: 2 + i as u32, resource: b.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("op"),
            layout: &layout,
            entries: &entries,
        });
        self.ops.push(Op { kernel, alt_kernel, pipeline, alt, bind_group, size, final_only: false });
    }

    /// `y[t * y_stride + y_off + r] (+)= (W x[t])[r]`, reading `x` quantized (`xq`/`xs`,
    /// which the caller fills once for the products sharing `x`) when `W` is quantized.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        w: &WeightBuffer,
        x: &wgpu::Buffer,
        xq: &wgpu::Buffer,
        xs: &wgpu::Buffer,
        y: &wgpu::Buffer,
        (y_stride, y_off): (usize, usize),
        accumulate: bool,
    ) {
        let params = [w.rows, w.blocks_per_row, accumulate as u32, y_stride as u32, y_off as u32];
        let scales = w.scales.as_ref().unwrap_or(&self.dummy).clone();
        let (tpr, prefill) = if self.per_row { (1, Kernel::MatRows(w.dtype)) } else { (32, Kernel::MatMul(w.dtype)) };
        let size = Size::Rows { rows: w.rows, rows_per_wg: 64 / tpr, tiled: !self.per_row };
        let kernel = Kernel::MatVec(w.dtype, tpr);
        if is_quantized(w.dtype) {
            self.push(kernel, Some(prefill), &params, &[&w.data, &scales, xq, xs, y], size);
        } else {
            self.push(kernel, Some(prefill), &params, &[&w.data, &scales, x, y], size);
        }
    }

    /// Products of `x` by several matrices written side by side into `y`: one stacked
    /// product when the matrices share a type, else one each.
    #[allow(clippy::too_many_arguments)]
    fn stacked(
        &mut self,
        model: &Model,
        names: &[&str],
        x: &wgpu::Buffer,
        xq: &wgpu::Buffer,
        xs: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_stride: usize,
    ) -> Result<()> {
        if let Some(w) = upload_stacked(self.device, model, names)? {
            self.matmul(&w, x, xq, xs, y, (y_stride, 0), false);
            return Ok(());
        }
        let mut off = 0;
        for name in names {
            let w = upload_weight(self.device, model, name)?;
            self.matmul(&w, x, xq, xs, y, (y_stride, off), false);
            off += w.rows as usize;
        }
        Ok(())
    }

    /// `x += W h`, or with a post-norm (Gemma 3) `x += norm(W h)` through `tmp`.
    #[allow(clippy::too_many_arguments)]
    fn residual(
        &mut self,
        w: &WeightBuffer,
        h: &wgpu::Buffer,
        xq: &wgpu::Buffer,
        xs: &wgpu::Buffer,
        x: &wgpu::Buffer,
        tmp: &wgpu::Buffer,
        post_norm: Option<wgpu::Buffer>,
        d: usize,
        eps: u32,
    ) {
        match post_norm {
            None => self.matmul(w, h, xq, xs, x, (d, 0), true),
            Some(pn) => {
                self.matmul(w, h, xq, xs, tmp, (d, 0), false);
                let dummy = self.dummy.clone();
                self.push(
                    Kernel::RmsNorm,
                    None,
                    &[d as u32, eps, 0, 0, 1],
                    &[tmp, &pn, x, &dummy, &dummy],
                    Size::PerToken,
                );
            }
        }
    }

    fn quantize(&mut self, x: &wgpu::Buffer, dim: usize, xq: &wgpu::Buffer, xs: &wgpu::Buffer) {
        let blocks = (dim / 32) as u32;
        let size = Size::Elems { per_token: blocks, wg: 64 };
        self.push(Kernel::Quantize, None, &[blocks], &[x, xq, xs], size);
    }
}

fn storage(device: &wgpu::Device, label: &str, bytes: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(16) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

fn readback(device: &wgpu::Device, label: &str, bytes: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(16) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn pick_adapter(allow_software: bool) -> Result<(wgpu::Adapter, wgpu::AdapterInfo)> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    // No Vulkan validation layers: they are for debugging wgpu itself and slow every call.
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let mut found: Vec<(wgpu::Adapter, wgpu::AdapterInfo)> = adapters
        .into_iter()
        .map(|a| {
            let i = a.get_info();
            (a, i)
        })
        .collect();
    found.sort_by_key(|(_, i)| rank(i.device_type));
    let names: Vec<String> = found.iter().map(|(_, i)| format!("{} ({:?})", i.name, i.device_type)).collect();
    match found.into_iter().next() {
        None => Err(Error::NoAdapter { detail: " (no Vulkan adapter)".to_owned() }),
        Some((_, info)) if info.device_type == wgpu::DeviceType::Cpu && !allow_software => Err(Error::NoAdapter {
            detail: format!(" other than software ones ({}), which `auto` does not use", names.join(", ")),
        }),
        Some(found) => Ok(found),
    }
}

impl WgpuEngine {
    /// Uploads the model to a wgpu device and builds its kernels.
    pub fn new(model: &Model, options: &WgpuOptions) -> Result<Self> {
        let c = model.config().clone();
        // Check types before touching a device, so the error is the same everywhere.
        for (name, shape) in crate::model::expected_shapes(&c, model.tensor_type("output.weight").is_some()) {
            let dtype = model.tensor_type(&name).expect("validated at load");
            if shape.len() == 2 && weights::device_layout(dtype).is_none() {
                return Err(Error::UnsupportedTensorType {
                    tensor: name,
                    dtype: format!("{dtype:?}"),
                    backend: "wgpu",
                    supported: kernels::SUPPORTED_NAMES,
                });
            }
        }
        let bad_shape = |reason: String| Error::BadTensor { tensor: "token_embd.weight".to_owned(), reason };
        if !c.hidden.is_multiple_of(32) || !c.ffn.is_multiple_of(32) || !c.q_width().is_multiple_of(32) {
            return Err(bad_shape(format!(
                "the wgpu kernels need widths that are multiples of 32 (embedding {}, feed-forward {}, queries {})",
                c.hidden,
                c.ffn,
                c.q_width()
            )));
        }
        if c.head_dim > 256 {
            return Err(bad_shape(format!("head width {} is over the wgpu kernels' 256", c.head_dim)));
        }

        let (adapter, info) = pick_adapter(options.allow_software)?;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("attrinet-compute"),
            required_features: wgpu::Features::empty(),
            // Everything the adapter offers: large models need big storage buffers.
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| Error::Device(format!("requesting a device from {}: {e}", info.name)))?;
        let device_error = Arc::new(Mutex::new(None::<String>));
        {
            let sink = device_error.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| e.to_string());
            }));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);

        let context_length = c.context_length.min(options.max_context.unwrap_or(DEFAULT_MAX_CONTEXT));
        let max_batch = options.max_batch.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&max_batch) {
            return Err(Error::InvalidBatch(format!("max_batch {max_batch} is not within 1..={MAX_BATCH}")));
        }
        let pages_per_seq = context_length.div_ceil(PAGE_TOKENS);
        let pool_pages =
            options.kv_tokens.unwrap_or(context_length * max_batch).div_ceil(PAGE_TOKENS).max(pages_per_seq);
        let limits = device.limits();
        let kvd = c.n_kv_heads * c.head_dim;
        let max_binding = limits.max_storage_buffer_binding_size as usize;
        let kv_bytes = pool_pages * PAGE_TOKENS * kvd * 4;
        let scratch_bytes = PREFILL_CHUNK * c.n_heads * context_length * 4;
        if kv_bytes > max_binding || scratch_bytes > max_binding {
            return Err(Error::Device(format!(
                "a KV pool of {} tokens and a context of {context_length} need buffers of {} bytes, over the adapter's \
                 limit of {max_binding}; lower max_context or the KV budget",
                pool_pages * PAGE_TOKENS,
                kv_bytes.max(scratch_bytes)
            )));
        }

        let ch = PREFILL_CHUNK;
        let d = c.hidden;
        let f = c.ffn;
        let x = storage(&device, "x", ch * d * 4);
        let xn = storage(&device, "xn", ch * d * 4);
        let qd = c.q_width();
        let qkv_width = qd + 2 * kvd;
        let qkv = storage(&device, "q|k|v", ch * qkv_width * 4);
        let att = storage(&device, "att", ch * qd * 4);
        // Attention and MLP outputs, normalised before the residual add (Gemma 3).
        let sub_out = storage(&device, "sublayer out", if c.post_norms { ch * d * 4 } else { 16 });
        let gu = storage(&device, "gate|up", ch * 2 * f * 4);
        let h = storage(&device, "swiglu", ch * f * 4);
        let kmax = d.max(f).max(qd);
        let xq = storage(&device, "xq", ch * kmax / 32 * 32);
        let xs = storage(&device, "xs", ch * kmax / 32 * 8);
        let last = storage(&device, "last", max_batch * d * 4);
        let scratch = storage(&device, "scores", scratch_bytes);
        let logits_buf = storage(&device, "logits", max_batch * c.vocab_size * 4);
        let probs = storage(&device, "probs", max_batch * c.vocab_size * 4);
        let tokens_buf = storage(&device, "tokens", ch * 4);
        let out_buf = storage(&device, "next tokens", max_batch * 4);
        let token_readback = readback(&device, "token readback", max_batch * 4);
        let logits_readback = readback(&device, "logits readback", c.vocab_size * 4);
        let logprobs_buf = storage(&device, "logprobs", max_batch * LOGPROBS_STRIDE * 4);
        let logprobs_readback = readback(&device, "logprobs readback", max_batch * LOGPROBS_STRIDE * 4);
        let uniform = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: std::mem::size_of::<StepUniform>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let step_buf = uniform("step");
        let tail_step_buf = uniform("tail step");
        let pages_buf = storage(&device, "page table", max_batch * pages_per_seq * 4);
        // Norm weights, biases and RoPE factors: small vectors, in f32.
        let f32_values = |name: &str| -> Result<Vec<f32>> {
            let (dtype, _, data) = model.tensor_data(name)?;
            weights::dequantize_norm(name, dtype, &data)
        };
        let freq_factors = if c.rope_freq_factors { Some(f32_values("rope_freqs.weight")?) } else { None };
        let rope_tables = c.rope_tables(context_length, freq_factors.as_deref());
        let rope_bufs: Vec<wgpu::Buffer> = rope_tables
            .tables
            .iter()
            .map(|t| {
                let flat: Vec<f32> = t.iter().flat_map(|&(cos, sin)| [cos, sin]).collect();
                upload_f32(&device, "rope table", &flat)
            })
            .collect();
        let half = c.head_dim / 2;

        let mut b = Builder {
            device: &device,
            cache: Pipelines::default(),
            pipelines: Vec::new(),
            index: Default::default(),
            ops: Vec::new(),
            step_buf: &step_buf,
            pages: &pages_buf,
            dummy: storage(&device, "dummy", 16),
            per_row: match options.kernels {
                KernelStyle::Auto => info.device_type == wgpu::DeviceType::Cpu,
                KernelStyle::Cooperative => false,
                KernelStyle::PerRow => true,
            },
        };

        let embd = weights::upload_rows(&device, model, "token_embd.weight", max_binding)?;
        let dummy = b.dummy.clone();
        for (first, e) in &embd {
            b.push(
                Kernel::Embed(e.dtype),
                None,
                &[e.blocks_per_row, d as u32, c.embedding_scale.unwrap_or(1.0).to_bits(), *first, e.rows],
                &[&e.data, e.scales.as_ref().unwrap_or(&dummy), &tokens_buf, &x],
                Size::PerToken,
            );
        }
        let norm = |name: &str| -> Result<wgpu::Buffer> { Ok(upload_f32(&device, name, &f32_values(name)?)) };
        let eps = c.rms_eps.to_bits();
        for l in 0..c.n_layers {
            let n = c.layer_names(l);
            let wo = upload_weight(&device, model, &n.attn_output)?;
            let wd = upload_weight(&device, model, &n.down)?;
            let quantized = |names: &[String]| names.iter().any(|t| model.tensor_type(t).is_some_and(is_quantized));
            let attn_norm = norm(&n.attn_norm)?;
            let ffn_norm = norm(&n.ffn_norm)?;
            let kc = storage(&device, "k cache", kv_bytes);
            let vc = storage(&device, "v cache", kv_bytes);

            let q = quantized(&n.qkv);
            b.push(
                Kernel::RmsNorm,
                None,
                &[d as u32, eps, 0, q as u32, 0],
                &[&x, &attn_norm, &xn, &xq, &xs],
                Size::PerToken,
            );
            let qkv_names: Vec<&str> = n.qkv.iter().map(String::as_str).collect();
            b.stacked(model, &qkv_names, &xn, &xq, &xs, &qkv, qkv_width)?;
            if let Some(biases) = &n.qkv_bias {
                let mut values = Vec::with_capacity(qkv_width);
                for name in biases {
                    values.extend(f32_values(name)?);
                }
                let bias = upload_f32(&device, "q|k|v bias", &values);
                b.push(
                    Kernel::Bias,
                    None,
                    &[qkv_width as u32],
                    &[&bias, &qkv],
                    Size::Elems { per_token: qkv_width as u32, wg: 64 },
                );
            }
            if let (Some(qn), Some(kn)) = (&n.q_norm, &n.k_norm) {
                let (qn, kn) = (norm(qn)?, norm(kn)?);
                b.push(
                    Kernel::HeadNorm,
                    None,
                    &[c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32, eps],
                    &[&qkv, &qn, &kn],
                    Size::GridPerToken((c.n_heads + c.n_kv_heads) as u32),
                );
            }
            let cs_buf = &rope_bufs[rope_tables.of_layer[l]];
            let rope_items = ((c.n_heads + c.n_kv_heads) * half + kvd) as u32;
            b.push(
                Kernel::Rope,
                None,
                &[c.n_heads as u32, c.n_kv_heads as u32, c.head_dim as u32, c.rope_neox as u32],
                &[&qkv, &kc, &vc, cs_buf, b.pages],
                Size::GridPerToken(rope_items.div_ceil(64)),
            );
            let window = if c.is_sliding(l) { c.sliding_window.unwrap_or(0) as u32 } else { 0 };
            b.push(
                Kernel::Attention,
                None,
                &[
                    c.n_heads as u32,
                    c.n_kv_heads as u32,
                    c.head_dim as u32,
                    context_length as u32,
                    c.attention_scale.to_bits(),
                    window,
                ],
                &[&qkv, &kc, &vc, &scratch, &att, b.pages],
                Size::GridPerToken(c.n_heads as u32),
            );
            if is_quantized(wo.dtype) {
                b.quantize(&att, qd, &xq, &xs);
            }
            b.residual(&wo, &att, &xq, &xs, &x, &sub_out, n.post_attn_norm.as_deref().map(&norm).transpose()?, d, eps);
            let q = quantized(&n.gate_up);
            b.push(
                Kernel::RmsNorm,
                None,
                &[d as u32, eps, 0, q as u32, 0],
                &[&x, &ffn_norm, &xn, &xq, &xs],
                Size::PerToken,
            );
            let gate_up_names: Vec<&str> = n.gate_up.iter().map(String::as_str).collect();
            b.stacked(model, &gate_up_names, &xn, &xq, &xs, &gu, 2 * f)?;
            b.push(
                Kernel::SwiGlu,
                None,
                &[f as u32, is_quantized(wd.dtype) as u32, (c.activation == Activation::GeluTanh) as u32],
                &[&gu, &h, &xq, &xs],
                Size::Elems { per_token: (f / 32) as u32, wg: 64 },
            );
            b.residual(&wd, &h, &xq, &xs, &x, &sub_out, n.post_ffn_norm.as_deref().map(&norm).transpose()?, d, eps);
            // wgpu stages each initialised buffer's contents in host memory until the next
            // submission: submitting (nothing) after each layer and waiting frees them, so
            // host memory holds a layer's weights at a time rather than a copy of the model.
            flush_uploads(&device, &queue)?;
        }
        let out_norm = norm("output_norm.weight")?;
        // The tail runs over the sampled sequences' rows: its ops read the tail uniform.
        b.step_buf = &tail_step_buf;
        let first_final = b.ops.len();
        let out_w = if model.output_tensor_name() == "token_embd.weight" {
            embd
        } else {
            weights::upload_rows(&device, model, "output.weight", max_binding)?
        };
        // Every block quantizes the same way, so one quantized copy of `last` serves all.
        let out_quantized = out_w.iter().any(|(_, w)| is_quantized(w.dtype));
        b.push(
            Kernel::RmsNorm,
            None,
            &[d as u32, eps, 1, out_quantized as u32, 0],
            &[&x, &out_norm, &last, &xq, &xs],
            Size::PerToken,
        );
        for (first, w) in &out_w {
            b.matmul(w, &last, &xq, &xs, &logits_buf, (c.vocab_size, *first as usize), false);
        }
        b.push(Kernel::Sample, None, &[c.vocab_size as u32], &[&logits_buf, &probs, &out_buf], Size::PerToken);
        b.push(Kernel::Logprobs, None, &[c.vocab_size as u32], &[&logits_buf, &out_buf, &logprobs_buf], Size::PerToken);
        // The final norm, quantization, output projection and sampling see one row per
        // sampled sequence; submissions that sample nothing (a long prompt's first
        // chunks) skip them.
        for op in &mut b.ops[first_final..] {
            op.final_only = true;
        }
        let Builder { pipelines, ops, .. } = b;

        flush_uploads(&device, &queue)?;
        model.check_unchanged()?;
        let oom_error = pollster::block_on(oom.pop());
        let validation_error = pollster::block_on(scope.pop());
        if let Some(e) = oom_error.or(validation_error) {
            return Err(Error::Device(format!("building the model on {}: {e}", info.name)));
        }
        tracing::info!(
            target: "compute::wgpu",
            adapter = %info.name,
            device_type = ?info.device_type,
            context_length,
            dispatches = ops.len(),
            "model uploaded"
        );
        Ok(WgpuEngine {
            device,
            queue,
            adapter_name: format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend),
            context_length,
            vocab_size: c.vocab_size,
            max_batch,
            seqs: vec![SeqState::default(); max_batch],
            // Popped from the end: the lowest pages are handed out first.
            free_pages: (0..pool_pages as u32).rev().collect(),
            pool_pages,
            pages_per_seq,
            ops,
            pipelines,
            step_buf,
            tail_step_buf,
            pages_buf,
            tokens_buf,
            out_buf,
            logits_buf,
            token_readback,
            logits_readback,
            logprobs_buf,
            logprobs_readback,
            device_error,
        })
    }

    /// Device time per kernel for a forward pass over `n_tok` tokens, measured by
    /// submitting each dispatch alone and waiting for it (so it includes per-submission
    /// overhead): for finding what to optimise, not a benchmark. Writes over the first
    /// pages of the KV cache: profile an engine that holds no sequence.
    pub fn profile_kernels(&mut self, n_tok: usize) -> Result<Vec<(String, std::time::Duration)>> {
        let n = n_tok.clamp(1, PREFILL_CHUNK) as u32;
        let tokens = vec![0u32; n as usize];
        // Sequence 0 from position 0, as a prompt would run; its pages are the first ones.
        let mut uniform: StepUniform = bytemuck::Zeroable::zeroed();
        uniform.n_tok = n;
        uniform.n_seq = 1;
        uniform.pages_per_seq = self.pages_per_seq as u32;
        for (t, row) in uniform.tok.iter_mut().take(n as usize).enumerate() {
            *row = [0, t as u32, 0, 0];
        }
        uniform.seq[0] = SeqUniform::new(n as usize - 1, &SamplingParams::greedy(), 0, None);
        let table: Vec<u32> = (0..self.pages_per_seq as u32).collect();
        self.queue.write_buffer(&self.pages_buf, 0, bytemuck::cast_slice(&table));
        self.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&uniform));
        uniform.n_tok = 1;
        self.queue.write_buffer(&self.tail_step_buf, 0, bytemuck::bytes_of(&uniform));
        self.queue.write_buffer(&self.tokens_buf, 0, bytemuck::cast_slice(&tokens));
        let mut totals: Vec<(String, std::time::Duration)> = Vec::new();
        for op in &self.ops {
            let (pipeline, grid) = op.grid(if op.final_only { 1 } else { n });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipelines[pipeline]);
                pass.set_bind_group(0, &op.bind_group, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, 1);
            }
            let start = std::time::Instant::now();
            self.queue.submit([encoder.finish()]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Device(format!("waiting for the device: {e}")))?;
            let name = format!("{:?}", op.kernel_for(n));
            match totals.iter_mut().find(|(k, _)| *k == name) {
                Some((_, t)) => *t += start.elapsed(),
                None => totals.push((name, start.elapsed())),
            }
        }
        self.write_page_table();
        totals.sort_by_key(|t| std::cmp::Reverse(t.1));
        Ok(totals)
    }

    /// Compute dispatches recorded for one decode step (the log-probabilities kernel,
    /// which runs only when a request asks for them, left out).
    pub fn dispatches_per_token(&self) -> usize {
        self.ops.len() - 1
    }

    /// Takes free pages for every sequence of the batch to reach its new length, or fails
    /// changing nothing.
    fn allocate_pages(&mut self, chunks: &[SeqChunk<'_>]) -> Result<()> {
        let needed: usize = chunks
            .iter()
            .map(|c| {
                let s = &self.seqs[c.seq];
                (s.position + c.tokens.len()).div_ceil(PAGE_TOKENS).saturating_sub(s.pages.len())
            })
            .sum();
        if needed > self.free_pages.len() {
            return Err(Error::KvCacheFull { needed, free: self.free_pages.len(), page_tokens: PAGE_TOKENS });
        }
        let mut table_changed = false;
        for c in chunks {
            let s = &mut self.seqs[c.seq];
            while s.pages.len() < (s.position + c.tokens.len()).div_ceil(PAGE_TOKENS) {
                s.pages.push(self.free_pages.pop().expect("counted above"));
                table_changed = true;
            }
        }
        if table_changed {
            self.write_page_table();
        }
        Ok(())
    }

    fn write_page_table(&self) {
        let mut table = vec![0u32; self.max_batch * self.pages_per_seq];
        for (i, s) in self.seqs.iter().enumerate() {
            table[i * self.pages_per_seq..][..s.pages.len()].copy_from_slice(&s.pages);
        }
        self.queue.write_buffer(&self.pages_buf, 0, bytemuck::cast_slice(&table));
    }

    /// Records and submits the forward pass over one submission's pieces (at most
    /// `PREFILL_CHUNK` tokens), copying the tokens it samples to the readback buffer from
    /// entry `sampled_before`, and the first sampled row's logits too when `want_logits`.
    fn submit(&mut self, pieces: &[Piece<'_>], sampled_before: usize, want_logits: bool) -> usize {
        let mut uniform: StepUniform = bytemuck::Zeroable::zeroed();
        uniform.pages_per_seq = self.pages_per_seq as u32;
        let mut tokens = Vec::with_capacity(PREFILL_CHUNK);
        let mut n_seq = 0;
        for piece in pieces {
            let start = self.seqs[piece.seq].position;
            for (i, &t) in piece.tokens.iter().enumerate() {
                uniform.tok[tokens.len()] = [piece.seq as u32, (start + i) as u32, 0, 0];
                tokens.push(t);
            }
            if let Some((s, step)) = piece.sample {
                uniform.seq[n_seq] = SeqUniform::new(tokens.len() - 1, s, step, piece.logprobs);
                n_seq += 1;
            }
            self.seqs[piece.seq].position += piece.tokens.len();
        }
        let n = tokens.len() as u32;
        uniform.n_tok = n;
        uniform.n_seq = n_seq as u32;
        self.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&uniform));
        uniform.n_tok = n_seq as u32;
        self.queue.write_buffer(&self.tail_step_buf, 0, bytemuck::bytes_of(&uniform));
        self.queue.write_buffer(&self.tokens_buf, 0, bytemuck::cast_slice(&tokens));
        let logprobs = pieces.iter().any(|p| p.logprobs.is_some());
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            for op in &self.ops {
                let rows = if op.final_only { n_seq as u32 } else { n };
                // Submissions that sample nothing only fill the KV cache; log-probabilities
                // are computed only when asked for.
                if rows == 0 || (op.kernel == Kernel::Logprobs && !logprobs) {
                    continue;
                }
                let (pipeline, grid) = op.grid(rows);
                pass.set_pipeline(&self.pipelines[pipeline]);
                pass.set_bind_group(0, &op.bind_group, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, 1);
            }
        }
        if n_seq > 0 {
            encoder.copy_buffer_to_buffer(
                &self.out_buf,
                0,
                &self.token_readback,
                sampled_before as u64 * 4,
                n_seq as u64 * 4,
            );
            if logprobs {
                let stride = (LOGPROBS_STRIDE * 4) as u64;
                encoder.copy_buffer_to_buffer(
                    &self.logprobs_buf,
                    0,
                    &self.logprobs_readback,
                    sampled_before as u64 * stride,
                    n_seq as u64 * stride,
                );
            }
            if want_logits && sampled_before == 0 {
                let bytes = (self.vocab_size * 4) as u64;
                encoder.copy_buffer_to_buffer(&self.logits_buf, 0, &self.logits_readback, 0, bytes);
            }
        }
        self.queue.submit([encoder.finish()]);
        n_seq
    }

    /// Runs a checked batch in as many submissions as its tokens need; returns how many
    /// tokens it sampled (waiting in the readback buffer).
    fn run(&mut self, chunks: &[SeqChunk<'_>], want_logits: bool) -> Result<usize> {
        check_batch(self, self.vocab_size, chunks)?;
        self.allocate_pages(chunks)?;
        let mut sampled = 0;
        for pieces in split_submissions(chunks) {
            sampled += self.submit(&pieces, sampled, want_logits);
        }
        Ok(sampled)
    }

    fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(0..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the device: {e}")))?;
        let mapped = rx.recv().map_err(|_| Error::Device("the readback was dropped".to_owned()))?;
        if let Some(e) = self.device_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Device(e));
        }
        mapped.map_err(|e| Error::Device(format!("mapping the readback buffer: {e}")))?;
        let data =
            slice.get_mapped_range().map_err(|e| Error::Device(format!("reading the readback buffer: {e}")))?.to_vec();
        buffer.unmap();
        Ok(data)
    }
}

impl Engine for WgpuEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn device_name(&self) -> String {
        self.adapter_name.clone()
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn step_tokens(&self) -> usize {
        PREFILL_CHUNK
    }

    fn kv_pool(&self) -> KvPool {
        KvPool { page_tokens: PAGE_TOKENS, pages: self.pool_pages, free_pages: self.free_pages.len() }
    }

    fn seq_position(&self, seq: usize) -> usize {
        self.seqs.get(seq).map_or(0, |s| s.position)
    }

    fn release(&mut self, seq: usize) {
        // Positions past a sequence's length are never read, so pages need no clearing.
        if let Some(s) = self.seqs.get_mut(seq) {
            self.free_pages.extend(s.pages.drain(..).rev());
            s.position = 0;
        }
    }

    fn forward_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Sampled>> {
        let sampled = self.run(chunks, false)?;
        if sampled == 0 {
            return Ok(Vec::new());
        }
        let bytes = self.read(&self.token_readback, sampled as u64 * 4)?;
        let tokens: Vec<u32> = bytemuck::cast_slice(&bytes).to_vec();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::Device(format!("the sampler returned token {bad} (vocabulary {})", self.vocab_size)));
        }
        let asked: Vec<Option<usize>> = chunks.iter().filter(|c| c.sample.is_some()).map(|c| c.logprobs).collect();
        let table: Vec<f32> = if asked.iter().any(Option::is_some) {
            let bytes = self.read(&self.logprobs_readback, (sampled * LOGPROBS_STRIDE * 4) as u64)?;
            bytemuck::cast_slice(&bytes).to_vec()
        } else {
            Vec::new()
        };
        let vocab = self.vocab_size;
        tokens
            .into_iter()
            .zip(asked)
            .enumerate()
            .map(|(i, (token, asked))| {
                let logprobs = match asked {
                    None => None,
                    Some(_) => Some(parse_logprobs(&table[i * LOGPROBS_STRIDE..][..LOGPROBS_STRIDE], vocab)?),
                };
                Ok(Sampled { token, logprobs })
            })
            .collect()
    }

    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let greedy = SamplingParams::greedy();
        self.run(&[SeqChunk::sample(0, tokens, &greedy, 0)], true)?;
        let bytes = self.read(&self.logits_readback, (self.vocab_size * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }
}

/// One sequence's entry of the log-probabilities buffer (see logprobs.wgsl).
fn parse_logprobs(entry: &[f32], vocab: usize) -> Result<TokenLogprobs> {
    let k = entry[1] as usize;
    if k > MAX_TOP_LOGPROBS {
        return Err(Error::Device(format!("the log-probabilities kernel returned {k} alternatives")));
    }
    let mut top = Vec::with_capacity(k);
    for pair in entry[2..2 + 2 * k].chunks(2) {
        let token = pair[0].to_bits();
        if token as usize >= vocab {
            return Err(Error::Device(format!(
                "the log-probabilities kernel returned token {token} (vocabulary {vocab})"
            )));
        }
        top.push((token, pair[1]));
    }
    Ok(TokenLogprobs { logprob: entry[0], top })
}

/// Submits the uploads wgpu has staged and waits for them, which releases their staging.
fn flush_uploads(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<()> {
    queue.submit(std::iter::empty());
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| Error::Device(format!("waiting for weight uploads: {e}")))
}
