//! Tokenizers and chat templates: what turns a conversation into the exact token ids
//! transformers' `apply_chat_template` produces.
//!
//! A `ChatTokenizer` comes from an HF folder (`tokenizer.json` + `tokenizer_config.json`, or
//! `chat_template.jinja`) or from a GGUF file's own vocabulary, merges, token types and chat
//! template, rebuilt as transformers rebuilds it (`gguf_bpe`). Templates are rendered with
//! minijinja under jinja2's settings (`template`), so the default system prompt a template
//! inserts when there is none (condition E0) comes out as in Python. `tests/tokenizer_parity.rs`
//! holds both tokenizers to transformers' rendered text, ids, offsets and decodes.
//!
//! # Label masks (for training)
//! `encode` / `encode_chat` return, per token, its byte span in the encoded text
//! (`Encoded::offsets`, byte offsets into the `&str` you passed, also across the NFC normaliser).
//! To find the tokens of a marker such as `"\n\n[ZLT]"` in a rendered conversation:
//! ```ignore
//! let text = tok.render(&messages, false)?;
//! let enc = tok.encode(&text)?;
//! let start = text.rfind("\n\n[ZLT]").expect("marker");
//! let marker_tokens = tok.tokens_overlapping(&enc, start..start + "\n\n[ZLT]".len());
//! ```
//! Every token whose span intersects the range is returned, so a marker split over several
//! tokens or merged with its neighbours (".\n\n" is one token in some vocabularies) is covered;
//! the first and last returned tokens may carry text outside the marker. The assistant's
//! completion starts at the byte where the rendered prompt (`render(prefix, true)`) ends.
//! `end_of_turn_id()` is the token closing each turn (`<|im_end|>` for ChatML templates).

mod gguf_bpe;
mod template;

pub use template::{ChatTemplate, SpecialTokens};

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
    #[error("{path}: tokenizer model {found:?} is not supported: expected \"gpt2\" (byte-level BPE) in a GGUF's \"tokenizer.ggml.model\", or an HF folder with tokenizer.json")]
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

/// Token ids with the byte span `(start, end)` of each token in the encoded text. A span may be
/// empty for a token that carries no text of its own; special tokens span their literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub offsets: Vec<(usize, usize)>,
}

pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    special_tokens: SpecialTokens,
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

/// The tokenizer models a tokenizer.json may declare (what the `tokenizers` crate implements).
const KNOWN_MODEL_TYPES: [&str; 4] = ["BPE", "WordPiece", "WordLevel", "Unigram"];

impl ChatTokenizer {
    /// From a model path: an HF folder, or a GGUF file.
    pub fn load(model_path: &Path) -> Result<ChatTokenizer, TokenizerError> {
        if model_path.is_dir() {
            return ChatTokenizer::from_hf_dir(model_path);
        }
        if !model_path.is_file() {
            return Err(TokenizerError::Invalid {
                path: model_path.to_path_buf(),
                message: "not found: expected an HF model folder or a .gguf file".into(),
            });
        }
        let file = GgufFile::open(model_path).map_err(|e| TokenizerError::Invalid {
            path: model_path.to_path_buf(),
            message: format!("expected an HF model folder or a GGUF file: {e}"),
        })?;
        ChatTokenizer::from_gguf(&file)
    }

