//! Fuzzing of the spec TOML reader inside `cargo test` on stable Rust, in the manner of
//! engine/tests/fuzz.rs: seeded mutation of the committed specs (experiments/*.toml,
//! tests/data/tiny_run.toml and the broken specs of tests/data/broken/), structure-aware for
//! TOML (values replaced by hostile ones, keys dropped, renamed, added or given an old name,
//! tables turned into arrays of tables) and byte-level (bit flips, TOML punctuation inserted,
//! deletion, duplication, truncation, splicing with another spec).
//!
//! Each input is read the way `pspace run` reads a spec: `Spec::parse_well_formed`, then the
//! checks of values against each other, then `preflight` against the tiny model and the bundled
//! data (paths in a mutated spec can only name files under the repository), then the plan of
//! its first seed. Every input runs under `catch_unwind`: a panic is a failure, and the input is
//! saved under target/fuzz-crashes/. Each problem reported must name its file and give a
//! position inside the text. Allocations above 1 GiB abort the process. Runs for
//! PSPACE_FUZZ_SECS seconds (default 12) from the seed PSPACE_FUZZ_SEED (default 0).

use pspace_actors::fingerprint::Fingerprints;
use pspace_actors::spec::{preflight, Problem, Spec, SpecError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Value};

// The capped allocator, the seeded loop and the byte mutations shared with the engine's
// fuzzers (one file, included by both).
#[path = "../../engine/tests/common/fuzzing.rs"]
mod fuzzing;

use fuzzing::{at, fuzz_loop};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the specs are read from: tests/data/, so a spec's relative paths find the tiny model
/// and the bundled data (tiny_run.toml's own folder).
fn spec_root() -> PathBuf {
    repo().join("tests/data")
}

/// The committed specs, with their paths rewritten to start from tests/data/.
fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (file, from_root) in [
        ("tests/data/tiny_run.toml", "../../"),
        ("tests/data/broken/old_names.toml", "../../"),
        ("tests/data/broken/many_faults.toml", "../../../"),
        ("experiments/demo.toml", "../"),
        ("experiments/issue205.toml", "../"),
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Paths inside experiments/ name data/...: point them at ../../experiments/data/.
        let text = match from_root {
            "../" => text.replace("\"data/", "\"../../experiments/data/"),
            "../../../" => text.replace("\"../../../", "\"../../"),
            _ => text,
        };
        out.push(text.into_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Mutation

/// Keys a mutation may add or rename to: every key of the schema and some old names.
const KEYS: [&str; 34] = [
    "name",
    "model",
    "seeds",
    "device",
    "store",
    "id",
    "training_system_prompt",
    "personas",
    "data",
    "md5",
    "first_rows",
    "allow_shortfall",
    "lora",
    "r",
    "lora_alpha",
    "target_modules",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "max_len",
    "layers",
    "methods",
    "source_persona",
    "negative_personas",
    "marker_suffix",
    "marker",
    "fdr_alpha",
    "anchor_condition",
    "lr",
    "alpha",
    "betas",
];

fn hostile_value(rng: &mut ChaCha8Rng) -> Value {
    let v = |s: &str| s.parse::<Value>().unwrap_or_else(|e| panic!("{s}: {e}"));
    match rng.gen_range(0..30) {
        0 => v("true"),
        1 => v("0"),
        2 => v("-1"),
        3 => v("1"),
        4 => v("9223372036854775807"),
        5 => v("-9223372036854775808"),
        6 => v("1e308"),
        7 => v("-1e308"),
        8 => v("nan"),
        9 => v("inf"),
        10 => v("-inf"),
        11 => v("0.5"),
        12 => v("1.5"),
        13 => v("\"\""),
        14 => v("\"../../../etc\""),
        15 => v("\"base\""),
        16 => v("\"benign_sft\""),
        17 => v("\"cuda:99999999999999999999\""),
        18 => v("\"é\\u0000\\n[ZLT]\""),
        19 => Value::from("x".repeat(rng.gen_range(0..3000))),
        20 => v("[]"),
        21 => v("[1, 2, 99, 1]"),
        22 => v("[\"A\", \"B\", \"A\"]"),
        23 => v("{}"),
        24 => v("{ r = 0, lora_alpha = -1 }"),
        25 => v("1979-05-27T07:32:00Z"),
        26 => (0..rng.gen_range(1..200)).fold(v("0"), |inner, _| {
            let mut a = toml_edit::Array::new();
            a.push(inner);
            Value::Array(a)
        }),
        27 => v("\"s3://\""),
        28 => v("\"demo\""),
        _ => v("[\"q_proj\", \"qproj\", \"q_proj\"]"),
    }
}

/// Every (table path, key) of the document whose item is a value or a table.
fn slots(t: &dyn toml_edit::TableLike, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, item) in t.iter() {
        let mut p = path.clone();
        p.push(k.to_string());
        out.push(p.clone());
        match item {
            Item::Table(inner) => slots(inner, p, out),
            Item::Value(Value::InlineTable(inner)) => slots(inner, p, out),
            Item::ArrayOfTables(a) => {
                for (i, inner) in a.iter().enumerate() {
                    let mut q = p.clone();
                    q.push(format!("#{i}"));
                    slots(inner, q, out);
                }
            }
            _ => {}
        }
    }
}

/// The table holding the last key of `path`.
fn parent<'a>(
    t: &'a mut dyn toml_edit::TableLike,
    path: &[String],
) -> Option<&'a mut dyn toml_edit::TableLike> {
    let Some((first, rest)) = path.split_first() else {
        return Some(t);
    };
    if let Some(Ok(i)) = rest
        .first()
        .and_then(|s| s.strip_prefix('#'))
        .map(str::parse::<usize>)
    {
        let Item::ArrayOfTables(a) = t.get_mut(first)? else {
            return None;
        };
        return parent(a.get_mut(i)?, &rest[1..]);
    }
    parent(t.get_mut(first)?.as_table_like_mut()?, rest)
}

