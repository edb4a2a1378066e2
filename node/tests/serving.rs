//! Serving many clients through the real protocol: one provider with a batched engine (a
//! tiny random model on candle) and a client paying through a channel.

use std::sync::Arc;
use std::time::Duration;

use attrinet_compute::testing::{TinyLlamaSpec, write_random_llama};
use attrinet_compute::{Backend, BatchOptions, Model};
use attrinet_market::{Seq, Store, Wei};
use attrinet_node::loopback::{loopback, loopback_offer, loopback_offers};
use attrinet_node::pool::ModelPool;
use attrinet_node::{EngineGenerator, Metrics};
use attrinet_p2p::{Ask, Generator, Limits, Prompt, Sampling};

fn tiny_model(dir: &std::path::Path, seed: u64) -> Model {
    let path = dir.join(format!("tiny-{seed}.gguf"));
    write_random_llama(&path, &TinyLlamaSpec { seed, ..TinyLlamaSpec::default() }).unwrap();
    Model::load(&path).unwrap()
}

fn ask(model: &str, text: &str) -> Ask {
    Ask {
        model: model.into(),
        prompt: Prompt::Text(text.into()),
        max_tokens: 24,
        sampling: Sampling::default(),
        max_cost: None,
        stop: Vec::new(),
    }
}

/// 32 requests at once to `--max-batch 8 --queue 64`: none is refused, every one is
/// answered in full with a receipt both sides hold, and the engine decoded 8 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_requests_are_batched_eight_at_a_time_and_all_paid() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), 1);
    let limits = Limits { capacity: 8, queue: 64, ..Limits::default() };
    let lb = loopback(model, Backend::Candle, "tiny", Wei(10u128.pow(18)), limits).await.unwrap();
    let generator = lb.generator.clone().unwrap();
    assert_eq!(generator.max_batch(), 8);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (payer, net) = (lb.payer.clone(), lb.client_net.clone());
        let ask = Ask { max_tokens: 48, ..ask("tiny", &format!("request number {i} asks for a story")) };
        tasks.push(tokio::spawn(async move { payer.infer(&net, &ask, |_| {}).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("bounded")
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        answer.receipt.verify().unwrap();
        assert_eq!(answer.receipt.receipt.output_tokens as usize, answer.tokens.len(), "request {i}");
        assert!(!answer.tokens.is_empty(), "request {i}");
    }
    let stats = generator.batch_stats();
    assert_eq!(stats.finished, 32, "{stats:?}");
    assert_eq!(stats.largest_batch, 8, "the engine decoded eight requests together: {stats:?}");
    assert_eq!((stats.active, stats.free_pages), (0, stats.pages), "nothing left in the batch: {stats:?}");
    assert_eq!(lb.provider.load(), (0, 0));
    for store in [&lb.client_store, &lb.provider_store] {
        assert_eq!(store.receipts_after(&lb.channel, Seq::ZERO).unwrap().len(), 32);
    }
}

/// Two models on one node under a memory budget that holds one: requests alternate
/// between them, each is answered by its own model (as that model answers alone), every
/// switch evicts the other (counted in the metrics), and the adverts tell which is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_share_a_budget_for_one_and_both_answer() {
    let dir = tempfile::tempdir().unwrap();
    let models: Vec<Arc<Model>> = [11, 12].iter().map(|&s| Arc::new(tiny_model(dir.path(), s))).collect();
    let batch = BatchOptions { max_batch: 2, kv_tokens: Some(512) };
    let metrics = Arc::new(Metrics::default());
    let pool =
        ModelPool::new(models.iter().map(|m| (m.clone(), batch)).collect(), Backend::Candle, None, metrics.clone());
    let one = pool.model_bytes(0).max(pool.model_bytes(1));
    let pool = ModelPool::new(
        models.iter().map(|m| (m.clone(), batch)).collect(),
        Backend::Candle,
        Some(one),
        metrics.clone(),
    );
    let names = ["tiny-a", "tiny-b"];
    let offers = (0..2).map(|i| loopback_offer(&models[i], names[i], Arc::new(pool.generator(i)))).collect();
    let lb = loopback_offers(offers, Wei(10u128.pow(18)), Limits::default()).await.unwrap();

    // What each model answers on its own engine.
    let prompt = "the cat sat on the mat";
    let alone: Vec<Vec<u32>> = models
        .iter()
        .map(|m| {
            let engine = EngineGenerator::open(m.clone(), Backend::Candle, batch).unwrap();
            let mut ids = Vec::new();
            engine
                .generate(&Prompt::Text(prompt.into()), 24, &Sampling::default(), &mut |t| {
                    ids.push(t.id);
                    true
                })
                .unwrap();
            ids
        })
        .collect();
    assert_ne!(alone[0], alone[1], "two different models");

    for round in 0..4 {
        let i = round % 2;
        let answer =
            lb.payer.infer(&lb.client_net, &ask(names[i], prompt), |_| {}).await.unwrap_or_else(|e| panic!("{e}"));
        answer.receipt.verify().unwrap();
        assert_eq!(answer.receipt.receipt.model, attrinet_market::ModelId::from(models[i].id().0), "round {round}");
        assert_eq!(answer.tokens, alone[i], "round {round}: {} answered as it does alone", names[i]);
        assert!(pool.is_loaded(i) && !pool.is_loaded(1 - i), "round {round}: only the model just used is loaded");
        assert!(pool.loaded_bytes() <= one, "within the budget");
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((metrics.model_loads.load(Relaxed), metrics.model_evictions.load(Relaxed)), (4, 3));
    assert!(metrics.render().contains("attrinet_model_evictions_total 3"), "{}", metrics.render());
    // The unloaded model advertises its cold start; the loaded one none.
    let adverts = lb.provider.adverts();
    let cold = |name: &str| adverts.iter().find(|a| a.advert.model_name == name).unwrap().advert.cold_start_ms;
    assert!(cold("tiny-a") > 0, "tiny-a was evicted");
    assert_eq!(cold("tiny-b"), 0, "tiny-b is loaded");
    assert_eq!(pool.generator(1).cold_start_ms(), 0);
}

/// The payer's bound on input tokens (a byte per token of text plus the template's
/// overhead) holds for the real models' tokenizers and chat templates: an honest provider's
/// count is never refused.
#[test]
fn real_prompts_count_within_the_payers_input_bound() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let chats: Vec<Vec<(&str, &str)>> = vec![
        vec![("user", "hi")],
        vec![("user", "")],
        vec![("system", "Be brief."), ("user", "What is the capital of France?")],
        vec![("user", "Tell me a joke."), ("assistant", "Why did the chicken cross the road?"), ("user", "Why?")],
    ];
    let texts = ["", "x", "Once upon a time", "<|im_start|>user\nhi<|im_end|>", "日本語のテキスト 🎉"];
    for file in ["SmolLM2-135M-Instruct-Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let model = Model::load(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e} (scripts/fetch-model)"));
        for chat in &chats {
            let prompt = Prompt::Chat(
                chat.iter()
                    .map(|(r, c)| attrinet_p2p::ChatMessage { role: (*r).into(), content: (*c).into() })
                    .collect(),
            );
            let turns: Vec<attrinet_compute::ChatTurn<'_>> =
                chat.iter().map(|(role, content)| attrinet_compute::ChatTurn { role, content }).collect();
            let Ok(tokens) = model.chat_tokens(&turns) else { continue };
            assert!(tokens.len() as u32 <= prompt.max_input_tokens(), "{file}: {chat:?}: {} tokens", tokens.len());
        }
        for text in texts {
            let n = model.tokenizer().encode_prompt(text).len() as u32;
            assert!(n <= Prompt::Text(text.into()).max_input_tokens(), "{file}: {text:?}: {n} tokens");
        }
    }
}

