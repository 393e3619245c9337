//! A byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) rebuilt from a GGUF file's
//! vocabulary, merges and token types, matching what transformers builds from the same file:
//! GPT-2's byte-level pre-tokenizer (or the split regex the file's `tokenizer.ggml.pre` names),
//! control tokens (type 3) as special added tokens, user-defined tokens (type 4) as plain added
//! tokens.

use super::TokenizerError;
use crate::gguf::{GgufFile, GgufValue};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::str::FromStr;
use tokenizers::Tokenizer;

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` name: transformers 5.24's
/// `GGUF_PRE_TOKENIZER_SPLITS`. Any other name keeps GPT-2's own byte-level split (SmolLM2's
/// "smollm" among them), as transformers does.
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "tekken" => Some(TEKKEN_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2_SPLIT),
        "qwen35" => Some(QWEN35_SPLIT),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte -> printable character table.
fn byte_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

pub(super) fn build(g: &GgufFile, tokens: &[&str]) -> Result<Tokenizer, TokenizerError> {
    let path = g.path().to_path_buf();
    let table = byte_alphabet();
    let alphabet: BTreeSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(i));
    }
    let merges: Vec<Value> = g
        .get_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| TokenizerError::Invalid {
            path: path.clone(),
            message: "expected a string array \"tokenizer.ggml.merges\" for a gpt2 tokenizer".into(),
        })?
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            json!([a, b])
        })
        .collect();
    let types: Vec<i64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
        .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
        .unwrap_or_default();
    // Control tokens (type 3) become special added tokens, unless spelled outside the byte
    // alphabet (a llama.cpp mislabel transformers skips); user-defined ones (type 4) become plain
    // added tokens when the vocabulary has them as spelled.
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        let special = match ty {
            3 if in_alphabet(t) => true,
            4 if vocab.contains_key(*t) => false,
            _ => continue,
        };
        added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
    }
    let byte_level =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = g.get_str("tokenizer.ggml.pre").and_then(split_regex);
    let pre_tokenizer = match split {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        None => byte_level.clone(),
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    Tokenizer::from_str(&spec.to_string()).map_err(|e| TokenizerError::Invalid {
        path,
        message: format!("cannot build the byte-level BPE tokenizer from its vocabulary and merges: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let t = byte_alphabet();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t.iter().collect::<BTreeSet<_>>().len(), 256);
    }
}
