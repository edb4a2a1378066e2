//! Serving throughput through the real protocol on loopback: for each number of concurrent
//! requests, aggregate output tokens per second, p50 and p99 time to first token, and the
//! ratio of the aggregate to the single-request rate measured in the same run.
//!
//! ```text
//! cargo bench -p attrinet-node --bench serve -- [--model FILE] [--backend candle|wgpu]
//!     [--concurrency 1,4,16,32] [--max-tokens 32] [--max-batch 8] [--queue 64]
//!     [--llama-cpp-tok-s RATE]
//! ```
//!
//! The single request's decode rate (tokens after the first over the time after it) is
//! printed too, and next to llama.cpp's when `--llama-cpp-tok-s` gives the rate llama.cpp
//! decoded the same model at on this machine (`scripts/bench-serve` measures it in the same
//! run and passes it).
//!
//! One provider and one client in this process (`attrinet_node::loopback`): requests are
//! admitted, queued, generated, streamed, receipted and paid exactly as between two nodes.
//! Greedy, with a different prompt per request, so no answer is a cached copy of another.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use attrinet_compute::{Backend, Model};
use attrinet_market::Wei;
use attrinet_p2p::{Ask, ChatMessage, Limits, Prompt, Sampling};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Serving throughput of one provider under concurrent requests")]
struct Args {
    /// The GGUF model.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct-Q4_1.gguf"))]
    model: std::path::PathBuf,
    /// candle or wgpu.
    #[arg(long, default_value_t = Backend::Candle)]
    backend: Backend,
    /// Concurrent requests of each round.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    concurrency: Vec<usize>,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// The provider's generation slots (`serve --max-batch`).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// llama.cpp's single-stream decode rate on this machine, tokens/s, to compare with.
    #[arg(long)]
    llama_cpp_tok_s: Option<f64>,
    /// The provider's queue (`serve --queue`).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

struct Round {
    concurrency: usize,
    tokens: usize,
    wall: Duration,
    ttft: Vec<Duration>,
    /// Tokens after the first, over the time after the first, of each request.
    decode: Vec<f64>,
}

impl Round {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.wall.as_secs_f64()
    }

    /// The `q` quantile of the times to first token (nearest rank).
    fn ttft(&self, q: f64) -> Duration {
        let mut t = self.ttft.clone();
        t.sort();
        let rank = ((q * t.len() as f64).ceil() as usize).clamp(1, t.len());
        t[rank - 1]
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let model = Model::load(&args.model)?;
    let name = model.name().unwrap_or("model").to_owned();
    let limits = Limits { capacity: args.max_batch, queue: args.queue, ..Limits::default() };
    let lb = attrinet_node::loopback::loopback(model, args.backend, &name, Wei(10u128.pow(20)), limits).await?;
    println!(
        "model {} on {}, {} tokens per request, --max-batch {} --queue {}",
        args.model.display(),
        args.backend,
        args.max_tokens,
        args.max_batch,
        args.queue
    );
    // One request to warm the engine up (and the connection), not measured.
    round(&lb, &name, 1, args.max_tokens, 1000).await?;
    let mut single = None;
    for (i, &c) in args.concurrency.iter().enumerate() {
        let r = round(&lb, &name, c, args.max_tokens, i * 1000).await?;
        if c == 1 {
            let rate = r.decode[0];
            match args.llama_cpp_tok_s {
                Some(reference) => println!(
                    "single-stream decode: {rate:.1} tok/s, {:.2}x llama.cpp's {reference:.1} tok/s on this machine",
                    rate / reference
                ),
                None => println!("single-stream decode: {rate:.1} tok/s (no llama.cpp rate given)"),
            }
        }
        let base = *single.get_or_insert(r.tokens_per_s());
        println!(
            "{:>3} concurrent: {:>7.1} tok/s aggregate ({:.2}x the first round), time to first token p50 {:>7.0} ms, p99 {:>7.0} ms",
            r.concurrency,
            r.tokens_per_s(),
            r.tokens_per_s() / base,
            r.ttft(0.5).as_secs_f64() * 1e3,
            r.ttft(0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// `concurrency` requests at once, each with its own prompt.
async fn round(
    lb: &attrinet_node::loopback::Loopback,
    name: &str,
    concurrency: usize,
    max_tokens: u32,
    first_prompt: usize,
) -> anyhow::Result<Round> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (payer, net) = (lb.payer.clone(), lb.client_net.clone());
        let ask = Ask {
            model: name.to_owned(),
            prompt: Prompt::Chat(vec![ChatMessage {
                role: "user".into(),
                content: format!("Tell me a short story about the number {}.", first_prompt + i),
            }]),
            max_tokens,
            sampling: Sampling::default(),
            max_cost: None,
            stop: Vec::new(),
        };
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let mut first = None;
            let mut last = Duration::ZERO;
            let answer = payer
                .infer(&net, &ask, |_| {
                    first.get_or_insert_with(|| sent.elapsed());
                    last = sent.elapsed();
                })
                .await?;
            let first = first.unwrap_or_else(|| sent.elapsed());
            let after = answer.tokens.len().saturating_sub(1) as f64;
            let decode = after / last.saturating_sub(first).as_secs_f64().max(1e-9);
            anyhow::Ok((answer.tokens.len(), first, decode))
        }));
    }
    let (mut tokens, mut ttft, mut decode) = (0, Vec::new(), Vec::new());
    for t in tasks {
        let (n, first, rate) = t.await??;
        tokens += n;
        ttft.push(first);
        decode.push(rate);
    }
    Ok(Round { concurrency, tokens, wall: start.elapsed(), ttft, decode })
}
