//! An HTTP client's request body into the gateway's parsers (`chat_request` for
//! `POST /v1/chat/completions`, `completion_request` for `POST /v1/completions`: the JSON,
//! then `stop`, `n`, `stream`, `stream_options`, `logprobs`, `top_logprobs`,
//! `temperature`, `top_p` and `max_tokens` validated), and the text of the answer into the
//! `StopScanner` that cuts it at the stop sequences. The first byte picks the endpoint.
//!
//! Besides not panicking: a body is either refused with an OpenAI-shaped 400
//! (`{"error": {"message", "type", "param", "code"}}`), or becomes a request within every
//! limit the gateway states, for the model the body names; and the scanner, fed the
//! prompt in pieces, shows exactly the text before the first stop sequence to complete
//! (or all of it), as the provider, which stops at that token, bills it.
#![no_main]

use attrinet_node::gateway::{GatewayLimits, Request, StopScanner, chat_request, completion_request};
use attrinet_p2p::{MAX_TOP_LOGPROBS, Prompt, check_stops};
use libfuzzer_sys::fuzz_target;

fn refused(e: &attrinet_node::gateway::ApiError) {
    assert_eq!(e.status().as_u16(), 400, "{e:?}");
    let body = e.body();
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert!(error["code"].as_str().is_some() && error["param"].is_null(), "{body}");
}

fn accepted(r: &Request, chat: bool, body: &[u8], limits: &GatewayLimits) {
    let (ask, shape) = (&r.ask, &r.shape);
    assert_eq!(shape.chat, chat);
    assert!(check_stops(&shape.stops).is_ok() && ask.stop == shape.stops, "{:?}", shape.stops);
    assert!((1..=8).contains(&shape.n) && !(shape.n > 1 && shape.stream), "{shape:?}");
    assert!(ask.max_tokens <= limits.max_tokens);
    let s = &ask.sampling;
    assert!(s.temperature_milli <= 2000 && s.top_p_milli <= 1000, "{s:?}");
    assert!(s.logprobs.is_none_or(|k| k <= if chat { MAX_TOP_LOGPROBS } else { 5 }), "{s:?}");
    assert_eq!(matches!(ask.prompt, Prompt::Chat(_)), chat);
    let json: serde_json::Value = serde_json::from_slice(body).expect("an accepted body is JSON");
    assert_eq!(json["model"].as_str(), Some(ask.model.as_str()));
}

/// The scanner over `text` cut into pieces of `sizes` bytes, against the text itself.
fn scan(stops: &[String], text: &str, sizes: &[u8]) {
    let mut scanner = StopScanner::new(stops.to_vec());
    let (mut shown, mut end, mut expected) = (String::new(), 0, None);
    let mut sizes = sizes.iter().cycle();
    while end < text.len() {
        let mut next = (end + usize::from(*sizes.next().unwrap_or(&3)).max(1)).min(text.len());
        while !text.is_char_boundary(next) {
            next += 1;
        }
        shown.push_str(&scanner.push(&text[end..next]));
        end = next;
        let so_far = &text[..end];
        if expected.is_none() {
            if let Some(at) = stops.iter().filter_map(|s| so_far.find(s.as_str())).min() {
                expected = Some(&text[..at]);
            }
        }
    }
    shown.push_str(&scanner.finish());
    assert_eq!(scanner.stopped(), expected.is_some());
    assert_eq!(shown, expected.unwrap_or(text), "stops {stops:?}, text {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let limits = GatewayLimits { max_tokens: 4096, ..GatewayLimits::default() };
    let chat = which % 2 == 0;
    let parsed = if chat { chat_request(body, &limits) } else { completion_request(body, &limits) };
    match parsed {
        Err(e) => refused(&e),
        Ok(r) => {
            accepted(&r, chat, body, &limits);
            let text = match &r.ask.prompt {
                Prompt::Text(t) => t.clone(),
                Prompt::Chat(m) => m.iter().map(|m| m.content.as_str()).collect(),
            };
            scan(&r.shape.stops, &text, &[which >> 1, which >> 3, which >> 5]);
        }
    }
});
