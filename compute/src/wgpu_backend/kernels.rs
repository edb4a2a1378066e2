//! WGSL sources, assembled per weight type, and the pipelines built from them.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;

const COMMON: &str = include_str!("wgsl/common.wgsl");
const WEIGHTS: &str = include_str!("wgsl/weights.wgsl");
const QUANT_DEQ: &str = include_str!("wgsl/quant_deq.wgsl");

/// The file types the wgpu kernels compute with: those `weights::device_layout` lays out.
pub(crate) const SUPPORTED_NAMES: &str = "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K";

/// Whether a type's matrix kernels take 8-bit quantized activations (candle's scheme for
/// quantized weights) rather than f32 ones (candle dequantizes F32/F16 weights).
pub(crate) fn is_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16)
}

/// The WGSL that reads weights of a device layout: `WPB` (words per 32-value block), `wq`
/// (a quarter block's integers), `wscale` and `bdot` (how the block's pairs scale them).
fn type_snippet(layout: GgmlDType) -> String {
    const BLOCK32: &str = include_str!("wgsl/block32.wgsl");
    let (body, scaling) = match layout {
        GgmlDType::Q4_0 => (include_str!("wgsl/q4_0.wgsl"), BLOCK32),
        GgmlDType::Q4_1 => (include_str!("wgsl/q4_1.wgsl"), BLOCK32),
        GgmlDType::Q5_0 => (include_str!("wgsl/q5_0.wgsl"), BLOCK32),
        GgmlDType::Q5_1 => (include_str!("wgsl/q5_1.wgsl"), BLOCK32),
        GgmlDType::Q8_0 => (include_str!("wgsl/q8_0.wgsl"), BLOCK32),
        // Its own wscale and bdot: a scale per 16 values.
        GgmlDType::Q6K => (include_str!("wgsl/q6k.wgsl"), ""),
        GgmlDType::F16 => return format!("{WEIGHTS}\n{}", include_str!("wgsl/f16.wgsl")),
        GgmlDType::F32 => return format!("{WEIGHTS}\n{}", include_str!("wgsl/f32.wgsl")),
        other => unreachable!("{other:?} is not a device layout"),
    };
    format!("{WEIGHTS}\n{body}\n{scaling}\n{QUANT_DEQ}")
}

/// A kernel, with the weight type for those that read weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Embed(GgmlDType),
    /// One-token matrix-vector product (decode), with this many lanes per row.
    MatVec(GgmlDType, u32),
    /// Tiled matrix-matrix product (prefill on GPUs).
    MatMul(GgmlDType),
    /// Matrix-matrix product with one lane per row (prefill on software rasterizers).
    MatRows(GgmlDType),
    Quantize,
    RmsNorm,
    Rope,
    Attention,
    SwiGlu,
    Sample,
    /// Log-probabilities of the chosen and the most likely tokens.
    Logprobs,
    /// Adds the q|k|v biases.
    Bias,
    /// RMSNorm of each query and key head.
    HeadNorm,
}

impl Kernel {
    fn source(self) -> String {
        let body = match self {
            Kernel::Embed(t) => format!("{}\n{}", type_snippet(t), include_str!("wgsl/embed.wgsl")),
            Kernel::MatVec(t, tpr) => {
                let body = if is_quantized(t) {
                    include_str!("wgsl/matvec_q.wgsl")
                } else {
                    include_str!("wgsl/matvec_f.wgsl")
                };
                format!("{}\n{}", type_snippet(t), body.replace("__TPR__", &tpr.to_string()))
            }
            Kernel::MatRows(t) if is_quantized(t) => {
                format!("{}\n{}", type_snippet(t), include_str!("wgsl/matrows_q.wgsl"))
            }
            Kernel::MatRows(t) => format!("{}\n{}", type_snippet(t), include_str!("wgsl/matrows_f.wgsl")),
            Kernel::MatMul(t) if is_quantized(t) => {
                format!("{}\n{}", type_snippet(t), include_str!("wgsl/matmul_q.wgsl"))
            }
            Kernel::MatMul(t) => format!("{}\n{}", type_snippet(t), include_str!("wgsl/matmul_f.wgsl")),
            Kernel::Quantize => format!("{}\n{}", include_str!("wgsl/q8.wgsl"), include_str!("wgsl/quantize.wgsl")),
            Kernel::RmsNorm => format!("{}\n{}", include_str!("wgsl/q8.wgsl"), include_str!("wgsl/rmsnorm.wgsl")),
            Kernel::Rope => include_str!("wgsl/rope.wgsl").to_owned(),
            Kernel::Attention => include_str!("wgsl/attention.wgsl").to_owned(),
            Kernel::SwiGlu => format!("{}\n{}", include_str!("wgsl/q8.wgsl"), include_str!("wgsl/swiglu.wgsl")),
            Kernel::Sample => include_str!("wgsl/sample.wgsl").to_owned(),
            Kernel::Logprobs => include_str!("wgsl/logprobs.wgsl").to_owned(),
            Kernel::Bias => include_str!("wgsl/bias.wgsl").to_owned(),
            Kernel::HeadNorm => include_str!("wgsl/headnorm.wgsl").to_owned(),
        };
        format!("{COMMON}\n{body}")
    }

    /// The bind group layout: one letter per binding, `u` uniform, `r` read-only storage,
    /// `w` read-write storage. Binding 0 is always the step uniform, 1 the kernel's params.
    pub(crate) fn signature(self) -> &'static str {
        match self {
            Kernel::Embed(_) => "uurrrw",
            Kernel::MatVec(t, _) | Kernel::MatMul(t) | Kernel::MatRows(t) if is_quantized(t) => "uurrrrw",
            Kernel::MatVec(..) | Kernel::MatMul(_) | Kernel::MatRows(_) => "uurrrw",
            Kernel::Quantize => "uurww",
            Kernel::RmsNorm => "uurrwww",
            Kernel::Rope => "uuwwwrr",
            Kernel::Attention => "uurrrwwr",
            Kernel::SwiGlu => "uurwww",
            Kernel::Sample => "uurww",
            Kernel::Logprobs => "uurrw",
            Kernel::Bias => "uurw",
            Kernel::HeadNorm => "uuwrr",
        }
    }
}

/// Compiled pipelines, built on first use.
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    layouts: HashMap<&'static str, wgpu::BindGroupLayout>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
}

impl Pipelines {
    pub(crate) fn layout(&mut self, device: &wgpu::Device, signature: &'static str) -> wgpu::BindGroupLayout {
        self.layouts
            .entry(signature)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = signature
                    .chars()
                    .enumerate()
                    .map(|(i, c)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match c {
                                'u' => wgpu::BufferBindingType::Uniform,
                                'r' => wgpu::BufferBindingType::Storage { read_only: true },
                                _ => wgpu::BufferBindingType::Storage { read_only: false },
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(signature),
                    entries: &entries,
                })
            })
            .clone()
    }

    pub(crate) fn get(&mut self, device: &wgpu::Device, kernel: Kernel) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.get(&kernel) {
            return p.clone();
        }
        let layout = self.layout(device, kernel.signature());
        let label = format!("{kernel:?}");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        self.pipelines.insert(kernel, pipeline.clone());
        pipeline
    }
}
