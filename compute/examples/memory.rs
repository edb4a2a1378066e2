//! Peak host memory of loading a model and building an engine: what `docs/benchmarks.md`
//! records for the memory deliverable.
//!
//! ```text
//! cargo run -p attrinet-compute --example memory -- --write-random /tmp/1g.gguf
//! cargo run -p attrinet-compute --example memory -- --model /tmp/1g.gguf --backend candle
//! cargo run -p attrinet-compute --example memory -- --model /tmp/1g.gguf --backend wgpu
//! cargo run -p attrinet-compute --example memory -- --model /tmp/1g.gguf --backend candle --in-memory
//! ```
//!
//! One backend per run, since the peak is the process's. `--write-random` writes a llama
//! file of about 1.1 GB (16 layers, width 2048, Q8_0) with random weights. Figures come from
//! `/proc/self/status` (Linux): `VmHWM` (peak resident), `RssAnon` (heap: copies of weights)
//! and `RssFile` (file pages, which the kernel may drop). On a software device (lavapipe)
//! device memory is host memory, so there the engine's own buffers count as heap too.

use std::path::PathBuf;
use std::process::ExitCode;

use attrinet_compute::testing::{TinyLlamaSpec, write_random_llama};
use attrinet_compute::{Backend, GenerateParams, GgmlDType, Model, SamplingParams, open_engine};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Peak host memory of loading a GGUF model into an engine")]
struct Args {
    /// The GGUF model file to load.
    #[arg(long, required_unless_present = "write_random")]
    model: Option<PathBuf>,
    /// candle or wgpu (any adapter, software included).
    #[arg(long, default_value_t = Backend::Candle)]
    backend: Backend,
    /// Read the whole file into memory first and build the model from those bytes (as the
    /// node loaded models before they were read a tensor at a time): the comparison.
    #[arg(long)]
    in_memory: bool,
    /// Write a random 1.1 GB llama-shaped model here instead, and exit.
    #[arg(long)]
    write_random: Option<PathBuf>,
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
    if let Some(path) = &args.write_random {
        let spec = TinyLlamaSpec {
            n_layers: 16,
            hidden: 2048,
            ffn: 8192,
            n_heads: 16,
            n_kv_heads: 4,
            context_length: 512,
            weight_type: GgmlDType::Q8_0,
            embedding_type: GgmlDType::Q8_0,
            ..TinyLlamaSpec::default()
        };
        write_random_llama(path, &spec)?;
        println!("wrote {} ({} MB)", path.display(), std::fs::metadata(path)?.len() / 1_000_000);
        return Ok(());
    }
    let path = args.model.as_ref().expect("clap requires --model");
    let file_mb = std::fs::metadata(path)?.len() / 1_000_000;
    let how = if args.in_memory { "read into memory" } else { "read a tensor at a time" };
    println!("file: {} ({file_mb} MB), backend {}, {how}", path.display(), args.backend);
    report("start");
    let model =
        if args.in_memory { Model::from_bytes(path.clone(), std::fs::read(path)?)? } else { Model::load(path)? };
    report("model loaded");
    let mut engine = open_engine(&model, args.backend)?;
    report("engine built");
    let prompt = model.chat_prompt("Hello")?;
    let params = GenerateParams { max_tokens: 4, sampling: SamplingParams::greedy(), stop_tokens: Vec::new() };
    engine.generate(&prompt, &params, &mut |_| {})?;
    report("4 tokens generated");
    Ok(())
}

fn report(stage: &str) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or_else(|| "?".to_owned(), |kb| format!("{} MB", kb / 1000))
    };
    println!(
        "{stage:>20}: peak {:>8}, heap {:>8}, file pages {:>8}",
        field("VmHWM:"),
        field("RssAnon:"),
        field("RssFile:")
    );
}
