//! `report.html` without a browser: for a whole run (synthetic geometry beside the reference
//! hits) and for the behaviour-only reference analysis, the page parses as XML (every element
//! closed, text escaped), every `#anchor` it links to exists, every figure of report.md is
//! inlined as an `<svg>` inside its `<figure>`, nothing is loaded from outside the file, and
//! the verdict rows and the behaviour numbers of report.md are on the page.

use pspace_analysis::geometry::activations::{path_in_run, write};
use pspace_analysis::geometry::synthetic::{generate, SyntheticDesign};
use pspace_analysis::input::Personas;
use pspace_analysis::pipeline::{
    analyze_behavior_with, analyze_run_with, run_checkpoints, write_outputs, BehaviorInputs, Settings,
};
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../experiments/data")
        .join(name)
}

/// What the page holds, as an XML parser reads it.
#[derive(Debug, Default)]
struct Page {
    ids: BTreeSet<String>,
    anchors: Vec<String>,
    /// Any other href or src: the page would load or link something outside itself.
    outside: Vec<String>,
    /// figure id -> number of <svg> elements inside it.
    figures: BTreeMap<String, usize>,
    /// <svg> elements outside any <figure>.
    loose_svgs: usize,
    text: String,
}

fn parse(html: &str) -> Page {
    let mut reader = Reader::from_str(html);
    reader.config_mut().check_end_names = true;
    let mut page = Page::default();
    let mut stack: Vec<String> = Vec::new();
    let mut figure: Option<String> = None;
    loop {
        let event = reader.read_event().unwrap_or_else(|e| {
            panic!(
                "report.html is not well formed at byte {}: {e}",
                reader.buffer_position()
            )
        });
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                for attr in e.attributes() {
                    let attr = attr.expect("a well-formed attribute");
                    let key = String::from_utf8_lossy(attr.key.as_ref()).to_string();
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .expect("an escaped attribute")
                        .to_string();
                    match key.as_str() {
                        "id" => {
                            assert!(page.ids.insert(value.clone()), "id {value} twice");
                            if name == "figure" {
                                figure = Some(value);
                            }
                        }
                        "href" | "src" | "xlink:href" => match value.strip_prefix('#') {
                            Some(anchor) => page.anchors.push(anchor.to_string()),
                            None => page.outside.push(format!("{name} {key}={value}")),
                        },
                        _ => {}
                    }
                }
                if name == "svg" {
                    match &figure {
                        Some(f) => *page.figures.entry(f.clone()).or_default() += 1,
                        None => page.loose_svgs += 1,
                    }
                }
                if matches!(event, Event::Start(_)) {
                    stack.push(name);
                }
            }
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "unbalanced </{name}>"
                );
                if name == "figure" {
                    figure = None;
                }
            }
            Event::Text(t) => {
                page.text.push_str(&t.decode().expect("utf-8 text"));
            }
            Event::GeneralRef(r) => {
                // Entities of escaped text: keep their characters for the text checks.
                let name = String::from_utf8_lossy(&r).to_string();
                page.text.push_str(match name.as_str() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "#39" => "'",
                    other => panic!("an entity XML does not know: &{other};"),
                });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    page
}

/// The checks that need no report.md: well formed, anchors resolve, nothing from outside.
fn check_page(html: &str) -> Page {
    let page = parse(html);
    for anchor in &page.anchors {
        assert!(page.ids.contains(anchor), "#{anchor} links to nothing");
    }
    assert!(page.outside.is_empty(), "not self-contained: {:?}", page.outside);
    assert_eq!(page.loose_svgs, 0, "an <svg> outside any <figure>");
    page
}

