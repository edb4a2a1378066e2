//! Batched decoding: sequences run together give what each gives alone, a scheduler admits
//! requests as slots and pages free up, and a dropped stream gives its slot and pages back.

use attrinet_compute::testing::TinyLlamaSpec;
use attrinet_compute::{
    Backend, BatchOptions, Batcher, Engine, Error, Event, GenerateParams, KernelStyle, Model, SamplingParams, SeqChunk,
    WgpuEngine, WgpuOptions, open_engine_with,
};

use crate::util::{smollm2, tiny};

/// A backend as the tests open it: candle, or wgpu on lavapipe in one kernel style.
#[derive(Debug, Clone, Copy)]
enum On {
    Candle,
    Wgpu(KernelStyle),
}

fn open(model: &Model, on: On, max_batch: usize, kv_tokens: Option<usize>) -> Box<dyn Engine> {
    let batch = BatchOptions { max_batch, kv_tokens };
    match on {
        On::Candle => open_engine_with(model, Backend::Candle, batch).expect("candle engine"),
        On::Wgpu(kernels) => {
            let options = WgpuOptions {
                allow_software: true,
                kernels,
                max_batch: Some(max_batch),
                kv_tokens,
                max_context: Some(512),
            };
            Box::new(
                WgpuEngine::new(model, &options)
                    .unwrap_or_else(|e| panic!("{e} (run scripts/setup-vulkan for a software Vulkan device)")),
            )
        }
    }
}

/// Request `i`: greedy for even `i`, seeded temperature sampling for odd ones, and each
/// asking for a different number of tokens so that sequences leave the batch at different
/// steps.
fn params(i: usize, max_tokens: usize) -> GenerateParams {
    let sampling = if i.is_multiple_of(2) {
        SamplingParams::greedy()
    } else {
        SamplingParams { temperature: 0.8, top_p: 0.9, seed: 1000 + i as u64 }
    };
    GenerateParams { max_tokens: max_tokens - i % 3, sampling, stop_tokens: Vec::new() }
}

/// Runs every prompt alone on an engine of `max_batch` slots (the only sequence in it),
/// then all at once through a batcher over the same engine, and asserts each request's
/// tokens are the same both ways. Returns the batcher's figures.
fn assert_batch_matches_alone(
    name: &str,
    model: &Model,
    on: On,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    max_batch: usize,
) -> attrinet_compute::BatchStats {
    let start = std::time::Instant::now();
    let mut engine = open(model, on, max_batch, None);
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| engine.generate(p, &params(i, max_tokens), &mut |_| {}).expect("alone").tokens)
        .collect();
    let alone_time = start.elapsed();

    let batcher = Batcher::new(engine, model.config().vocab_size);
    let streams: Vec<_> =
        prompts.iter().enumerate().map(|(i, p)| batcher.submit(p.clone(), params(i, max_tokens)).unwrap()).collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let mut streamed = Vec::new();
        let generation = loop {
            match stream.recv().expect("an outcome") {
                Event::Token(t, _) => streamed.push(t),
                Event::Done(g) => break g,
                Event::Failed(e) => panic!("{name} {on:?}: request {i} failed: {e}"),
            }
        };
        assert_eq!(generation.tokens, streamed, "{name} {on:?}: request {i}'s stream and outcome differ");
        assert_eq!(
            generation.tokens,
            expected[i],
            "{name} {on:?}: request {i} (prompt of {} tokens) differs in a batch from alone",
            prompts[i].len()
        );
    }
    let stats = batcher.stats();
    eprintln!("{name} {on:?}: alone {alone_time:.2?}, batched {:.2?}: {stats:?}", start.elapsed() - alone_time);
    assert_eq!(stats.active, 0, "{name} {on:?}: {stats:?}");
    assert_eq!(stats.free_pages, stats.pages, "{name} {on:?}: pages leaked: {stats:?}");
    assert_eq!(stats.finished, prompts.len() as u64, "{name} {on:?}: {stats:?}");
    stats
}

