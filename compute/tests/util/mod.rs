//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use attrinet_compute::testing::{TinyLlamaSpec, write_random_llama};
use attrinet_compute::{Engine, GenerateParams, Model, SamplingParams};

/// A random tiny model written into a temporary directory that lives as long as the value.
pub(crate) struct TinyModel {
    pub(crate) model: Model,
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

pub(crate) fn tiny(spec: &TinyLlamaSpec) -> TinyModel {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    write_random_llama(&path, spec).expect("write tiny model");
    let model = Model::load(&path).expect("load tiny model");
    TinyModel { model, path, _dir: dir }
}

/// The SmolLM2 file that `scripts/fetch-model` downloads.
pub(crate) fn smollm2_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct-Q4_1.gguf")
}

/// SmolLM2, or a panic that says how to get it: the test suite's script fetches it, so its
/// absence is a setup error to report, not a reason to skip silently.
pub(crate) fn smollm2() -> Model {
    let path = smollm2_path();
    assert!(path.exists(), "{} is missing: run scripts/fetch-model (scripts/test does)", path.display());
    Model::load(&path).expect("load SmolLM2")
}

/// Gemma 3 270M Q4_K_M, which `scripts/fetch-model` downloads, or a panic that says how.
pub(crate) fn gemma3() -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-model (scripts/test does)", path.display());
    Model::load(&path).expect("load Gemma 3")
}

pub(crate) fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, sampling: SamplingParams::greedy(), stop_tokens: Vec::new() }
}

/// The wgpu engine on whatever adapter exists, software included: CI tests the kernels on
/// lavapipe, which `scripts/setup-vulkan` installs.
pub(crate) fn wgpu(model: &Model) -> attrinet_compute::WgpuEngine {
    let options = attrinet_compute::WgpuOptions { allow_software: true, ..Default::default() };
    attrinet_compute::WgpuEngine::new(model, &options)
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup-vulkan for a software Vulkan device)"))
}

/// The wgpu engine with a given kernel style, so that lavapipe runs the GPU kernels too.
pub(crate) fn wgpu_with(model: &Model, kernels: attrinet_compute::KernelStyle) -> attrinet_compute::WgpuEngine {
    let options = attrinet_compute::WgpuOptions { allow_software: true, kernels, ..Default::default() };
    attrinet_compute::WgpuEngine::new(model, &options)
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup-vulkan for a software Vulkan device)"))
}

/// Where two greedy paths from `prompt` first differ, with `reference`'s logits there (its
/// view of the two candidates); `None` where they do not.
pub(crate) fn parting(reference: &mut dyn Engine, prompt: &[u32], a: &[u32], b: &[u32]) -> Option<(usize, Vec<f32>)> {
    let k = a.iter().zip(b).position(|(x, y)| x != y)?;
    let mut context = prompt.to_vec();
    context.extend(&a[..k]);
    reference.reset();
    Some((k, reference.forward_logits(&context).unwrap()))
}
