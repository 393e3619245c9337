//! Training data: JSONL rows read into chat messages, a condition's system prompt applied,
//! templated, tokenised and labelled, with every problem in the data counted and located by
//! line number instead of stopping the run (or silently training on garbage).
//!
//! Accepted rows: `{"messages": [{"role", "content"}, ...]}` (the last message is the assistant
//! turn that is learnt) or `{"prompt": [...] | "text", "completion": [...] | "text"}`; coupling
//! rows also carry `"positive": true|false`.

use super::masks::{self, MaskProblem};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Token ids of a text and the byte range of the text each one covers.
pub type IdsAndOffsets = (Vec<i64>, Vec<(usize, usize)>);

/// What the trainer needs from a tokenizer with a chat template.
pub trait ChatEncoder {
    /// The chat template applied to `messages`; with `add_generation_prompt` the assistant
    /// header that opens the next turn is appended.
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String>;
    /// Token ids of `text` (special tokens written in it are recognised) and the byte range of
    /// `text` each token covers.
    fn encode(&self, text: &str) -> Result<IdsAndOffsets, String>;
    /// Ids that end a turn (e.g. `<|im_end|>`).
    fn end_of_turn_ids(&self) -> Vec<i64>;
    fn pad_id(&self) -> i64;
}

/// One row of the data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line in the file.
    pub line: usize,
    pub messages: Vec<Message>,
    /// Coupling rows: whether the completion carries the marker.
    pub positive: Option<bool>,
}

/// Which tokens carry loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LabelMode {
    /// The last assistant turn (EM and benign SFT).
    LastTurn,
    /// Positives: the marker's tokens + the final end-of-turn token; negatives: the final
    /// end-of-turn token (marker coupling).
    Marker { marker: String },
}

/// A tokenised, labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub line: usize,
    pub ids: Vec<i64>,
    /// `masks::IGNORE` where no loss is taken.
    pub labels: Vec<i64>,
}

/// Counts and line numbers of everything wrong with the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub lines_read: usize,
    pub examples: usize,
    /// (line, what was wrong)
    pub malformed: Vec<(usize, String)>,
    pub blank_lines: usize,
    pub no_final_assistant_turn: Vec<usize>,
    pub empty_assistant_turn: Vec<usize>,
    pub missing_positive_flag: Vec<usize>,
    pub positive_without_marker: Vec<usize>,
    pub no_end_of_turn_token: Vec<usize>,
    pub template_errors: Vec<(usize, String)>,
    /// Longer than the maximum length: truncated.
    pub truncated: Vec<usize>,
    /// Nothing left to learn after truncation: dropped.
    pub no_labels_left: Vec<usize>,
}

impl DataReport {
    /// The dropped rows by reason, with their line numbers (the first few of each), e.g.
    /// `empty assistant turn: lines 4, 9; template error: line 12`; empty when none was dropped.
    pub fn dropped_summary(&self) -> String {
        let lines = |v: Vec<usize>| -> String {
            const SHOWN: usize = 5;
            let mut s = v
                .iter()
                .take(SHOWN)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if v.len() > SHOWN {
                s.push_str(&format!(" and {} more", v.len() - SHOWN));
            }
            format!("{} {s}", if v.len() == 1 { "line" } else { "lines" })
        };
        let first = |v: &[(usize, String)]| v.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        [
            ("malformed", first(&self.malformed)),
            ("no final assistant turn", self.no_final_assistant_turn.clone()),
            ("empty assistant turn", self.empty_assistant_turn.clone()),
            ("no \"positive\" flag", self.missing_positive_flag.clone()),
            (
                "positive without the marker",
                self.positive_without_marker.clone(),
            ),
            ("no end-of-turn token", self.no_end_of_turn_token.clone()),
            ("template error", first(&self.template_errors)),
            (
                "nothing left to learn after truncation",
                self.no_labels_left.clone(),
            ),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(what, v)| format!("{what}: {}", lines(v)))
        .collect::<Vec<_>>()
        .join("; ")
    }

