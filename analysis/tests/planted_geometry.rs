//! End to end with planted geometry: synthetic families where EM collapses every persona
//! (M1, M2 fire in every cell, M3 does not) next to the reference behaviour, through verdicts,
//! result.json, report.md and every figure.

use pspace_analysis::behavior::{analyze, BehaviorConfig};
use pspace_analysis::families::{
    CellTest, Family, GEOMETRY_BENIGN_PRE_POST, GEOMETRY_EM_PRE_POST, GEOMETRY_EM_VS_BENIGN,
};
use pspace_analysis::input::{MarkerHits, Personas};
use pspace_analysis::pipeline::{assemble, write_outputs, Options, Settings};
use pspace_analysis::result::{AnalysisResult, GeometryMethod, GeometrySummary};
use pspace_analysis::verdict::{GeometryDesign, Outcome, Thresholds};
use std::collections::BTreeMap;
use std::path::PathBuf;

const METHODS: [&str; 2] = ["A", "B"];
const LAYERS: [usize; 5] = [7, 14, 20, 21, 27];

fn family(name: &str, conditions: &[String], cell: impl Fn(&str, &str, usize) -> (f64, f64)) -> Family {
    let mut tests = Vec::new();
    for metric in ["M1", "M2", "M3"] {
        for method in METHODS {
            for layer in LAYERS {
                for condition in conditions {
                    let (statistic, p) = cell(metric, method, layer);
                    tests.push(CellTest {
                        id: format!("{metric}/{method}/L{layer}/{condition}"),
                        metric: Some(metric.into()),
                        method: Some(method.into()),
                        layer: Some(layer),
                        condition: Some(condition.clone()),
                        statistic,
                        p_reference: p,
                        p_principled: p,
                    });
                }
            }
        }
    }
    Family::new(name, 0.01, tests).unwrap()
}

