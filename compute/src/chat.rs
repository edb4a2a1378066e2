//! Chat templates: wrapping a user message the way an instruct model was trained to see it.
//!
//! GGUF files carry their template as Jinja source (`tokenizer.chat_template`). Running Jinja
//! would need a template engine for two or three fixed shapes, so the template is instead
//! recognised by its markers and rendered by code; the special tokens are emitted as ids
//! and the user's text is tokenized without special-token parsing, so a message containing
//! `<|im_start|>` cannot forge a turn.

use crate::tokenizer::Tokenizer;

/// A chat format this crate knows how to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen, many others).
    ///
    /// Rendered without a system turn, as llama.cpp's built-in ChatML does, even where the
    /// Jinja source adds a default system message (SmolLM2's does): with it, SmolLM2-135M
    /// Q4_1 answers "What is the capital of France?" with unrelated French phrases, without
    /// it "The capital of France is Paris."
    ChatMl,
    /// `<|user|>\n...</s>\n<|assistant|>\n` (Zephyr, TinyLlama-Chat).
    Zephyr,
}

impl ChatTemplate {
    /// Recognises a Jinja chat template, if the tokenizer has the special tokens it needs.
    pub(crate) fn detect(jinja: &str, tokenizer: &Tokenizer) -> Option<Self> {
        if jinja.contains("<|im_start|>")
            && tokenizer.token_id("<|im_start|>").is_some()
            && tokenizer.token_id("<|im_end|>").is_some()
        {
            return Some(ChatTemplate::ChatMl);
        }
        if jinja.contains("<|user|>") && jinja.contains("<|assistant|>") {
            return Some(ChatTemplate::Zephyr);
        }
        None
    }

    /// Tokens for one user turn followed by the start of the assistant's turn.
    pub fn encode_user_turn(&self, tokenizer: &Tokenizer, user: &str) -> Vec<u32> {
        let mut out: Vec<u32> = tokenizer.bos_token().filter(|_| tokenizer.add_bos()).into_iter().collect();
        let parts: [(&str, bool); 3] = match self {
            ChatTemplate::ChatMl => {
                [("<|im_start|>user\n", true), (user, false), ("<|im_end|>\n<|im_start|>assistant\n", true)]
            }
            ChatTemplate::Zephyr => [("<|user|>\n", true), (user, false), ("</s>\n<|assistant|>\n", true)],
        };
        out.extend(tokenizer.encode_parts(&parts));
        out
    }
}
