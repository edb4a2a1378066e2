//! Tokenizers built from GGUF metadata: byte-level BPE (GPT-2 style: SmolLM2, Qwen, ...)
//! and SentencePiece BPE (llama 1/2, TinyLlama, Mistral).
//!
//! Written here rather than through the `tokenizers` crate: the GGUF already carries the
//! vocabulary and merges, the algorithm is short, and the crate (with its regex engine,
//! rayon and serde machinery) would add minutes to every build on the project's 2-core
//! machines. Byte-level BPE splits text first as `tokenizer.ggml.pre` names, with llama.cpp's
//! regexes for each ([`PreTokenizer`]), hand-coded; letters and numbers use Rust's Unicode
//! `Alphabetic` and `Numeric` properties, which agree with `\p{L}`/`\p{N}` on the text these
//! models see.
//!
//! SentencePiece follows llama.cpp's `llm_tokenizer_spm`: spaces become `▁` (with one
//! prepended when `tokenizer.ggml.add_space_prefix` says so), the text starts as single
//! characters, the adjacent pair whose concatenation is a token with the highest score is
//! merged until none is, and what is left outside the vocabulary is spelled with the
//! `<0xXX>` byte tokens.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, Result};

/// GGUF `tokenizer.ggml.token_type` values that mark special tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// GGUF `tokenizer.ggml.token_type` of SentencePiece's `<0xXX>` byte tokens.
const TOKEN_TYPE_BYTE: i32 = 6;

/// A tokenizer: byte-level BPE or SentencePiece BPE, with special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    algorithm: Algorithm,
    /// Tokens matched as wholes in the text before the algorithm runs, longest first so that
    /// matching is greedy: `(text, id, control)`. As in llama.cpp, user-defined tokens
    /// (Gemma's runs of newlines, spaces and tabs) are matched in every text and control
    /// tokens (`<|im_start|>`, `<end_of_turn>`) only where special tokens are parsed.
    specials: Vec<(String, u32, bool)>,
    /// Indices into `specials` by their first byte, so a scan looks only at candidates.
    specials_by_byte: HashMap<u8, Vec<usize>>,
    /// Control tokens, which decode to nothing.
    is_control: Vec<bool>,
    unknown: Option<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_tokens: Vec<u32>,
}

#[derive(Debug, Clone)]
enum Algorithm {
    ByteLevel(ByteLevel),
    SentencePiece(SentencePiece),
}

#[derive(Debug, Clone)]
struct ByteLevel {
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The id of each byte's printable stand-in (GPT-2's `bytes_to_unicode`); some
    /// vocabularies (SmolLM2's) leave out control bytes, which then encode as `unknown`.
    byte_ids: [Option<u32>; 256],
    byte_of_char: HashMap<char, u8>,
    /// Each byte's printable stand-in, to spell a pre-token as the vocabulary does.
    byte_chars: Box<[char; 256]>,
    pre: PreTokenizer,
}

/// How byte-level BPE text is split before merging, by `tokenizer.ggml.pre`: llama.cpp's
/// regex for each name (its `llama-vocab.cpp`), which the files' own `tokenizer.json`s use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    /// (`gpt2`, `gpt-2` and the names llama.cpp gives the same regex).
    Gpt2,
    /// Every digit alone, then GPT-2's regex (`smollm`).
    SmolLm,
    /// Llama 3's `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, and a pre-token that is itself a
    /// token is taken whole, without merging (llama.cpp's `ignore_merges`) (`llama-bpe`,
    /// `llama3`, `llama-v3`, `falcon3`, `pixtral`).
    Llama3,
    /// Llama 3's regex with single digits (`\p{N}` for `\p{N}{1,3}`), merging as usual
    /// (`qwen2`, `deepseek-r1-qwen`).
    Qwen2,
    /// llama.cpp's fallback for a byte-level file that names no pre-tokenizer (`default`, or
    /// the key absent): runs of punctuation (`[\p{P}$+<=>^~|]+`) split off, then GPT-2's
    /// regex, digit runs, and digits in threes, each splitting the pieces of the last.
    Default,
}

impl PreTokenizer {
    /// The names `tokenizer.ggml.pre` may take, for errors.
    pub const NAMES: [&'static str; 13] = [
        "default",
        "gpt2",
        "gpt-2",
        "phi-2",
        "roberta-bpe",
        "smollm",
        "llama-bpe",
        "llama3",
        "llama-v3",
        "falcon3",
        "pixtral",
        "qwen2",
        "deepseek-r1-qwen",
    ];

