//! Device time per kernel of the wgpu backend, for a chunk of one and of several tokens:
//! `cargo run --release -p attrinet-compute --example profile -- MODEL.gguf [TOKENS...]`.
//! For finding what to optimise; each dispatch is submitted alone, so the figures include
//! per-submission overhead.

use attrinet_compute::{Model, WgpuEngine, WgpuOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: profile MODEL.gguf [TOKENS...]")?;
    let sizes: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() { vec![1, 8] } else { sizes };
    let model = Model::load(&path)?;
    let options =
        WgpuOptions { allow_software: true, max_batch: Some(8), max_context: Some(512), ..Default::default() };
    let mut engine = WgpuEngine::new(&model, &options)?;
    println!("adapter: {}", attrinet_compute::Engine::device_name(&engine));
    println!("dispatches per decode step: {}", engine.dispatches_per_token());
    for n in sizes {
        let totals = engine.profile_kernels(n)?;
        let all: std::time::Duration = totals.iter().map(|t| t.1).sum();
        println!("{n} tokens: {all:.2?} in all");
        for (kernel, t) in totals.iter().take(8) {
            println!("  {kernel:<28} {t:>10.2?}");
        }
    }
    Ok(())
}