    /// From an HF folder: `tokenizer.json`, and `tokenizer_config.json` for the chat template and
    /// the special tokens (a newer export keeps the template in `chat_template.jinja`).
    pub fn from_hf_dir(dir: &Path) -> Result<ChatTokenizer, TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        let tok_text = std::fs::read_to_string(&tok_path).map_err(|source| TokenizerError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let spec: serde_json::Value =
            serde_json::from_str(&tok_text).map_err(|e| TokenizerError::Invalid {
                path: tok_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        let model_type = spec["model"]["type"].as_str().unwrap_or("");
        if !KNOWN_MODEL_TYPES.contains(&model_type) {
            return Err(TokenizerError::UnsupportedModel {
                path: tok_path,
                found: format!("model.type = {}", spec["model"]["type"]),
            });
        }
        let tokenizer = Tokenizer::from_bytes(tok_text.as_bytes()).map_err(|e| TokenizerError::Invalid {
            path: tok_path.clone(),
            message: format!("not a valid tokenizers file: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: cfg_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: cfg_path,
                    source,
                })
            }
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (template_text, template_origin) = match &cfg["chat_template"] {
            serde_json::Value::String(s) => (
                Some(s.clone()),
                format!("{} (key \"chat_template\")", cfg_path.display()),
            ),
            serde_json::Value::Array(list) => (
                list.iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                format!(
                    "{} (key \"chat_template\", entry \"default\")",
                    cfg_path.display()
                ),
            ),
            _ => (
                std::fs::read_to_string(&jinja_path).ok(),
                jinja_path.display().to_string(),
            ),
        };
        let template = template_text
            .map(|t| ChatTemplate::new(&t, &template_origin))
            .transpose()?;
        Ok(ChatTokenizer {
            tokenizer,
            template,
            special_tokens: SpecialTokens {
                bos_token: token_string(&cfg["bos_token"]),
                eos_token: token_string(&cfg["eos_token"]),
                unk_token: token_string(&cfg["unk_token"]),
                pad_token: token_string(&cfg["pad_token"]),
            },
            origin: dir.display().to_string(),
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes (`tokenizer.ggml.*` metadata and
    /// `tokenizer.chat_template`), as transformers does for `from_pretrained(gguf_file=...)`.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTokenizer, TokenizerError> {
        let path = file.path().to_path_buf();
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| TokenizerError::Invalid {
                path: path.clone(),
                message: "no tokenizer in the metadata: expected the key \"tokenizer.ggml.model\"".into(),
            })?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                path,
                found: model.to_string(),
            });
        }
        let tokens = file
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| TokenizerError::Invalid {
                path: path.clone(),
                message: "expected a string array \"tokenizer.ggml.tokens\" (the vocabulary)".into(),
            })?;
        let tokenizer = gguf_bpe::build(file, &tokens)?;
        let token_at = |key: &str| {
            file.get_u64(key)
                .and_then(|i| tokens.get(i as usize))
                .map(|s| s.to_string())
        };
        let template = file
            .get_str("tokenizer.chat_template")
            .map(|t| {
                ChatTemplate::new(
                    t,
                    &format!("{} (key \"tokenizer.chat_template\")", path.display()),
                )
            })
            .transpose()?;
        Ok(ChatTokenizer {
            tokenizer,
            template,
            special_tokens: SpecialTokens {
                bos_token: token_at("tokenizer.ggml.bos_token_id"),
                eos_token: token_at("tokenizer.ggml.eos_token_id"),
                unk_token: token_at("tokenizer.ggml.unknown_token_id"),
                pad_token: token_at("tokenizer.ggml.padding_token_id"),
            },
            origin: path.display().to_string(),
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
            message: "the model has no chat template: expected \"chat_template\" in tokenizer_config.json, chat_template.jinja, or \"tokenizer.chat_template\" in a GGUF".into(),
        })?;
        template.render(messages, add_generation_prompt, &self.special_tokens)
    }

