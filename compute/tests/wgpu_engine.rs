//! The wgpu backend against the candle reference: logits, greedy tokens, sampling.

use attrinet_compute::testing::{TENSOR_TYPES, TinyLlamaSpec, TinyTokenizer};
use attrinet_compute::{
    Architecture, CandleEngine, Engine, Error, GenerateParams, GgmlDType, KernelStyle, SamplingParams,
};

use crate::util::{greedy, parting, tiny, wgpu, wgpu_with};

/// Both kernel styles: lavapipe would otherwise only run the per-row ones.
const STYLES: [KernelStyle; 2] = [KernelStyle::PerRow, KernelStyle::Cooperative];

/// A tiny model to compare, and the kernel styles to compare it in.
struct Shape {
    name: String,
    spec: TinyLlamaSpec,
    styles: &'static [KernelStyle],
}

/// Largest logit difference allowed, relative to the largest logit magnitude.
///
/// With F32/F16 weights both backends compute in f32 and differ only by summation order
/// (measured: ~1e-7 relative). With quantized weights both quantize activations to 8 bits
/// the same way and use the same per-block integer dot products, but a 1e-7 difference
/// upstream occasionally moves an activation across a rounding boundary, changing it by
/// 1/127 of its block's maximum; the worst case measured over these shapes is 1.5e-2. A
/// real kernel bug (a wrong position, head or scale) moves logits by O(1) relative. K-quants
/// have their activations blocked differently on the two backends (see
/// `tiny_models_match_candle_logits_and_greedy_tokens`), which no longer cancels: measured worst 1.5e-2
/// for two llama layers, 3.2e-2 for Gemma 3's six layers with their post-norms, hence twice
/// the bound.
fn tolerance(spec: &TinyLlamaSpec) -> f32 {
    match spec.weight_type {
        GgmlDType::F32 | GgmlDType::F16 => 1e-4,
        t if is_k_quant(t) => 6e-2,
        _ => 3e-2,
    }
}

/// The llama shapes below, then every other architecture in every type: widths of 256 for
/// the K-quants' 256-value blocks; Qwen 3 and Gemma 3 with heads wider than the embedding
/// over the heads (so the query width differs from the embedding's); Gemma 3 with six
/// layers (five sliding in a window of 8, crossed by the 70-token prompt, and one global).
///
/// The first llama shape runs in both kernel styles; the other shapes in one style each,
/// alternating, so that every architecture and every type still runs in both styles (what
/// differs between styles is the matrix kernels, which every architecture shares), at half
/// the time on lavapipe, whose cooperative matrix kernel is slow.
fn shapes() -> Vec<Shape> {
    let mut all: Vec<Shape> = llama_shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (name, spec))| {
            // The first in both styles; the others alternate, as the other architectures do.
            let styles = if i == 0 { &STYLES[..] } else { &STYLES[i % 2..][..1] };
            Shape { name: format!("llama {name}"), spec, styles }
        })
        .collect();
    let base = TinyLlamaSpec::default();
    for (a, arch) in
        [Architecture::Qwen2, Architecture::Qwen3, Architecture::Gemma3, Architecture::Phi3].into_iter().enumerate()
    {
        for (i, &w) in TENSOR_TYPES.iter().enumerate() {
            let k = is_k_quant(w);
            let wide_heads = matches!(arch, Architecture::Qwen3 | Architecture::Gemma3);
            let spec = TinyLlamaSpec {
                architecture: arch,
                weight_type: w,
                embedding_type: if matches!(w, GgmlDType::F32 | GgmlDType::F16) { w } else { GgmlDType::Q8_0 },
                hidden: if k { 256 } else { 64 },
                ffn: if k { 512 } else { 128 },
                head_dim: wide_heads.then_some(if k { 128 } else { 32 }),
                n_layers: if arch == Architecture::Gemma3 { 6 } else { 2 },
                n_kv_heads: if arch == Architecture::Phi3 { 4 } else { 2 },
                seed: 100 + i as u64,
                ..base.clone()
            };
            let style = &STYLES[(a + i) % 2..][..1];
            all.push(Shape { name: format!("{} {w:?}", arch.name()), spec, styles: style });
        }
    }
    all
}

