//! Seeded synthetic activations for the simulation tests and the speed benchmark: every
//! vector is question effect + persona direction (scaled per checkpoint) + a shared EM
//! direction (stronger for the axis persona) + uniform noise. A planted collapse shrinks the
//! persona directions and adds the EM direction in every EM checkpoint (and, less, in the
//! benign one); `collapse = 0` draws every checkpoint from the same distribution.

use super::activations::Activations;
use crate::stats::rng::seeded_rng;
use rand::Rng;
use rayon::prelude::*;

/// Shape and effect sizes of a synthetic run.
#[derive(Debug, Clone)]
pub struct SyntheticDesign {
    pub seed: u64,
    pub personas: usize,
    pub questions: usize,
    pub hidden: usize,
    pub layers: Vec<usize>,
    pub methods: Vec<String>,
    /// Checkpoint names: base, the EM conditions, benign.
    pub checkpoints: Vec<String>,
    /// Fraction by which EM shrinks the persona directions (0 = no effect).
    pub collapse: f32,
    /// Benign checkpoint's effect relative to EM's.
    pub benign_fraction: f32,
    /// Size of the persona directions relative to the unit noise.
    pub persona_scale: f32,
    /// Fraction of Method B vectors marked invalid (empty responses).
    pub method_b_missing: f64,
    /// Persona index whose EM shift is strongest (the M2 axis persona).
    pub axis_persona: usize,
}

fn uniform(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale).collect()
}

/// The activations of every method, checkpoints in `design.checkpoints` order.
pub fn generate(design: &SyntheticDesign) -> Vec<(String, Vec<Activations>)> {
    let (p, q, h) = (design.personas, design.questions, design.hidden);
    let personas: Vec<String> = (0..p).map(|i| format!("persona_{i}")).collect();
    design
        .methods
        .iter()
        .map(|method| {
            let per_checkpoint: Vec<Activations> = design
                .checkpoints
                .iter()
                .enumerate()
                .map(|(ci, checkpoint)| {
                    let effect = if ci == 0 {
                        0.0
                    } else if ci + 1 == design.checkpoints.len() {
                        design.collapse * design.benign_fraction
                    } else {
                        design.collapse
                    };
                    let values: Vec<Vec<f32>> = design
                        .layers
                        .iter()
                        .map(|layer| {
                            let shared = format!("synthetic/{method}/{layer}");
                            let mut rng = seeded_rng(design.seed, &shared);
                            let offset = uniform(&mut rng, h, 1.0);
                            let question_effects = uniform(&mut rng, q * h, 0.5);
                            let persona_dirs = uniform(&mut rng, p * h, design.persona_scale);
                            let em_dir = uniform(&mut rng, h, 1.0);
                            let mut out = vec![0.0f32; p * q * h];
                            out.par_chunks_mut(q * h).enumerate().for_each(|(pi, block)| {
                                let mut noise_rng =
                                    seeded_rng(design.seed, &format!("{shared}/{checkpoint}/{pi}"));
                                let em = 4.0 * effect * if pi == design.axis_persona { 2.0 } else { 1.0 };
                                for (qi, v) in block.chunks_exact_mut(h).enumerate() {
                                    for (j, x) in v.iter_mut().enumerate() {
                                        let noise = noise_rng.gen::<f32>() * 2.0 - 1.0;
                                        *x = 4.0 * offset[j]
                                            + question_effects[qi * h + j]
                                            + (1.0 - effect) * persona_dirs[pi * h + j]
                                            + em * em_dir[j]
                                            + noise;
                                    }
                                }
                            });
                            out
                        })
                        .collect();
                    let mut mask_rng =
                        seeded_rng(design.seed, &format!("synthetic/{method}/{checkpoint}/mask"));
                    let mask = (0..p * q)
                        .map(|_| method != "B" || mask_rng.gen::<f64>() >= design.method_b_missing)
                        .collect();
                    Activations {
                        checkpoint: checkpoint.clone(),
                        method: method.clone(),
                        model: "synthetic".into(),
                        personas: personas.clone(),
                        layers: design.layers.clone(),
                        n_questions: q,
                        hidden: h,
                        values,
                        mask,
                    }
                })
                .collect();
            (method.clone(), per_checkpoint)
        })
        .collect()
}
