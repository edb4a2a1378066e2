//! Attribution time per inference next to the inference time of the same query, in one
//! run: SmolLM2 generates 256 tokens on candle (CPU), then the output is attributed
//! against a 10 MB datanet (2.5 M token ids at 4 bytes each, 1,000 contributions; one of
//! them holds a passage of the output so there is something to find). Prints both and
//! their ratio.
//!
//! ```text
//! cargo bench -p attrinet-compute --bench attribution
//! ```

use std::time::Instant;

use attrinet_compute::{Backend, GenerateParams, Model, SamplingParams, open_engine};
use attrinet_market::{Contribution, DEFAULT_MIN_SPAN, Datanet};

const OUTPUT_TOKENS: usize = 256;
const DATANET_TOKENS: usize = 2_500_000; // 10 MB at 4 bytes per token id
const CONTRIBUTIONS: usize = 1_000;

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct-Q4_1.gguf");
    let model = Model::load(path).expect("run scripts/fetch-model first");
    let mut engine = open_engine(&model, Backend::Candle).expect("candle engine");
    let prompt = model.chat_prompt("Tell me a long story about a lighthouse keeper and a storm.").expect("prompt");
    let params =
        GenerateParams { max_tokens: OUTPUT_TOKENS, sampling: SamplingParams::greedy(), stop_tokens: Vec::new() };
    let t = Instant::now();
    let generation = engine.generate(&prompt, &params, &mut |_| {}).expect("generates");
    let inference = t.elapsed();
    let output = generation.tokens;

    // Synthetic datanet of the model's vocabulary (a linear-congruential walk, so ids vary
    // like text without a corpus on disk); contribution 500 embeds 64 tokens of the output.
    let vocab = model.tokenizer().vocab_size() as u64;
    let per = DATANET_TOKENS / CONTRIBUTIONS;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut contributions = Vec::with_capacity(CONTRIBUTIONS);
    for i in 0..CONTRIBUTIONS {
        let mut tokens: Vec<u32> = (0..per)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % vocab) as u32
            })
            .collect();
        if i == 500 {
            tokens[1000..1064].copy_from_slice(&output[100..164]);
        }
        let mut owner = [0u8; 20];
        owner[..8].copy_from_slice(&(i as u64 % 50 + 1).to_be_bytes());
        contributions.push(Contribution { owner: owner.into(), name: format!("c{i}"), tokens });
    }
    let t = Instant::now();
    let datanet = Datanet::build(DEFAULT_MIN_SPAN, contributions).expect("builds");
    let build = t.elapsed();

    let mut runs = Vec::new();
    let mut weights = None;
    for _ in 0..21 {
        let t = Instant::now();
        weights = Some(datanet.attribute(&output).weights);
        runs.push(t.elapsed());
    }
    runs.sort();
    let attribution = runs[runs.len() / 2];
    let weights = weights.expect("ran");

    println!(
        "model: SmolLM2-135M-Instruct Q4_1 on candle ({} threads)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("inference, {} output tokens:        {:>10.1} ms", output.len(), inference.as_secs_f64() * 1e3);
    println!("datanet: {DATANET_TOKENS} tokens (10 MB), built in {:.2} s", build.as_secs_f64());
    println!(
        "attribution of the output (median): {:>10.3} ms   ({} contributors weighted)",
        attribution.as_secs_f64() * 1e3,
        weights.len()
    );
    println!(
        "attribution / inference:            {:>10.4} %",
        100.0 * attribution.as_secs_f64() / inference.as_secs_f64()
    );
}
