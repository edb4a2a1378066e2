//! Chat templates: wrapping a conversation the way an instruct model was trained to see it.
//!
//! GGUF files carry their template as Jinja source (`tokenizer.chat_template`). It is
//! rendered with minijinja under the Hugging Face conventions (`messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`; blocks trimmed and
//! left-stripped, as `transformers` does). Three shapes are recognised and rendered by code
//! instead, each for a reason given at its variant. A model without a template gets
//! [`ChatTemplate::Plain`].
//!
//! In every case the template's own markup is tokenized with special tokens parsed and the
//! messages' text without: a message containing `<|im_start|>` or `<|eot_id|>` cannot
//! forge a turn. (Jinja renders messages as placeholders, which are then replaced; a filter
//! the template applies to a message, such as `trim`, therefore sees the placeholder, and
//! the message is inserted as sent.)

use minijinja::{Environment, ErrorKind, Value, context};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTurn<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// What it says.
    pub content: &'a str,
}

/// A chat format, and how this crate renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen, many others).
    ///
    /// Rendered without a system turn, as llama.cpp's built-in ChatML does, even where the
    /// Jinja source adds a default system message (SmolLM2's does): with it, SmolLM2-135M
    /// Q4_1 answers "What is the capital of France?" with unrelated French phrases, without
    /// it "The capital of France is Paris."
    ChatMl,
    /// `<|user|>\n...</s>\n<|assistant|>\n` (Zephyr, TinyLlama-Chat), as llama.cpp's
    /// built-in Zephyr template renders it.
    Zephyr,
    /// `<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n` (Gemma), as Gemma 3's
    /// own template renders it: a leading system message is put before the first message's
    /// text, messages are trimmed, `assistant` is called `model`. Unlike that template it
    /// does not refuse turns that fail to alternate. Used when a Gemma file carries no
    /// template (the Gemma 3 270M Q4_K_M this project fetches has none) and for Gemma's own
    /// Jinja source, whose `| trim` the placeholders would defeat.
    Gemma,
    /// The file's own Jinja template (Llama 3, Mistral and everything else).
    Jinja(String),
    /// No template in the file: each message on a line of its own as `role: content`,
    /// then `assistant:`. A base model continues that as text; nothing in it is special.
    Plain,
}

/// Brackets a message's index in the rendered text: private-use characters, which no
/// template writes.
const OPEN: char = '\u{F0000}';
const CLOSE: char = '\u{F0001}';

impl ChatTemplate {
    /// The template for a file's Jinja source (or its absence): Gemma when the tokenizer has
    /// Gemma's turn tokens (with or without a template), ChatML and Zephyr when the source is
    /// theirs, the Jinja source otherwise, and plain lines without one.
    pub(crate) fn detect(jinja: Option<&str>, tokenizer: &Tokenizer) -> Self {
        let gemma = tokenizer.token_id("<start_of_turn>").is_some() && tokenizer.token_id("<end_of_turn>").is_some();
        let Some(jinja) = jinja else { return if gemma { ChatTemplate::Gemma } else { ChatTemplate::Plain } };
        if gemma && jinja.contains("<start_of_turn>") {
            return ChatTemplate::Gemma;
        }
        if jinja.contains("<|im_start|>")
            && tokenizer.token_id("<|im_start|>").is_some()
            && tokenizer.token_id("<|im_end|>").is_some()
        {
            return ChatTemplate::ChatMl;
        }
        if jinja.contains("<|user|>") && jinja.contains("<|assistant|>") {
            return ChatTemplate::Zephyr;
        }
        ChatTemplate::Jinja(jinja.to_owned())
    }

