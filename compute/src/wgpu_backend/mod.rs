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

use crate::engine::{BackendKind, Engine, check_input};
use crate::error::{Error, Result};
use crate::model::{Activation, Model};
use crate::sampling::SamplingParams;
use kernels::{Kernel, Pipelines, is_quantized};
use weights::{WeightBuffer, upload_f32, upload_stacked, upload_weight};

/// Prompt tokens per prefill submission: bounds the activation and attention-score buffers.
const PREFILL_CHUNK: usize = 64;
/// Context used when the model's own is longer, unless [`WgpuOptions::max_context`] says
/// otherwise: the KV cache is allocated up front for the whole context.
const DEFAULT_MAX_CONTEXT: usize = 4096;

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
    position: usize,
    ops: Vec<Op>,
    pipelines: Vec<wgpu::ComputePipeline>,
    step_buf: wgpu::Buffer,
    tokens_buf: wgpu::Buffer,
    out_buf: wgpu::Buffer,
    logits_buf: wgpu::Buffer,
    token_readback: wgpu::Buffer,
    logits_readback: wgpu::Buffer,
    /// The first error the device reported outside an error scope.
    device_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for WgpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuEngine")
            .field("adapter", &self.adapter_name)
            .field("context_length", &self.context_length)
            .field("position", &self.position)
            .field("dispatches_per_token", &self.dispatches_per_token())
            .finish_non_exhaustive()
    }
}

/// How a recorded dispatch is sized for a chunk of `n` tokens.
#[derive(Debug, Clone, Copy)]
enum Size {
    /// One workgroup per token.
    PerToken,
    /// A fixed grid.
    Fixed(u32),
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
            Size::Fixed(x) => (self.pipeline, (x, 1)),
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepUniform {
    pos: u32,
    n_tok: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    greedy: u32,
    temperature: f32,
    top_p: f32,
}

/// Builds the ops of the forward pass; holds what recording needs.
struct Builder<'a> {
    device: &'a wgpu::Device,
    cache: Pipelines,
    pipelines: Vec<wgpu::ComputePipeline>,
    index: std::collections::HashMap<Kernel, usize>,
    ops: Vec<Op>,
    step_buf: &'a wgpu::Buffer,
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
        let limits = device.limits();
        let kvd = c.n_kv_heads * c.head_dim;
        let max_binding = limits.max_storage_buffer_binding_size as usize;
        let kv_bytes = context_length * kvd * 4;
        let scratch_bytes = PREFILL_CHUNK * c.n_heads * context_length * 4;
        if kv_bytes > max_binding || scratch_bytes > max_binding {
            return Err(Error::Device(format!(
                "a context of {context_length} tokens needs buffers of {} bytes, over the adapter's limit of {max_binding}; \
                 lower max_context",
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
        let last = storage(&device, "last", d * 4);
        let scratch = storage(&device, "scores", scratch_bytes);
        let logits_buf = storage(&device, "logits", c.vocab_size * 4);
        let probs = storage(&device, "probs", c.vocab_size * 4);
        let tokens_buf = storage(&device, "tokens", ch * 4);
        let out_buf = storage(&device, "next token", 4);
        let token_readback = readback(&device, "token readback", 4);
        let logits_readback = readback(&device, "logits readback", c.vocab_size * 4);
        let step_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: std::mem::size_of::<StepUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
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
                &[&qkv, &kc, &vc, cs_buf],
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
                &[&qkv, &kc, &vc, &scratch, &att],
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
            Size::Fixed(1),
        );
        for (first, w) in &out_w {
            b.matmul(w, &last, &xq, &xs, &logits_buf, (c.vocab_size, *first as usize), false);
        }
        // The final norm, quantization and output projection see one row (the last
        // position's): the projection is forced to the matrix-vector kernel by leaving out
        // the tiled alternative, and intermediate prompt chunks skip all three.
        for op in &mut b.ops[first_final..] {
            op.alt = None;
            op.final_only = true;
        }
        b.push(Kernel::Sample, None, &[c.vocab_size as u32], &[&logits_buf, &probs, &out_buf], Size::Fixed(1));
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
            position: 0,
            ops,
            pipelines,
            step_buf,
            tokens_buf,
            out_buf,
            logits_buf,
            token_readback,
            logits_readback,
            device_error,
        })
    }

