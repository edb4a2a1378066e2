//! Proof of Attribution's costs: index build time and size per MB of text, load time of a
//! saved index, and attribution time per inference (256 output tokens) against a 10 MB
//! datanet.
//!
//! The datanet is synthetic: token ids drawn from a Zipf distribution (exponent 1.1) over
//! SmolLM2's 49,152-token vocabulary, with 5% of the text made of passages repeated across
//! contributions (quotes, boilerplate), at 4 bytes of text per token, a typical rate for
//! English under a BPE tokenizer (so 10 MB of text = 2.5 M tokens). Outputs are of three
//! kinds: novel (fresh Zipf tokens, so only chance matches), mixed (three 40-token passages
//! of the datanet between novel tokens) and copied (256 tokens verbatim from one
//! contribution: the longest matches, the most work per token).
//!
//! Run: `cargo bench -p attrinet-market --bench attribution`

use std::hint::black_box;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use attrinet_market::{Contribution, DEFAULT_MIN_SPAN, Datanet};

const VOCAB: usize = 49_152;
const BYTES_PER_TOKEN: usize = 4;
const MB: usize = 1 << 20;
const OUTPUT_TOKENS: usize = 256;

/// splitmix64: a deterministic generator, so every run indexes the same datanet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> u32 {
        let total = *self.cumulative.last().expect("non-empty");
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cumulative.partition_point(|&c| c < u) as u32
    }
}

/// `mb` MB of synthetic text as contributions of about 2,500 tokens, owned by 200 addresses.
fn datanet_contributions(mb: usize, rng: &mut Rng, zipf: &Zipf) -> Vec<Contribution> {
    let tokens = mb * MB / BYTES_PER_TOKEN;
    let passages: Vec<Vec<u32>> = (0..200).map(|_| (0..60).map(|_| zipf.sample(rng)).collect()).collect();
    let mut out = Vec::new();
    let mut made = 0;
    while made < tokens {
        let len = (1_500 + rng.below(2_000)).min(tokens - made).max(1);
        let mut t = Vec::with_capacity(len);
        while t.len() < len {
            if rng.below(100) < 5 {
                t.extend_from_slice(&passages[rng.below(passages.len())]);
            } else {
                t.push(zipf.sample(rng));
            }
        }
        t.truncate(len);
        made += t.len();
        let mut owner = [0u8; 20];
        owner[0] = 0xc0;
        owner[18..20].copy_from_slice(&(rng.below(200) as u16 + 1).to_be_bytes());
        out.push(Contribution { owner: Address::from(owner), name: format!("synthetic-{}", out.len()), tokens: t });
    }
    out
}

fn outputs(kind: &str, n: usize, rng: &mut Rng, zipf: &Zipf, cs: &[Contribution]) -> Vec<Vec<u32>> {
    (0..n)
        .map(|_| {
            let mut o = Vec::with_capacity(OUTPUT_TOKENS);
            match kind {
                "novel" => o.extend((0..OUTPUT_TOKENS).map(|_| zipf.sample(rng))),
                "mixed" => {
                    while o.len() < OUTPUT_TOKENS {
                        o.extend((0..45).map(|_| zipf.sample(rng)));
                        let c = &cs[rng.below(cs.len())].tokens;
                        let at = rng.below(c.len().saturating_sub(40).max(1));
                        o.extend_from_slice(&c[at..(at + 40).min(c.len())]);
                    }
                }
                _ => {
                    let c = cs.iter().find(|c| c.tokens.len() >= OUTPUT_TOKENS).expect("a long contribution");
                    let at = rng.below(c.tokens.len() - OUTPUT_TOKENS + 1);
                    o.extend_from_slice(&c.tokens[at..at + OUTPUT_TOKENS]);
                }
            }
            o.truncate(OUTPUT_TOKENS);
            o
        })
        .collect()
}

fn main() {
    let mut rng = Rng(0xA77_121B);
    let zipf = Zipf::new(VOCAB, 1.1);
    println!(
        "attribution bench: synthetic Zipf token ids, {BYTES_PER_TOKEN} bytes of text per token, min span {DEFAULT_MIN_SPAN}"
    );

    for mb in [1usize, 10] {
        let cs = datanet_contributions(mb, &mut rng, &zipf);
        let tokens: usize = cs.iter().map(|c| c.tokens.len()).sum();
        let start = Instant::now();
        let datanet = Datanet::build(DEFAULT_MIN_SPAN, cs.clone()).expect("valid datanet");
        let build = start.elapsed();
        let bytes = datanet.to_bytes();
        let start = Instant::now();
        let loaded = Datanet::from_bytes(&bytes).expect("loads");
        let load = start.elapsed();
        assert_eq!(loaded.root(), datanet.root());
        drop(loaded);
        println!(
            "index {mb:>2} MB ({tokens} tokens, {} contributions, {} contributors): build {:.2} s ({:.3} s/MB), \
             in memory {:.2} MB ({:.2} MB per MB of text), saved {:.2} MB ({:.2} MB/MB), load+verify {:.2} s",
            datanet.contribution_count(),
            datanet.contributors().len(),
            build.as_secs_f64(),
            build.as_secs_f64() / mb as f64,
            datanet.index_bytes() as f64 / MB as f64,
            datanet.index_bytes() as f64 / (mb * MB) as f64,
            bytes.len() as f64 / MB as f64,
            bytes.len() as f64 / (mb * MB) as f64,
            load.as_secs_f64(),
        );
        if mb != 10 {
            continue;
        }
        for kind in ["novel", "mixed", "copied"] {
            let outs = outputs(kind, 300, &mut rng, &zipf, &cs);
            // Warm-up: the first queries fault the index into cache.
            for o in outs.iter().take(20) {
                black_box(datanet.attribute(o));
            }
            let mut times: Vec<Duration> = Vec::with_capacity(outs.len());
            let mut spans = 0usize;
            let mut weighted = 0usize;
            for o in &outs {
                let start = Instant::now();
                let a = black_box(datanet.attribute(o));
                times.push(start.elapsed());
                spans += a.spans.len();
                weighted += usize::from(!a.weights.is_empty());
            }
            times.sort();
            let mean = times.iter().sum::<Duration>() / times.len() as u32;
            println!(
                "ATTRIBUTION TIME per inference ({OUTPUT_TOKENS} output tokens, 10 MB datanet, {kind} outputs): \
                 median {:.3} ms, mean {:.3} ms, p99 {:.3} ms; {:.1} spans per output, {}/{} outputs attributed",
                times[times.len() / 2].as_secs_f64() * 1e3,
                mean.as_secs_f64() * 1e3,
                times[times.len() * 99 / 100].as_secs_f64() * 1e3,
                spans as f64 / outs.len() as f64,
                weighted,
                outs.len(),
            );
        }
    }
}
