//! The GGUF byte-level BPE tokenizer and the chat template.

use attrinet_compute::testing::TinyLlamaSpec;

use crate::util::{smollm2, tiny};

#[test]
fn smollm2_tokens_match_the_reference_tokenizer() {
    let model = smollm2();
    let tok = model.tokenizer();
    // Ids produced by the reference Hugging Face tokenizer (tokenizer.json of
    // SmolLM2-135M-Instruct) for the same strings.
    let cases: &[(&str, &[u32])] = &[
        ("What is the capital of France?", &[1780, 314, 260, 3575, 282, 4649, 47]),
        ("Hello, world! I'm 42 years old.", &[19556, 28, 905, 17, 339, 5248, 216, 36, 34, 929, 1573, 30]),
        ("  Tabs\tand\n\nnewlines  end ", &[216, 312, 7366, 197, 397, 198, 198, 2241, 5110, 216, 1112, 216]),
        (
            "naïve café — “quotes” 3.14159",
            &[3546, 46494, 37366, 1841, 619, 385, 2346, 573, 216, 35, 30, 33, 36, 33, 37, 41],
        ),
        ("don't WON'T it's", &[12420, 982, 408, 2154, 23, 68, 357, 506]),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text, false), *want, "{text:?}");
        assert_eq!(tok.decode(want).unwrap(), *text);
    }
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let model = smollm2();
    let tok = model.tokenizer();
    let start = tok.token_id("<|im_start|>").unwrap();
    let raw = tok.encode("<|im_start|>user", true);
    assert_eq!(raw[0], start);
    let plain = tok.encode("<|im_start|>user", false);
    assert!(!plain.contains(&start));
    assert_eq!(tok.decode(&plain).unwrap(), "<|im_start|>user");
}

#[test]
fn chat_prompt_uses_chatml() {
    let model = smollm2();
    let prompt = model.chat_prompt("Hi").unwrap();
    let expected = model.tokenizer().encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", true);
    assert_eq!(prompt, expected);
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let t = tiny(&TinyLlamaSpec::default());
    let tok = t.model.tokenizer();
    let ids = tok.encode("héllo ünïcode", false);
    let mut dec = tok.stream_decoder();
    let mut text = String::new();
    for id in &ids {
        let piece = dec.push(*id).unwrap();
        assert!(!piece.contains('\u{fffd}'), "split character emitted early");
        text.push_str(&piece);
    }
    text.push_str(&dec.finish());
    assert_eq!(text, "héllo ünïcode");
}

/// After a byte that can never start a character, the start of a character split across
/// tokens was emitted at once as U+FFFD, so a streamed answer differed from the same tokens
/// decoded whole (found while writing the gguf_header fuzz target's stream-equals-whole
/// property, issue 15): F0 9F is a four-byte character cut short by E2, whose own
/// character E2 82 AC (€) comes in the next two tokens.
#[test]
fn stream_decoder_agrees_with_decode_after_an_invalid_sequence() {
    let t = tiny(&TinyLlamaSpec::default());
    let tok = t.model.tokenizer();
    let byte = |b: u8| (0..tok.vocab_size() as u32).find(|&id| tok.token_bytes(id).unwrap() == [b]).unwrap();
    let ids: Vec<u32> = [0xF0, 0x9F, 0xE2, 0x82, 0xAC].into_iter().map(byte).collect();
    let whole = tok.decode(&ids).unwrap();
    assert_eq!(whole, "\u{fffd}€");
    let mut dec = tok.stream_decoder();
    let mut streamed = String::new();
    for id in &ids {
        streamed.push_str(&dec.push(*id).unwrap());
    }
    streamed.push_str(&dec.finish());
    assert_eq!(streamed, whole);
}

#[test]
fn model_id_is_the_sha256_of_the_file() {
    let t = tiny(&TinyLlamaSpec::default());
    let bytes = std::fs::read(&t.path).unwrap();
    use sha2_check::hex_sha256;
    assert_eq!(t.model.id().to_string(), hex_sha256(&bytes));
}

mod sha2_check {
    /// An independent SHA-256 (the system's `sha256sum`), so the test does not check the
    /// crate against itself.
    pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child =
            Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    }
}

mod sentencepiece {
    use attrinet_compute::testing::{TinyLlamaSpec, TinyTokenizer};

    use crate::util::tiny;

    fn ids(tok: &attrinet_compute::Tokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| tok.token_id(p).unwrap_or_else(|| panic!("no token {p:?}"))).collect()
    }

    #[test]
    fn merges_by_score_with_a_space_prefix_and_byte_fallback() {
        let t = tiny(&TinyLlamaSpec { tokenizer: TinyTokenizer::SentencePiece, ..TinyLlamaSpec::default() });
        let tok = t.model.tokenizer();
        // "▁the" and "▁cat" are pieces; "▁mat" is too; "sat" is spelled from smaller ones.
        assert_eq!(tok.encode("the cat sat", false), ids(tok, &["▁the", "▁cat", "▁s", "at"]));
        // Characters outside the vocabulary become their UTF-8 bytes.
        assert_eq!(tok.encode("é", false), ids(tok, &["▁", "<0xC3>", "<0xA9>"]));
        // Decoding restores the text, with the prefix space SentencePiece added.
        let text = "the mat, é!";
        assert_eq!(tok.decode(&tok.encode(text, false)).unwrap(), format!(" {text}"));
    }

    #[test]
    fn prompts_start_with_bos_and_use_the_zephyr_template() {
        let t = tiny(&TinyLlamaSpec { tokenizer: TinyTokenizer::SentencePiece, ..TinyLlamaSpec::default() });
        let tok = t.model.tokenizer();
        let bos = tok.bos_token().unwrap();
        assert!(tok.add_bos());
        assert_eq!(tok.encode_prompt("the cat")[0], bos);
        let chat = t.model.chat_prompt("the cat").unwrap();
        assert_eq!(chat[0], bos);
        // llama.cpp tokenizes the rendered template as one text: "</s>" is the only special
        // token in it (the tiny vocabulary has no <|user|> token).
        let eos = tok.eos_token().unwrap();
        let rendered = tok.encode("<|user|>\nthe cat</s>\n<|assistant|>\n", true);
        assert_eq!(chat[1..], rendered[..]);
        assert_eq!(chat.iter().filter(|&&t| t == eos).count(), 1);
    }
}