#[test]
fn planted_collapse_fires_g1_and_g2_and_renders() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../experiments/data");
    let personas = Personas::load(&dir.join("personas.json")).unwrap();
    let hits = MarkerHits::load(&[dir.join("reference_marker_hits.json")], &personas, Some(10)).unwrap();
    let config = BehaviorConfig {
        permutations: 2000,
        bootstrap: 500,
        ..BehaviorConfig::default()
    };
    let behavior = analyze(&hits, &personas, &config).unwrap();
    let conditions: Vec<String> = personas.conditions.iter().map(|c| c.id.clone()).collect();

    let em = family(
        GEOMETRY_EM_PRE_POST,
        &conditions,
        |metric, _, layer| match metric {
            "M3" => (-0.01, 0.4),
            _ => (0.05 + layer as f64 / 1000.0, 1e-4),
        },
    );
    let em_vs_benign = family(GEOMETRY_EM_VS_BENIGN, &conditions, |metric, _, _| match metric {
        "M3" => (0.0, 0.9),
        _ => (0.02, 1e-3),
    });
    let benign = family(
        GEOMETRY_BENIGN_PRE_POST,
        &["benign_sft".to_string()],
        |metric, _, _| match metric {
            "M3" => (0.0, 0.9),
            _ => (0.03, 1e-3),
        },
    );
    let mut checkpoints = vec!["base".to_string()];
    checkpoints.extend(conditions.iter().cloned());
    checkpoints.push("benign_sft".into());
    let grid = |base: f64, shifted: f64| {
        let mut by_method = BTreeMap::new();
        for method in METHODS {
            let mut by_layer = BTreeMap::new();
            for layer in LAYERS {
                let values: BTreeMap<String, f64> = checkpoints
                    .iter()
                    .map(|c| (c.clone(), if c == "base" { base } else { shifted }))
                    .collect();
                by_layer.insert(layer.to_string(), values);
            }
            by_method.insert(method.to_string(), by_layer);
        }
        by_method
    };
    let (m1_mean_offdiag, m3_accuracy) = (grid(0.90, 0.99), grid(0.95, 0.94));
    let summary = GeometrySummary {
        design: Some(GeometryDesign {
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            layers: LAYERS.to_vec(),
            conditions: conditions.clone(),
            cos_to_assistant: personas.conditions.iter().map(|c| c.cos_to_assistant).collect(),
        }),
        checkpoints,
        personas: personas.eval_order.clone(),
        m1_mean_offdiag,
        m3_accuracy,
        centroid_shift: BTreeMap::new(),
        m1_ci: BTreeMap::new(),
        m3_ci: BTreeMap::new(),
        benign_share: BTreeMap::new(),
        method: Some(GeometryMethod {
            permutations: 2000,
            bootstrap: 500,
            ci_level: 0.95,
            exact_max_n: 16,
            anchor_condition: "E0_assistant".into(),
            axis_persona: "assistant".into(),
            cv_folds: 5,
            lda_shrinkage: 0.1,
            pca_components: 16,
            pca_power_iterations: 1,
        }),
        cells: None,
    };
    // Thresholds other than the defaults: the report must quote these, not constants.
    let options = Options {
        behavior: config,
        thresholds: Thresholds {
            h2_max_range_pp: 12.5,
            contrast_alpha: 0.04,
            ..Thresholds::default()
        },
        allow_partial: false,
    };
    let result = assemble(
        Some(behavior),
        Some(summary),
        vec![em, em_vs_benign, benign],
        BTreeMap::new(),
        Vec::new(),
        &Settings::from(&options),
    )
    .unwrap();

    let g1 = result.verdicts.reference.g1.as_ref().unwrap();
    assert_eq!(g1.outcome, Outcome::Fires);
    assert_eq!(g1.outcome_with_contrast, Outcome::Fires);
    assert_eq!(g1.conditions_firing.len(), 5);
    assert_eq!(
        result
            .verdicts
            .reference
            .g2
            .as_ref()
            .unwrap()
            .outcome_with_contrast,
        Outcome::Fires
    );
    assert_eq!(
        result.verdicts.reference.g3.as_ref().unwrap().outcome,
        Outcome::DoesNotFire
    );
    // G1 fires but H2 and H3 do not: no pre-registered headline combination holds.
    assert!(result.verdicts.reference.headline.matched.is_empty());
    assert_eq!(result.families[GEOMETRY_EM_PRE_POST].n_cells, 150);
    assert_eq!(
        result.families[GEOMETRY_EM_PRE_POST].significant_bh_reference,
        100
    );

    let out = match std::env::var_os("PSPACE_KEEP_REPORT") {
        Some(dir) => PathBuf::from(dir),
        None => tempfile::tempdir().unwrap().keep(),
    };
    let (json, report) = write_outputs(&result, &out).unwrap();
    let written = serde_json::to_value(AnalysisResult::read(&json).unwrap()).unwrap();
    let original = serde_json::to_value(&result).unwrap();
    if written != original {
        let (a, b) = (written.to_string(), original.to_string());
        let at = a.bytes().zip(b.bytes()).position(|(x, y)| x != y).unwrap_or(0);
        panic!(
            "result.json does not read back whole: ...{} vs ...{}",
            &a[at.saturating_sub(80)..(at + 40).min(a.len())],
            &b[at.saturating_sub(80)..(at + 40).min(b.len())]
        );
    }
    let text = std::fs::read_to_string(report).unwrap();
    for figure in [
        "hero",
        "leakage_heatmap",
        "m1_grid",
        "geometry_by_layer",
        "m3_accuracy",
    ] {
        for ext in ["png", "svg"] {
            let path = out.join(format!("{figure}.{ext}"));
            assert!(
                std::fs::metadata(&path).map(|m| m.len() > 1000).unwrap_or(false),
                "{}",
                path.display()
            );
        }
        assert!(text.contains(&format!("{figure}.png")), "report lacks {figure}");
    }
    assert!(text.contains("| G1 |") && text.contains("**FIRES**"));
    // What a reviewer asked for: the benign shift and EM minus benign beside EM minus base in
    // every cell, the share of the EM collapse benign SFT also produces, thresholds read from
    // the result, and what M3 is.
    assert!(
        text.contains("| method | layer | benign - base | E0_assistant |"),
        "{text}"
    );
    assert!(
        text.contains("+0.0570 (q 1.50e-4); vs benign +0.0200 (q 0.0015); benign share 53 %"),
        "{text}"
    );
    assert!(
        text.contains("Benign SFT produces 39 % to 53 % (median 43 %) of the EM shift in the 50 M1 cells"),
        "{text}"
    );
    assert!(text.contains("range of mean bystander <= 12.5 pp") && text.contains("EM-vs-benign BH q < 0.04"));
    assert!(
        !text.contains("<= 15 pp"),
        "a default threshold leaked into the text"
    );
    assert!(text.contains("shrinkage LDA") && text.contains("refitted inside every training fold"));
    assert!(text.contains("the first 16 principal components of the vectors of ONE checkpoint"));
    let share = &result.geometry.as_ref().unwrap().benign_share["M1"]["A"]["7"]["E0_assistant"];
    assert!((share.unwrap() - 0.03 / 0.057).abs() < 1e-12);
}