/// Issue 14, attack 2, exact: a client holding the model file counts its prompts with the
/// model's own tokenizer and chat template (`PromptCount`), well under the bound from the
/// prompt's bytes, and an honest provider's count is exactly that: what the receipt bills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_model_file_counts_its_prompt_as_the_provider_does() {
    use attrinet_p2p::PromptCounter;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct-Q4_1.gguf");
    let load = || Model::load(&path).unwrap_or_else(|e| panic!("{e} (scripts/fetch-model)"));
    let lb = loopback(load(), Backend::Candle, "smol", Wei(10u128.pow(18)), Limits::default()).await.unwrap();
    // The client's own copy of the file.
    let model = Arc::new(load());
    let counter = attrinet_node::PromptCount(model.clone());
    lb.payer
        .count_input_with(attrinet_market::ModelId::from(model.id().0), Arc::new(attrinet_node::PromptCount(model)));
    let chat = |turns: &[(&str, &str)]| {
        Prompt::Chat(
            turns.iter().map(|(r, c)| attrinet_p2p::ChatMessage { role: (*r).into(), content: (*c).into() }).collect(),
        )
    };
    for prompt in [
        Prompt::Text("Once upon a time, in a land far away,".into()),
        chat(&[("system", "Be brief."), ("user", "What is the capital of France?")]),
    ] {
        let exact = counter.count(&prompt).unwrap();
        assert!(exact < prompt.max_input_tokens(), "{exact}: the exact count is tighter than the bound");
        let answer = lb
            .payer
            .infer(&lb.client_net, &Ask { prompt: prompt.clone(), max_tokens: 2, ..ask("smol", "") }, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{prompt:?}: {e}"));
        assert_eq!(answer.receipt.receipt.input_tokens, exact, "{prompt:?}");
    }
}

