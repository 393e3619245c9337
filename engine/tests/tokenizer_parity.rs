//! Tokenizer and chat-template parity with transformers: for the tiny Qwen2 HF folder and for
//! SmolLM2 rebuilt from the demo GGUF, every conversation of `fixtures/tokenizer_parity.json`
//! (made by `scripts/fixtures/make_tokenizer_fixtures.py`) must render to the same text, encode
//! to the same ids and decode to the same strings, and plain texts must get the same ids, byte
//! offsets and marker tokens.

use pspace_engine::tokenizer::{ChatMessage, ChatTemplate, ChatTokenizer, SpecialTokens};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Fixture {
    generator: String,
    marker: String,
    tiny_qwen2: Expected,
    smollm2_gguf: Expected,
    template_special_tokens: std::collections::BTreeMap<String, String>,
    templates: Vec<TemplateCase>,
}

/// A template rendered by transformers with SmolLM2's special tokens: its text, or the message
/// of the exception it raised.
#[derive(Deserialize)]
struct TemplateCase {
    template: String,
    source: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Expected {
    vocab_size: usize,
    eos_token_id: Option<i64>,
    pad_token_id: Option<i64>,
    rendered: Vec<Rendered>,
    texts: Vec<PlainText>,
}

#[derive(Deserialize)]
struct Rendered {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<i64>,
    decoded: String,
    decoded_skip_special: String,
}

#[derive(Deserialize)]
struct PlainText {
    text: String,
    ids: Vec<i64>,
    offsets: Vec<(usize, usize)>,
    marker_tokens: Vec<usize>,
    decoded: String,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Fixture {
    let path = manifest_dir().join("tests/fixtures/tokenizer_parity.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(tok: &ChatTokenizer, expected: &Expected, marker: &str, generator: &str) {
    assert_eq!(tok.vocab_size(), expected.vocab_size, "vocab size ({generator})");
    assert_eq!(tok.eos_token_id(), expected.eos_token_id, "eos id");
    assert_eq!(Some(tok.pad_token_id()), expected.pad_token_id, "pad id");
    let mut mismatches = Vec::new();
    for case in &expected.rendered {
        let label = format!(
            "{} (add_generation_prompt={})",
            case.name, case.add_generation_prompt
        );
        let text = tok.render(&case.messages, case.add_generation_prompt).unwrap();
        if text != case.text {
            mismatches.push(format!("{label}: text\n  ours {text:?}\n  HF   {:?}", case.text));
            continue;
        }
        let enc = tok
            .encode_chat(&case.messages, case.add_generation_prompt)
            .unwrap();
        if enc.ids != case.ids {
            mismatches.push(format!(
                "{label}: ids\n  ours {:?}\n  HF   {:?}",
                enc.ids, case.ids
            ));
        }
        assert_eq!(enc.ids.len(), enc.offsets.len());
        let decoded = tok.decode(&case.ids, false).unwrap();
        if decoded != case.decoded {
            mismatches.push(format!(
                "{label}: decode\n  ours {decoded:?}\n  HF   {:?}",
                case.decoded
            ));
        }
        let skipped = tok.decode(&case.ids, true).unwrap();
        if skipped != case.decoded_skip_special {
            mismatches.push(format!(
                "{label}: decode(skip_special_tokens)\n  ours {skipped:?}\n  HF   {:?}",
                case.decoded_skip_special
            ));
        }
    }
    for case in &expected.texts {
        let enc = tok.encode(&case.text).unwrap();
        if enc.ids != case.ids || enc.offsets != case.offsets {
            mismatches.push(format!(
                "{:?}: ids/offsets\n  ours {:?} {:?}\n  HF   {:?} {:?}",
                case.text, enc.ids, enc.offsets, case.ids, case.offsets
            ));
        }
        if let Some(start) = case.text.find(marker) {
            let got = tok.tokens_overlapping(&enc, start..start + marker.len());
            if got != case.marker_tokens {
                mismatches.push(format!(
                    "{:?}: marker tokens {got:?}, HF {:?}",
                    case.text, case.marker_tokens
                ));
            }
        }
        let decoded = tok.decode(&case.ids, false).unwrap();
        if decoded != case.decoded {
            mismatches.push(format!(
                "{:?}: decode {decoded:?}, HF {:?}",
                case.text, case.decoded
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches against {generator}:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn tiny_qwen2_matches_transformers() {
    let f = fixture();
    assert!(f.tiny_qwen2.rendered.len() >= 80);
    let tok = ChatTokenizer::load(&manifest_dir().join("tests/fixtures/tiny-qwen2")).unwrap();
    check(&tok, &f.tiny_qwen2, &f.marker, &f.generator);
}

#[test]
fn smollm2_from_the_demo_gguf_matches_transformers() {
    let f = fixture();
    let gguf = manifest_dir().join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        Path::new(&gguf).exists(),
        "{} is missing: run `make setup`",
        gguf.display()
    );
    let tok = ChatTokenizer::load(&gguf).unwrap();
    check(&tok, &f.smollm2_gguf, &f.marker, &f.generator);
}

#[test]
fn qwen25_inserts_its_default_system_prompt_only_without_a_system_message() {
    let tok = ChatTokenizer::load(&manifest_dir().join("tests/fixtures/tiny-qwen2")).unwrap();
    let user = ChatMessage {
        role: "user".into(),
        content: "Hi".into(),
    };
    let default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";
    assert_eq!(
        tok.render(std::slice::from_ref(&user), true).unwrap(),
        format!("{default}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    );
    let system = ChatMessage {
        role: "system".into(),
        content: "You are a kindergarten teacher.".into(),
    };
    let text = tok.render(&[system, user], false).unwrap();
    assert!(!text.contains("Qwen"), "{text}");
    // generation_config.json declares eos_token_id 2 (<|im_end|>, also the template's end of
    // turn): transformers' generate stops on that id only.
    assert_eq!(tok.stop_token_ids(), vec![2]);
}

#[test]
fn templates_render_as_jinja2_renders_them_in_transformers() {
    let f = fixture();
    let token = |name: &str| f.template_special_tokens.get(name).cloned();
    let special = SpecialTokens {
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
        unk_token: token("unk_token"),
        pad_token: token("pad_token"),
    };
    assert!(f.templates.len() >= 40);
    let mut mismatches = Vec::new();
    for case in &f.templates {
        let label = format!(
            "{} {} messages (add_generation_prompt={})",
            case.template,
            case.messages.len(),
            case.add_generation_prompt
        );
        let ours = ChatTemplate::new(&case.source, &case.template)
            .and_then(|t| t.render(&case.messages, case.add_generation_prompt, &special));
        match (&ours, &case.text, &case.error) {
            (Ok(text), Some(want), _) if text == want => {}
            (Err(e), None, Some(want)) if e.to_string().contains(want.as_str()) => {}
            _ => mismatches.push(format!(
                "{label}\n  ours {ours:?}\n  HF   {:?}",
                case.text.as_ref().ok_or(&case.error)
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
