//! Tokenizers and chat templates: what turns a conversation into the exact token ids
//! transformers' `apply_chat_template` produces.
//!
//! A `ChatTokenizer` comes from an HF folder (`tokenizer.json` + `tokenizer_config.json`, the chat
//! template chosen as transformers 5 chooses it: `chat_template.jinja` and the named templates of
//! `additional_chat_templates/` before the inline `chat_template` key) or from a GGUF file's own vocabulary,
//! merges, token types and chat template, rebuilt as transformers rebuilds it (`gguf_bpe`). Templates are rendered with
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
//!
//! # Stop tokens
//! `stop_token_ids()` are the end ids the model's own files declare (`generation_config.json`,
//! else `config.json`; a GGUF's eos/eot/eom ids), joined by the template's end-of-turn token;
//! only a model that declares none falls back to a list of well-known end tokens.

mod gguf_bpe;
mod pycompat;
mod template;

pub use template::{ChatTemplate, SpecialTokens};

use crate::generation_config::GenerationConfig;
use crate::gguf::GgufFile;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
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
    generation: GenerationConfig,
    /// The special token the template puts right after an assistant message, if any.
    template_end_of_turn: Option<i64>,
    /// Ordinary token ids that ids beyond the vocabulary decode as (`fold_ids_beyond_vocab`).
    fold_beyond_vocab: Option<Vec<u32>>,
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
        let tok_text = std::fs::read_to_string(&tok_path).map_err(|error| TokenizerError::Io {
            path: tok_path.clone(),
            error,
        })?;
        let tokenizer = hf_tokenizer(&tok_text, &tok_path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid {
                path: cfg_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(error) => {
                return Err(TokenizerError::Io {
                    path: cfg_path,
                    error,
                })
            }
        };
        let (template_text, template_origin) = choose_hf_template(dir, &cfg, &cfg_path)?;
        let generation = GenerationConfig::from_hf_dir(dir).map_err(|e| TokenizerError::Invalid {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        ChatTokenizer::from_hf_parts(
            tokenizer,
            &cfg,
            template_text.map(|t| (t, template_origin)),
            generation,
            dir.display().to_string(),
        )
    }

    /// From the texts of an HF folder's `tokenizer.json`, `tokenizer_config.json` (its inline
    /// `chat_template`) and optionally `generation_config.json`, for a tokenizer built into the
    /// binary; `origin` names it in messages.
    pub fn from_hf_texts(
        origin: &str,
        tokenizer_json: &str,
        tokenizer_config_json: &str,
        generation_config_json: Option<&str>,
    ) -> Result<ChatTokenizer, TokenizerError> {
        let at = |file: &str| PathBuf::from(format!("{origin}: {file}"));
        let tokenizer = hf_tokenizer(tokenizer_json, &at("tokenizer.json"))?;
        let cfg_path = at("tokenizer_config.json");
        let cfg: serde_json::Value =
            serde_json::from_str(tokenizer_config_json).map_err(|e| TokenizerError::Invalid {
                path: cfg_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?;
        let (template_text, template_origin) = inline_template(&cfg, &cfg_path, origin)?;
        let generation = match generation_config_json {
            Some(text) => {
                let path = at("generation_config.json");
                GenerationConfig::from_json_str(text, &path).map_err(|e| TokenizerError::Invalid {
                    path,
                    message: e.to_string(),
                })?
            }
            None => GenerationConfig::default(),
        };
        ChatTokenizer::from_hf_parts(
            tokenizer,
            &cfg,
            template_text.map(|t| (t, template_origin)),
            generation,
            origin.to_string(),
        )
    }

    /// The parts of an HF tokenizer put together: the special tokens from `cfg`
    /// (tokenizer_config.json), the template (text, where it came from).
    fn from_hf_parts(
        tokenizer: Tokenizer,
        cfg: &serde_json::Value,
        template: Option<(String, String)>,
        generation: GenerationConfig,
        origin: String,
    ) -> Result<ChatTokenizer, TokenizerError> {
        let template = template
            .map(|(text, origin)| ChatTemplate::new(&text, &origin))
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
            generation,
            template_end_of_turn: None,
            fold_beyond_vocab: None,
            origin,
        }
        .with_template_end_of_turn())
    }

    /// Decodes ids at or beyond the vocabulary as in-vocabulary tokens instead of dropping them:
    /// id `i` becomes the `i mod n`-th of the `n` ordinary (not added) tokens. For random
    /// weights whose vocabulary is larger than the tokenizer's (`random:qwen2.5-7b` with the
    /// tiny tokenizer), so that each generated id still decodes to about one token of text and
    /// a completion re-encodes to about its generated length. Encoding is unchanged.
    pub fn fold_ids_beyond_vocab(mut self) -> ChatTokenizer {
        let added = self.tokenizer.get_added_tokens_decoder();
        let ordinary: Vec<u32> = (0..self.tokenizer.get_vocab_size(true) as u32)
            .filter(|id| !added.contains_key(id))
            .collect();
        if !ordinary.is_empty() {
            self.fold_beyond_vocab = Some(ordinary);
        }
        self
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
            generation: GenerationConfig::from_gguf(file),
            template_end_of_turn: None,
            fold_beyond_vocab: None,
            origin: path.display().to_string(),
        }
        .with_template_end_of_turn())
    }

    /// Finds the special token the template writes right after an assistant message (rendering a
    /// two-message conversation with a marker as the reply), so that the stop tokens follow the
    /// template rather than a list of names.
    fn with_template_end_of_turn(mut self) -> ChatTokenizer {
        const MARKER: &str = "PSPACE_END_OF_TURN_PROBE";
        let conversation = [
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", MARKER),
        ];
        let after = self
            .template
            .as_ref()
            .and_then(|t| t.render(&conversation, false, &self.special_tokens).ok())
            .and_then(|text| text.rfind(MARKER).map(|i| text[i + MARKER.len()..].to_string()));
        let first = after.and_then(|rest| {
            self.tokenizer
                .encode(rest, false)
                .ok()?
                .get_ids()
                .first()
                .copied()
        });
        self.template_end_of_turn = first
            .filter(|id| {
                self.tokenizer
                    .get_added_tokens_decoder()
                    .get(id)
                    .is_some_and(|t| t.special)
            })
            .map(i64::from);
        self
    }

    /// What the model's files say about generation (end ids, sampling defaults).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
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
        let ids = match &self.fold_beyond_vocab {
            Some(ordinary) => {
                let vocab = self.tokenizer.get_vocab_size(true) as u32;
                ids.into_iter()
                    .map(|i| {
                        if i < vocab {
                            i
                        } else {
                            ordinary[i as usize % ordinary.len()]
                        }
                    })
                    .collect()
            }
            None => ids,
        };
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

    /// Ids that end a generated turn: the end ids the model declares (`generation_config.json`'s
    /// `eos_token_id`, an int or a list, else `config.json`'s; a GGUF's eos, eot and eom ids),
    /// as transformers' and llama.cpp's generation stop on them, joined by the template's
    /// end-of-turn token. A model that declares none falls back to its tokenizer's EOS and the
    /// well-known end tokens its vocabulary has.
    pub fn stop_token_ids(&self) -> Vec<i64> {
        let mut ids = self.generation.eos_token_ids.clone();
        if ids.is_empty() {
            ids.extend(self.eos_token_id());
            for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
                ids.extend(self.token_id(t));
            }
        }
        ids.extend(self.end_of_turn_id());
        let mut seen = std::collections::BTreeSet::new();
        ids.retain(|id| seen.insert(*id));
        ids
    }

    /// The end-of-turn token id: the special token the chat template writes after an assistant
    /// message, else `<|im_end|>` / `<|eot_id|>` where the vocabulary has them, else EOS.
    pub fn end_of_turn_id(&self) -> Option<i64> {
        self.template_end_of_turn
            .or_else(|| self.token_id("<|im_end|>"))
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

/// A `tokenizers` tokenizer from a tokenizer.json text (`path` names it in errors), refusing
/// model types the crate does not implement with a message that names them.
fn hf_tokenizer(text: &str, path: &Path) -> Result<Tokenizer, TokenizerError> {
    let spec: serde_json::Value = serde_json::from_str(text).map_err(|e| TokenizerError::Invalid {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    let model_type = spec["model"]["type"].as_str().unwrap_or("");
    if !KNOWN_MODEL_TYPES.contains(&model_type) {
        return Err(TokenizerError::UnsupportedModel {
            path: path.to_path_buf(),
            found: format!("model.type = {}", spec["model"]["type"]),
        });
    }
    Tokenizer::from_bytes(text.as_bytes()).map_err(|e| TokenizerError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a valid tokenizers file: {e}"),
    })
}

/// The chat template of an HF folder as transformers 5 picks it (`PreTrainedTokenizerBase.
/// _from_pretrained` and `get_chat_template`): template files first (`chat_template.jinja` as
/// "default", then each `additional_chat_templates/<name>.jinja` by name, a `default.jinja`
/// there replacing it), and only without any file the
/// `chat_template` key of tokenizer_config.json (a string, or a list of `{name, template}`).
/// From several named templates, "default" is used; without one it is an error naming them.
/// Returns (text, where it came from).
fn choose_hf_template(
    dir: &Path,
    cfg: &serde_json::Value,
    cfg_path: &Path,
) -> Result<(Option<String>, String), TokenizerError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|error| TokenizerError::Io {
            path: path.to_path_buf(),
            error,
        })
    };
    let mut named: BTreeMap<String, (String, String)> = BTreeMap::new();
    let jinja_path = dir.join("chat_template.jinja");
    if jinja_path.is_file() {
        named.insert(
            "default".into(),
            (read(&jinja_path)?, jinja_path.display().to_string()),
        );
    }
    let folder = dir.join("additional_chat_templates");
    if folder.is_dir() {
        let entries = std::fs::read_dir(&folder).map_err(|error| TokenizerError::Io {
            path: folder.clone(),
            error,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jinja") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            named.insert(name, (read(&file)?, file.display().to_string()));
        }
    }
    if named.is_empty() {
        return inline_template(cfg, cfg_path, &dir.display().to_string());
    }
    default_of(named, &dir.display().to_string())
}

