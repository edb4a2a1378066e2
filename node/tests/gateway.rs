//! The OpenAI-compatible gateway over real HTTP, in front of a real network: a provider
//! node serving a GGUF model (a tiny, randomly initialised one on the candle engine, or
//! Gemma 3 270M on wgpu), and a client paying through a channel.

use std::sync::Arc;
use std::time::Duration;

use attrinet_compute::testing::{TinyLlamaSpec, write_random_llama};
use attrinet_compute::{Backend, ChatTemplate, ChatTurn, Model};
use attrinet_market::{ChannelId, MemStore, Seq, Store, Wei};
use attrinet_node::Metrics;
use attrinet_node::gateway::{Gateway, router};
use attrinet_node::loopback::{Loopback, loopback};
use attrinet_p2p::Limits;
use serde_json::{Value, json};

use crate::common::http;

struct Setup {
    base: std::net::SocketAddr,
    provider_store: Arc<MemStore>,
    client_store: Arc<MemStore>,
    kill_provider: Vec<tokio::task::AbortHandle>,
    _loopback: Loopback,
    _dir: tempfile::TempDir,
}

/// A tiny random model on candle, offered as "tiny".
async fn setup(deposit: Wei) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_random_llama(&path, &TinyLlamaSpec::default()).unwrap();
    let model = Model::load(&path).unwrap();
    serve(model, Backend::Candle, "tiny", deposit, dir).await
}

/// A provider serving `model` on `backend` as `name`, a client with a channel of `deposit`,
/// and the gateway in front of the client.
async fn serve(model: Model, backend: Backend, name: &str, deposit: Wei, dir: tempfile::TempDir) -> Setup {
    let lb = loopback(model, backend, name, deposit, Limits::default()).await.unwrap();
    let gateway = Gateway {
        network: lb.client_net.clone(),
        payer: lb.payer.clone(),
        metrics: Arc::new(Metrics::default()),
        opener: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(gateway)).await.unwrap() });
    Setup {
        base,
        provider_store: lb.provider_store.clone(),
        client_store: lb.client_store.clone(),
        kill_provider: lb.provider_tasks.clone(),
        _loopback: lb,
        _dir: dir,
    }
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_over_http() {
    let s = setup(Wei(10u128.pow(18))).await;

    let (status, body) = http(s.base, "GET", "/v1/models", "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["attrinet"]["providers"], 1);

    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&completion), "{body}");
    assert_eq!(v["attrinet"]["seq"], 1);

    // Streaming: chunks as server-sent events, a closing chunk, with include_usage OpenAI's
    // usage chunk (no choices; every other chunk has "usage": null), then [DONE].
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stream please"}], "max_tokens": 6, "stream": true, "temperature": 0,
        "stream_options": {"include_usage": true}});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]", "{body}");
    let mut chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let usage = chunks.pop().unwrap();
    assert_eq!(usage["choices"], json!([]), "{body}");
    assert!(chunks.iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()), "{body}");
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    let streamed_tokens = usage["usage"]["completion_tokens"].as_u64().unwrap();
    let content_chunks = chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].is_string()).count() as u64;
    assert_eq!(content_chunks, streamed_tokens, "one chunk per token: {body}");
    assert_eq!(last["attrinet"]["seq"], 2);

    let req = json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 5});
    let (status, body) = http(s.base, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());

    // Error cases, in OpenAI's shape.
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", "{not json").await;
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_json"));
    let req = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "model_not_found"));
    let req = json!({"model": "tiny", "messages": [], "temperature": 9.0});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_value"));

    // Both sides hold the same three receipts.
    let id = ChannelId::from([9; 32]);
    let mine = s.client_store.receipts_after(&id, Seq::ZERO).unwrap();
    assert_eq!(mine.len(), 3);
    assert_eq!(mine, s.provider_store.receipts_after(&id, Seq::ZERO).unwrap());

    let (status, body) = http(s.base, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("attrinet_receipts_total 3"), "{body}");
    assert!(body.contains("attrinet_request_errors_total 3"), "{body}");

    // No provider: the only one goes away; its advert is still known, but nobody answers.
    for h in &s.kill_provider {
        h.abort();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "anyone?"}], "max_tokens": 4});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (503, "no_provider_available"), "{body}");
}

