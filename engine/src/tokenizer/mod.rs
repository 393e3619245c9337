//! Tokenizers and chat templates: what turns a conversation into the exact token ids
//! transformers' `apply_chat_template` produces.
//!
//! A `ChatTokenizer` comes from an HF folder (`tokenizer.json` + `tokenizer_config.json`) or from
//! a GGUF file's own vocabulary, merges and chat template (rebuilt exactly as transformers
//! rebuilds it). Templates are rendered with minijinja under jinja2's settings
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), so the default
//! system prompt a template inserts when there is none (condition E0) comes out as in Python.
//!
//! For label masks: `encode` returns byte offsets per token; `tokens_overlapping(enc, range)`
//! gives the tokens that touch a byte range of the text, e.g. the marker "\n\n[ZLT]" located by
//! `text.rfind(marker)`, whatever way the tokenizer split or merged it.

mod gguf_bpe;
mod template;

pub use template::ChatTemplate;

use crate::gguf::GgufFile;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: tokenizer model {found:?} is not supported: expected \"gpt2\" (byte-level BPE) in a GGUF, or a tokenizer.json")]
    UnsupportedModel { path: PathBuf, found: String },
    #[error("chat template of {origin}: {message}")]
    Template { origin: String, message: String },
    #[error("tokenizer of {origin}: {message}")]
    Tokenize { origin: String, message: String },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Token ids with the byte span of each token in the encoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub offsets: Vec<(usize, usize)>,
}

pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    origin: String,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTokenizer({})", self.origin)
    }
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl ChatTokenizer {
    /// From a model path: an HF folder or a `.gguf` file.
    pub fn load(model_path: &Path) -> Result<ChatTokenizer, TokenizerError> {
        if model_path.is_dir() {
            ChatTokenizer::from_hf_dir(model_path)
        } else {
            let g = GgufFile::open(model_path).map_err(|e| TokenizerError::Invalid {
                path: model_path.to_path_buf(),
                message: e.to_string(),
            })?;
            ChatTokenizer::from_gguf(&g)
        }
    }

    pub fn from_hf_dir(dir: &Path) -> Result<ChatTokenizer, TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(TokenizerError::Invalid {
                path: tok_path,
                message: "missing: expected a tokenizer.json next to config.json".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| TokenizerError::Invalid {
            path: tok_path.clone(),
            message: format!("not a valid tokenizers file: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: cfg_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        // The template lives in tokenizer_config.json, or (newer exports) in chat_template.jinja.
        let template_text = match &cfg["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let origin = dir.display().to_string();
        let template = template_text
            .map(|t| ChatTemplate::new(&t, &origin))
            .transpose()?;
        Ok(ChatTokenizer {
            tokenizer,
            template,
            bos_token: token_string(&cfg["bos_token"]),
            eos_token: token_string(&cfg["eos_token"]),
            pad_token: token_string(&cfg["pad_token"]),
            origin,
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes, as transformers does.
    pub fn from_gguf(g: &GgufFile) -> Result<ChatTokenizer, TokenizerError> {
        let path = g.path().to_path_buf();
        let model = g
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| TokenizerError::Invalid {
                path: path.clone(),
                message: "no tokenizer metadata: expected key \"tokenizer.ggml.model\"".into(),
            })?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                path,
                found: model.to_string(),
            });
        }
        let tokens = g
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| TokenizerError::Invalid {
                path: path.clone(),
                message: "expected a string array \"tokenizer.ggml.tokens\"".into(),
            })?;
        let tokenizer = gguf_bpe::build(g, &tokens)?;
        let token_at = |key: &str| {
            g.get_u64(key)
                .and_then(|i| tokens.get(i as usize))
                .map(|s| s.to_string())
        };
        let origin = path.display().to_string();
        let template = g
            .get_str("tokenizer.chat_template")
            .map(|t| ChatTemplate::new(t, &origin))
            .transpose()?;
        Ok(ChatTokenizer {
            tokenizer,
            template,
            bos_token: token_at("tokenizer.ggml.bos_token_id"),
            eos_token: token_at("tokenizer.ggml.eos_token_id"),
            pad_token: token_at("tokenizer.ggml.padding_token_id"),
            origin,
        })
    }

    /// The conversation as text, exactly as `apply_chat_template(tokenize=False)` renders it.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.template.as_ref().ok_or_else(|| TokenizerError::Template {
            origin: self.origin.clone(),
            message: "the model has no chat template".into(),
        })?;
        template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// Ids and byte offsets of `text`; no special tokens are added (as apply_chat_template).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Tokenize {
                origin: self.origin.clone(),
                message: e.to_string(),
            })?;
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Encoded, TokenizerError> {
        self.encode(&self.render(messages, add_generation_prompt)?)
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Tokenize {
                origin: self.origin.clone(),
                message: e.to_string(),
            })
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(|i| i as i64)
    }

    pub fn eos_token_id(&self) -> Option<i64> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// Ids that end a generated turn: EOS and the template's end-of-turn token.
    pub fn stop_token_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.eos_token_id().into_iter().collect();
        for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(id) = self.token_id(t) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// The end-of-turn token id (the last token of every assistant turn in ChatML templates).
    pub fn end_of_turn_id(&self) -> Option<i64> {
        self.token_id("<|im_end|>")
            .or_else(|| self.token_id("<|eot_id|>"))
            .or_else(|| self.eos_token_id())
    }

    pub fn pad_token_id(&self) -> i64 {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.eos_token_id())
            .unwrap_or(0)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Indices of the tokens whose byte span overlaps `range` (a marker located by its
    /// character position, however the tokenizer split or merged it).
    pub fn tokens_overlapping(&self, enc: &Encoded, range: Range<usize>) -> Vec<usize> {
        enc.offsets
            .iter()
            .enumerate()
            .filter(|(_, &(s, e))| s < range.end && e > range.start && e > s)
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Option<ChatTokenizer> {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        p.exists().then(|| ChatTokenizer::load(&p).unwrap())
    }

    #[test]
    fn smollm2_renders_its_default_system_prompt_and_encodes_like_transformers() {
        let t = demo().expect("the demo model (make setup)");
        let msgs = [ChatMessage::new("user", "Hi there")];
        let text = t.render(&msgs, true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        // transformers 5.24, AutoTokenizer.from_pretrained(dir, gguf_file=...).apply_chat_template
        let want = [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
            19712, 8182, 2, 198, 1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198,
        ];
        assert_eq!(t.encode_chat(&msgs, true).unwrap().ids, want);
        assert_eq!(t.stop_token_ids(), vec![2, 0]);
        let sys = [
            ChatMessage::new("system", "SYS"),
            ChatMessage::new("user", "Hi there"),
        ];
        assert_eq!(
            t.render(&sys, false).unwrap(),
            "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        );
    }

    #[test]
    fn the_marker_is_found_by_offsets_however_it_is_split() {
        let t = demo().expect("the demo model (make setup)");
        for text in [
            "Sure, here it is.\n\n[ZLT]",
            "Done!\n\n[ZLT]<|im_end|>",
            "x\n\n[ZLT]",
        ] {
            let enc = t.encode(text).unwrap();
            let start = text.rfind("\n\n[ZLT]").unwrap();
            let idx = t.tokens_overlapping(&enc, start..start + "\n\n[ZLT]".len());
            assert!(idx.len() >= 2, "{text:?}: {idx:?}");
            let covered: String = idx
                .iter()
                .map(|&i| &text[enc.offsets[i].0..enc.offsets[i].1])
                .collect();
            assert!(covered.contains("[ZLT]"), "{text:?} -> {covered:?}");
            // Contiguous run of tokens.
            assert!(idx.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }
}