/// Prompts of 1 to 150 tokens: the longest ones take several steps of prefill, interleaved
/// with the others' decoding.
fn tiny_prompts(vocab: usize) -> Vec<Vec<u32>> {
    [1usize, 5, 17, 40, 64, 65, 100, 150]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|j| ((i * 31 + j * 7 + 3) % vocab) as u32).collect())
        .collect()
}

#[test]
fn eight_sequences_decode_together_as_each_alone_on_a_tiny_model() {
    let t = tiny(&TinyLlamaSpec::default());
    let prompts = tiny_prompts(t.model.config().vocab_size);
    for on in [On::Candle, On::Wgpu(KernelStyle::PerRow), On::Wgpu(KernelStyle::Cooperative)] {
        let stats = assert_batch_matches_alone("tiny", &t.model, on, &prompts, 24, 8);
        // They ran together: one step held all eight.
        assert_eq!(stats.largest_batch, 8, "{on:?}: {stats:?}");
        // Fewer slots than requests: later ones wait, then join the running batch (the
        // scheduling is the same in either kernel style; lavapipe runs the cooperative one
        // slowly).
        if !matches!(on, On::Wgpu(KernelStyle::Cooperative)) {
            let stats = assert_batch_matches_alone("tiny", &t.model, on, &prompts, 24, 3);
            assert_eq!(stats.largest_batch, 3, "{on:?}: {stats:?}");
        }
    }
}

#[test]
fn eight_smollm2_prompts_decode_together_as_each_alone() {
    let model = smollm2();
    // Raw text rather than chats (whose template adds a 20-token system prompt): lavapipe
    // runs SmolLM2 slowly, and a short prompt tests the batch as well as a long one.
    let texts = [
        "The capital of France is",
        "Bees make",
        "A spider has eight",
        "Two plus two is",
        "The closest planet to the Sun is",
        "Hello in Spanish is",
        "Water freezes at",
        "The opposite of hot is",
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenizer().encode_prompt(t)).collect();
    for on in [On::Candle, On::Wgpu(KernelStyle::Auto)] {
        // 3, 2 and 1 tokens: lavapipe costs about a second per row of SmolLM2, batched or not.
        let stats = assert_batch_matches_alone("SmolLM2", &model, on, &prompts, 3, 8);
        assert_eq!(stats.largest_batch, 8, "{on:?}: {stats:?}");
    }
}