    /// The pre-tokenizer `tokenizer.ggml.pre` names, or `None` for one not implemented.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" => Self::Default,
            "gpt2" | "gpt-2" | "phi-2" | "roberta-bpe" => Self::Gpt2,
            "smollm" => Self::SmolLm,
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => Self::Llama3,
            "qwen2" | "deepseek-r1-qwen" => Self::Qwen2,
            _ => return None,
        })
    }

    /// Splits `text` into the pieces BPE merges within.
    pub fn split(self, text: &str) -> Vec<&str> {
        match self {
            Self::Gpt2 => pre_tokenize(text),
            Self::SmolLm => split_by(&runs(text, |c| c.is_numeric(), Some(1)), pre_tokenize),
            Self::Llama3 => pre_tokenize_llama3(text, 3),
            Self::Qwen2 => pre_tokenize_llama3(text, 1),
            Self::Default => {
                let pieces = runs(text, is_punctuation_or_default_symbol, None);
                let pieces = split_by(&pieces, pre_tokenize);
                let pieces = split_by(&pieces, |p| runs(p, |c| c.is_numeric(), None));
                split_by(&pieces, |p| runs(p, |c| c.is_ascii_digit(), Some(3)))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SentencePiece {
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte.
    byte_tokens: [Option<u32>; 256],
    /// Which tokens are `<0xXX>` byte tokens, by id (their text is not their content).
    byte_of_token: HashMap<u32, u8>,
    add_space_prefix: bool,
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the rest to code points from U+0100 upward.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        out[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).expect("U+0100..U+0143 are valid chars")
        };
    }
    out
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let v = md.get(key).ok_or_else(|| Error::metadata(key, "absent"))?;
    let arr = v.to_vec().map_err(|e| Error::metadata(key, e.to_string()))?;
    arr.iter().map(|x| x.to_string().cloned().map_err(|e| Error::metadata(key, e.to_string()))).collect()
}

fn opt_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

impl ByteLevel {
    fn new(tokens: &[String], merges: &[String], pre: PreTokenizer) -> Result<Self> {
        let ids: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
        let b2u = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        for (b, c) in b2u.iter().enumerate() {
            byte_ids[b] = ids.get(c.to_string().as_str()).copied();
        }
        if byte_ids.iter().all(Option::is_none) {
            return Err(Error::Tokenizer {
                reason: "no byte-level tokens (`Ġ`, `!`, ...) in the vocabulary".to_owned(),
            });
        }
        let byte_of_char = b2u.iter().enumerate().map(|(b, c)| (*c, b as u8)).collect();
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| Error::Tokenizer {
                reason: format!("merge #{rank} `{m}` is not two tokens separated by a space"),
            })?;
            let (Some(&ia), Some(&ib), Some(&im)) = (ids.get(a), ids.get(b), ids.get(format!("{a}{b}").as_str()))
            else {
                return Err(Error::Tokenizer {
                    reason: format!("merge #{rank} `{m}` names tokens absent from the vocabulary"),
                });
            };
            // The first (lowest-rank) occurrence wins, as in the reference implementation.
            merge_map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        Ok(ByteLevel { merges: merge_map, byte_ids, byte_of_char, byte_chars: Box::new(b2u), pre })
    }
}

