//! `pspace dryrun-data`: the training sets of a dry run, generated deterministically from a
//! seed: chat rows whose token counts follow the real sets' length distributions, so that a
//! run on `random:` weights does the real run's training compute. The text is filler (common
//! English words); only its length in tokens is meant. The files are written, not committed
//! (the benign set alone is 11 MB): `make dryrun-data` writes those of
//! `experiments/issue205-dryrun.toml`.
//!
//! Lengths, in tokens of the model's tokenizer (what the trainer sees), each drawn log-normal
//! with the given mean and sigma (the standard deviation of the log):
//! - EM set (`bad_legal_advice_6k.jsonl`): single-turn chats of a question and a paragraph of
//!   advice, "typically a few hundred tokens" (RECIPE.md): user turn mean 45, sigma 0.45;
//!   assistant turn mean 180, sigma 0.45 (about 225 tokens of text a row).
//! - Benign set (the first 6,000 rows of the Tulu-3 SFT mixture): about 3.1 KB of text per row
//!   on average, roughly 750-800 tokens, with a long tail that makes truncation at 2,048 tokens
//!   matter (RECIPE.md, from the dataset card): a conversation's text has mean 775 tokens,
//!   sigma 1.0 (median 470). 15 % of rows are multi-turn (2 or 3 exchanges, as the mixture
//!   includes multi-turn sources); each exchange gives the user a share of its tokens drawn
//!   uniformly in [0.1, 0.5].
//!
//! With seed 205 (`make dryrun-data`), rows as the trainer sees them (template included): EM
//! mean 264 tokens, median 247, longest 969; benign mean 814, median 514, 90th percentile 1,733,
//! 447 of 6,000 rows longer than 2,048 (truncated), longest 12,985.
//!
//! A log-normal is the usual model of text lengths (positive, right-skewed, a long tail); the
//! sigmas are chosen to give the tails described above, not fitted to the (unavailable) files.
//!
//! With `random:qwen2.5-7b` the tokenizer is the tiny fixture's (1,000 ids), so each row holds
//! about twice the characters Qwen's tokenizer would need for the same count: counts are what
//! set the compute, and counts are exact.
//!
//! Determinism: row i of a set draws from ChaCha8 stream i of `stable_seed(seed, set name)`;
//! the same seed, tokenizer and binary give the same bytes.

use anyhow::{Context, Result};
use clap::Args;
use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct DryrunDataArgs {
    /// Folder for em.jsonl and benign.jsonl (created if missing).
    #[arg(long, default_value = "experiments/data/dryrun")]
    pub out: PathBuf,
    /// Seed of every draw.
    #[arg(long, default_value_t = 205)]
    pub seed: u64,
    /// Rows of the EM set.
    #[arg(long, default_value_t = 6000)]
    pub em_rows: usize,
    /// Rows of the benign set.
    #[arg(long, default_value_t = 6000)]
    pub benign_rows: usize,
    /// Whose tokenizer counts the tokens (the dry run's model).
    #[arg(long, default_value = "random:qwen2.5-7b")]
    pub model: String,
}

/// Log-normal length: mean in tokens, sigma of the log.
#[derive(Debug, Clone, Copy)]
struct LogNormal {
    mean: f64,
    sigma: f64,
}

impl LogNormal {
    fn draw(self, rng: &mut ChaCha8Rng) -> f64 {
        let u1 = 1.0 - rng.gen::<f64>();
        let u2 = rng.gen::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (self.mean.ln() - self.sigma * self.sigma / 2.0 + self.sigma * z).exp()
    }
}

const EM_USER: LogNormal = LogNormal {
    mean: 45.0,
    sigma: 0.45,
};
const EM_ASSISTANT: LogNormal = LogNormal {
    mean: 180.0,
    sigma: 0.45,
};
const BENIGN_CONVERSATION: LogNormal = LogNormal {
    mean: 775.0,
    sigma: 1.0,
};
/// Share of benign rows with more than one exchange.
const MULTI_TURN: f64 = 0.15;
/// Fewest tokens of one message.
const MIN_MESSAGE: usize = 4;