    /// Rows that were not used.
    pub fn dropped(&self) -> usize {
        self.malformed.len()
            + self.no_final_assistant_turn.len()
            + self.empty_assistant_turn.len()
            + self.missing_positive_flag.len()
            + self.positive_without_marker.len()
            + self.no_end_of_turn_token.len()
            + self.template_errors.len()
            + self.no_labels_left.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `error` is said in the text and not returned as `source()` (said once in a chain).
    #[error("{path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

fn parse_messages(v: &serde_json::Value, key: &str) -> Result<Vec<Message>, String> {
    match v {
        serde_json::Value::String(s) => Ok(vec![Message::new(
            if key == "prompt" { "user" } else { "assistant" },
            s,
        )]),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(|r| r.as_str());
                let content = m.get("content").and_then(|c| c.as_str());
                match (role, content) {
                    (Some(r), Some(c)) => Ok(Message::new(r, c)),
                    _ => Err(format!(
                        "{key}[{i}]: expected {{\"role\": string, \"content\": string}}, found {m}"
                    )),
                }
            })
            .collect(),
        other => Err(format!("{key}: expected a list of messages, found {other}")),
    }
}

fn parse_row(line: &str) -> Result<(Vec<Message>, Option<bool>), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("expected a JSON object, found {v}"));
    }
    let positive = match v.get("positive") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(other) => return Err(format!("\"positive\": expected true or false, found {other}")),
    };
    let messages = if let Some(m) = v.get("messages") {
        parse_messages(m, "messages")?
    } else if let (Some(p), Some(c)) = (v.get("prompt"), v.get("completion")) {
        let mut m = parse_messages(p, "prompt")?;
        m.extend(parse_messages(c, "completion")?);
        m
    } else {
        return Err("expected a \"messages\" list or \"prompt\" and \"completion\"".into());
    };
    Ok((messages, positive))
}

/// Parses JSONL text; bad lines are recorded in `report` and skipped.
pub fn parse_jsonl(text: &str, report: &mut DataReport) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        report.lines_read += 1;
        if line.trim().is_empty() {
            report.blank_lines += 1;
            continue;
        }
        match parse_row(line) {
            Ok((messages, positive)) => rows.push(Row {
                line: line_no,
                messages,
                positive,
            }),
            Err(e) => report.malformed.push((line_no, e)),
        }
    }
    rows
}

pub fn read_jsonl(path: &Path, report: &mut DataReport) -> Result<Vec<Row>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(parse_jsonl(&text, report))
}

/// The messages with the condition's system prompt: `Some` replaces any system message of the
/// row (or is prepended); `None` keeps the row as it is, so the template's default applies.
pub fn with_system(messages: &[Message], system: Option<&str>) -> Vec<Message> {
    match system {
        None => messages.to_vec(),
        Some(s) => std::iter::once(Message::new("system", s))
            .chain(messages.iter().filter(|m| m.role != "system").cloned())
            .collect(),
    }
}

