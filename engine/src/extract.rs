//! Persona-vector extraction: batched forward passes that capture the residual stream.
//!
//! Method A: the hidden state at the last prompt token. Method B: the mean over the response
//! positions [prompt_len, full_len) of prompt+response. Tokenisation is the caller's job; these
//! functions take token ids. Sequences are sorted by length and packed into batches under a
//! token budget; rows are right-padded (positions come from the mask, so padding does not move
//! a real token), and results come back in input order as f32 on the CPU.
//!
//! With Method B, extraction is generation-bound: `generate::generate_with_states` gives both
//! methods' states from the greedy decode itself (the prefill holds Method A's last prompt
//! token, each decode step a response token), so the two forward passes here are for callers
//! that already hold the responses.

use crate::model::{ForwardOptions, Logits, Model};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer {layer} was asked for but the model has {layers} layers (0..{layers})")]
    NoSuchLayer { layer: usize, layers: usize },
    #[error("sequence {index} is empty: expected at least one prompt token")]
    EmptyPrompt { index: usize },
    #[error("{0}")]
    Interrupted(crate::generate::Interrupted),
}

fn check_layers(model: &Model, layers: &[usize]) -> Result<(), ExtractError> {
    for &layer in layers {
        if layer >= model.num_layers() {
            return Err(ExtractError::NoSuchLayer {
                layer,
                layers: model.num_layers(),
            });
        }
    }
    Ok(())
}

/// Index batches of sequences sorted by length, each under `max_batch_tokens` padded tokens.
pub fn length_buckets(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let longest = current.first().map_or(lengths[i], |&f| lengths[f]);
        if !current.is_empty() && (current.len() + 1) * longest > max_batch_tokens.max(longest) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Right-padded ids and mask for a batch.
pub(crate) fn right_pad(seqs: &[&[i64]], device: Device) -> (Tensor, Tensor) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; seqs.len() * t];
    let mut mask = vec![0i64; seqs.len() * t];
    for (r, s) in seqs.iter().enumerate() {
        ids[r * t..r * t + s.len()].copy_from_slice(s);
        mask[r * t..r * t + s.len()].iter_mut().for_each(|m| *m = 1);
    }
    let shape = [seqs.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Every layer exists and no prompt is empty.
pub(crate) fn check_request(
    model: &Model,
    prompts: &[Vec<i64>],
    layers: &[usize],
) -> Result<(), ExtractError> {
    check_layers(model, layers)?;
    if let Some(index) = prompts.iter().position(Vec::is_empty) {
        return Err(ExtractError::EmptyPrompt { index });
    }
    Ok(())
}

/// Checks the request and allocates one zero [N, H] f32 CPU tensor per layer.
fn output_rows(model: &Model, prompts: &[Vec<i64>], layers: &[usize]) -> Result<Vec<Tensor>, ExtractError> {
    check_request(model, prompts, layers)?;
    let h = model.config().hidden_size as i64;
    Ok(layers
        .iter()
        .map(|_| Tensor::zeros([prompts.len() as i64, h], (Kind::Float, Device::Cpu)))
        .collect())
}

/// One right-padded forward pass that captures the given layers (no logits).
fn capture(model: &Model, seqs: &[&[i64]], layers: &[usize]) -> crate::model::ForwardOutput {
    let (ids, mask) = right_pad(seqs, model.device());
    model.forward(
        &ids,
        &mask,
        None,
        &ForwardOptions {
            capture_layers: layers,
            logits: Logits::None,
            ..Default::default()
        },
    )
}

/// Method A: for every prompt, the output of each layer in `layers` at its last token.
/// Returns one [N, H] f32 CPU tensor per layer, rows in input order.
pub fn last_token_states(
    model: &Model,
    prompts: &[Vec<i64>],
    layers: &[usize],
    max_batch_tokens: usize,
) -> Result<Vec<Tensor>, ExtractError> {
    let mut out = output_rows(model, prompts, layers)?;
    let _guard = tch::no_grad_guard();
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    for batch in length_buckets(&lengths, max_batch_tokens) {
        let seqs: Vec<&[i64]> = batch.iter().map(|&i| prompts[i].as_slice()).collect();
        let fwd = capture(model, &seqs, layers);
        let last = Tensor::from_slice(&batch.iter().map(|&i| lengths[i] as i64 - 1).collect::<Vec<_>>())
            .to_device(model.device());
        let rows = Tensor::arange(batch.len() as i64, (Kind::Int64, model.device()));
        let dest = Tensor::from_slice(&batch.iter().map(|&i| i as i64).collect::<Vec<_>>());
        for (li, &layer) in layers.iter().enumerate() {
            let vecs = fwd.hidden[&layer]
                .index(&[Some(&rows), Some(&last)])
                .to_kind(Kind::Float)
                .to_device(Device::Cpu);
            let _ = out[li].index_copy_(0, &dest, &vecs);
        }
    }
    Ok(out)
}

/// Method B: for every (prompt, response) pair, the mean of each layer's output over the
/// response positions. Rows whose response is empty are zero and `false` in the returned mask.
pub fn response_mean_states(
    model: &Model,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    layers: &[usize],
    max_batch_tokens: usize,
) -> Result<(Vec<Tensor>, Vec<bool>), ExtractError> {
    let mut out = output_rows(model, prompts, layers)?;
    let _guard = tch::no_grad_guard();
    let valid: Vec<bool> = responses.iter().map(|r| !r.is_empty()).collect();
    let todo: Vec<usize> = (0..prompts.len()).filter(|&i| valid[i]).collect();
    let full: Vec<Vec<i64>> = todo
        .iter()
        .map(|&i| [prompts[i].as_slice(), responses[i].as_slice()].concat())
        .collect();
    let lengths: Vec<usize> = full.iter().map(Vec::len).collect();
    for batch in length_buckets(&lengths, max_batch_tokens) {
        let seqs: Vec<&[i64]> = batch.iter().map(|&j| full[j].as_slice()).collect();
        let t = seqs.iter().map(|q| q.len()).max().unwrap_or(0) as i64;
        let fwd = capture(model, &seqs, layers);
        // weights[r, p] = 1/len(response) on response positions, 0 elsewhere.
        let mut w = vec![0f32; batch.len() * t as usize];
        for (r, &j) in batch.iter().enumerate() {
            let i = todo[j];
            let (p, n) = (prompts[i].len(), responses[i].len());
            w[r * t as usize + p..r * t as usize + p + n]
                .iter_mut()
                .for_each(|x| *x = 1.0 / n as f32);
        }
        let w = Tensor::from_slice(&w)
            .view([batch.len() as i64, 1, t])
            .to_device(model.device());
        let dest = Tensor::from_slice(&batch.iter().map(|&j| todo[j] as i64).collect::<Vec<_>>());
        for (li, &layer) in layers.iter().enumerate() {
            let hidden = fwd.hidden[&layer].to_kind(Kind::Float);
            let means = w.bmm(&hidden).squeeze_dim(1).to_device(Device::Cpu);
            let _ = out[li].index_copy_(0, &dest, &means);
        }
    }
    Ok((out, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_token_budget_and_cover_every_sequence() {
        let lengths = [5, 100, 7, 50, 50, 3];
        let batches = length_buckets(&lengths, 110);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() * longest <= 110 || b.len() == 1, "{b:?}");
        }
        assert_eq!(batches[0], vec![1]);
    }
}