fn llama_shapes() -> Vec<(&'static str, TinyLlamaSpec)> {
    let base = TinyLlamaSpec::default();
    vec![
        ("Q4_1, GQA 4/2, untied Q8_0 embedding", base.clone()),
        (
            "Q4_0, multi-head 4/4, F16 embedding",
            TinyLlamaSpec {
                weight_type: GgmlDType::Q4_0,
                embedding_type: GgmlDType::F16,
                n_kv_heads: 4,
                seed: 2,
                ..base.clone()
            },
        ),
        (
            "Q8_0, multi-query 4/1, tied Q8_0 embedding, 3 layers",
            TinyLlamaSpec {
                weight_type: GgmlDType::Q8_0,
                n_kv_heads: 1,
                n_layers: 3,
                tied_embeddings: true,
                seed: 3,
                ..base.clone()
            },
        ),
        (
            "F32, head width 24, F32 embedding",
            TinyLlamaSpec {
                weight_type: GgmlDType::F32,
                embedding_type: GgmlDType::F32,
                hidden: 96,
                ffn: 160,
                n_heads: 4,
                n_kv_heads: 2,
                seed: 4,
                ..base.clone()
            },
        ),
        (
            "F16, head width 64, Q4_1 embedding",
            TinyLlamaSpec {
                weight_type: GgmlDType::F16,
                embedding_type: GgmlDType::Q4_1,
                hidden: 128,
                ffn: 96,
                n_heads: 2,
                n_kv_heads: 1,
                seed: 5,
                ..base.clone()
            },
        ),
        (
            "Q8_0, SentencePiece tokenizer, Zephyr template",
            TinyLlamaSpec {
                weight_type: GgmlDType::Q8_0,
                tokenizer: TinyTokenizer::SentencePiece,
                seed: 7,
                ..base.clone()
            },
        ),
        (
            "Q4_1, head width 8, Q4_0 embedding",
            TinyLlamaSpec {
                embedding_type: GgmlDType::Q4_0,
                hidden: 64,
                n_heads: 8,
                n_kv_heads: 4,
                seed: 6,
                ..base.clone()
            },
        ),
        // Q4_K_M files: Q4_K matrices with a Q6_K output and embedding.
        ("Q4_K, Q6_K embedding (as in Q4_K_M files)", k_quant(GgmlDType::Q4K, GgmlDType::Q6K, 8, &base)),
        ("Q5_K, Q8_0 embedding (as in Q5_K_M files)", k_quant(GgmlDType::Q5K, GgmlDType::Q8_0, 9, &base)),
        (
            "Q6_K, tied Q6_K embedding",
            TinyLlamaSpec { tied_embeddings: true, ..k_quant(GgmlDType::Q6K, GgmlDType::Q6K, 10, &base) },
        ),
        (
            "Q5_0, Q5_1 embedding",
            TinyLlamaSpec { weight_type: GgmlDType::Q5_0, embedding_type: GgmlDType::Q5_1, seed: 11, ..base.clone() },
        ),
        (
            "Q5_1, Q4_K embedding",
            TinyLlamaSpec { weight_type: GgmlDType::Q5_1, ..k_quant(GgmlDType::Q5_1, GgmlDType::Q4K, 12, &base) },
        ),
    ]
}

/// A model shaped for K-quants, whose blocks are 256 values wide.
fn k_quant(weights: GgmlDType, embedding: GgmlDType, seed: u64, base: &TinyLlamaSpec) -> TinyLlamaSpec {
    TinyLlamaSpec { weight_type: weights, embedding_type: embedding, hidden: 256, ffn: 512, seed, ..base.clone() }
}

fn assert_close(name: &str, what: &str, tolerance: f32, reference: &[f32], got: &[f32]) {
    assert_eq!(reference.len(), got.len(), "{name}: {what}: vocabulary sizes differ");
    let scale = reference.iter().fold(1f32, |m, x| m.max(x.abs()));
    let (worst, diff) = reference
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |(wi, w), (i, d)| if d > w { (i, d) } else { (wi, w) });
    assert!(
        diff <= tolerance * scale,
        "{name}: {what}: logit {worst} differs by {diff} (candle {}, wgpu {}), over {tolerance} x {scale}",
        reference[worst],
        got[worst]
    );
}

