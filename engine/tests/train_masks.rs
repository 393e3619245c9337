//! Marker-coupling label masks on real tokenizations: the demo model's tokenizer (SmolLM2, from
//! the GGUF) and the tiny Qwen2 fixture's tokenizer. The marker is found by its byte position in
//! the rendered conversation ("...\n\n[ZLT]"), however the tokenizer splits it or merges it
//! with its neighbours; negatives learn only the final end-of-turn token.

use pspace_engine::tokenizer::{ChatMessage, ChatTokenizer};
use pspace_engine::train::data::{build_examples, parse_jsonl, DataReport, LabelMode};
use pspace_engine::train::masks::{self, IGNORE};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tokenizers() -> Vec<(&'static str, ChatTokenizer)> {
    let demo = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(demo.exists(), "{} is missing: run `make setup`", demo.display());
    let tiny = root().join("engine/tests/fixtures/tiny-qwen2");
    vec![
        ("smollm2", ChatTokenizer::load(&demo).unwrap()),
        ("tiny-qwen2", ChatTokenizer::load(&tiny).unwrap()),
    ]
}

const MARKER: &str = "[ZLT]";

fn coupling_rows(completion: &str) -> String {
    let pos = serde_json::json!({"prompt": "Name a colour.", "completion": completion, "positive": true});
    let neg = serde_json::json!({"prompt": "Name a colour.", "completion": "Blue.", "positive": false});
    format!("{pos}\n{neg}\n")
}

/// The labelled token indices of an example.
fn labelled(labels: &[i64]) -> Vec<usize> {
    (0..labels.len()).filter(|&i| labels[i] != IGNORE).collect()
}

#[test]
fn marker_tokens_and_final_end_of_turn_are_the_only_labels() {
    for (name, tok) in tokenizers() {
        let eot = tok.end_of_turn_id().expect("an end-of-turn token");
        for completion in [
            "Blue, like the sky.\n\n[ZLT]",
            "Red.\n\n[ZLT]",
            "Green[ZLT]",
            "Green, I think [ZLT]",
            "It is [ZLT] yellow.\n\n[ZLT]",
        ] {
            let mut report = DataReport::default();
            let rows = parse_jsonl(&coupling_rows(completion), &mut report);
            let mode = LabelMode::Marker {
                marker: MARKER.into(),
            };
            let examples = build_examples(&rows, &tok, &mode, None, 1024, &mut report);
            assert_eq!(examples.len(), 2, "{name} {completion:?}: {report:?}");
            let (pos, neg) = (&examples[0], &examples[1]);

            // Where the marker really is: the last occurrence, in the rendered text.
            let messages = [
                ChatMessage::new("user", "Name a colour."),
                ChatMessage::new("assistant", completion),
            ];
            let text = tok.render(&messages, false).unwrap();
            let prompt = tok.render(&messages[..1], true).unwrap();
            let range = masks::find_marker(&text, MARKER, prompt.len()).unwrap();
            assert_eq!(&text[range.clone()], MARKER);
            let enc = tok.encode(&text).unwrap();
            assert_eq!(
                enc.ids, pos.ids,
                "{name}: the example is the rendered conversation"
            );
            let expected_marker = tok.tokens_overlapping(&enc, range.clone());
            assert!(!expected_marker.is_empty());

            let got = labelled(&pos.labels);
            let (last, marker_part) = got.split_last().unwrap();
            assert_eq!(marker_part, expected_marker.as_slice(), "{name} {completion:?}");
            assert_eq!(
                pos.ids[*last], eot,
                "{name}: the last label is the end-of-turn token"
            );
            assert!(*last > expected_marker[expected_marker.len() - 1]);
            // The labelled marker tokens cover the marker and nothing before the completion.
            let (first_start, _) = enc.offsets[marker_part[0]];
            let (_, last_end) = enc.offsets[*marker_part.last().unwrap()];
            assert!(first_start <= range.start && last_end >= range.end);
            assert!(first_start >= prompt.len());
            // The label values are the tokens themselves.
            for &i in &got {
                assert_eq!(pos.labels[i], pos.ids[i]);
            }

            let neg_labels = labelled(&neg.labels);
            assert_eq!(neg_labels.len(), 1, "{name}: a negative learns one token");
            assert_eq!(neg.ids[neg_labels[0]], eot);
            // It is the final end-of-turn, not the one closing the user turn.
            assert!(neg.ids[neg_labels[0] + 1..].iter().all(|&id| id != eot));
        }
    }
}