    /// Ids and byte offsets of `text`; special-token text is matched, but none are added
    /// (as `apply_chat_template` encodes with `add_special_tokens=False`).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TokenizerError::Tokenize {
                origin: self.origin.clone(),
                message: e.to_string(),
            })?;
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// `render` then `encode`: `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Encoded, TokenizerError> {
        self.encode(&self.render(messages, add_generation_prompt)?)
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| TokenizerError::Tokenize {
                    origin: self.origin.clone(),
                    message: format!("cannot decode token id {i}: expected 0..{}", self.vocab_size()),
                })
            })
            .collect::<Result<_, _>>()?;
        self.tokenizer
            .decode(&ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Tokenize {
                origin: self.origin.clone(),
                message: e.to_string(),
            })
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }

    pub fn eos_token_id(&self) -> Option<i64> {
        self.special_tokens
            .eos_token
            .as_deref()
            .and_then(|t| self.token_id(t))
    }

    /// Ids that end a generated turn: EOS and the end-of-turn / end-of-text tokens the
    /// vocabulary has (Qwen2.5's generation config stops on both `<|im_end|>` and `<|endoftext|>`).
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

    /// The pad token's id; without one, EOS (what generation pads with), else 0.
    pub fn pad_token_id(&self) -> i64 {
        self.special_tokens
            .pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.eos_token_id())
            .unwrap_or(0)
    }

    /// Vocabulary size including added tokens (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Indices of the tokens whose byte span overlaps `byte_range` of the encoded text (a
    /// marker located by its position, however the tokenizer split or merged it). Tokens with
    /// an empty span are never included.
    pub fn tokens_overlapping(&self, enc: &Encoded, byte_range: Range<usize>) -> Vec<usize> {
        enc.offsets
            .iter()
            .enumerate()
            .filter(|(_, &(s, e))| s < byte_range.end && e > byte_range.start && e > s)
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{write_gguf, Meta};

    fn demo() -> ChatTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "the demo model is missing: run `make setup`");
        ChatTokenizer::load(&path).unwrap()
    }

    fn tiny_qwen2() -> ChatTokenizer {
        ChatTokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2")).unwrap()
    }

    #[test]
    fn smollm2_renders_its_default_system_prompt_and_encodes_like_transformers() {
        let t = demo();
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
        assert_eq!(
            (t.eos_token_id(), t.pad_token_id(), t.end_of_turn_id()),
            (Some(2), 2, Some(2))
        );
        let sys = [
            ChatMessage::new("system", "SYS"),
            ChatMessage::new("user", "Hi there"),
        ];
        assert_eq!(
            t.render(&sys, false).unwrap(),
            "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        );
    }

    /// Every token overlapping the marker, and only those: the covered text contains the whole
    /// marker, the run is contiguous, and the tokens just outside it do not touch it.
    fn assert_marker_tokens(t: &ChatTokenizer, text: &str, want: &[usize]) {
        let marker = "\n\n[ZLT]";
        let enc = t.encode(text).unwrap();
        let start = text.rfind(marker).unwrap();
        let range = start..start + marker.len();
        let idx = t.tokens_overlapping(&enc, range.clone());
        assert_eq!(idx, want, "{text:?}: {:?}", enc.offsets);
        let (first, last) = (idx[0], idx[idx.len() - 1]);
        assert!(enc.offsets[first].0 <= range.start && enc.offsets[last].1 >= range.end);
        if first > 0 {
            assert!(enc.offsets[first - 1].1 <= range.start);
        }
        if last + 1 < enc.offsets.len() {
            assert!(enc.offsets[last + 1].0 >= range.end);
        }
    }

    #[test]
    fn the_marker_is_found_by_offsets_however_smollm2_splits_it() {
        let t = demo();
        // Token indices from transformers' offset mapping (tests/fixtures/tokenizer_parity.json).
        assert_marker_tokens(&t, "Sure, here it is.\n\n[ZLT]", &[6, 7, 8, 9, 10, 11]);
        assert_marker_tokens(&t, "Done!\n\n[ZLT]<|im_end|>", &[2, 3, 4, 5, 6, 7]);
        assert_marker_tokens(&t, "x\n\n[ZLT]", &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn the_marker_is_found_by_offsets_when_tiny_qwen2_merges_it_with_its_neighbours() {
        let t = tiny_qwen2();
        let text = "Sure, here it is.\n\n[ZLT]";
        let enc = t.encode(text).unwrap();
        // ".\n\n" is one token here: the period before the marker is merged into it.
        let idx = t.tokens_overlapping(&enc, text.rfind("\n\n[ZLT]").unwrap()..text.len());
        assert_eq!(&text[enc.offsets[idx[0]].0..enc.offsets[idx[0]].1], ".\n\n");
        assert_marker_tokens(&t, text, &[6, 7, 8]);
        assert_marker_tokens(&t, "Done!\n\n[ZLT]<|im_end|>", &[4, 5, 6]);
        assert_marker_tokens(&t, "x\n\n[ZLT]", &[1, 2, 3]);
    }

    #[test]
    fn a_folder_without_tokenizer_json_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ChatTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("cannot read"),
            "{err}"
        );
        let err = ChatTokenizer::load(&dir.path().join("nope.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.gguf") && err.contains("not found"), "{err}");
    }

    #[test]
    fn an_invalid_template_or_model_type_names_the_file_and_what_was_expected() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}{{ m.content }"}"#,
        )
        .unwrap();
        let err = ChatTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer_config.json")
                && err.contains("chat_template")
                && err.contains("does not parse"),
            "{err}"
        );

        let tok_text = std::fs::read_to_string(fixture.join("tokenizer.json")).unwrap();
        let mut spec: serde_json::Value = serde_json::from_str(&tok_text).unwrap();
        spec["model"]["type"] = serde_json::json!("SentencePieceThing");
        std::fs::write(dir.path().join("tokenizer.json"), spec.to_string()).unwrap();
        let err = ChatTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("SentencePieceThing") && err.contains("expected"),
            "{err}"
        );

        // No template at all: rendering says so, encoding still works.
        std::fs::write(dir.path().join("tokenizer.json"), tok_text).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
        let t = ChatTokenizer::load(dir.path()).unwrap();
        let err = t
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no chat template"), "{err}");
        assert!(!t.encode("hi").unwrap().ids.is_empty());
    }

    #[test]
    fn a_gguf_without_a_usable_tokenizer_is_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare.gguf");
        write_gguf(&bare, &[("general.architecture", Meta::Str("llama"))], &[]);
        let err = ChatTokenizer::load(&bare).unwrap_err().to_string();
        assert!(
            err.contains("bare.gguf") && err.contains("tokenizer.ggml.model"),
            "{err}"
        );

        let spm = dir.path().join("spm.gguf");
        write_gguf(
            &spm,
            &[
                ("tokenizer.ggml.model", Meta::Str("llama")),
                ("tokenizer.ggml.tokens", Meta::Strs(vec!["<unk>", "a"])),
            ],
            &[],
        );
        let err = ChatTokenizer::load(&spm).unwrap_err().to_string();
        assert!(
            err.contains("spm.gguf") && err.contains("\"llama\"") && err.contains("expected \"gpt2\""),
            "{err}"
        );

        let no_merges = dir.path().join("no_merges.gguf");
        write_gguf(
            &no_merges,
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                ("tokenizer.ggml.tokens", Meta::Strs(vec!["a", "b"])),
            ],
            &[],
        );
        let err = ChatTokenizer::load(&no_merges).unwrap_err().to_string();
        assert!(
            err.contains("no_merges.gguf") && err.contains("tokenizer.ggml.merges"),
            "{err}"
        );

        let bad_template = dir.path().join("bad_template.gguf");
        write_gguf(
            &bad_template,
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                ("tokenizer.ggml.tokens", Meta::Strs(vec!["a", "b", "ab"])),
                ("tokenizer.ggml.merges", Meta::Strs(vec!["a b"])),
                ("tokenizer.chat_template", Meta::Str("{% if %}")),
            ],
            &[],
        );
        let err = ChatTokenizer::load(&bad_template).unwrap_err().to_string();
        assert!(
            err.contains("bad_template.gguf") && err.contains("tokenizer.chat_template"),
            "{err}"
        );

        let not_gguf = dir.path().join("model.bin");
        std::fs::write(&not_gguf, b"PK\x03\x04 not a gguf").unwrap();
        let err = ChatTokenizer::load(&not_gguf).unwrap_err().to_string();
        assert!(err.contains("model.bin") && err.contains("GGUF"), "{err}");
    }

    #[test]
    fn a_minimal_gguf_vocabulary_encodes_with_its_merges_and_control_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mini.gguf");
        write_gguf(
            &path,
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2")),
                (
                    "tokenizer.ggml.tokens",
                    Meta::Strs(vec!["<|end|>", "a", "b", "ab", "Ġ", "Ġab"]),
                ),
                ("tokenizer.ggml.merges", Meta::Strs(vec!["a b", "Ġ ab"])),
                ("tokenizer.ggml.eos_token_id", Meta::U32(0)),
            ],
            &[],
        );
        let t = ChatTokenizer::load(&path).unwrap();
        // Without token types nothing is special, so "<|end|>" is not matched whole.
        assert_eq!(t.encode("ab ab").unwrap().ids, vec![3, 5]);
        assert_eq!(t.decode(&[3, 5], false).unwrap(), "ab ab");
        assert_eq!(t.eos_token_id(), Some(0));
        assert!(t.decode(&[-1], false).unwrap_err().to_string().contains("-1"));
    }
}