/// The JSON chunks of a server-sent event stream, without its `[DONE]`.
fn sse_chunks(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

/// The tokens' texts of a greedy chat answer (from its log-probabilities).
async fn token_texts(s: &Setup, extra: Value) -> Vec<String> {
    let mut req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 16,
        "temperature": 0, "logprobs": true});
    req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].as_str().unwrap().into())
        .collect()
}

/// The text of a chat answer, streamed or not, and its finish reason.
async fn answer(s: &Setup, extra: Value) -> (String, String) {
    let mut req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 16,
        "temperature": 0});
    req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    if req["stream"] != true {
        let v: Value = serde_json::from_str(&body).unwrap();
        let c = &v["choices"][0];
        return (c["message"]["content"].as_str().unwrap().into(), c["finish_reason"].as_str().unwrap().into());
    }
    let chunks = sse_chunks(&body);
    // Without include_usage no chunk carries usage.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{body}");
    let text = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"].as_str().unwrap().into();
    (text, finish)
}

/// `stop` cuts the text before the first stop sequence, streamed or not, with finish reason
/// "stop"; an unset temperature is OpenAI's 1 (sampled), a bad stop list a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_cut_the_answer_as_openai_does() {
    let s = setup(Wei(10u128.pow(18))).await;
    let (full, finish) = answer(&s, json!({})).await;
    assert_eq!(finish, "length");
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "a long enough answer to cut: {full:?}");
    let stop: String = chars[4..6].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let (text, finish) = answer(&s, json!({"stop": [stop.clone(), "never appears"], "stream": stream})).await;
        assert_eq!((text.as_str(), finish.as_str()), (want, "stop"), "stream {stream}");
    }
    let (text, _) = answer(&s, json!({"stop": stop.clone()})).await;
    assert_eq!(text, want, "a single string");
    // The provider stops too: the bill ends at the token that completes the stop sequence.
    let tokens = token_texts(&s, json!({})).await;
    let mut so_far = String::new();
    let completing = tokens.iter().position(|t| {
        so_far.push_str(t);
        so_far.contains(&stop)
    });
    let billed = |extra: Value| {
        let mut req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 16,
            "temperature": 0});
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        async move {
            let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["usage"]["completion_tokens"].as_u64().unwrap()
        }
    };
    assert_eq!(billed(json!({})).await, 16);
    assert_eq!(billed(json!({"stop": stop.clone()})).await, completing.unwrap() as u64 + 1, "{tokens:?} {stop:?}");
    // No temperature: sampled, so some seed gives another answer than greedy.
    let mut sampled = Vec::new();
    for seed in 1..=4 {
        let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 16,
            "seed": seed});
        let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        sampled.push(v["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    }
    assert!(sampled.iter().any(|t| *t != full), "temperature defaults to 1, not greedy: {sampled:?}");
    // No seed either: each request draws its own, so the same request twice differs.
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 16});
    let mut unseeded = std::collections::HashSet::new();
    for _ in 0..3 {
        let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        unseeded.insert(v["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    }
    assert!(unseeded.len() > 1, "an unseeded request draws a fresh seed: {unseeded:?}");
    let req =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_value"), "{body}");
}

/// `n` choices: each a paid request of its own (a receipt each), sampled with seeds that
/// differ, indexed as OpenAI indexes them, usage summed over what was billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_are_requests_of_their_own() {
    let s = setup(Wei(10u128.pow(18))).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "three ways"}], "max_tokens": 12,
        "n": 3, "seed": 5});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    let texts: std::collections::HashSet<&str> =
        choices.iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    assert!(texts.len() > 1, "sampled choices differ: {body}");
    let receipts = v["attrinet"].as_array().unwrap();
    let mut seqs: Vec<u64> = receipts.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3], "{body}");
    let stored = s.client_store.receipts_after(&ChannelId::from([9; 32]), Seq::ZERO).unwrap();
    let billed: u64 = stored.iter().map(|r| u64::from(r.receipt.receipt.output_tokens)).sum();
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), billed);
    for bad in [json!({"n": 9}), json!({"n": 0}), json!({"n": 2, "stream": true})] {
        let mut req = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}]});
        req.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
        assert_eq!((status, error_code(&body).as_str()), (400, "invalid_value"), "{req}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_deposit_is_payment_required() {
    // 5 wei cannot cover even the smallest request at these prices.
    let s = setup(Wei(5)).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (402, "insufficient_deposit"), "{body}");
    let req =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": true});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!((status, error_code(&body).as_str()), (402, "insufficient_deposit"), "{body}");
    assert!(s.client_store.receipts_after(&ChannelId::from([9; 32]), Seq::ZERO).unwrap().is_empty());
}