/// Checks one written report folder; returns the parsed page.
fn check_report(dir: &Path) -> Page {
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html beside report.md");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    let page = check_page(&html);
    // Every figure of report.md: inlined once, in a figure the contents list links to.
    let stems: Vec<&str> = md
        .lines()
        .filter_map(|l| l.strip_prefix("![")?.split("](").nth(1)?.strip_suffix(".png)"))
        .collect();
    assert!(!stems.is_empty());
    assert_eq!(page.figures.len(), stems.len(), "{:?} vs {stems:?}", page.figures);
    for stem in &stems {
        let id = format!("figure-{}", stem.replace('_', "-"));
        assert_eq!(
            page.figures.get(&id),
            Some(&1),
            "figure {stem} is not inlined as one <svg>"
        );
        assert!(page.anchors.contains(&id), "the contents list lacks {id}");
    }
    // Every section of report.md is a contents entry.
    for heading in md.lines().filter_map(|l| l.strip_prefix("## ")) {
        assert!(page.text.contains(heading), "{heading}");
    }
    assert!(
        page.anchors.iter().filter(|a| !a.starts_with("figure-")).count()
            >= md.lines().filter(|l| l.starts_with("## ")).count()
    );
    // The verdict table's rows, as report.md has them.
    for row in ["G1", "G2", "G3", "H1", "H2", "H3", "kill"] {
        assert!(md.contains(&format!("| {row} |")), "{row}");
    }
    page
}

#[test]
fn the_reference_report_page_is_well_formed_and_complete() {
    let out = match std::env::var_os("PSPACE_KEEP_REPORT") {
        Some(d) => PathBuf::from(d),
        None => tempfile::tempdir().unwrap().keep(),
    };
    let inputs = BehaviorInputs {
        hits: vec![data("reference_marker_hits.json")],
        personas: data("personas.json"),
        default_completions: Some(10),
    };
    let settings = Settings {
        permutations: 2000,
        bootstrap: 300,
        ..Settings::default()
    };
    let result = analyze_behavior_with(&inputs, &settings).unwrap();
    write_outputs(&result, &out).unwrap();
    let page = check_report(&out);
    for number in [
        "45.68", "48.57", "50.07", "53.71", "52.00", "-0.900", "0.0833", "8.04 pp",
    ] {
        assert!(page.text.contains(number), "the page lacks {number}");
    }
    assert_eq!(page.figures.len(), 2, "hero and heatmap: {:?}", page.figures);
}

/// A run directory with the reference hits and synthetic activations of `layers` x `methods`.
fn synthetic_run(run: &Path, layers: Vec<usize>, methods: &[&str], questions: usize) {
    let personas = Personas::load(&data("personas.json")).unwrap();
    std::fs::copy(data("personas.json"), run.join("personas.json")).unwrap();
    let hits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("reference_marker_hits.json")).unwrap()).unwrap();
    std::fs::create_dir_all(run.join("marker_hits")).unwrap();
    for (condition, cells) in hits["conditions"].as_object().unwrap() {
        let file = serde_json::json!({"completions_per_question": 10, "conditions": {condition: cells}});
        std::fs::write(
            run.join(format!("marker_hits/{condition}.json")),
            file.to_string(),
        )
        .unwrap();
    }
    let design = SyntheticDesign {
        seed: 11,
        personas: personas.eval_order.len(),
        questions,
        hidden: 24,
        layers,
        methods: methods.iter().map(|m| m.to_string()).collect(),
        checkpoints: run_checkpoints(&personas),
        collapse: 0.5,
        benign_fraction: 0.4,
        persona_scale: 3.0,
        method_b_missing: 0.05,
        axis_persona: personas.eval_order.iter().position(|p| p == "assistant").unwrap(),
    };
    for (method, per_checkpoint) in generate(&design) {
        for mut activations in per_checkpoint {
            activations.personas = personas.eval_order.clone();
            write(&path_in_run(run, &activations.checkpoint, &method), &activations).unwrap();
        }
    }
}