impl SentencePiece {
    fn new(tokens: &[String], types: &[i32], scores: Vec<f32>, add_space_prefix: bool) -> Self {
        let mut byte_tokens = [None; 256];
        let mut byte_of_token = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            let is_byte = types.get(i) == Some(&TOKEN_TYPE_BYTE);
            let hex = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'));
            if let (true, Some(b)) = (is_byte, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                byte_tokens[b as usize] = Some(i as u32);
                byte_of_token.insert(i as u32, b);
            }
        }
        SentencePiece { scores, byte_tokens, byte_of_token, add_space_prefix }
    }

    fn encode(&self, text: &str, at_start: bool, ids: &HashMap<String, u32>, unknown: Option<u32>, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let prefix = if self.add_space_prefix && at_start { " " } else { "" };
        let text = format!("{prefix}{text}").replace(' ', "\u{2581}");
        // Symbols are byte ranges of `text`, starting as single characters.
        let mut syms: Vec<(usize, usize)> = text.char_indices().map(|(i, c)| (i, i + c.len_utf8())).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let piece = &text[syms[i].0..syms[i + 1].1];
                if let Some(&id) = ids.get(piece) {
                    let score = self.scores[id as usize];
                    // Highest score first; the leftmost pair on ties.
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            syms[i].1 = syms[i + 1].1;
            syms.remove(i + 1);
        }
        for (a, b) in syms {
            match ids.get(&text[a..b]) {
                Some(&id) => out.push(id),
                None => {
                    for byte in text[a..b].bytes() {
                        if let Some(id) = self.byte_tokens[byte as usize].or(unknown) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

impl ByteLevel {
    fn encode(&self, text: &str, ids: &HashMap<String, u32>, unknown: Option<u32>, out: &mut Vec<u32>) {
        for word in self.pre.split(text) {
            if self.pre == PreTokenizer::Llama3 {
                let spelled: String = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
                if let Some(&id) = ids.get(&spelled) {
                    out.push(id);
                    continue;
                }
            }
            self.bpe(word, unknown, out);
        }
    }

    /// Merges the bytes of one pre-token, lowest-ranked pair first.
    fn bpe(&self, word: &str, unknown: Option<u32>, out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = word.bytes().filter_map(|b| self.byte_ids[b as usize].or(unknown)).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, merged)) = best else { break };
            syms[i] = merged;
            syms.remove(i + 1);
        }
        out.extend_from_slice(&syms);
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub(crate) fn from_gguf(md: &HashMap<String, Value>) -> Result<Self> {
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| Error::metadata("tokenizer.ggml.model", "absent"))?;
        if model != "gpt2" && model != "llama" {
            return Err(Error::UnsupportedTokenizer { model });
        }
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::metadata("tokenizer.ggml.token_type", e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
        let algorithm = if model == "llama" {
            let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                Some(v) => v
                    .to_vec()
                    .map_err(|e| Error::metadata("tokenizer.ggml.scores", e.to_string()))?
                    .iter()
                    .map(|s| s.to_f32().unwrap_or(0.0))
                    .collect(),
                None => return Err(Error::metadata("tokenizer.ggml.scores", "absent")),
            };
            if scores.len() != tokens.len() {
                return Err(Error::metadata(
                    "tokenizer.ggml.scores",
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            Algorithm::SentencePiece(SentencePiece::new(
                &tokens,
                &types,
                scores,
                flag("tokenizer.ggml.add_space_prefix").unwrap_or(true),
            ))
        } else {
            let merges = string_array(md, "tokenizer.ggml.merges")?;
            let name = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map_or("default", |p| p.as_str());
            let pre = PreTokenizer::from_name(name).ok_or_else(|| Error::UnsupportedPreTokenizer {
                name: name.to_owned(),
                supported: PreTokenizer::NAMES.join(", "),
            })?;
            Algorithm::ByteLevel(ByteLevel::new(&tokens, &merges, pre)?)
        };
        // llama.cpp's defaults: SentencePiece vocabularies start a prompt with BOS.
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        Self::new(
            tokens,
            algorithm,
            &types,
            opt_u32(md, "tokenizer.ggml.bos_token_id"),
            opt_u32(md, "tokenizer.ggml.eos_token_id"),
            ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
                .iter()
                .filter_map(|k| opt_u32(md, k))
                .collect(),
            opt_u32(md, "tokenizer.ggml.unknown_token_id"),
            add_bos,
        )
    }

    #[allow(clippy::too_many_arguments)] // each is one field of the file's tokenizer metadata
    fn new(
        tokens: Vec<String>,
        algorithm: Algorithm,
        types: &[i32],
        bos: Option<u32>,
        eos: Option<u32>,
        end_of_turn: Vec<u32>,
        unknown: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let n = tokens.len();
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut is_control = vec![false; n];
        let mut specials = Vec::new();
        for (i, t) in types.iter().enumerate().take(n) {
            if *t == TOKEN_TYPE_CONTROL || *t == TOKEN_TYPE_USER_DEFINED {
                let control = *t == TOKEN_TYPE_CONTROL;
                is_control[i] = control;
                if !tokens[i].is_empty() {
                    specials.push((tokens[i].clone(), i as u32, control));
                }
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut specials_by_byte: HashMap<u8, Vec<usize>> = HashMap::new();
        for (i, (text, _, _)) in specials.iter().enumerate() {
            specials_by_byte.entry(text.as_bytes()[0]).or_default().push(i);
        }
        let unknown = unknown.filter(|&u| (u as usize) < n);
        for id in [bos, eos].into_iter().flatten() {
            if id as usize >= n {
                return Err(Error::Tokenizer {
                    reason: format!("special token id {id} is outside the vocabulary of {n}"),
                });
            }
        }
        // Generation stops at the end-of-sequence token, the file's end-of-turn tokens, and
        // the end-of-turn markers of the chat formats llama.cpp also recognises by name
        // (its "end of generation" set), for files that do not name theirs.
        let mut stop_tokens: Vec<u32> = eos.into_iter().chain(end_of_turn).filter(|&t| (t as usize) < n).collect();
        for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>"] {
            if let Some(&id) = ids.get(t)
                && !stop_tokens.contains(&id)
            {
                stop_tokens.push(id);
            }
        }
        Ok(Tokenizer {
            tokens,
            ids,
            algorithm,
            specials,
            specials_by_byte,
            is_control,
            unknown,
            bos,
            eos,
            add_bos,
            stop_tokens,
        })
    }

    /// Whether prompts start with the BOS token (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Tokenizes a whole prompt as llama.cpp does: BOS first when the model asks for it,
    /// then `text` with special tokens parsed.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self.bos.filter(|_| self.add_bos).into_iter().collect();
        out.extend(self.encode(text, true));
        out
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model declares one.
    pub fn bos_token(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model declares one.
    pub fn eos_token(&self) -> Option<u32> {
        self.eos
    }

    /// Tokens at which generation stops (end of sequence, end of turn).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The id of a token's exact text (e.g. `"<|im_start|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// A token's text as stored in the vocabulary (bytes shown as their GPT-2 stand-ins).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Tokenizes `text`. With `parse_special`, special tokens written in the text (such as
    /// `<|im_start|>`) become their ids, as llama.cpp does for raw prompts; without it they
    /// are tokenized as ordinary text, which is what user content inside a template needs.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        self.encode_parts(&[(text, parse_special)])
    }

    /// Tokenizes consecutive pieces of one text, parsing special tokens only in the pieces
    /// marked `true`: a chat template's own markup is parsed, the user's words are not, and
    /// adjacent plain text is tokenized as one fragment, as if the text were whole.
    pub fn encode_parts(&self, parts: &[(&str, bool)]) -> Vec<u32> {
        enum Fragment {
            Text(String),
            Special(u32),
        }
        let push_text = |fragments: &mut Vec<Fragment>, t: &str| {
            if t.is_empty() {
                return;
            }
            match fragments.last_mut() {
                Some(Fragment::Text(prev)) => prev.push_str(t),
                _ => fragments.push(Fragment::Text(t.to_owned())),
            }
        };
        let mut fragments: Vec<Fragment> = Vec::new();
        for &(text, parse_special) in parts {
            let mut start = 0;
            let mut i = 0;
            while i < text.len() {
                let found = self.specials_by_byte.get(&text.as_bytes()[i]).and_then(|candidates| {
                    candidates.iter().map(|&c| &self.specials[c]).find(|(s, _, control)| {
                        (parse_special || !control) && text.as_bytes()[i..].starts_with(s.as_bytes())
                    })
                });
                match found {
                    Some((s, id, _)) => {
                        push_text(&mut fragments, &text[start..i]);
                        fragments.push(Fragment::Special(*id));
                        i += s.len();
                        start = i;
                    }
                    // Next character: tokens are whole strings, so they start on boundaries.
                    None => i += text[i..].chars().next().map_or(1, char::len_utf8),
                }
            }
            push_text(&mut fragments, &text[start..]);
        }
        let mut out = Vec::new();
        // SentencePiece adds its space prefix at the start and after each special token.
        let mut after_special = true;
        for fragment in fragments {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    match &self.algorithm {
                        Algorithm::ByteLevel(b) => b.encode(&text, &self.ids, self.unknown, &mut out),
                        Algorithm::SentencePiece(sp) => {
                            sp.encode(&text, after_special, &self.ids, self.unknown, &mut out)
                        }
                    }
                    after_special = false;
                }
            }
        }
        out
    }

    /// The bytes a token stands for; control tokens decode to nothing, user-defined ones to their text.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let text =
            self.tokens.get(id as usize).ok_or(Error::TokenOutOfRange { token: id, vocab_size: self.tokens.len() })?;
        if self.is_control[id as usize] {
            return Ok(Vec::new());
        }
        match &self.algorithm {
            Algorithm::ByteLevel(b) => {
                // Characters outside the byte map only occur in unusual vocabularies; keep
                // them as their UTF-8 so nothing is silently dropped.
                let mut bytes = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match b.byte_of_char.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                Ok(bytes)
            }
            Algorithm::SentencePiece(sp) => Ok(match sp.byte_of_token.get(&id) {
                Some(&b) => vec![b],
                None => text.replace('\u{2581}', " ").into_bytes(),
            }),
        }
    }

    /// Decodes tokens to text (invalid UTF-8 is replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder that turns a stream of tokens into text, holding back bytes of a character
    /// that is split across tokens.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, pending: Vec::new() }
    }
}

/// Incremental decoding for streaming output; see [`Tokenizer::stream_decoder`].
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds a token and returns the text that is now complete.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend(self.tokenizer.token_bytes(id)?);
        // Complete characters are emitted, and each sequence that can never become one as
        // U+FFFD (as `decode` replaces it, so that a stream and a whole decode agree); only
        // an incomplete character at the very end waits for the next token.
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return Ok(out);
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    let Some(invalid) = e.error_len() else {
                        self.pending.drain(..valid);
                        return Ok(out);
                    };
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + invalid);
                }
            }
        }
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Splits text as the GPT-2 regex does (see the module docs).
fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        let c = chars[i].1;
        // Contractions: 's 't 're 've 'm 'll 'd (case-sensitive, as in GPT-2).
        if c == '\'' {
            let rest = &text[start + 1..];
            let n = ["s", "t", "re", "ve", "m", "ll", "d"].iter().find(|s| rest.starts_with(*s)).map(|s| s.len());
            if let Some(n) = n {
                out.push(&text[start..start + 1 + n]);
                i += 1 + n; // all ASCII
                continue;
            }
        }
        let cls = class(c);
        if cls == Class::Space {
            let mut j = i;
            while j < chars.len() && class(chars[j].1) == Class::Space {
                j += 1;
            }
            if j == chars.len() {
                out.push(&text[start..]);
                i = j;
                continue;
            }
            // `\s+(?!\S)`: leave the last whitespace character to the next pre-token, where
            // a plain space joins the word (` ?\p{L}+`); any other whitespace stands alone.
            if j - i > 1 {
                out.push(&text[start..end_of(j - 1)]);
                i = j - 1;
                continue;
            }
            if c != ' ' {
                out.push(&text[start..end_of(i + 1)]);
                i += 1;
                continue;
            }
            // A single space: fall through and attach it to the following run.
            let next = class(chars[i + 1].1);
            let mut k = i + 1;
            while k < chars.len() && class(chars[k].1) == next {
                k += 1;
            }
            out.push(&text[start..end_of(k)]);
            i = k;
            continue;
        }
        // A run of one class; an apostrophe inside an "other" run is part of it (the regex
        // tries contractions only where a pre-token starts: "...'s" is "...'" and "s").
        let mut k = i + 1;
        while k < chars.len() && class(chars[k].1) == cls {
            k += 1;
        }
        out.push(&text[start..end_of(k)]);
        i = k;
    }
    out
}

