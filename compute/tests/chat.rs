//! Chat templates against Jinja2's rendering (the reference data is made by
//! `scripts/chat-template-reference`, which renders as Hugging Face transformers does).

use attrinet_compute::testing::{LLAMA3_TEMPLATE, TinyLlamaSpec, TinyTokenizer};
use attrinet_compute::{ChatTemplate, ChatTurn, Error, Tokenizer};

use crate::util::{gemma3, smollm2, tiny};

struct Case {
    name: String,
    template: String,
    messages: Vec<(String, String)>,
    rendered: String,
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/chat_templates.json");
    let data: serde_json::Value = serde_json::from_str(text).expect("reference data parses");
    let s = |v: &serde_json::Value| v.as_str().expect("a string").to_owned();
    data["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: s(&c["name"]),
            template: s(&c["template"]),
            messages: c["messages"].as_array().unwrap().iter().map(|m| (s(&m["role"]), s(&m["content"]))).collect(),
            rendered: s(&c["rendered"]),
        })
        .collect()
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no reference case {name}"))
}

fn turns(case: &Case) -> Vec<ChatTurn<'_>> {
    case.messages.iter().map(|(role, content)| ChatTurn { role, content }).collect()
}

fn text(template: &ChatTemplate, tokenizer: &Tokenizer, messages: &[ChatTurn<'_>]) -> String {
    template.render(tokenizer, messages).unwrap().into_iter().map(|(part, _)| part).collect()
}

fn llama3() -> crate::util::TinyModel {
    tiny(&TinyLlamaSpec { tokenizer: TinyTokenizer::Llama3, ..TinyLlamaSpec::default() })
}

#[test]
fn jinja_renders_each_reference_conversation_as_jinja2_does() {
    let smollm2 = smollm2();
    let llama3 = llama3();
    // "gemma3 padded" is left out: its messages have whitespace that Gemma's `| trim` removes,
    // which the placeholders hide from the template (ChatTemplate::Gemma renders it instead).
    let gemma3 = gemma3();
    for case in cases().into_iter().filter(|c| c.name != "gemma3 padded") {
        let tokenizer = match &case.name {
            n if n.starts_with("llama3") => llama3.model.tokenizer(),
            n if n.starts_with("gemma3") => gemma3.tokenizer(),
            _ => smollm2.tokenizer(),
        };
        let template = ChatTemplate::Jinja(case.template.clone());
        assert_eq!(text(&template, tokenizer, &turns(&case)), case.rendered, "{}", case.name);
    }
}

#[test]
fn a_llama3_file_chats_in_its_own_template_with_one_bos_and_no_forged_turn() {
    let t = llama3();
    let case = case("llama3 conversation");
    // The reference was rendered from the template the tiny file carries.
    assert_eq!(case.template, LLAMA3_TEMPLATE);
    assert_eq!(t.model.chat_template(), &ChatTemplate::Jinja(LLAMA3_TEMPLATE.to_owned()));
    let tok = t.model.tokenizer();
    let ids = t.model.chat_tokens(&turns(&case)).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    // The template writes the BOS token; the tokenizer's own add_bos adds no second one.
    assert_eq!(ids[0], id("<|begin_of_text|>"));
    assert_eq!(ids.iter().filter(|&&i| i == id("<|begin_of_text|>")).count(), 1);
    // One <|eot_id|> per message: the one written inside the last user message is text.
    assert_eq!(ids.iter().filter(|&&i| i == id("<|eot_id|>")).count(), case.messages.len());
    // Decoding drops special tokens, so the forged one survives only because it is text.
    assert!(tok.decode(&ids).unwrap().contains("with <|eot_id|> in it?"));
}

#[test]
fn smollm2_uses_built_in_chatml_which_equals_its_template_once_a_system_turn_leads() {
    let model = smollm2();
    assert_eq!(model.chat_template(), &ChatTemplate::ChatMl);
    let conversation = case("smollm2 conversation");
    assert_eq!(text(model.chat_template(), model.tokenizer(), &turns(&conversation)), conversation.rendered);
    // Without a system turn the file's template adds a default one, which the built-in
    // rendering leaves out (see ChatTemplate::ChatMl for why).
    let question = case("smollm2 question");
    assert!(!text(model.chat_template(), model.tokenizer(), &turns(&question)).contains("SmolLM"));
}

#[test]
fn a_template_that_raises_or_does_not_compile_is_a_typed_error() {
    let model = smollm2();
    let user = [ChatTurn { role: "user", content: "hi" }];
    let raising = ChatTemplate::Jinja("{{ raise_exception('Conversation roles must alternate') }}".into());
    let err = raising.encode(model.tokenizer(), &user).unwrap_err();
    assert!(
        matches!(&err, Error::ChatTemplate { reason } if reason.contains("Conversation roles must alternate")),
        "{err}"
    );
    let broken = ChatTemplate::Jinja("{% for m in messages %}{{ m.content }}".into());
    assert!(matches!(broken.encode(model.tokenizer(), &user), Err(Error::ChatTemplate { .. })));
}

#[test]
fn gemma3_chats_in_the_built_in_gemma_format_which_equals_its_template() {
    let model = gemma3();
    assert_eq!(model.chat_template(), &ChatTemplate::Gemma, "the file has no template; its tokens are Gemma's");
    for name in ["gemma3 conversation", "gemma3 padded"] {
        let case = case(name);
        // The built-in leaves the BOS to the tokenizer (counted below).
        let want = case.rendered.strip_prefix("<bos>").unwrap();
        assert_eq!(text(model.chat_template(), model.tokenizer(), &turns(&case)), want, "{name}");
    }
    // One BOS (the reference's `<bos>` is the tokenizer's), and the message's
    // `<end_of_turn>` is text, not the end of its turn.
    let case = case("gemma3 conversation");
    let ids = model.chat_tokens(&turns(&case)).unwrap();
    let t = model.tokenizer();
    let bos = t.bos_token().unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 1);
    let end = t.token_id("<end_of_turn>").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == end).count(), 3, "three turns end; the fourth message's marker is text");
    // The model ends its turn with <end_of_turn>, which the file does not name as its eot.
    assert!(t.stop_tokens().contains(&end) && t.stop_tokens().contains(&t.eos_token().unwrap()));
}