/// Logits after a 70-token prompt and three decode steps, then 32 greedy tokens, on one
/// engine per shape and style (opening an engine on lavapipe costs more than running it).
#[test]
fn tiny_models_match_candle_logits_and_greedy_tokens() {
    // 70 prompt tokens cross the 64-token prefill chunk and several 32-token tiles.
    let prompt: Vec<u32> = (0..70).map(|i| (i * 37 + 11) % 260).collect();
    for Shape { name, spec, styles } in shapes() {
        let t = tiny(&spec);
        let mut cpu = CandleEngine::new(&t.model).unwrap();
        let reference = cpu.forward_logits(&prompt).unwrap();
        let steps: Vec<Vec<f32>> = [3u32, 250, 17].iter().map(|&tok| cpu.forward_logits(&[tok]).unwrap()).collect();
        let chat = t.model.chat_prompt("the cat sat on the mat").unwrap();
        let a = cpu.generate(&chat, &greedy(32), &mut |_| {}).unwrap();
        assert_eq!(a.tokens.len(), 32, "{name}");
        // A model that repeats one token would make the comparison vacuous. (Random models
        // with tied embeddings do repeat tokens for a while, hence only "more than one".)
        let distinct: std::collections::HashSet<_> = a.tokens.iter().collect();
        assert!(distinct.len() > 1, "{name}: degenerate output {:?}", a.tokens);
        let tol = tolerance(&spec);
        for &style in styles {
            let name = format!("{name} ({style:?})");
            let mut gpu = wgpu_with(&t.model, style);
            assert_close(&name, "prefill", tol, &reference, &gpu.forward_logits(&prompt).unwrap());
            for (i, (&token, want)) in [3u32, 250, 17].iter().zip(&steps).enumerate() {
                let got = gpu.forward_logits(&[token]).unwrap();
                assert_close(&name, &format!("decode step {i}"), tol, want, &got);
            }
            assert_eq!(gpu.position(), 73);

            let b = gpu.generate(&chat, &greedy(32), &mut |_| {}).unwrap();
            if !is_k_quant(spec.weight_type) {
                assert_eq!(a.tokens, b.tokens, "{name}");
                assert_eq!(a.tokens_hash, b.tokens_hash, "{name}");
                continue;
            }
            // K-quants: candle quantizes activations per 256 values (Q8_K) and sums each
            // 256-value block as one integer; the device quantizes per 32 (as for every
            // other type) and scales each 32-value block's integer sum, so the two round
            // differently and the exact-integer agreement cannot hold. The paths may part
            // only at a near-tie: where candle's logits for the two tokens are within the
            // logit tolerance of each other.
            let Some((k, logits)) = parting(&mut cpu, &chat, &a.tokens, &b.tokens) else { continue };
            let scale = logits.iter().fold(1f32, |m, x| m.max(x.abs()));
            let gap = logits[a.tokens[k] as usize] - logits[b.tokens[k] as usize];
            assert!(
                gap.abs() <= tol * scale,
                "{name}: step {k}: candle's {} leads wgpu's {} by {gap}, no near-tie",
                a.tokens[k],
                b.tokens[k]
            );
        }
    }
}

fn is_k_quant(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

#[test]
fn device_sampler_is_seeded_and_follows_the_host_algorithm() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut cpu = CandleEngine::new(&t.model).unwrap();
    let mut gpu = wgpu(&t.model);
    let prompt = t.model.chat_prompt("once upon a time").unwrap();
    let params = |seed, top_p| GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams { temperature: 0.8, top_p, seed },
        stop_tokens: vec![],
    };
    let a = gpu.generate(&prompt, &params(11, 1.0), &mut |_| {}).unwrap();
    let b = gpu.generate(&prompt, &params(11, 1.0), &mut |_| {}).unwrap();
    let c = gpu.generate(&prompt, &params(12, 1.0), &mut |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
    assert_ne!(a.tokens, c.tokens, "another seed, other tokens");
    // The device sampler runs the host sampler's algorithm on logits equal to within 1e-6,
    // with the same counter-based random numbers, so the choices coincide (a flip needs a
    // random number within ~1e-6 of a boundary).
    for top_p in [1.0, 0.7] {
        let host = cpu.generate(&prompt, &params(11, top_p), &mut |_| {}).unwrap();
        let device = gpu.generate(&prompt, &params(11, top_p), &mut |_| {}).unwrap();
        assert_eq!(host.tokens, device.tokens, "top_p {top_p}");
    }
    let greedy_tokens = gpu.generate(&prompt, &greedy(24), &mut |_| {}).unwrap().tokens;
    assert_ne!(a.tokens, greedy_tokens, "temperature 0.8 should not be greedy");
}