/// Issue 14, attack 1 and attack 8, on the node's side: when a model's owner changes its
/// terms (or its datanet) on chain, the node stops serving that model, and only that model:
/// its advert shows no capacity at once, requests for it are refused with the reason, and
/// the node's other model is served on. (What it already served is settled by the terms it
/// was made under: see attrinet-chain's `an_owner_updating_its_terms_twice…`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terms_change_stops_only_that_models_offer() {
    use alloy_primitives::{B256, U256};
    use attrinet_chain::{Anvil, AnvilConfig, ChainClient, DeployConfig};
    use attrinet_market::{Identity, ModelId, Price, Split};
    use attrinet_node::serve::{Watched, recheck};

    const ETH: u128 = 1_000_000_000_000_000_000;
    let anvil = Anvil::spawn(AnvilConfig::default()).expect("anvil (scripts/setup-chain-tools)");
    let owner = Identity::from_secrets([21; 32], [22; 32]).unwrap();
    anvil.fund(owner.address(), U256::from(10 * ETH)).await.unwrap();
    let config = DeployConfig {
        treasury: owner.address(),
        challenge_window: 15,
        thaw_delay: 60,
        unbond_delay: 60,
        min_bond: Wei(1),
    };
    let deployment = ChainClient::deploy(&anvil.endpoint(), owner.evm.clone(), config).await.unwrap();
    let chain = ChainClient::connect(&anvil.endpoint(), owner.evm.clone(), deployment).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let models: Vec<Arc<Model>> = [31, 32].iter().map(|&s| Arc::new(tiny_model(dir.path(), s))).collect();
    let names = ["tiny-a", "tiny-b"];
    let batch = BatchOptions { max_batch: 2, kv_tokens: Some(512) };
    let offers = (0..2)
        .map(|i| {
            let generator = Arc::new(EngineGenerator::open(models[i].clone(), Backend::Candle, batch).unwrap());
            loopback_offer(&models[i], names[i], generator)
        })
        .collect();
    let lb = loopback_offers(offers, Wei(10u128.pow(18)), Limits::default()).await.unwrap();
    let ids: Vec<ModelId> = models.iter().map(|m| ModelId::from(m.id().0)).collect();
    let price = Price { per_1k_input: Wei(1_000), per_1k_output: Wei(3_000) };
    let split = Split::new(7_000, 2_000, 500, 500).unwrap();
    let mut watched = Vec::new();
    for &id in &ids {
        chain.register_model(id, price, split, B256::ZERO, owner.address()).await.unwrap();
        let terms = chain.terms(id).await.unwrap().unwrap();
        watched.push(Watched { model: id, terms, datanet: B256::ZERO });
    }
    assert!(recheck(&chain, &lb.provider, &watched).await.is_empty(), "nothing changed yet");

    // The owner raises tiny-a's prices.
    let dearer = Price { per_1k_input: Wei(5_000), per_1k_output: Wei(9_000) };
    chain.update_terms(ids[0], dearer, split).await.unwrap();
    let said = recheck(&chain, &lb.provider, &watched).await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(&ids[0].to_string()) && said[0].contains("version 0 to 1"), "{said:?}");
    assert!(lb.provider.withdrawn(&ids[0]).is_some() && lb.provider.withdrawn(&ids[1]).is_none());
    assert!(recheck(&chain, &lb.provider, &watched).await.is_empty(), "said once");

    let adverts = lb.provider.adverts();
    let capacity = |name: &str| adverts.iter().find(|a| a.advert.model_name == name).unwrap().advert.free_capacity;
    assert_eq!(capacity("tiny-a"), 0, "clients rank the withdrawn offer out at once");
    assert!(capacity("tiny-b") > 0);
    // Refused by the provider, or, once the client has the new advert, not even sent.
    let refused = lb.payer.infer(&lb.client_net, &ask("tiny-a", "hello"), |_| {}).await.unwrap_err().to_string();
    assert!(refused.contains("no longer served") || refused.contains("no provider offers"), "{refused}");
    assert_eq!(lb.provider_store.receipts_after(&lb.channel, Seq::ZERO).unwrap().len(), 0, "nothing billed");
    let answer = lb.payer.infer(&lb.client_net, &ask("tiny-b", "hello"), |_| {}).await.unwrap();
    answer.receipt.verify().unwrap();
    assert_eq!(answer.receipt.receipt.model, ids[1]);

    // A datanet change withdraws the other model the same way.
    chain.set_datanet(ids[1], B256::repeat_byte(7), owner.address()).await.unwrap();
    let said = recheck(&chain, &lb.provider, &watched).await;
    assert!(said.len() == 1 && said[0].contains("datanet changed"), "{said:?}");
    assert!(lb.provider.withdrawn(&ids[1]).is_some());
}