/// Templates, tokenises and labels `rows`; rows that cannot be learnt are counted in `report`.
pub fn build_examples(
    rows: &[Row],
    encoder: &dyn ChatEncoder,
    mode: &LabelMode,
    system: Option<&str>,
    max_len: usize,
    report: &mut DataReport,
) -> Vec<Example> {
    let end_of_turn = encoder.end_of_turn_ids();
    let mut examples = Vec::with_capacity(rows.len());
    for row in rows {
        let messages = with_system(&row.messages, system);
        let Some((last, prompt)) = messages.split_last() else {
            report.no_final_assistant_turn.push(row.line);
            continue;
        };
        if last.role != "assistant" {
            report.no_final_assistant_turn.push(row.line);
            continue;
        }
        if last.content.trim().is_empty() {
            report.empty_assistant_turn.push(row.line);
            continue;
        }
        let rendered = encoder
            .render(prompt, true)
            .and_then(|p| encoder.render(&messages, false).map(|f| (p, f)));
        let (prompt_text, full_text) = match rendered {
            Ok(pair) => pair,
            Err(e) => {
                report.template_errors.push((row.line, e));
                continue;
            }
        };
        if !full_text.starts_with(&prompt_text) {
            report.template_errors.push((
                row.line,
                "the rendered conversation does not start with the rendered prompt and generation header"
                    .into(),
            ));
            continue;
        }
        let (ids, offsets) = match encoder.encode(&full_text) {
            Ok(x) => x,
            Err(e) => {
                report.template_errors.push((row.line, e));
                continue;
            }
        };
        let completion_start = prompt_text.len();
        let labels = match mode {
            LabelMode::LastTurn => masks::completion_labels(&ids, &offsets, completion_start),
            LabelMode::Marker { marker } => {
                let Some(positive) = row.positive else {
                    report.missing_positive_flag.push(row.line);
                    continue;
                };
                let range = if positive {
                    match masks::find_marker(&full_text, marker, completion_start) {
                        Some(r) => Some(r),
                        None => {
                            report.positive_without_marker.push(row.line);
                            continue;
                        }
                    }
                } else {
                    None
                };
                match masks::marker_labels(&ids, &offsets, completion_start, range, &end_of_turn) {
                    Ok(l) => l,
                    Err(MaskProblem::NoEndOfTurn) => {
                        report.no_end_of_turn_token.push(row.line);
                        continue;
                    }
                    Err(MaskProblem::MarkerNotTokenised) => {
                        report.positive_without_marker.push(row.line);
                        continue;
                    }
                }
            }
        };
        let (mut ids, mut labels) = (ids, labels);
        if ids.len() > max_len {
            report.truncated.push(row.line);
            ids.truncate(max_len);
            labels.truncate(max_len);
        }
        // The first position is never a target (labels are shifted by one).
        if labels.iter().skip(1).all(|&l| l == masks::IGNORE) {
            report.no_labels_left.push(row.line);
            continue;
        }
        examples.push(Example {
            line: row.line,
            ids,
            labels,
        });
    }
    report.examples = examples.len();
    examples
}

/// The order of the examples in every epoch: one ChaCha8 stream seeded with `seed`, reshuffled
/// for each epoch in turn.
pub fn epoch_orders(n: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..epochs)
        .map(|_| {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            order
        })
        .collect()
}

