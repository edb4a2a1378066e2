//! The candle CPU backend on tiny random models and on SmolLM2.

use attrinet_compute::testing::TinyLlamaSpec;
use attrinet_compute::{CandleEngine, Engine, FinishReason, GenerateParams, SamplingParams, TokensHash};

use crate::util::{greedy, smollm2, tiny};

#[test]
fn smollm2_knows_the_capital_of_france() {
    let model = smollm2();
    let mut engine = CandleEngine::new(&model).unwrap();
    let prompt = model.chat_prompt("What is the capital of France?").unwrap();
    let params = GenerateParams { stop_tokens: model.tokenizer().stop_tokens().to_vec(), ..greedy(24) };
    let out = engine.generate(&prompt, &params, &mut |_| {}).unwrap();
    let text = model.tokenizer().decode(&out.tokens).unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(out.tokens_hash, TokensHash::of(&out.tokens));
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let prompt = t.model.chat_prompt("the weather in spring").unwrap();
    let run = |engine: &mut CandleEngine, seed| {
        let params = GenerateParams {
            max_tokens: 24,
            sampling: SamplingParams { temperature: 0.8, top_p: 1.0, seed },
            stop_tokens: vec![],
        };
        engine.generate(&prompt, &params, &mut |_| {}).unwrap()
    };
    let a = run(&mut engine, 7);
    let b = run(&mut engine, 7);
    let c = run(&mut engine, 8);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens_hash, b.tokens_hash);
    assert_ne!(a.tokens, c.tokens, "a different seed should change 24 sampled tokens");
    assert_eq!(a.finish, FinishReason::Length);
}

#[test]
fn streamed_tokens_are_the_returned_tokens() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let mut streamed = Vec::new();
    let out = engine.generate(&[5, 6, 7], &greedy(10), &mut |tok| streamed.push(tok)).unwrap();
    assert_eq!(streamed, out.tokens);
    assert_eq!(out.tokens.len(), 10);
    assert_eq!(engine.position(), 3 + 9, "the last token is sampled, not fed back");
}

#[test]
fn generation_stops_at_a_stop_token() {
    let t = tiny(&TinyLlamaSpec::default());
    let mut engine = CandleEngine::new(&t.model).unwrap();
    let free = engine.generate(&[5, 6, 7], &greedy(8), &mut |_| {}).unwrap();
    let stop = free.tokens[2];
    let params = GenerateParams { stop_tokens: vec![stop], ..greedy(8) };
    let stopped = engine.generate(&[5, 6, 7], &params, &mut |_| {}).unwrap();
    let first = free.tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped.tokens, free.tokens[..=first]);
    assert_eq!(stopped.finish, FinishReason::Stop);
}