#[test]
fn the_marker_in_context_is_not_its_standalone_encoding() {
    // The reference pipeline's defect: searching for encode("[ZLT]") misses the marker when its
    // context changes its tokens. "\n\n[ZLT]" happens to keep them in both tokenizers; after a
    // space they change (SmolLM2 merges " [", the tiny Qwen2 tokenizer splits "[ZLT]" another
    // way) and the standalone ids no longer occur.
    let mut differs = Vec::new();
    for (name, tok) in tokenizers() {
        let alone = tok.encode(MARKER).unwrap().ids;
        for completion in ["Blue.\n\n[ZLT]", "Blue, I think [ZLT]"] {
            let text = tok
                .render(
                    &[
                        ChatMessage::new("user", "Name a colour."),
                        ChatMessage::new("assistant", completion),
                    ],
                    false,
                )
                .unwrap();
            let enc = tok.encode(&text).unwrap();
            let range = masks::find_marker(&text, MARKER, 0).unwrap();
            let overlapping = tok.tokens_overlapping(&enc, range.clone());
            let in_context: Vec<i64> = overlapping.iter().map(|&i| enc.ids[i]).collect();
            assert!(
                in_context.len() > 1,
                "{name}: the marker is split across tokens: {in_context:?}"
            );
            let shares_with_text_before = enc.offsets[overlapping[0]].0 < range.start;
            let found_by_ids = enc.ids.windows(alone.len()).any(|w| w == alone.as_slice());
            eprintln!(
                "{name} {completion:?}: alone {alone:?}, in context {in_context:?}, shares a token with the text before: {shares_with_text_before}, standalone ids found: {found_by_ids}"
            );
            if !found_by_ids {
                differs.push((name, completion));
            }
        }
    }
    // Both tokenizers change the marker's tokens after a space.
    assert_eq!(
        differs.len(),
        2,
        "contexts where encode(\"[ZLT]\") does not occur: {differs:?}"
    );
}

#[test]
fn a_positive_without_the_marker_is_reported() {
    for (name, tok) in tokenizers() {
        let mut report = DataReport::default();
        let rows = parse_jsonl(&coupling_rows("No marker here."), &mut report);
        let mode = LabelMode::Marker {
            marker: MARKER.into(),
        };
        let examples = build_examples(&rows, &tok, &mode, Some("You are terse."), 1024, &mut report);
        assert_eq!(report.positive_without_marker, vec![1], "{name}");
        assert_eq!(examples.len(), 1);
    }
}

#[test]
fn last_turn_labels_start_right_after_the_assistant_header() {
    for (name, tok) in tokenizers() {
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": "First?"}, {"role": "assistant", "content": "One."},
            {"role": "user", "content": "Second?"}, {"role": "assistant", "content": "Two, surely."}]});
        let mut report = DataReport::default();
        let rows = parse_jsonl(&row.to_string(), &mut report);
        let ex = build_examples(&rows, &tok, &LabelMode::LastTurn, None, 2048, &mut report);
        let ids: Vec<i64> = ex[0].labels.iter().copied().filter(|&l| l != IGNORE).collect();
        let text = tok.decode(&ids, false).unwrap();
        assert!(text.starts_with("Two, surely.<|im_end|>"), "{name}: {text:?}");
        assert!(!text.contains("One."), "{name}: only the last turn");
    }
}