    /// Device time per kernel for a forward pass over `n_tok` tokens, measured by
    /// submitting each dispatch alone and waiting for it (so it includes per-submission
    /// overhead): for finding what to optimise, not a benchmark. Leaves the cache as it was.
    pub fn profile_kernels(&mut self, n_tok: usize) -> Result<Vec<(String, std::time::Duration)>> {
        let n = n_tok.clamp(1, PREFILL_CHUNK) as u32;
        let tokens = vec![0u32; n as usize];
        let uniform =
            StepUniform { pos: 0, n_tok: n, seed_lo: 0, seed_hi: 0, step: 0, greedy: 1, temperature: 0.0, top_p: 1.0 };
        self.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&uniform));
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
        totals.sort_by_key(|t| std::cmp::Reverse(t.1));
        Ok(totals)
    }

    /// Compute dispatches recorded for one decode step.
    pub fn dispatches_per_token(&self) -> usize {
        self.ops.len()
    }

    /// Records and submits the forward pass over `tokens` (at most one chunk), ending with
    /// either the sampled token or the logits copied for readback.
    fn submit_chunk(
        &mut self,
        tokens: &[u32],
        sampling: Option<(&SamplingParams, u32)>,
        want_logits: bool,
        last: bool,
    ) {
        let n = tokens.len() as u32;
        let (temperature, top_p, seed, step, greedy) = match sampling {
            Some((s, step)) => (s.temperature, s.top_p, s.seed, step, s.is_greedy() as u32),
            None => (0.0, 1.0, 0, 0, 1),
        };
        let uniform = StepUniform {
            pos: self.position as u32,
            n_tok: n,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            step,
            greedy,
            temperature,
            top_p,
        };
        self.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&uniform));
        self.queue.write_buffer(&self.tokens_buf, 0, bytemuck::cast_slice(tokens));
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            let n_ops = self.ops.len();
            for (i, op) in self.ops.iter().enumerate() {
                // Intermediate chunks of a long prompt only fill the KV cache.
                if !last && op.final_only {
                    continue;
                }
                let is_sample = i == n_ops - 1;
                if is_sample && (!last || sampling.is_none()) {
                    continue;
                }
                let (pipeline, grid) = op.grid(n);
                pass.set_pipeline(&self.pipelines[pipeline]);
                pass.set_bind_group(0, &op.bind_group, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, 1);
            }
        }
        if last {
            if sampling.is_some() {
                encoder.copy_buffer_to_buffer(&self.out_buf, 0, &self.token_readback, 0, 4);
            }
            if want_logits {
                let bytes = (self.vocab_size * 4) as u64;
                encoder.copy_buffer_to_buffer(&self.logits_buf, 0, &self.logits_readback, 0, bytes);
            }
        }
        self.queue.submit([encoder.finish()]);
        self.position += tokens.len();
    }

    /// Runs `tokens` through the model in chunks; the last chunk samples or keeps logits.
    fn run(&mut self, tokens: &[u32], sampling: Option<(&SamplingParams, u32)>, want_logits: bool) -> Result<()> {
        check_input(tokens, self.vocab_size, self.position, self.context_length)?;
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.submit_chunk(chunk, sampling, want_logits, i + 1 == chunks.len());
        }
        Ok(())
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

    fn position(&self) -> usize {
        self.position
    }

    fn reset(&mut self) {
        // Positions past `position` are never read, so the cache needs no clearing.
        self.position = 0;
    }

    fn prefill(&mut self, tokens: &[u32], sampling: &SamplingParams, step: u32) -> Result<u32> {
        sampling.validate()?;
        self.run(tokens, Some((sampling, step)), false)?;
        let bytes = self.read(&self.token_readback, 4)?;
        let token = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if token as usize >= self.vocab_size {
            return Err(Error::Device(format!("the sampler returned token {token} (vocabulary {})", self.vocab_size)));
        }
        Ok(token)
    }

    fn forward_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.run(tokens, None, true)?;
        let bytes = self.read(&self.logits_readback, (self.vocab_size * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }
}

/// Submits the uploads wgpu has staged and waits for them, which releases their staging.
fn flush_uploads(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<()> {
    queue.submit(std::iter::empty());
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| Error::Device(format!("waiting for weight uploads: {e}")))
}
