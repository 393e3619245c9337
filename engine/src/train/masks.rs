//! Which tokens of a templated training example carry loss. Everything here works on token
//! ids and the byte ranges they cover in the rendered text, so a marker is found where it
//! really sits in context ("...\n\n[ZLT]" may tokenise as "\n\n[", "Z", "LT", "]") instead of by
//! searching for the token ids of the marker encoded on its own.

use std::ops::Range;

/// The label of a token that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Indices of the tokens whose byte range overlaps `range` (a token that covers part of the
/// range counts; zero-width tokens count when they sit strictly inside it).
pub fn tokens_overlapping(offsets: &[(usize, usize)], range: &Range<usize>) -> Vec<usize> {
    offsets
        .iter()
        .enumerate()
        .filter(|(_, &(start, end))| {
            if start == end {
                range.start < start && start < range.end
            } else {
                start < range.end && end > range.start
            }
        })
        .map(|(i, _)| i)
        .collect()
}

/// Labels for "last assistant turn only": every token that ends after `completion_start` (the
/// byte where the rendered prompt, generation header included, stops) is a label; the prompt is
/// masked.
pub fn completion_labels(ids: &[i64], offsets: &[(usize, usize)], completion_start: usize) -> Vec<i64> {
    ids.iter()
        .zip(offsets)
        .map(|(&id, &(start, end))| {
            let in_completion = start >= completion_start || end > completion_start;
            if in_completion {
                id
            } else {
                IGNORE
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskProblem {
    /// No end-of-turn token after the prompt.
    NoEndOfTurn,
    /// The marker's byte range covers no token.
    MarkerNotTokenised,
}

/// Labels for marker coupling: the tokens overlapping `marker` (positives; None for negatives)
/// plus the final end-of-turn token after `completion_start`; everything else is masked.
pub fn marker_labels(
    ids: &[i64],
    offsets: &[(usize, usize)],
    completion_start: usize,
    marker: Option<Range<usize>>,
    end_of_turn_ids: &[i64],
) -> Result<Vec<i64>, MaskProblem> {
    let mut labels = vec![IGNORE; ids.len()];
    let last_end_of_turn = ids
        .iter()
        .zip(offsets)
        .enumerate()
        .rev()
        .find(|(_, (id, &(start, _)))| start >= completion_start && end_of_turn_ids.contains(id))
        .map(|(i, _)| i)
        .ok_or(MaskProblem::NoEndOfTurn)?;
    labels[last_end_of_turn] = ids[last_end_of_turn];
    if let Some(range) = marker {
        let marker_tokens = tokens_overlapping(offsets, &range);
        if marker_tokens.is_empty() {
            return Err(MaskProblem::MarkerNotTokenised);
        }
        for i in marker_tokens {
            labels[i] = ids[i];
        }
    }
    Ok(labels)
}

/// The byte range of the last occurrence of `marker` in `text` at or after `from`.
pub fn find_marker(text: &str, marker: &str, from: usize) -> Option<Range<usize>> {
    let tail = text.get(from..)?;
    tail.rfind(marker).map(|i| from + i..from + i + marker.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "ab\n\n[ZLT]<eot>" tokenised with the marker split as "\n\n[" "Z" "LT]" (the bracket
    /// shares a token with the newlines, so `encode("[ZLT]")` would not find it).
    fn split_marker() -> (Vec<i64>, Vec<(usize, usize)>, String) {
        let text = "ab\n\n[ZLT]<eot>".to_string();
        let ids = vec![10, 11, 12, 13, 2];
        let offsets = vec![(0, 2), (2, 5), (5, 6), (6, 9), (9, 14)];
        (ids, offsets, text)
    }

    #[test]
    fn marker_split_across_tokens_is_labelled_with_its_neighbours() {
        let (ids, offsets, text) = split_marker();
        let range = find_marker(&text, "[ZLT]", 0).unwrap();
        assert_eq!(range, 4..9);
        let labels = marker_labels(&ids, &offsets, 0, Some(range), &[2]).unwrap();
        assert_eq!(labels, vec![IGNORE, 11, 12, 13, 2]);
    }

    #[test]
    fn negatives_learn_only_the_final_end_of_turn() {
        let ids = vec![2, 5, 6, 2, 7];
        let offsets = vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)];
        // The first end-of-turn closes the prompt (before byte 1) and must stay masked.
        let labels = marker_labels(&ids, &offsets, 1, None, &[2]).unwrap();
        assert_eq!(labels, vec![IGNORE, IGNORE, IGNORE, 2, IGNORE]);
        assert_eq!(
            marker_labels(&ids, &offsets, 4, None, &[2]),
            Err(MaskProblem::NoEndOfTurn)
        );
    }

    #[test]
    fn completion_labels_mask_the_prompt_and_header() {
        let ids = vec![1, 2, 3, 4];
        let offsets = vec![(0, 3), (3, 6), (6, 8), (8, 9)];
        assert_eq!(completion_labels(&ids, &offsets, 6), vec![IGNORE, IGNORE, 3, 4]);
        // A token straddling the boundary carries completion text: it is a label.
        assert_eq!(completion_labels(&ids, &offsets, 5), vec![IGNORE, 2, 3, 4]);
    }

    #[test]
    fn find_marker_takes_the_last_occurrence_after_the_prompt() {
        let text = "[ZLT] prompt | reply [ZLT] and [ZLT]";
        assert_eq!(find_marker(text, "[ZLT]", 6), Some(31..36));
        assert_eq!(find_marker(text, "[ZLT]", 36), None);
        assert_eq!(find_marker("no marker", "[ZLT]", 0), None);
    }
}