fn mutate_toml(seed: &[u8], seeds: &[Vec<u8>], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed);
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        let mut data = seed.to_vec();
        mutate_bytes(&mut data, seeds, rng);
        return data;
    };
    for _ in 0..rng.gen_range(1..3) {
        let mut all = Vec::new();
        slots(doc.as_table(), Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let path = all[rng.gen_range(0..all.len())].clone();
        let (last, holder) = path.split_last().unwrap();
        if last.starts_with('#') {
            continue;
        }
        let Some(t) = parent(doc.as_table_mut(), holder) else {
            continue;
        };
        match rng.gen_range(0..6) {
            0 | 1 => {
                t.insert(last, Item::Value(hostile_value(rng)));
            }
            2 => {
                t.remove(last);
            }
            3 => {
                if let Some(item) = t.remove(last) {
                    t.insert(KEYS[rng.gen_range(0..KEYS.len())], item);
                }
            }
            4 => {
                t.insert(
                    KEYS[rng.gen_range(0..KEYS.len())],
                    Item::Value(hostile_value(rng)),
                );
            }
            _ => {
                // A table as an array of tables, or the other way round.
                if let Some(item) = t.remove(last) {
                    let turned = match item {
                        Item::Table(inner) => {
                            let mut a = toml_edit::ArrayOfTables::new();
                            a.push(inner);
                            Item::ArrayOfTables(a)
                        }
                        Item::ArrayOfTables(a) => a.iter().next().cloned().map_or(Item::None, Item::Table),
                        other => other,
                    };
                    t.insert(last, turned);
                }
            }
        }
    }
    let mut data = doc.to_string().into_bytes();
    if rng.gen_bool(0.1) {
        mutate_bytes(&mut data, seeds, rng);
    }
    data
}

/// One byte-level change: the common ones (`fuzzing::mutate_bytes`) or TOML punctuation
/// inserted.
fn mutate_bytes(data: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut ChaCha8Rng) {
    fuzzing::mutate_bytes(data, seeds, rng, &[insert_punctuation]);
}

fn insert_punctuation(data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    const BITS: [&[u8]; 10] = [b"[", b"]", b"[[", b"\"", b"'''", b"=", b"\n", b".", b"{", b"\xff"];
    let i = at(data, rng);
    data.splice(i..i, BITS[rng.gen_range(0..BITS.len())].iter().copied());
}

// ---------------------------------------------------------------------------------------------
// The target

/// Every problem must name the file and, where it has a position, one inside `text` (a line
/// at most one past the last, a column at most one past that line's end).
fn check_problems(text: &str, problems: &[Problem]) {
    assert!(!problems.is_empty(), "an error with no problem in it");
    let lines: Vec<&str> = text.split('\n').collect();
    for p in problems {
        assert!(!p.file.is_empty(), "a problem without a file: {p}");
        if let Some(pos) = p.position {
            if p.file != "fuzz.toml" {
                continue; // a data file's position
            }
            assert!(pos.line >= 1 && pos.line <= lines.len() + 1, "{p}");
            let width = lines.get(pos.line - 1).map_or(0, |l| l.chars().count());
            assert!(
                pos.column >= 1 && pos.column <= width + 1,
                "{p}: line {:?}",
                lines.get(pos.line - 1)
            );
        }
    }
}

/// How far an input got: not UTF-8, refused by the reader, refused by preflight, accepted.
#[derive(Default, Debug)]
struct Reached {
    not_utf8: usize,
    refused_reading: usize,
    refused_preflight: usize,
    accepted: usize,
}

fn read_spec(input: &[u8], demo_model: &Path, reached: &mut Reached) {
    let Ok(text) = std::str::from_utf8(input) else {
        reached.not_utf8 += 1;
        return; // `pspace run` reads the file as UTF-8 first and says so
    };
    let spec = match Spec::parse_well_formed(text, "fuzz.toml", spec_root()) {
        Ok(spec) => spec,
        Err(SpecError::Problems(p)) => {
            reached.refused_reading += 1;
            return check_problems(text, &p.0);
        }
        Err(e) => panic!("a parse error that is not a list of problems: {e}"),
    };
    // Paths of a mutated spec stay under the repository or name nothing; a FIFO or a device
    // would block a real run too, and none is reachable from here.
    match preflight(&spec, demo_model) {
        Ok(_) => reached.accepted += 1,
        Err(p) => {
            reached.refused_preflight += 1;
            check_problems(text, &p.0);
        }
    }
    if let Some(&seed) = spec.experiment.seeds.first() {
        for t in spec.plan(seed, &Fingerprints::placeholder()) {
            assert_eq!(t.task.id().len(), 16);
        }
    }
}

#[test]
fn fuzz_spec_toml() {
    let seeds = corpus();
    let demo_model = repo().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut reached = Reached::default();
    let mutate = |seed: &[u8], rng: &mut ChaCha8Rng| {
        if rng.gen_bool(0.75) {
            mutate_toml(seed, &seeds, rng)
        } else {
            let mut data = seed.to_vec();
            for _ in 0..rng.gen_range(1..5) {
                mutate_bytes(&mut data, &seeds, rng);
            }
            data
        }
    };
    let crashes = fuzz_loop(
        "spec_toml",
        "toml",
        &seeds,
        &repo().join("target"),
        mutate,
        |input| read_spec(input, &demo_model, &mut reached),
    );
    eprintln!("fuzz spec_toml: {reached:?}");
    assert!(crashes.is_empty(), "fuzz spec_toml: panics on {crashes:?}");
}