/// The `chat_template` key of a tokenizer_config.json (a string, or a list of named templates
/// of which "default" is used); `origin` names the model in errors.
fn inline_template(
    cfg: &serde_json::Value,
    cfg_path: &Path,
    origin: &str,
) -> Result<(Option<String>, String), TokenizerError> {
    let mut named: BTreeMap<String, (String, String)> = BTreeMap::new();
    match &cfg["chat_template"] {
        serde_json::Value::String(s) => {
            return Ok((
                Some(s.clone()),
                format!("{} (key \"chat_template\")", cfg_path.display()),
            ));
        }
        serde_json::Value::Array(list) => {
            for (i, entry) in list.iter().enumerate() {
                let (Some(name), Some(text)) = (entry["name"].as_str(), entry["template"].as_str()) else {
                    return Err(TokenizerError::Invalid {
                        path: cfg_path.to_path_buf(),
                        message: format!(
                            "key \"chat_template\", entry {i}: expected {{\"name\": ..., \"template\": ...}}, found {entry}"
                        ),
                    });
                };
                let origin = format!("{} (key \"chat_template\", entry {name:?})", cfg_path.display());
                named.insert(name.to_string(), (text.to_string(), origin));
            }
        }
        serde_json::Value::Null => return Ok((None, String::new())),
        other => {
            return Err(TokenizerError::Invalid {
                path: cfg_path.to_path_buf(),
                message: format!(
                    "key \"chat_template\": expected a string or a list of named templates, found {other}"
                ),
            })
        }
    }
    default_of(named, origin)
}

