//! A GGUF file's bytes into what `serve --model FILE` runs on them before any weight is
//! read: the bounds check of the header, candle's header parser, then the model's config,
//! the tensors' types, shapes and extents, the tokenizer and the chat template
//! (`Model::read_header`, the path `Model::load` and `Model::from_bytes` share). The first
//! 4 bytes say how much longer than the header the file claims to be (its tensor data);
//! the rest is the header. Seeds: the headers of `attrinet_compute::testing`'s tiny models
//! (fuzz/seeds/gguf_header).
//!
//! Besides not panicking (nor aborting on a huge allocation): the whole file in memory
//! (`Model::from_bytes`) is accepted exactly when its header is, with the same config; and
//! a header that passes gives a tokenizer whose vocabulary is the embedding's, which
//! encodes text into ids inside it and decodes as a stream to the same text as at once.
#![no_main]

use std::path::Path;

use attrinet_compute::{ChatTurn, Model, ModelHeader};
use libfuzzer_sys::fuzz_target;

fn check(header: &ModelHeader, text: &str, ids: &[u8]) {
    let tokenizer = &header.tokenizer;
    let vocab = tokenizer.vocab_size();
    assert_eq!(vocab, header.config.vocab_size);
    let encoded = tokenizer.encode(text, true);
    assert!(encoded.iter().all(|&id| (id as usize) < vocab), "{encoded:?} outside {vocab} tokens");
    let turns = [ChatTurn { role: "user", content: text }];
    if let Ok(tokens) = header.chat_template.encode(tokenizer, &turns) {
        assert!(tokens.iter().all(|&id| (id as usize) < vocab));
    }
    let ids: Vec<u32> = ids.iter().map(|&b| u32::from(b) % vocab.max(1) as u32).collect();
    if let Ok(whole) = tokenizer.decode(&ids) {
        let mut stream = tokenizer.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).expect("a token that decodes at once decodes streamed"));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, whole, "tokens {ids:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((extra, header)) = data.split_first_chunk::<4>() else { return };
    let extra = u64::from(u32::from_le_bytes(*extra));
    let path = Path::new("fuzz.gguf");
    let alone = Model::read_header(path, header, header.len() as u64);
    let whole = Model::from_bytes(path.to_path_buf(), header.to_vec());
    match (&alone, &whole) {
        (Ok(h), Ok(m)) => assert_eq!(&h.config, m.config()),
        (Err(_), Err(_)) => {}
        (a, w) => panic!("header alone: {:?}; whole file: {:?}", a.as_ref().err(), w.as_ref().err()),
    }
    let tail = &header[header.len().saturating_sub(32)..];
    let text = String::from_utf8_lossy(&header[..header.len().min(48)]);
    if let Ok(h) = &alone {
        check(h, &text, tail);
    }
    if extra > 0 {
        if let Ok(h) = Model::read_header(path, header, header.len() as u64 + extra) {
            check(&h, &text, tail);
        }
    }
});
