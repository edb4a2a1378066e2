//! Runs a GGUF model from the command line, without the network.
//!
//! ```text
//! cargo run --release -p attrinet-compute --example generate -- \
//!     --model models/SmolLM2-135M-Instruct-Q4_1.gguf --prompt "What is the capital of France?" \
//!     --max-tokens 32 --backend wgpu [--raw] [--temperature 0.8 --seed 1] [--json]
//! ```
//!
//! Greedy unless `--temperature` is given. `--raw` feeds the prompt as written, parsing
//! special tokens such as `<|im_start|>` (as llama.cpp does); otherwise the prompt becomes a
//! user turn in the model's chat template. Text streams to stdout; `--json` prints one JSON
//! object at the end instead.
//!
//! Exit codes: 0 success, 1 error (message on stderr), 2 bad arguments (from clap).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use attrinet_compute::{Backend, GenerateParams, Model, SamplingParams, open_engine};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Generate text with a GGUF model (llama, qwen2, qwen3, gemma3 or phi3)")]
struct Args {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt: a user message, or with --raw the exact text to feed.
    #[arg(long)]
    prompt: String,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// auto (a real GPU if present, else candle), wgpu (any adapter, software included) or candle.
    #[arg(long, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Feed the prompt as is, without the chat template, parsing special tokens in it.
    #[arg(long)]
    raw: bool,
    /// Sampling temperature; greedy when absent or 0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass (with --temperature).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
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
    let tokenizer = model.tokenizer();
    let prompt = if args.raw { tokenizer.encode_prompt(&args.prompt) } else { model.chat_prompt(&args.prompt)? };
    let mut engine = open_engine(&model, args.backend)?;
    if !args.json {
        eprintln!(
            "model {} ({}), {} backend on {}, {} prompt tokens",
            model.name().unwrap_or("unnamed"),
            model.id(),
            engine.backend(),
            engine.device_name(),
            prompt.len()
        );
    }
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams { temperature: args.temperature.unwrap_or(0.0), top_p: args.top_p, seed: args.seed },
        stop_tokens: tokenizer.stop_tokens().to_vec(),
    };
    let mut decoder = tokenizer.stream_decoder();
    let mut stdout = std::io::stdout().lock();
    let mut stream_error = None;
    let out = engine.generate(&prompt, &params, &mut |token| {
        if args.json || stream_error.is_some() {
            return;
        }
        let piece = decoder.push(token).map_err(|e| e.to_string());
        let written =
            piece.and_then(|p| stdout.write_all(p.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            stream_error = Some(e);
        }
    })?;
    if let Some(e) = stream_error {
        // A closed pipe (`| head`) is a normal way to stop reading.
        if !e.contains("Broken pipe") {
            return Err(e.into());
        }
        return Ok(());
    }
    if args.json {
        let text = tokenizer.decode(&out.tokens)?;
        let json = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": out.tokens,
            "text": text,
            "prefill_tokens_per_s": out.prefill_tokens_per_s(),
            "decode_tokens_per_s": out.decode_tokens_per_s(),
        });
        writeln!(stdout, "{json}")?;
    } else {
        write!(stdout, "{}", decoder.finish())?;
        writeln!(stdout)?;
        eprintln!(
            "{} tokens ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s, time to first token {:.0} ms",
            out.tokens.len(),
            out.finish,
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s(),
            out.time_to_first_token.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