    /// A name for logs: which format a model's chats are rendered in.
    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => "ChatML (built in)",
            ChatTemplate::Zephyr => "Zephyr (built in)",
            ChatTemplate::Gemma => "Gemma (built in)",
            ChatTemplate::Jinja(_) => "the file's Jinja template",
            ChatTemplate::Plain => "plain `role: content` lines (the file has no template)",
        }
    }

    /// Tokens of a user message followed by the start of the assistant's turn.
    pub fn encode_user_turn(&self, tokenizer: &Tokenizer, user: &str) -> Result<Vec<u32>> {
        self.encode(tokenizer, &[ChatTurn { role: "user", content: user }])
    }

    /// Tokens of a conversation followed by the start of the assistant's turn.
    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[ChatTurn<'_>]) -> Result<Vec<u32>> {
        let parts = self.render(tokenizer, messages)?;
        let bos = tokenizer.bos_token().filter(|_| tokenizer.add_bos());
        // A template that writes the BOS token itself (Llama 3, Gemma) gets no second one.
        let written = bos.and_then(|b| tokenizer.token_text(b)).is_some_and(|text| {
            parts.iter().find(|(p, _)| !p.is_empty()).is_some_and(|(p, special)| *special && p.starts_with(text))
        });
        let mut out: Vec<u32> = bos.filter(|_| !written).into_iter().collect();
        let borrowed: Vec<(&str, bool)> = parts.iter().map(|(s, b)| (s.as_str(), *b)).collect();
        out.extend(tokenizer.encode_parts(&borrowed));
        Ok(out)
    }

    /// The conversation as text pieces, each marked whether special tokens are parsed in it
    /// (the template's markup) or not (the messages).
    pub fn render(&self, tokenizer: &Tokenizer, messages: &[ChatTurn<'_>]) -> Result<Vec<(String, bool)>> {
        let mut parts: Vec<(String, bool)> = Vec::new();
        match self {
            ChatTemplate::ChatMl => {
                markup_turns(&mut parts, messages, |role| format!("<|im_start|>{role}\n"), "<|im_end|>\n");
                parts.push(("<|im_start|>assistant\n".into(), true));
            }
            ChatTemplate::Zephyr => {
                markup_turns(&mut parts, messages, |role| format!("<|{role}|>\n"), "</s>\n");
                parts.push(("<|assistant|>\n".into(), true));
            }
            ChatTemplate::Gemma => {
                // A leading system message goes before the first turn's text, as it is.
                let (prefix, rest) = match messages {
                    [first, rest @ ..] if first.role == "system" => (format!("{}\n\n", first.content), rest),
                    _ => (String::new(), messages),
                };
                for (i, m) in rest.iter().enumerate() {
                    let role = if m.role == "assistant" { "model" } else { m.role };
                    parts.push((format!("<start_of_turn>{role}\n"), true));
                    if i == 0 {
                        parts.push((prefix.clone(), false));
                    }
                    parts.push((m.content.trim().to_owned(), false));
                    parts.push(("<end_of_turn>\n".into(), true));
                }
                parts.push(("<start_of_turn>model\n".into(), true));
            }
            ChatTemplate::Plain => {
                for m in messages {
                    parts.push((format!("{}: {}\n", m.role, m.content), false));
                }
                parts.push(("assistant:".into(), false));
            }
            ChatTemplate::Jinja(source) => {
                let rendered = render_jinja(source, tokenizer, messages)?;
                split_placeholders(&rendered, messages, &mut parts)?;
            }
        }
        Ok(parts)
    }
}

/// Each message between its opening markup (which names the role) and its closing markup.
fn markup_turns(
    parts: &mut Vec<(String, bool)>,
    messages: &[ChatTurn<'_>],
    open: impl Fn(&str) -> String,
    close: &str,
) {
    for m in messages {
        parts.push((open(m.role), true));
        parts.push((m.content.to_owned(), false));
        parts.push((close.to_owned(), true));
    }
}

fn template_error(e: minijinja::Error) -> Error {
    // The template's own message (raise_exception's) is the detail; the kind says the rest.
    let reason = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.to_string(),
    };
    Error::ChatTemplate { reason }
}

/// Renders the Jinja source with each message's content as a bracketed index.
fn render_jinja(source: &str, tokenizer: &Tokenizer, messages: &[ChatTurn<'_>]) -> Result<String> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?,
    );
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    let template = env.template_from_str(source).map_err(template_error)?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default().to_owned();
    let messages: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| context! { role => m.role, content => format!("{OPEN}{i}{CLOSE}") })
        .collect();
    template
        .render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => token(tokenizer.bos_token()),
            eos_token => token(tokenizer.eos_token()),
        })
        .map_err(template_error)
}

/// Splits rendered text at the bracketed indices: markup between them, messages in them.
fn split_placeholders(rendered: &str, messages: &[ChatTurn<'_>], parts: &mut Vec<(String, bool)>) -> Result<()> {
    let mut rest = rendered;
    while let Some(open) = rest.find(OPEN) {
        parts.push((rest[..open].to_owned(), true));
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after.find(CLOSE).ok_or_else(|| Error::ChatTemplate {
            reason: "the template cut a message apart (a slice or filter on its content)".into(),
        })?;
        let index: usize = after[..close].parse().map_err(|_| Error::ChatTemplate {
            reason: "the template changed a message's content beyond recognition".into(),
        })?;
        let message = messages.get(index).ok_or_else(|| Error::ChatTemplate {
            reason: format!("the template refers to message {index} of {}", messages.len()),
        })?;
        parts.push((message.content.to_owned(), false));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    parts.push((rest.to_owned(), true));
    Ok(())
}