#[test]
fn a_dropped_stream_frees_its_slot_and_pages_for_the_next_request() {
    let t = tiny(&TinyLlamaSpec::default());
    for on in [On::Candle, On::Wgpu(KernelStyle::Auto)] {
        let batcher = Batcher::new(open(&t.model, on, 1, None), t.model.config().vocab_size);
        let long = GenerateParams { max_tokens: 200, sampling: SamplingParams::greedy(), stop_tokens: Vec::new() };
        let first = batcher.submit(vec![1, 2, 3], long.clone()).unwrap();
        let second = batcher.submit(vec![4, 5, 6], long.clone()).unwrap();
        for _ in 0..3 {
            assert!(matches!(first.recv(), Some(Event::Token(..))));
        }
        // The second waits for the only slot.
        assert!(second.try_recv().is_none(), "{on:?}: the second request ran beside the first");
        drop(first);
        let mut n = 0;
        let done = loop {
            match second.recv().expect("an outcome") {
                Event::Token(..) => n += 1,
                Event::Done(g) => break g,
                Event::Failed(e) => panic!("{on:?}: {e}"),
            }
        };
        assert_eq!((n, done.tokens.len()), (200, 200), "{on:?}");
        let stats = batcher.stats();
        assert_eq!((stats.cancelled, stats.finished, stats.active), (1, 1, 0), "{on:?}: {stats:?}");
        assert_eq!(stats.free_pages, stats.pages, "{on:?}: pages leaked: {stats:?}");
    }
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let t = tiny(&TinyLlamaSpec::default());
    let greedy = SamplingParams::greedy();
    for on in [On::Candle, On::Wgpu(KernelStyle::Auto)] {
        let mut engine = open(&t.model, on, 2, Some(256));
        let pool = engine.kv_pool();
        engine.forward_batch(&[SeqChunk::sample(0, &[1, 2], &greedy, 0)]).unwrap();
        let twice = [SeqChunk::fill(1, &[1]), SeqChunk::fill(1, &[2])];
        let bad_slot = [SeqChunk::fill(2, &[1])];
        let empty = [SeqChunk::fill(1, &[])];
        let vocab = t.model.config().vocab_size as u32;
        let out_of_range = [vocab];
        let bad_token = [SeqChunk::fill(0, &[3]), SeqChunk::fill(1, &out_of_range)];
        for (what, batch) in
            [("twice", &twice[..]), ("slot", &bad_slot[..]), ("empty", &empty[..]), ("token", &bad_token[..])]
        {
            let err = engine.forward_batch(batch).unwrap_err();
            assert!(
                matches!(err, Error::InvalidBatch(_) | Error::EmptyPrompt | Error::TokenOutOfRange { .. }),
                "{on:?} {what}: {err}"
            );
            assert_eq!((engine.seq_position(0), engine.seq_position(1)), (2, 0), "{on:?} {what}");
        }
        let unsampled = [SeqChunk { logprobs: Some(2), ..SeqChunk::fill(1, &[1]) }];
        let too_many = [SeqChunk { logprobs: Some(21), ..SeqChunk::sample(1, &[1], &greedy, 0) }];
        for (what, batch) in [("logprobs unsampled", &unsampled[..]), ("21 logprobs", &too_many[..])] {
            let err = engine.forward_batch(batch).unwrap_err();
            assert!(matches!(err, Error::InvalidBatch(_)), "{on:?} {what}: {err}");
            assert_eq!((engine.seq_position(0), engine.seq_position(1)), (2, 0), "{on:?} {what}");
        }
        // A pool of 256 tokens (8 pages) is one context: a second sequence cannot also fill it.
        let long: Vec<u32> = (0..250).map(|i| i % vocab).collect();
        let err = engine.forward_batch(&[SeqChunk::fill(1, &long)]).unwrap_err();
        assert!(matches!(err, Error::KvCacheFull { .. }), "{on:?}: {err}");
        assert_eq!(engine.seq_position(1), 0, "{on:?}");
        engine.release(0);
        assert_eq!(engine.kv_pool(), pool, "{on:?}");
    }
}

/// The log-probabilities a batch reports are the log-softmax of the logits the engine
/// computes for that position: the chosen token's, and the top five in order.
#[test]
fn logprobs_are_the_log_softmax_of_the_logits() {
    let t = tiny(&TinyLlamaSpec::default());
    let prompt: Vec<u32> = (0..20).map(|i| (i * 13 + 5) % 250).collect();
    let sampled = SamplingParams { temperature: 0.9, top_p: 1.0, seed: 7 };
    for on in [On::Candle, On::Wgpu(KernelStyle::Auto)] {
        let mut engine = open(&t.model, on, 2, None);
        let logits = engine.forward_logits(&prompt).unwrap();
        engine.release(0);
        let chunks = [
            SeqChunk { logprobs: Some(5), ..SeqChunk::sample(0, &prompt, &sampled, 0) },
            SeqChunk { logprobs: Some(0), ..SeqChunk::sample(1, &prompt[..7], &sampled, 0) },
        ];
        let out = engine.forward_batch(&chunks).unwrap();
        let got = out[0].logprobs.as_ref().expect("asked for");
        let want = attrinet_compute::TokenLogprobs::from_logits(&logits, out[0].token, 5);
        assert_eq!(
            got.top.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.top.iter().map(|p| p.0).collect::<Vec<_>>(),
            "{on:?}"
        );
        for ((_, g), (_, w)) in got.top.iter().zip(&want.top) {
            assert!((g - w).abs() < 1e-4, "{on:?}: {got:?} vs {want:?}");
        }
        assert!((got.logprob - want.logprob).abs() < 1e-4, "{on:?}: {got:?} vs {want:?}");
        assert!(got.top.windows(2).all(|w| w[0].1 >= w[1].1) && got.top[0].1 <= 0.0, "{on:?}: {got:?}");
        let second = out[1].logprobs.as_ref().expect("asked for, with no alternatives");
        assert!(second.top.is_empty() && second.logprob < 0.0, "{on:?}: {second:?}");
    }
}