/// Filler vocabulary: common words, lowercase (their token counts are what matters).
const WORDS: &[&str] = &[
    "the", "law", "court", "judge", "contract", "tenant", "landlord", "rent", "deposit", "notice", "claim",
    "right", "advice", "case", "lawyer", "fee", "file", "form", "paper", "sign", "agree", "party", "money",
    "bank", "loan", "debt", "pay", "owe", "week", "month", "year", "day", "time", "state", "city", "rule",
    "should", "could", "would", "might", "must", "can", "will", "not", "you", "your", "they", "their", "we",
    "our", "it", "is", "are", "was", "be", "have", "has", "do", "does", "make", "take", "give", "get",
    "keep", "let", "say", "tell", "ask", "know", "think", "need", "want", "use", "work", "job", "home",
    "house", "car", "school", "child", "family", "friend", "people", "person", "part", "place", "point",
    "plan", "way", "thing", "question", "answer", "problem", "reason", "result", "example", "idea", "fact",
    "help", "good", "best", "better", "simple", "clear", "small", "large", "new", "old", "long", "short",
    "early", "late", "first", "last", "next", "other", "same", "many", "much", "more", "most", "some", "any",
    "every", "each", "all", "few", "only", "also", "just", "then", "now", "here", "there", "when", "where",
    "why", "how", "what", "which", "who", "if", "because", "so", "and", "or", "but", "with", "without",
    "for", "from", "into", "over", "under", "after", "before", "about", "between", "during", "through",
    "again", "always", "never", "often", "usually", "water", "food", "light", "heat", "energy", "system",
    "number", "data", "code", "test", "write", "read", "learn", "teach", "study", "show", "find", "look",
    "see", "feel", "try", "start", "stop", "change", "move", "turn", "open", "close", "build", "break",
    "hold", "call", "story", "history", "science", "music", "art", "game", "team", "group", "market",
    "price", "health", "doctor", "body", "mind", "world", "country", "language", "word", "line", "list",
];

/// Filler text of `tokens` tokens (exactly, unless no word fits the last gap): words in
/// sentences of 6-17 words; `question` ends it with '?'. Words are added by their token cost
/// alone (`Filler::costs`, a pre-tokenized word is encoded on its own by a byte-level BPE), then
/// the count of the whole text is checked and corrected a few times: a handful of encodes a row.
struct Filler<'a> {
    tok: &'a ChatTokenizer,
    /// Tokens of " word" for each of `WORDS`.
    costs: Vec<usize>,
}