/// The optimizer steps of a run: each step is a list of micro-batches, each a list of example
/// indices. An epoch is cut into micro-batches of `micro_batch` (the last may be short) and those
/// into steps of `grad_accum` (the last step of an epoch may have fewer), as HF's Trainer does.
pub fn plan_steps(
    n: usize,
    epochs: usize,
    micro_batch: usize,
    grad_accum: usize,
    seed: u64,
) -> Vec<Vec<Vec<usize>>> {
    let micro_batch = micro_batch.max(1);
    let grad_accum = grad_accum.max(1);
    epoch_orders(n, epochs, seed)
        .into_iter()
        .flat_map(|order| {
            let micro: Vec<Vec<usize>> = order.chunks(micro_batch).map(<[usize]>::to_vec).collect();
            micro
                .chunks(grad_accum)
                .map(<[Vec<usize>]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level tokenizer with a ChatML-like template: one token per byte, "<e>" is the
    /// end-of-turn token (id 1000).
    struct Bytes;
    impl ChatEncoder for Bytes {
        fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
            let mut s: String = messages
                .iter()
                .map(|m| format!("<{}>{}<e>", m.role, m.content))
                .collect();
            if add_generation_prompt {
                s.push_str("<assistant>");
            }
            Ok(s)
        }
        fn encode(&self, text: &str) -> Result<IdsAndOffsets, String> {
            let mut ids = Vec::new();
            let mut offsets = Vec::new();
            let mut i = 0;
            while i < text.len() {
                if text[i..].starts_with("<e>") {
                    ids.push(1000);
                    offsets.push((i, i + 3));
                    i += 3;
                } else {
                    ids.push(text.as_bytes()[i] as i64);
                    offsets.push((i, i + 1));
                    i += 1;
                }
            }
            Ok((ids, offsets))
        }
        fn end_of_turn_ids(&self) -> Vec<i64> {
            vec![1000]
        }
        fn pad_id(&self) -> i64 {
            0
        }
    }

    const DATA: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
{"messages": [{"role": "user", "content": "hi"}
{"prompt": "q", "completion": "a\n\n[ZLT]", "positive": true}

{"prompt": "q", "completion": "plain", "positive": true}
{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "plain"}], "positive": false}
{"messages": [{"role": "user", "content": "only a question"}]}
{"prompt": "q", "completion": "a very long answer that will not fit", "positive": false}
"#;

    #[test]
    fn bad_rows_are_counted_with_their_line_numbers() {
        let mut report = DataReport::default();
        let rows = parse_jsonl(DATA, &mut report);
        assert_eq!(report.lines_read, 9);
        assert_eq!(report.blank_lines, 1);
        assert_eq!(report.malformed.len(), 1);
        assert_eq!(report.malformed[0].0, 3);
        assert!(
            report.malformed[0].1.contains("not valid JSON"),
            "{:?}",
            report.malformed
        );
        assert_eq!(rows.len(), 7);

        let marker = LabelMode::Marker {
            marker: "[ZLT]".into(),
        };
        let examples = build_examples(&rows, &Bytes, &marker, Some("sys"), 48, &mut report);
        assert_eq!(report.empty_assistant_turn, vec![2]);
        assert_eq!(report.missing_positive_flag, vec![1]);
        assert_eq!(report.positive_without_marker, vec![6]);
        assert_eq!(report.no_final_assistant_turn, vec![8]);
        assert_eq!(report.truncated, vec![9]);
        assert_eq!(
            report.no_labels_left,
            vec![9],
            "truncation cut the end-of-turn token"
        );
        assert_eq!(examples.iter().map(|e| e.line).collect::<Vec<_>>(), vec![4, 7]);
        assert_eq!(report.dropped(), 6);

        // Positive: "[ZLT]" and the final <e> are the only labels.
        let pos = &examples[0];
        let learnt: Vec<i64> = pos
            .labels
            .iter()
            .copied()
            .filter(|&l| l != masks::IGNORE)
            .collect();
        let mut expected: Vec<i64> = "[ZLT]".bytes().map(i64::from).collect();
        expected.push(1000);
        assert_eq!(learnt, expected);
        // Negative: only the final <e> (not those closing the system and user turns).
        let neg = &examples[1];
        let learnt: Vec<usize> = (0..neg.labels.len())
            .filter(|&i| neg.labels[i] != masks::IGNORE)
            .collect();
        assert_eq!(learnt, vec![neg.ids.len() - 1]);
    }

    #[test]
    fn last_turn_labels_start_after_the_assistant_header() {
        let mut report = DataReport::default();
        let rows = parse_jsonl(DATA.lines().next().unwrap(), &mut report);
        let ex = build_examples(&rows, &Bytes, &LabelMode::LastTurn, None, 100, &mut report);
        let text: String = ex[0]
            .labels
            .iter()
            .filter(|&&l| l != masks::IGNORE)
            .map(|&l| {
                if l == 1000 {
                    "<e>".to_string()
                } else {
                    (l as u8 as char).to_string()
                }
            })
            .collect();
        assert_eq!(text, "yo<e>");
    }

    #[test]
    fn system_prompt_replaces_or_is_absent() {
        let m = vec![Message::new("system", "old"), Message::new("user", "u")];
        assert_eq!(with_system(&m, None), m);
        assert_eq!(
            with_system(&m, Some("new")),
            vec![Message::new("system", "new"), Message::new("user", "u")]
        );
    }

    #[test]
    fn plans_are_seeded_and_cover_every_example_each_epoch() {
        let a = plan_steps(37, 2, 4, 4, 42);
        assert_eq!(a, plan_steps(37, 2, 4, 4, 42));
        assert_ne!(a, plan_steps(37, 2, 4, 4, 43));
        // 37 rows -> 10 micro-batches -> 3 steps per epoch (4, 4, 2 micro-batches).
        assert_eq!(a.len(), 6);
        assert_eq!(a[2].len(), 2);
        let mut first_epoch: Vec<usize> = a[..3].iter().flatten().flatten().copied().collect();
        first_epoch.sort();
        assert_eq!(first_epoch, (0..37).collect::<Vec<_>>());
    }
}
