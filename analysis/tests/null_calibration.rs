//! Calibration under the null: marker hits drawn with rates that do not depend on the
//! condition (H2's null) nor on being the induction persona (H1's null). The principled
//! p-values must then reject at no more than their level, and so must the FDR-controlled
//! behaviour family; each draw runs the real analysis.

use pspace_analysis::behavior::{analyze, BehaviorConfig};
use pspace_analysis::families::behavior_family;
use pspace_analysis::input::{MarkerHits, Personas};
use pspace_analysis::stats::rng::seeded_rng;
use rand::Rng;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const PERSONAS: [&str; 6] = ["a", "b", "c", "d", "e", "src"];
const QUESTIONS: usize = 12;
const COMPLETIONS: u32 = 10;
const DRAWS: usize = 400;
const LEVEL: f64 = 0.05;

fn personas() -> Personas {
    Personas::from_value(
        &json!({
            "eval_persona_order": PERSONAS,
            "em_induction_conditions": [
                {"id": "Ea", "slug": "a", "cos_to_assistant": 1.0},
                {"id": "Eb", "slug": "b", "cos_to_assistant": 0.9},
                {"id": "Ec", "slug": "c", "cos_to_assistant": 0.8},
                {"id": "Ex", "slug": "x", "cos_to_assistant": 0.7}
            ]
        }),
        Path::new("null.json"),
    )
    .unwrap()
}

fn draw_hits(rng: &mut impl Rng) -> Value {
    // Rates vary by question, not by persona or condition: the null of both H1 and H2.
    let by_question: Vec<f64> = (0..QUESTIONS).map(|_| rng.gen_range(0.2..0.8)).collect();
    let rates: Vec<Vec<f64>> = PERSONAS.iter().map(|_| by_question.clone()).collect();
    let mut conditions = Map::new();
    for condition in ["Ea", "Eb", "Ec", "Ex"] {
        let mut by_persona = Map::new();
        for (p, persona) in PERSONAS.iter().enumerate() {
            let mut cells = Map::new();
            for (q, &rate) in rates[p].iter().enumerate() {
                let hits = (0..COMPLETIONS).filter(|_| rng.gen::<f64>() < rate).count();
                cells.insert(format!("q{q:02}"), json!(hits));
            }
            by_persona.insert(persona.to_string(), Value::Object(cells));
        }
        conditions.insert(condition.to_string(), Value::Object(by_persona));
    }
    json!({"completions_per_question": COMPLETIONS, "conditions": conditions})
}

#[test]
fn principled_behaviour_tests_hold_their_level_under_the_null() {
    let personas = personas();
    let mut rng = seeded_rng(42, "test/null-calibration");
    let (mut h2_rejections, mut h1_rejections, mut h1_tests, mut family_rejections) = (0, 0, 0, 0);
    for draw in 0..DRAWS {
        let file = draw_hits(&mut rng);
        let hits = MarkerHits::from_values(&[(PathBuf::from("null.json"), file)], &personas, None).unwrap();
        let config = BehaviorConfig {
            source_persona: "src".into(),
            seed: draw as u64,
            permutations: 199,
            bootstrap: 0,
            ..BehaviorConfig::default()
        };
        let result = analyze(&hits, &personas, &config).unwrap();
        if result.h2.as_ref().unwrap().p_principled <= LEVEL {
            h2_rejections += 1;
        }
        for h1 in result.h1.values() {
            if let Some(p) = h1.p_principled {
                h1_tests += 1;
                // H1 is one-sided: under the null its p is at least uniform.
                if p <= LEVEL {
                    h1_rejections += 1;
                }
            }
        }
        let family = behavior_family(&result, LEVEL).unwrap();
        if family.significant_bh_principled > 0 {
            family_rejections += 1;
        }
    }
    let slack = |n: usize| 3.0 * (LEVEL * (1.0 - LEVEL) / n as f64).sqrt();
    let h2_rate = h2_rejections as f64 / DRAWS as f64;
    let h1_rate = h1_rejections as f64 / h1_tests as f64;
    let family_rate = family_rejections as f64 / DRAWS as f64;
    assert!(
        h2_rate <= LEVEL + slack(DRAWS),
        "H2 principled rejects {h2_rate} under the null"
    );
    assert!(
        h1_rate <= LEVEL + slack(h1_tests),
        "H1 principled rejects {h1_rate} under the null"
    );
    // All null: the family's FDR is its chance of any BH rejection.
    assert!(
        family_rate <= LEVEL + slack(DRAWS),
        "behaviour family FDR {family_rate} under the null"
    );
    assert!(
        h2_rejections > 0 || h1_rejections > 0,
        "the tests never reject: they cannot be checked"
    );
    eprintln!(
        "rejection rates at {LEVEL}: H2 {h2_rate}, H1 {h1_rate} ({h1_tests} tests), family {family_rate}"
    );
}
