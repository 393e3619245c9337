//! `analyze --run` on a whole run directory: synthetic activations with a planted collapse
//! (written in the documented safetensors format) beside the reference marker hits, through
//! the geometry, the families, the verdicts and the report; and a persona-order mismatch in
//! one activation file stops it before any computing.

use pspace_analysis::families::Flavour;
use pspace_analysis::families::{GEOMETRY_BENIGN_PRE_POST, GEOMETRY_EM_PRE_POST, GEOMETRY_EM_VS_BENIGN};
use pspace_analysis::geometry::activations::{path_in_run, write};
use pspace_analysis::geometry::synthetic::{generate, SyntheticDesign};
use pspace_analysis::input::Personas;
use pspace_analysis::pipeline::{
    analyze_run, analyze_run_with, run_checkpoints, write_outputs, Options, Settings,
};
use pspace_analysis::verdict::{Outcome, Thresholds};
use std::path::{Path, PathBuf};

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments/data")
        .join(name)
}

fn make_run(run: &Path, scramble_personas_of: Option<&str>) -> Personas {
    let personas = Personas::load(&reference("personas.json")).unwrap();
    std::fs::copy(reference("personas.json"), run.join("personas.json")).unwrap();
    let hits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference("reference_marker_hits.json")).unwrap())
            .unwrap();
    std::fs::create_dir_all(run.join("marker_hits")).unwrap();
    for (condition, data) in hits["conditions"].as_object().unwrap() {
        let file = serde_json::json!({"completions_per_question": 10, "conditions": {condition: data}});
        std::fs::write(
            run.join(format!("marker_hits/{condition}.json")),
            file.to_string(),
        )
        .unwrap();
    }
    let checkpoints = run_checkpoints(&personas);
    let axis = personas.eval_order.iter().position(|p| p == "assistant").unwrap();
    let design = SyntheticDesign {
        seed: 7,
        personas: personas.eval_order.len(),
        questions: 20,
        hidden: 48,
        layers: vec![7, 14, 20, 21, 27],
        methods: vec!["A".into(), "B".into()],
        checkpoints: checkpoints.clone(),
        collapse: 0.6,
        benign_fraction: 0.3,
        persona_scale: 3.0,
        method_b_missing: 0.05,
        axis_persona: axis,
    };
    for (method, per_checkpoint) in generate(&design) {
        for mut activations in per_checkpoint {
            activations.personas = personas.eval_order.clone();
            if scramble_personas_of == Some(activations.checkpoint.as_str()) {
                activations.personas.swap(0, 1);
            }
            write(&path_in_run(run, &activations.checkpoint, &method), &activations).unwrap();
        }
    }
    personas
}

fn options() -> Options {
    let mut options = Options {
        behavior: Default::default(),
        thresholds: Thresholds::default(),
        allow_partial: false,
    };
    options.behavior.permutations = 500;
    options.behavior.bootstrap = 200;
    options
}

#[test]
fn a_whole_run_is_analysed() {
    let run = tempfile::tempdir().unwrap();
    make_run(run.path(), None);
    let result = analyze_run(
        run.path(),
        &run.path().join("personas.json"),
        Some(10),
        &options(),
    )
    .unwrap();
    assert!(!result.partial, "{:?}", result.partial_reasons);
    assert_eq!(result.families[GEOMETRY_EM_PRE_POST].n_cells, 150);
    assert_eq!(result.families[GEOMETRY_BENIGN_PRE_POST].n_cells, 30);
    assert_eq!(result.families[GEOMETRY_EM_VS_BENIGN].n_cells, 150);
    let g1 = result.verdicts.principled.g1.as_ref().unwrap();
    assert_eq!(g1.outcome, Outcome::Fires, "{}", g1.reason);
    // 2 activation files (methods) x 7 checkpoints + 5 hit files + the persona file.
    assert_eq!(result.inputs.len(), 14 + 5 + 1);
    let out =
        std::env::var_os("PSPACE_KEEP_REPORT").map_or_else(|| run.path().join("analysis"), PathBuf::from);
    let (_, report) = write_outputs(&result, &out).unwrap();
    let text = std::fs::read_to_string(report).unwrap();
    assert!(text.contains("### M1") && text.contains("m1_grid.png") && text.contains("m3_accuracy.png"));
}

#[test]
fn a_persona_order_mismatch_is_an_error() {
    let run = tempfile::tempdir().unwrap();
    make_run(run.path(), Some("E2_kindergarten_teacher"));
    let err = analyze_run(
        run.path(),
        &run.path().join("personas.json"),
        Some(10),
        &options(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("E2_kindergarten_teacher") || text.contains("persona"),
        "{text}"
    );
}

/// The M2 axis is the anchor condition's (E0 by default), wherever the persona file lists it:
/// moving E0 from first to last changes no M2 cell. Before, the axis was the first listed
/// condition's induction persona (here E1's paramedic), so every M2 cell changed.
#[test]
fn the_m2_axis_follows_the_anchor_not_the_list_order() {
    let run = tempfile::tempdir().unwrap();
    make_run(run.path(), None);
    let settings = Settings {
        permutations: 200,
        bootstrap: 20,
        ..Settings::default()
    };
    let m2 = |personas: &Path, settings: &Settings| {
        let result = analyze_run_with(run.path(), personas, Some(10), settings).unwrap();
        let family = &result.families[GEOMETRY_EM_PRE_POST];
        let mut cells: Vec<(String, f64, f64)> = family
            .cells
            .iter()
            .filter(|c| c.test.metric.as_deref() == Some("M2"))
            .map(|c| (c.test.id.clone(), c.test.statistic, c.p(Flavour::Principled)))
            .collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        cells
    };
    let listed = m2(&run.path().join("personas.json"), &settings);
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path().join("personas.json")).unwrap()).unwrap();
    let conditions = file["em_induction_conditions"].as_array_mut().unwrap();
    let e0 = conditions.remove(0);
    conditions.push(e0);
    let moved = run.path().join("personas_e0_last.json");
    std::fs::write(&moved, file.to_string()).unwrap();
    assert_eq!(m2(&moved, &settings), listed);
    // Naming another anchor changes the axis.
    let other = Settings {
        anchor_condition: Some("E4_villain".into()),
        ..settings.clone()
    };
    assert_ne!(m2(&moved, &other), listed);
}