#[test]
fn a_run_report_page_is_well_formed_and_complete() {
    let run = tempfile::tempdir().unwrap();
    synthetic_run(run.path(), vec![7, 14, 20, 21, 27], &["A", "B"], 12);
    let settings = Settings {
        permutations: 300,
        bootstrap: 60,
        ..Settings::default()
    };
    let result =
        analyze_run_with(run.path(), &run.path().join("personas.json"), Some(10), &settings).unwrap();
    let out = run.path().join("analysis");
    write_outputs(&result, &out).unwrap();
    let page = check_report(&out);
    assert_eq!(page.figures.len(), 5, "{:?}", page.figures);
    assert!(page.ids.contains("geometry") && page.ids.contains("behaviour"));
    // The hero's whiskers: a per-checkpoint interval of result.json for every bar.
    let g = result.geometry.as_ref().unwrap();
    for (ci, values) in [(&g.m1_ci, &g.m1_mean_offdiag), (&g.m3_ci, &g.m3_accuracy)] {
        assert_eq!(ci.len(), 2);
        for (method, layers) in values {
            for (layer, by_checkpoint) in layers {
                for checkpoint in by_checkpoint.keys() {
                    let [lo, hi] = ci[method][layer][checkpoint];
                    assert!(
                        lo <= hi && lo >= -1.0 && hi <= 1.0,
                        "{method} {layer} {checkpoint}"
                    );
                }
            }
        }
    }
}

// The checks can fail: each defect a writer could make, on a small page.

#[test]
#[should_panic(expected = "not well formed")]
fn an_unclosed_element_is_caught() {
    check_page("<html><body><p><b>bold</p></body></html>");
}

#[test]
#[should_panic(expected = "links to nothing")]
fn a_dangling_anchor_is_caught() {
    check_page("<html><body><a href=\"#nowhere\">x</a></body></html>");
}

#[test]
#[should_panic(expected = "not self-contained")]
fn a_linked_file_is_caught() {
    check_page("<html><body><figure id=\"f\"><img src=\"hero.png\"/></figure></body></html>");
}

#[test]
#[should_panic(expected = "an entity XML does not know")]
fn an_html_only_entity_is_caught() {
    check_page("<html><body><p>a&nbsp;b</p></body></html>");
}

/// Every layer of a 28-layer model and three methods: the figures widen instead of squeezing
/// their facets to nothing, and every figure and the page are still written.
#[test]
fn a_large_design_still_draws() {
    let run = tempfile::tempdir().unwrap();
    synthetic_run(run.path(), (0..28).collect(), &["A", "B", "C"], 6);
    let settings = Settings {
        permutations: 50,
        bootstrap: 20,
        ..Settings::default()
    };
    let result =
        analyze_run_with(run.path(), &run.path().join("personas.json"), Some(10), &settings).unwrap();
    let out = match std::env::var_os("PSPACE_KEEP_LARGE") {
        Some(d) => PathBuf::from(d),
        None => run.path().join("analysis"),
    };
    write_outputs(&result, &out).unwrap();
    let page = check_report(&out);
    assert_eq!(page.figures.len(), 5, "{:?}", page.figures);
}

/// A partial analysis (a condition's hits missing, `--allow-partial`): the banner is a quote
/// on the page and the page is still well formed.
#[test]
fn a_partial_report_page_keeps_its_banner() {
    let dir = tempfile::tempdir().unwrap();
    let mut hits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("reference_marker_hits.json")).unwrap()).unwrap();
    hits["conditions"].as_object_mut().unwrap().remove("E4_villain");
    let file = dir.path().join("hits.json");
    std::fs::write(&file, hits.to_string()).unwrap();
    let inputs = BehaviorInputs {
        hits: vec![file],
        personas: data("personas.json"),
        default_completions: Some(10),
    };
    let settings = Settings {
        permutations: 500,
        bootstrap: 50,
        allow_partial: true,
        ..Settings::default()
    };
    let result = analyze_behavior_with(&inputs, &settings).unwrap();
    let out = dir.path().join("out");
    write_outputs(&result, &out).unwrap();
    let page = check_report(&out);
    assert!(page.text.contains("PARTIAL ANALYSIS") && page.text.contains("E4_villain"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<blockquote>\n<p><strong>PARTIAL ANALYSIS</strong>"),
        "{html}"
    );
}