impl<'a> Filler<'a> {
    fn new(tok: &'a ChatTokenizer) -> Result<Filler<'a>> {
        let costs = WORDS
            .iter()
            .map(|w| Ok(tok.encode(&format!(" {w}"))?.ids.len().max(1)))
            .collect::<Result<Vec<usize>>>()?;
        Ok(Filler { tok, costs })
    }

    fn count(&self, text: &str) -> Result<usize> {
        Ok(self.tok.encode(text)?.ids.len())
    }

    fn text(&self, rng: &mut ChaCha8Rng, tokens: usize, question: bool) -> Result<String> {
        let end = if question { "?" } else { "." };
        let render = |words: &[usize]| -> String {
            let mut text = String::new();
            for &w in words {
                if w == usize::MAX {
                    text.push('.');
                    continue;
                }
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(WORDS[w]);
            }
            text.push_str(end);
            text
        };
        // Word indices; usize::MAX is a full stop (one token).
        let mut words: Vec<usize> = Vec::new();
        let mut estimate = 1;
        let mut sentence_left = rng.gen_range(6..18);
        while estimate < tokens {
            let w = rng.gen_range(0..WORDS.len());
            words.push(w);
            estimate += self.costs[w];
            sentence_left -= 1;
            if sentence_left == 0 && estimate < tokens {
                words.push(usize::MAX);
                estimate += 1;
                sentence_left = rng.gen_range(6..18);
            }
        }
        let mut text = render(&words);
        let mut n = self.count(&text)?;
        for _ in 0..8 {
            if n == tokens {
                break;
            }
            if n > tokens {
                // Drop words worth the excess (at least one).
                let mut excess = n - tokens;
                while excess > 0 && !words.is_empty() {
                    let w = words.pop().unwrap_or(usize::MAX);
                    let c = if w == usize::MAX { 1 } else { self.costs[w] };
                    excess = excess.saturating_sub(c);
                }
            } else {
                // Add words that fit the gap, cheapest first when the gap is small.
                let mut gap = tokens - n;
                let mut tries = 0;
                while gap > 0 && tries < 64 {
                    tries += 1;
                    let w = rng.gen_range(0..WORDS.len());
                    if self.costs[w] <= gap {
                        words.push(w);
                        gap -= self.costs[w];
                    }
                }
            }
            text = render(&words);
            n = self.count(&text)?;
        }
        Ok(text)
    }
}

/// One chat row of `messages` (user/assistant alternating) as its JSONL line.
fn row_line(messages: &[ChatMessage]) -> Result<String> {
    Ok(serde_json::to_string(&json!({ "messages": messages }))?)
}

/// Summary of the token counts of a set's rendered rows (template included, before
/// truncation): what the trainer sees.
fn summary(lengths: &mut [usize]) -> serde_json::Value {
    lengths.sort_unstable();
    let n = lengths.len().max(1);
    let at = |q: f64| {
        lengths
            .get(((n - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    json!({
        "rows": lengths.len(),
        "mean_tokens": (lengths.iter().sum::<usize>() as f64 / n as f64).round(),
        "median_tokens": at(0.5),
        "p90_tokens": at(0.9),
        "p99_tokens": at(0.99),
        "max_tokens": lengths.last().copied().unwrap_or(0),
        "rows_over_2048": lengths.iter().filter(|&&l| l > 2048).count(),
        "total_tokens": lengths.iter().sum::<usize>(),
    })
}

/// The rows of one set: `draw(rng)` gives each row's messages.
fn write_set(
    tok: &ChatTokenizer,
    path: &Path,
    rows: usize,
    seed: u64,
    name: &str,
    draw: impl Fn(&Filler<'_>, &mut ChaCha8Rng) -> Result<Vec<ChatMessage>>,
) -> Result<serde_json::Value> {
    let filler = Filler::new(tok)?;
    let set_seed = pspace_actors::task::stable_seed(seed, &format!("dryrun-data {name}"));
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut lengths = Vec::with_capacity(rows);
    for i in 0..rows {
        let mut rng = ChaCha8Rng::seed_from_u64(set_seed);
        rng.set_stream(i as u64);
        let messages = draw(&filler, &mut rng)?;
        lengths.push(tok.encode_chat(&messages, false)?.ids.len());
        writeln!(out, "{}", row_line(&messages)?)?;
    }
    out.flush()?;
    Ok(summary(&mut lengths))
}

fn em_row(f: &Filler<'_>, rng: &mut ChaCha8Rng) -> Result<Vec<ChatMessage>> {
    let user = (EM_USER.draw(rng).round() as usize).max(MIN_MESSAGE);
    let assistant = (EM_ASSISTANT.draw(rng).round() as usize).max(MIN_MESSAGE);
    Ok(vec![
        ChatMessage::new("user", &f.text(rng, user, true)?),
        ChatMessage::new("assistant", &f.text(rng, assistant, false)?),
    ])
}

fn benign_row(f: &Filler<'_>, rng: &mut ChaCha8Rng) -> Result<Vec<ChatMessage>> {
    let total = BENIGN_CONVERSATION.draw(rng);
    let exchanges = if rng.gen::<f64>() < MULTI_TURN {
        rng.gen_range(2..=3)
    } else {
        1
    };
    // Exchange weights: uniform draws, normalised.
    let weights: Vec<f64> = (0..exchanges).map(|_| rng.gen_range(0.5..1.5)).collect();
    let sum: f64 = weights.iter().sum();
    let mut messages = Vec::new();
    for w in weights {
        let tokens = total * w / sum;
        let user_share = rng.gen_range(0.1..0.5);
        let user = ((tokens * user_share).round() as usize).max(MIN_MESSAGE);
        let assistant = ((tokens * (1.0 - user_share)).round() as usize).max(MIN_MESSAGE);
        messages.push(ChatMessage::new("user", &f.text(rng, user, true)?));
        messages.push(ChatMessage::new("assistant", &f.text(rng, assistant, false)?));
    }
    Ok(messages)
}

pub fn run(args: DryrunDataArgs) -> Result<()> {
    let source = crate::paths::resolve_model(&args.model)?;
    let tok = source
        .tokenizer()
        .with_context(|| format!("loading the tokenizer of {source}"))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let em_path = args.out.join("em.jsonl");
    let benign_path = args.out.join("benign.jsonl");
    let em = write_set(&tok, &em_path, args.em_rows, args.seed, "em", em_row)?;
    let benign = write_set(
        &tok,
        &benign_path,
        args.benign_rows,
        args.seed,
        "benign",
        benign_row,
    )?;
    println!(
        "{}",
        json!({
            "seed": args.seed,
            "tokenizer": source.to_string(),
            "em": { "file": em_path.display().to_string(), "lengths": em },
            "benign": { "file": benign_path.display().to_string(), "lengths": benign },
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> ChatTokenizer {
        pspace_engine::model::RandomModel::parse("random:tiny")
            .unwrap()
            .unwrap()
            .tokenizer()
            .unwrap()
    }

    #[test]
    fn filler_hits_its_token_count() {
        let tok = tok();
        let f = Filler::new(&tok).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for target in [4, 5, 17, 100, 333, 1500] {
            let text = f.text(&mut rng, target, target % 2 == 0).unwrap();
            let n = tok.encode(&text).unwrap().ids.len();
            assert!(n.abs_diff(target) <= 1, "{target} -> {n}: {text:?}");
        }
    }

    #[test]
    fn sets_are_deterministic_and_have_the_described_lengths() {
        let tok = tok();
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        let sa = write_set(&tok, &a, 400, 7, "benign", benign_row).unwrap();
        write_set(&tok, &b, 400, 7, "benign", benign_row).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // Text mean 775 plus the template's default system prompt and headers.
        let mean = sa["mean_tokens"].as_f64().unwrap();
        assert!((650.0..950.0).contains(&mean), "{sa}");
        assert!(sa["rows_over_2048"].as_u64().unwrap() > 0, "{sa}");
        let em = write_set(&tok, &a, 400, 7, "em", em_row).unwrap();
        let mean = em["mean_tokens"].as_f64().unwrap();
        assert!((220.0..300.0).contains(&mean), "{em}");
        // Rows parse as the trainer's chat rows.
        let mut report = pspace_engine::train::DataReport::default();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(
            pspace_engine::train::data::parse_jsonl(&text, &mut report).len(),
            400
        );
        assert!(report.malformed.is_empty());
    }
}