/// Issue 12's "done when": Gemma 3 270M Q4_K_M served over the network on wgpu (lavapipe
/// here), its chat completions rendered in Gemma's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma3_on_wgpu_serves_chats_in_its_own_format() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-model (scripts/test does)", path.display());
    let model = Model::load(&path).unwrap();
    assert_eq!(model.chat_template(), &ChatTemplate::Gemma);
    let turns = [
        ChatTurn { role: "system", content: "Answer in one word." },
        ChatTurn { role: "user", content: "What is the capital of France?" },
    ];
    // Gemma's format and the plain fallback give prompts of different lengths, so the
    // count the receipt bills tells which one the provider rendered.
    let gemma_tokens = model.chat_tokens(&turns).unwrap().len() as u64;
    let plain_tokens = ChatTemplate::Plain.encode(model.tokenizer(), &turns).unwrap().len() as u64;
    assert_ne!(gemma_tokens, plain_tokens);
    let s = serve(model, Backend::Wgpu, "gemma", Wei(10u128.pow(18)), tempfile::tempdir().unwrap()).await;

    let messages: Vec<Value> = turns.iter().map(|t| json!({"role": t.role, "content": t.content})).collect();
    let req = json!({"model": "gemma", "messages": messages, "max_tokens": 4, "temperature": 0});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], gemma_tokens, "{body}");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{body}");

    // The base model states the fact as a completion, computed on the device.
    let req = json!({"model": "gemma", "prompt": "Question: What is the capital of France?\nAnswer:", "max_tokens": 3, "temperature": 0});
    let (status, body) = http(s.base, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["choices"][0]["text"].as_str().is_some_and(|t| t.contains("Paris")), "{body}");
}

