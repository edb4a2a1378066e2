//! Prefill and decode throughput and time to first token of each backend, in one run.
//!
//! ```text
//! cargo bench -p attrinet-compute --bench engines -- [--model FILE ...] [--prompt-tokens N] [--decode-tokens N]
//! ```
//!
//! By default it measures both files `scripts/fetch-model` downloads, SmolLM2-135M Q4_1 and
//! Gemma 3 270M Q4_K_M, one after the other in the same run.
//!
//! Each backend runs the same prompt once to warm up (shader compilation, caches) and then
//! `--runs` times; the best run is reported, as the least disturbed by other load. Decode
//! is measured with greedy sampling and no stop token, so every run decodes exactly
//! `--decode-tokens` tokens. The wgpu backend is measured on whatever adapter exists,
//! software included, so that the figure exists on machines without a GPU.

use std::path::PathBuf;
use std::process::ExitCode;

use attrinet_compute::{
    Backend, CandleEngine, Engine, GenerateParams, Generation, Model, SamplingParams, WgpuEngine, WgpuOptions,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the compute backends on one model")]
struct Args {
    /// The GGUF models, each measured in turn (repeat the flag for several).
    #[arg(long = "model", default_values = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct-Q4_1.gguf"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../models/gemma-3-270m-q4_k_m.gguf"),
    ])]
    models: Vec<PathBuf>,
    /// Tokens in the prompt.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode after the first.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Measured runs per backend (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Re-quantize the model to the types of llama.cpp's Q4_K_M first (Q4_K, Q6_K, and
    /// Q5_0/Q8_0 where a matrix is too narrow for K-quants), in a temporary file.
    #[arg(long)]
    q4_k_m_types: bool,
    /// Only these backends (default: candle and wgpu).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<Backend>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Figures {
    name: String,
    device: String,
    best: Generation,
}

/// Warms every engine up, then runs them in turn `runs` times, keeping each one's fastest
/// run: interleaving spreads any background load over all backends alike.
fn measure(
    engines: &mut [Box<dyn Engine>],
    prompt: &[u32],
    params: &GenerateParams,
    runs: usize,
) -> Result<Vec<Generation>, attrinet_compute::Error> {
    for engine in engines.iter_mut() {
        engine.generate(prompt, params, &mut |_| {})?;
    }
    let mut best: Vec<Option<Generation>> = vec![None; engines.len()];
    for _ in 0..runs.max(1) {
        for (engine, best) in engines.iter_mut().zip(best.iter_mut()) {
            let g = engine.generate(prompt, params, &mut |_| {})?;
            let total = |g: &Generation| g.time_to_first_token + g.decode_time;
            if best.as_ref().is_none_or(|b| total(&g) < total(b)) {
                *best = Some(g);
            }
        }
    }
    Ok(best.into_iter().map(|b| b.expect("at least one run")).collect())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    for path in &args.models {
        bench_model(args, path)?;
    }
    Ok(())
}

fn bench_model(args: &Args, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let model = if args.q4_k_m_types {
        let requantized = dir.path().join("q4_k_m-types.gguf");
        eprintln!("re-quantizing {} to Q4_K_M's types", path.display());
        attrinet_compute::testing::requantize(path, &requantized, &attrinet_compute::testing::q4_k_m_types)?;
        Model::load(&requantized)?
    } else {
        Model::load(path)?
    };
    // A prompt of ordinary English of the requested length.
    let text = "The quick brown fox jumps over the lazy dog while the farmer watches from the \
                porch and thinks about the harvest, the weather and the price of grain. ";
    let unit = model.tokenizer().encode(text, false);
    let prompt: Vec<u32> = unit.iter().copied().cycle().take(args.prompt_tokens).collect();
    let params = GenerateParams {
        max_tokens: args.decode_tokens + 1,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
    };
    let backends = if args.backends.is_empty() { vec![Backend::Candle, Backend::Wgpu] } else { args.backends.clone() };
    println!(
        "model {}{} ({}), {} prompt tokens, {} decoded tokens, best of {} runs",
        path.display(),
        if args.q4_k_m_types { " in Q4_K_M's types" } else { "" },
        model.id(),
        prompt.len(),
        args.decode_tokens,
        args.runs
    );
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    let mut devices = Vec::new();
    for backend in backends {
        let (engine, extra): (Box<dyn Engine>, String) = match backend {
            Backend::Candle => (Box::new(CandleEngine::new(&model)?), String::new()),
            Backend::Wgpu => {
                let options = WgpuOptions { allow_software: true, ..Default::default() };
                let engine = WgpuEngine::new(&model, &options)?;
                let extra = format!(", {} dispatches per token", engine.dispatches_per_token());
                (Box::new(engine), extra)
            }
            Backend::Auto => (attrinet_compute::open_engine(&model, Backend::Auto)?, String::new()),
        };
        devices.push(format!("{}{extra}", engine.device_name()));
        engines.push(engine);
    }
    let bests = measure(&mut engines, &prompt, &params, args.runs)?;
    let mut results = Vec::new();
    for ((engine, device), best) in engines.iter().zip(devices).zip(bests) {
        let f = Figures { name: engine.backend().to_string(), device, best };
        println!(
            "{:<7} prefill {:>8.1} tok/s  decode {:>7.1} tok/s  time to first token {:>8.1} ms  [{}]",
            f.name,
            f.best.prefill_tokens_per_s(),
            f.best.decode_tokens_per_s(),
            f.best.time_to_first_token.as_secs_f64() * 1e3,
            f.device
        );
        results.push(f);
    }
    let find = |n: &str| results.iter().find(|f| f.name == n);
    if let (Some(w), Some(c)) = (find("wgpu"), find("candle")) {
        println!(
            "wgpu/candle: prefill {:.2}x, decode {:.2}x, time to first token {:.2}x",
            w.best.prefill_tokens_per_s() / c.best.prefill_tokens_per_s(),
            w.best.decode_tokens_per_s() / c.best.decode_tokens_per_s(),
            w.best.time_to_first_token.as_secs_f64() / c.best.time_to_first_token.as_secs_f64()
        );
    }
    Ok(())
}