/// SmolLM2 in the types llama.cpp's Q4_K_M gives it (`testing::q4_k_m_types`: Q5_0, Q8_0,
/// Q4_K and Q6_K). The candle path quantizes K-quant activations per 256 values and the
/// device per 32, so greedy paths may part at near-ties (see `K_QUANT_NEAR_TIE`).
#[test]
fn smollm2_in_q4_k_m_types_matches_candle_and_answers_sensibly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smollm2-q4_k_m-types.gguf");
    let types = attrinet_compute::testing::q4_k_m_types;
    attrinet_compute::testing::requantize(&crate::util::smollm2_path(), &path, &types).unwrap();
    let model = attrinet_compute::Model::load(&path).unwrap();
    let kinds: std::collections::BTreeSet<String> =
        ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.0.attn_q.weight", "token_embd.weight"]
            .iter()
            .map(|n| format!("{:?}", model.tensor_type(n).unwrap()))
            .collect();
    assert_eq!(kinds, ["Q4K", "Q5_0", "Q6K", "Q8_0"].map(String::from).into(), "the mix of Q4_K_M");
    follows_candle_and_answers(&model, K_QUANT_NEAR_TIE);
}

/// Largest margin between candle's two best tokens at which the backends' greedy paths may
/// part on a K-quant model: about a logit, the difference one rounding step of an early
/// activation carries to SmolLM2's logits after 30 tokens even in Q4_1. Measured on
/// lavapipe: "gold" parts at token 8 (margin 0.02), which this test therefore covers; "sky"
/// (left out for CI time) at token 14 (0.17); both answers are right on both backends.
const K_QUANT_NEAR_TIE: f32 = 1.0;

/// Greedy answers to two questions: both backends give the same tokens, or part only where
/// candle's two best tokens are within `near_tie`, and the answer is right.
fn follows_candle_and_answers(model: &attrinet_compute::Model, near_tie: f32) {
    let mut cpu = CandleEngine::new(model).unwrap();
    let mut gpu = wgpu(model);
    let cases = [("What is the capital of France?", "Paris"), ("What is the chemical symbol for gold?", "Au")];
    let params = GenerateParams { stop_tokens: model.tokenizer().stop_tokens().to_vec(), ..greedy(24) };
    for (question, expected) in cases {
        let prompt = model.chat_prompt(question).unwrap();
        let a = cpu.generate(&prompt, &params, &mut |_| {}).unwrap();
        let b = gpu.generate(&prompt, &params, &mut |_| {}).unwrap();
        let text = model.tokenizer().decode(&b.tokens).unwrap();
        let reference = model.tokenizer().decode(&a.tokens).unwrap();
        if a.tokens != b.tokens {
            let at = a.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x == y).count();
            let mut context = prompt.clone();
            context.extend(&a.tokens[..at]);
            cpu.reset();
            let logits = cpu.forward_logits(&context).unwrap();
            let mut sorted = logits.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let margin = sorted[0] - sorted[1];
            eprintln!("{question}: paths part at token {at}, candle's top-2 margin {margin}");
            assert!(
                margin <= near_tie,
                "{question}: tokens differ from position {at}, where candle's top-2 margin is {margin}\n\
                 candle: {reference:?}\nwgpu:   {text:?}"
            );
            assert!(reference.contains(expected), "{question}: candle's {reference:?} lacks {expected:?}");
        }
        assert!(text.contains(expected), "{question}: {text:?} lacks {expected:?}");
    }
}

#[test]
fn wgpu_reports_a_full_context() {
    let t = tiny(&TinyLlamaSpec { context_length: 40, ..TinyLlamaSpec::default() });
    let mut gpu = wgpu(&t.model);
    assert_eq!(gpu.context_length(), 40);
    let err = gpu.generate(&[5; 40], &greedy(4), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::PromptTooLong { prompt_tokens: 40, context_length: 40 }), "{err}");
    // A prompt that fits stops when the cache is full rather than failing.
    let out = gpu.generate(&[5; 36], &greedy(100), &mut |_| {}).unwrap();
    assert_eq!(out.finish, attrinet_compute::FinishReason::ContextFull);
    assert_eq!(out.tokens.len(), 5);
    assert_eq!(gpu.position(), 40);
}

#[test]
fn a_decode_step_takes_the_documented_number_of_dispatches() {
    // 1 embedding + 10 per layer + 3 at the end with quantized weights; float weights skip
    // the one standalone activation quantization of each layer.
    let quantized = tiny(&TinyLlamaSpec { n_layers: 3, ..TinyLlamaSpec::default() });
    assert_eq!(wgpu(&quantized.model).dispatches_per_token(), 1 + 10 * 3 + 3);
    let float = tiny(&TinyLlamaSpec {
        n_layers: 3,
        weight_type: GgmlDType::F16,
        embedding_type: GgmlDType::F16,
        ..TinyLlamaSpec::default()
    });
    assert_eq!(wgpu(&float.model).dispatches_per_token(), 1 + 9 * 3 + 3);
}