/// Splits text as Llama 3's regex does (see [`PreTokenizer::Llama3`]), with digit runs of at
/// most `max_digits`: at each position the first alternative that matches, as a regex would.
fn pre_tokenize_llama3(text: &str, max_digits: usize) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let class_at = |k: usize| class(chars[k].1);
    let is_newline = |k: usize| matches!(chars[k].1, '\r' | '\n');
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let len = (|| {
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == '\'' {
                // The two characters after it, lowercased: never more (a prompt of
                // apostrophes must not cost a copy of the rest of the text at each one).
                let next: String = text[chars[i].0 + 1..].chars().take(2).collect::<String>().to_ascii_lowercase();
                if let Some(s) = ["s", "t", "re", "ve", "m", "ll", "d"].iter().find(|s| next.starts_with(*s)) {
                    return 1 + s.len();
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            let lead = usize::from(!is_newline(i) && !matches!(class_at(i), Class::Letter | Class::Number));
            let letters = (i + lead..n).take_while(|&k| class_at(k) == Class::Letter).count();
            if letters > 0 {
                return lead + letters;
            }
            // \p{N}{1,max_digits}
            if class_at(i) == Class::Number {
                return (i..n).take(max_digits).take_while(|&k| class_at(k) == Class::Number).count();
            }
            // ' '?[^\s\p{L}\p{N}]+[\r\n]*
            let space = usize::from(c == ' ');
            let other = (i + space..n).take_while(|&k| class_at(k) == Class::Other).count();
            if other > 0 {
                let end = i + space + other;
                return space + other + (end..n).take_while(|&k| is_newline(k)).count();
            }
            // Whitespace from here on.
            let run = (i..n).take_while(|&k| class_at(k) == Class::Space).count();
            // \s*[\r\n]+: through the last line break of the run.
            if let Some(last) = (i..i + run).rev().find(|&k| is_newline(k)) {
                return last + 1 - i;
            }
            // \s+(?!\S): all of a run that ends the text, else all but its last character;
            // then \s+ for a single one.
            if i + run == n || run == 1 { run } else { run - 1 }
        })();
        let end = chars.get(i + len).map_or(text.len(), |&(b, _)| b);
        out.push(&text[chars[i].0..end]);
        i += len;
    }
    out
}

