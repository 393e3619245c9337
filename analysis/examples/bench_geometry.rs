//! Speed benchmark of the whole geometry analysis (M1, M2, M3 with their nulls and bootstrap
//! intervals, all three families) on seeded synthetic activations held in memory.
//!
//! Default = full size: 7 checkpoints x 2 methods x 5 layers x 12 personas x 240 questions x
//! 3584 hidden, 10,000 permutations. Flags override: `--questions N --hidden N --layers N
//! --permutations N --bootstrap N --components N`; `--dump PATH` writes the hashed results
//! there. Prints one JSON object (time, machine,
//! cores, sizes, settings, CPU seconds of each phase) on stdout.

use pspace_analysis::geometry::synthetic::{generate, SyntheticDesign};
use pspace_analysis::geometry::{compute, GeometryConfig, GeometryInput, MethodActivations};
use std::time::Instant;

fn flag(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: expected a whole number: {e}")),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat (clock ticks of
/// 1/100 s on Linux); None where that file is unreadable.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// sha256 of everything the geometry puts into result.json (summary with every cell's
/// statistic, p-values and bootstrap intervals, and the three families), so two builds can be
/// checked to give byte-identical results.
/// With `--dump PATH` that text is also written to PATH, so two builds' numbers can be
/// compared value by value where they are not identical.
fn result_digest(
    out: &pspace_analysis::geometry::GeometryOutput,
    dump: Option<&str>,
) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(&serde_json::json!({
        "summary": out.summary,
        "families": [&out.em_pre_post, &out.benign_pre_post, &out.em_vs_benign],
    }))
    .map_err(|e| e.to_string())?;
    if let Some(path) = dump {
        std::fs::write(path, &text).map_err(|e| format!("--dump {path}: {e}"))?;
    }
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

/// CPU seconds of each phase summed over the (method, layer) jobs (null where a job's phase
/// was not measured).
fn phase_totals(timings: &[pspace_analysis::geometry::timing::LayerTiming]) -> serde_json::Value {
    let total = |get: fn(&pspace_analysis::geometry::timing::PhaseSeconds) -> Option<f64>| {
        timings.iter().map(|t| get(&t.cpu_seconds)).sum::<Option<f64>>()
    };
    serde_json::json!({
        "observed": total(|p| p.observed),
        "bootstrap": total(|p| p.bootstrap),
        "pca": total(|p| p.pca),
        "m3_observed": total(|p| p.m3_observed),
        "m3_null": total(|p| p.m3_null),
        "m3_bootstrap": total(|p| p.m3_bootstrap),
    })
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let questions = flag(&args, "--questions", 240)?;
    let hidden = flag(&args, "--hidden", 3584)?;
    let layer_count = flag(&args, "--layers", 5)?;
    let dump = match args.iter().position(|a| a == "--dump") {
        None => None,
        Some(i) => Some(args.get(i + 1).ok_or("--dump needs a path")?.as_str()),
    };
    let defaults = GeometryConfig::default();
    let config = GeometryConfig {
        permutations: flag(&args, "--permutations", defaults.permutations)?,
        bootstrap: flag(&args, "--bootstrap", defaults.bootstrap)?,
        components: flag(&args, "--components", defaults.components)?,
        ..defaults
    };
    let layers: Vec<usize> = [7, 14, 20, 21, 27].into_iter().take(layer_count).collect();
    let checkpoints: Vec<String> = [
        "base",
        "E0_assistant",
        "E1_paramedic",
        "E2_kindergarten_teacher",
        "E3_french_person",
        "E4_villain",
        "benign_sft",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let design = SyntheticDesign {
        seed: 42,
        personas: 12,
        questions,
        hidden,
        layers: layers.clone(),
        methods: vec!["A".into(), "B".into()],
        checkpoints: checkpoints.clone(),
        collapse: 0.3,
        benign_fraction: 0.6,
        persona_scale: 0.15,
        method_b_missing: 0.05,
        axis_persona: 0,
    };
    let generate_start = Instant::now();
    let methods: Vec<MethodActivations> = generate(&design)
        .into_iter()
        .map(|(method, checkpoints)| MethodActivations { method, checkpoints })
        .collect();
    let generate_s = generate_start.elapsed().as_secs_f64();
    let input = GeometryInput {
        base: "base".into(),
        conditions: checkpoints[1..6].to_vec(),
        cos_to_assistant: vec![1.0, 0.9, 0.8, 0.7, 0.6],
        benign: Some("benign_sft".into()),
        anchor_condition: "E0_assistant".into(),
        axis_persona: "persona_0".into(),
        methods,
    };
    let cpu_before = process_cpu_seconds();
    let start = Instant::now();
    let out = compute(&input, &config).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_before.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let m3 = &out.summary.m3_accuracy["A"][&layers[0].to_string()];
    let report = serde_json::json!({
        "benchmark": "geometry family (M1, M2, M3 + nulls + bootstrap, 3 families)",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "generate_seconds": generate_s,
        "machine": cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "sizes": {
            "checkpoints": checkpoints.len(), "methods": 2, "layers": layers.len(), "personas": 12,
            "questions": questions, "hidden": hidden,
        },
        "settings": {
            "permutations": config.permutations, "bootstrap": config.bootstrap,
            "cv_folds": config.cv_folds, "pca_components": config.components,
            "pca_power_iterations": config.power_iterations, "lda_shrinkage": config.shrinkage,
        },
        "cells": {
            "geometry_em_pre_post": out.em_pre_post.len(),
            "geometry_benign_pre_post": out.benign_pre_post.len(),
            "geometry_em_vs_benign": out.em_vs_benign.len(),
        },
        "sample": { "m3_accuracy_A_first_layer": m3 },
        "phase_cpu_seconds_total": phase_totals(&out.timings),
        "cells_cpu_seconds": out.cells_cpu_seconds,
        "phase_cpu_seconds_per_job": &out.timings,
        "result_sha256": result_digest(&out, dump)?,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}