/// The template named "default" of several (none at all is no template).
fn default_of(
    mut named: BTreeMap<String, (String, String)>,
    origin: &str,
) -> Result<(Option<String>, String), TokenizerError> {
    match named.remove("default") {
        Some((text, origin)) => Ok((Some(text), origin)),
        None if named.is_empty() => Ok((None, String::new())),
        None => Err(TokenizerError::Template {
            origin: origin.to_string(),
            message: format!(
                "the model has several chat templates and none named \"default\": found {:?}",
                named.keys().collect::<Vec<_>>()
            ),
        }),
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
        // The GGUF declares EOS 2 (<|im_end|>), which is also the template's end of turn.
        assert_eq!(t.stop_token_ids(), vec![2]);
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

    /// A folder with tiny-qwen2's tokenizer.json and the given tokenizer_config.json.
    fn folder_with_config(config: &serde_json::Value) -> tempfile::TempDir {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        dir
    }

    fn render_hi(dir: &Path) -> Result<String, TokenizerError> {
        ChatTokenizer::load(dir)?.render(&[ChatMessage::new("user", "Hi")], false)
    }

    #[test]
    fn template_files_win_over_the_inline_key_as_in_transformers_5() {
        let inline = serde_json::json!({"chat_template": "inline:{{ messages[0].content }}"});
        let dir = folder_with_config(&inline);
        assert_eq!(render_hi(dir.path()).unwrap(), "inline:Hi");
        // chat_template.jinja wins over the inline key.
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "file:{{ messages[0].content }}\n",
        )
        .unwrap();
        assert_eq!(render_hi(dir.path()).unwrap(), "file:Hi");
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        // Named templates without a default: an error naming them (transformers 5.24 raises too).
        let named = dir.path().join("additional_chat_templates");
        std::fs::create_dir(&named).unwrap();
        std::fs::write(named.join("tool_use.jinja"), "tools:{{ messages[0].content }}").unwrap();
        std::fs::write(named.join("rag.jinja"), "rag").unwrap();
        let err = render_hi(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("\"default\"") && err.contains("tool_use") && err.contains("rag"),
            "{err}"
        );
        // additional_chat_templates/default.jinja is the default, also over chat_template.jinja
        // (transformers reads it second and it replaces the first).
        std::fs::write(named.join("default.jinja"), "folder:{{ messages[0].content }}").unwrap();
        assert_eq!(render_hi(dir.path()).unwrap(), "folder:Hi");
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "file:{{ messages[0].content }}\n",
        )
        .unwrap();
        assert_eq!(render_hi(dir.path()).unwrap(), "folder:Hi");
        // Inline lists of named templates: "default" is used, or the error names the others.
        let listed = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "t"}, {"name": "default", "template": "d:{{ messages[0].content }}"}]});
        assert_eq!(render_hi(folder_with_config(&listed).path()).unwrap(), "d:Hi");
        let no_default = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "t"}]});
        let err = render_hi(folder_with_config(&no_default).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tool_use") && err.contains("default"), "{err}");
        let broken = serde_json::json!({"chat_template": [{"template": "t"}]});
        let err = render_hi(folder_with_config(&broken).path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("entry 0"),
            "{err}"
        );
        let wrong = serde_json::json!({"chat_template": 5});
        let err = render_hi(folder_with_config(&wrong).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat_template") && err.contains("found 5"), "{err}");
    }

    #[test]
    fn stop_ids_join_the_declared_end_ids_and_the_templates_end_of_turn() {
        // A template that closes turns with <|endoftext|> (not <|im_end|>), and a model that
        // declares two end ids.
        let config = serde_json::json!({
            "eos_token": "<|im_end|>",
            "chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}<|endoftext|>{% endfor %}"
        });
        let dir = folder_with_config(&config);
        let t = ChatTokenizer::load(dir.path()).unwrap();
        let (im_end, endoftext) = (
            t.token_id("<|im_end|>").unwrap(),
            t.token_id("<|endoftext|>").unwrap(),
        );
        assert_eq!(t.end_of_turn_id(), Some(endoftext));
        // Nothing declared: the tokenizer's EOS and the well-known names, then the template's.
        assert_eq!(t.stop_token_ids(), vec![im_end, endoftext]);
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [7, 9]}"#,
        )
        .unwrap();
        let t = ChatTokenizer::load(dir.path()).unwrap();
        assert_eq!(t.stop_token_ids(), vec![7, 9, endoftext]);
        assert_eq!(t.generation_config().eos_token_ids, vec![7, 9]);
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": "x"}"#,
        )
        .unwrap();
        let err = ChatTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("eos_token_id"),
            "{err}"
        );
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