/// `logprobs` in OpenAI's two shapes: chats' `content` list (`logprobs: true`,
/// `top_logprobs`) and completions' parallel lists (`logprobs: k`), one entry per billed
/// token; greedy picks the most likely token, so it heads its own alternatives. Streamed,
/// each chunk carries its tokens' entries, the same as the whole answer's. Out of range is
/// a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_come_in_openai_shapes() {
    let s = setup(Wei(10u128.pow(18))).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8,
        "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap(), "{body}");
    let mut text = String::new();
    for entry in content {
        let (token, logprob) = (entry["token"].as_str().unwrap(), entry["logprob"].as_f64().unwrap());
        text.push_str(token);
        assert_eq!(entry["bytes"].as_array().unwrap().len(), token.len(), "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{entry}");
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]) && values[0] <= 0.0, "{entry}");
        assert!((logprob - values[0]).abs() < 1e-6, "greedy: the chosen token is the most likely: {entry}");
    }
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    // Streamed: the chunks' entries, in order, are the whole answer's.
    let mut streamed_req = req.clone();
    streamed_req["stream"] = json!(true);
    let (status, body) = http(s.base, "POST", "/v1/chat/completions", &streamed_req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let chunks = sse_chunks(&body);
    let streamed: Vec<Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).flatten().cloned().collect();
    assert_eq!(&streamed, content, "{body}");
    // Without the flag: null, as OpenAI's.
    let plain = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4});
    let (_, body) = http(s.base, "POST", "/v1/chat/completions", &plain.to_string()).await;
    assert!(serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["logprobs"].is_null(), "{body}");

    let req = json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (status, body) = http(s.base, "POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap(), "{body}");
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    let mut at = 0;
    for (t, o) in tokens.iter().zip(&offsets) {
        assert_eq!(*o, at, "{body}");
        at += t.len() as u64;
    }
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), tokens.len());
    // Keyed by text, as OpenAI's: alternatives with the same text (here, byte tokens shown as
    // U+FFFD) share an entry.
    for top in lp["top_logprobs"].as_array().unwrap() {
        assert!((1..=2).contains(&top.as_object().unwrap().len()), "{body}");
    }
    // Streamed completions: each chunk's parallel lists, joined, are the whole answer's.
    let mut streamed_req = req.clone();
    streamed_req["stream"] = json!(true);
    let (status, streamed_body) = http(s.base, "POST", "/v1/completions", &streamed_req.to_string()).await;
    assert_eq!(status, 200, "{streamed_body}");
    let mut joined: Vec<Value> = Vec::new();
    for c in sse_chunks(&streamed_body) {
        if let Some(t) = c["choices"][0]["logprobs"]["token_logprobs"].as_array() {
            joined.extend(t.iter().cloned());
        }
    }
    assert_eq!(&joined, lp["token_logprobs"].as_array().unwrap(), "{streamed_body}");

    for (path, bad) in [
        ("/v1/chat/completions", json!({"model": "tiny", "messages": [], "logprobs": true, "top_logprobs": 21})),
        ("/v1/chat/completions", json!({"model": "tiny", "messages": [], "top_logprobs": 2})),
        ("/v1/completions", json!({"model": "tiny", "prompt": "x", "logprobs": 6})),
    ] {
        let (status, body) = http(s.base, "POST", path, &bad.to_string()).await;
        assert_eq!((status, error_code(&body)), (400, "invalid_value".to_owned()), "{bad}: {body}");
    }
}

/// Stands in for a model whose every token is `text`, fast; `extra` tokens past the
/// request's `max_tokens` (a provider whose engine ignores the limit).
struct Wordy {
    text: String,
    extra: u32,
}

impl attrinet_p2p::Generator for Wordy {
    fn count_tokens(&self, _: &attrinet_p2p::Prompt) -> Result<u32, attrinet_p2p::GenerateError> {
        Ok(4)
    }

    fn generate(
        &self,
        _: &attrinet_p2p::Prompt,
        max_tokens: u32,
        _: &attrinet_p2p::Sampling,
        on_token: &mut dyn FnMut(attrinet_p2p::Generated) -> bool,
    ) -> Result<(), attrinet_p2p::GenerateError> {
        for id in 0..max_tokens + self.extra {
            if !on_token(attrinet_p2p::Generated { id, text: self.text.clone(), logprobs: None }) {
                break;
            }
        }
        Ok(())
    }
}

/// A gateway in front of a provider of `engine` as "wordy", cutting a client that leaves
/// an event unread for `slow_client`.
async fn wordy(engine: Wordy, slow_client: Duration) -> (std::net::SocketAddr, attrinet_node::loopback::Loopback) {
    let offer = attrinet_p2p::Offer {
        model: attrinet_market::ModelId::from([7; 32]),
        name: "wordy".into(),
        price: attrinet_market::Price { per_1k_input: Wei(1), per_1k_output: Wei(1) },
        context_length: 32_768,
        decode_tokens_per_s: 1000,
        ttft_ms: 1,
        generator: Arc::new(engine),
        datanet: None,
    };
    let limits = Limits { max_tokens: 16_384, ..Limits::default() };
    let lb = attrinet_node::loopback::loopback_offers(vec![offer], Wei(10u128.pow(18)), limits).await.unwrap();
    let gateway = Gateway {
        network: lb.client_net.clone(),
        payer: lb.payer.clone(),
        metrics: Arc::new(Metrics::default()),
        opener: None,
    };
    let limits = attrinet_node::gateway::GatewayLimits { slow_client, ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = listener.local_addr().unwrap();
    let app = attrinet_node::gateway::router_with(gateway, limits);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, lb)
}

