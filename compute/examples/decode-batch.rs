//! Aggregate decode rate of one engine for batches of sequences, without the network:
//!
//! ```text
//! cargo run --release -p attrinet-compute --example decode-batch -- \
//!     --model models/SmolLM2-135M-Instruct-Q4_1.gguf --backend candle --batch 1,4,8,16 --steps 32
//! ```
//!
//! For each batch size B, B different chat prompts are prefilled one after another, then
//! `--steps` greedy steps decode all B together (one `forward_batch` per step). Prints
//! tokens per second over those steps (B per step) and the ratio to the first batch size's
//! rate measured in the same run. For finding what the batch costs; `scripts/bench-serve`
//! measures the same through the real protocol and scheduler.
//!
//! Exit codes: 0 success, 1 error (message on stderr), 2 bad arguments (from clap).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use attrinet_compute::{Backend, BatchOptions, Model, SamplingParams, SeqChunk, open_engine_with};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Aggregate decode tokens/s of one engine at several batch sizes")]
struct Args {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// auto, wgpu or candle.
    #[arg(long, default_value_t = Backend::Candle)]
    backend: Backend,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    batch: Vec<usize>,
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 32)]
    steps: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match try_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::load(&args.model)?;
    let max_batch = args.batch.iter().copied().max().ok_or("no batch size")?;
    let mut engine = open_engine_with(&model, args.backend, BatchOptions { max_batch, kv_tokens: None })?;
    println!("{} on {}", engine.backend(), engine.device_name());
    let greedy = SamplingParams::default();
    let mut first_rate = None;
    for &b in &args.batch {
        let prompts = (0..b)
            .map(|i| model.chat_prompt(&format!("Tell me a short story about the number {}.", i + 7)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = Vec::with_capacity(b);
        for (seq, prompt) in prompts.iter().enumerate() {
            engine.release(seq);
            let sampled = engine.forward_batch(&[SeqChunk::sample(seq, prompt, &greedy, 0)])?;
            next.push([sampled[0].token]);
        }
        let start = Instant::now();
        for step in 1..=args.steps {
            let chunks: Vec<SeqChunk<'_>> =
                next.iter().enumerate().map(|(seq, t)| SeqChunk::sample(seq, t, &greedy, step)).collect();
            let sampled = engine.forward_batch(&chunks)?;
            for (n, s) in next.iter_mut().zip(&sampled) {
                *n = [s.token];
            }
        }
        let rate = (b as f64 * args.steps as f64) / start.elapsed().as_secs_f64();
        let ratio = rate / *first_rate.get_or_insert(rate);
        println!("batch {b:>3}: {rate:>8.1} tok/s aggregate, {ratio:.2}x batch {}", args.batch[0]);
    }
    Ok(())
}