/// Splits each piece with `split`, keeping the order.
fn split_by<'a>(pieces: &[&'a str], split: impl Fn(&'a str) -> Vec<&'a str>) -> Vec<&'a str> {
    pieces.iter().flat_map(|p| split(p)).collect()
}

/// Splits `text` into runs of characters `matches` takes (each at most `max` long) and the
/// text between them, as llama.cpp keeps both a regex's matches and what lies between.
fn runs(text: &str, matches: impl Fn(char) -> bool, max: Option<usize>) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut run) = (0, 0);
    let mut in_run = false;
    for (i, c) in text.char_indices() {
        let m = matches(c);
        if i > start && (m != in_run || (m && max.is_some_and(|max| run == max))) {
            out.push(&text[start..i]);
            start = i;
            run = 0;
        }
        in_run = m;
        run += usize::from(m);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// `[\p{P}$+<=>^~|]` of llama.cpp's default regex. Unicode punctuation (`\p{P}`) outside
/// ASCII is approximated by the blocks where it lives (Latin-1's, General Punctuation, CJK
/// and fullwidth forms): this crate carries no Unicode category tables.
fn is_punctuation_or_default_symbol(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation() && c != '`';
    }
    matches!(c,
        '\u{a1}' | '\u{a7}' | '\u{ab}' | '\u{b6}' | '\u{b7}' | '\u{bb}' | '\u{bf}'
        | '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{2043}' | '\u{2045}'..='\u{2051}' | '\u{2053}'..='\u{205e}'
        | '\u{3001}'..='\u{3003}' | '\u{3008}'..='\u{3011}' | '\u{3014}'..='\u{301f}'
        | '\u{ff01}'..='\u{ff03}' | '\u{ff05}'..='\u{ff0a}' | '\u{ff0c}'..='\u{ff0f}' | '\u{ff1a}' | '\u{ff1b}'
        | '\u{ff1f}' | '\u{ff20}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizer_follows_the_gpt2_regex() {
        assert_eq!(pre_tokenize("Hello world"), ["Hello", " world"]);
        assert_eq!(pre_tokenize("I'm  here!\n\nOk"), ["I", "'m", " ", " here", "!", "\n", "\n", "Ok"]);
        assert_eq!(pre_tokenize("a  b"), ["a", " ", " b"]);
        assert_eq!(pre_tokenize("x \n"), ["x", " \n"]);
        assert_eq!(pre_tokenize("(1+2) ..."), ["(", "1", "+", "2", ")", " ..."]);
        assert_eq!(pre_tokenize("don't"), ["don", "'t"]);
        assert_eq!(pre_tokenize("...'s"), ["...'", "s"]);
    }

    /// What the shared reference cannot show with SmolLM2's vocabulary, which has no token of
    /// two digits: how each splits digits (the rest is compared with llama.cpp's ids).
    #[test]
    fn pre_tokenizers_split_digits_as_their_regexes_do() {
        let split = |p: PreTokenizer| p.split("x 12345 6");
        assert_eq!(split(PreTokenizer::Llama3), ["x", " ", "123", "45", " ", "6"]);
        assert_eq!(split(PreTokenizer::Qwen2), ["x", " ", "1", "2", "3", "4", "5", " ", "6"]);
        assert_eq!(split(PreTokenizer::Gpt2), ["x", " 12345", " 6"]);
        assert_eq!(split(PreTokenizer::SmolLm), ["x", " ", "1", "2", "3", "4", "5", " ", "6"]);
        assert_eq!(split(PreTokenizer::Default), ["x", " ", "123", "45", " ", "6"]);
        assert_eq!(PreTokenizer::Llama3.split("IT'S a\n\n  b"), ["IT", "'S", " a", "\n\n", " ", " b"]);
    }
}