/// Issue 15, bounds under abuse: a client that asks for a long streamed answer and stops
/// reading. The gateway queued every event for it in an unbounded channel, holding the
/// whole answer for as long as the client kept the connection open. Now events wait in a
/// bounded buffer, and a client that leaves one unread for `slow_client` is cut (the answer
/// is still paid: its tokens were delivered); a client that reads gets every token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_cut_and_the_answer_still_paid() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 8,000 tokens of 400 bytes: over 3 MB of events, more than loopback sockets buffer
    // for a reader that reads nothing.
    const TOKENS: usize = 8_000;
    let (base, lb) = wordy(Wordy { text: "w".repeat(400), extra: 0 }, Duration::from_secs(1)).await;
    let req = json!({"model": "wordy", "prompt": "go on", "max_tokens": TOKENS, "stream": true}).to_string();
    let content = |body: &str| sse_chunks(body).iter().filter(|c| c["choices"][0]["text"] != "").count();

    // A client that reads gets all of it.
    let (status, body) = http(base, "POST", "/v1/completions", &req).await;
    assert_eq!(status, 200);
    assert_eq!(content(&body), TOKENS);
    assert!(body.ends_with("data: [DONE]\n\n"), "{}", &body[body.len().saturating_sub(200)..]);

    // One that sends its request and reads nothing for a while.
    let mut s = tokio::net::TcpStream::connect(base).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        req.len()
    );
    s.write_all((head + &req).as_bytes()).await.unwrap();
    // Unread until the gateway says it cut this client off.
    let cut = async {
        while !http(base, "GET", "/metrics", "").await.1.contains("attrinet_streams_cut_total 1") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), cut).await.expect("the unread stream is cut");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut out)).await.expect("the stream ends").unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let got = content(&body);
    assert!(!body.contains("[DONE]") && got < TOKENS, "the unread stream was held whole: {got} of {TOKENS} tokens");
    // Paid all the same: the provider delivered.
    let store = lb.client_store.clone();
    let id = lb.channel;
    let paid = async {
        while store.channel(&id).unwrap().unwrap().last_seq < Seq(2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), paid).await.expect("the cut answer is paid");
}

/// Issue 15: an engine yields far more tokens than asked for. The gateway passed every one
/// on to its client; now the provider stops forwarding at `max_tokens` (and were it not to,
/// the payer would refuse the token past it: `p2p/tests/network.rs`), so the stream ends
/// normally after exactly `max_tokens` tokens, all of them billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_yielding_past_max_tokens_is_cut_off_at_max_tokens() {
    let (base, _lb) = wordy(Wordy { text: "w".into(), extra: 5_000 }, Duration::from_secs(30)).await;
    let req = json!({"model": "wordy", "prompt": "go on", "max_tokens": 50, "stream": true}).to_string();
    let (status, body) = http(base, "POST", "/v1/completions", &req).await;
    assert_eq!(status, 200);
    let chunks = sse_chunks(&body);
    let tokens = chunks.iter().filter(|c| c["choices"][0]["text"] == "w").count();
    assert_eq!(tokens, 50, "tokens streamed for max_tokens 50");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{body}");
    // What the payer accepts is what a request may ask for, within the gateway's limit.
    let req = json!({"model": "wordy", "prompt": "go on", "max_tokens": 40_000}).to_string();
    let (status, body) = http(base, "POST", "/v1/completions", &req).await;
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_value"), "{body}");
}
