//! Reading a spec's TOML into a [`Spec`] with every problem located: the key schema (which keys
//! each table holds, which are required, which were renamed) is checked over the parsed
//! document first, so every unknown, renamed or missing key is reported at once; then serde
//! reads the values, and each type error is mapped from its byte span back to a line, a column
//! and a key path.
//!
//! serde stops at the first wrong value. To still report every wrong value of a file at once,
//! a wrong value is replaced by the embedded demo's value at the same key (or dropped, for an
//! optional key the demo leaves out) and the read is retried; the spec is refused all the same.
//!
//! The file keeps a recipe's keys in its training set's own table (`[training.em]`
//! holds `data` and `learning_rate` side by side); [`Recipe`] is a field of its own in Rust.
//! serde's `flatten` would forget the values' spans, so the recipe keys are moved into a
//! `recipe` table of the parsed document (spans kept) before serde reads it.

use super::{Locations, Position, Problem, Spec, DEMO_SPEC, DEVICE_NAMES};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml_edit::{DocumentMut, ImDocument, Item, Table, TableLike, Value};

/// How a key's value is laid out.
enum Shape {
    /// A value whose type serde checks.
    Value(&'static str),
    Table(&'static Schema),
    /// `[[name]]` tables (or an array of inline tables).
    Tables(&'static Schema),
}

struct Field {
    key: &'static str,
    required: bool,
    shape: Shape,
}

/// The keys of one table, in groups (a training set's table holds its own keys and a
/// recipe's), and the keys renamed from earlier versions -> their new names.
struct Schema {
    groups: &'static [&'static [Field]],
    renamed: &'static [(&'static str, &'static [&'static str])],
}

impl Schema {
    fn fields(&self) -> impl Iterator<Item = &Field> {
        self.groups.iter().flat_map(|g| g.iter())
    }
    fn field(&self, key: &str) -> Option<&Field> {
        self.fields().find(|f| f.key == key)
    }
}

const fn req(key: &'static str, expects: &'static str) -> Field {
    Field {
        key,
        required: true,
        shape: Shape::Value(expects),
    }
}

const fn opt(key: &'static str, expects: &'static str) -> Field {
    Field {
        key,
        required: false,
        shape: Shape::Value(expects),
    }
}

const fn table(key: &'static str, schema: &'static Schema) -> Field {
    Field {
        key,
        required: true,
        shape: Shape::Table(schema),
    }
}

const WHOLE: &str = "a whole number >= 0";
/// A count the spec's checks require to be at least 1 (`at_least_one` in spec.rs): said up
/// front, so a negative value's message does not lead to a 0 that is refused next.
const COUNT: &str = "a whole number >= 1";
const NUMBER: &str = "a number";
const STRING: &str = "a string";
const PATH: &str = "a file path (relative to the spec's folder)";
const BOOL: &str = "true or false";

static ROOT: Schema = Schema {
    groups: &[&[
        table("experiment", &EXPERIMENT),
        Field {
            key: "conditions",
            required: true,
            shape: Shape::Tables(&CONDITION),
        },
        table("data", &DATA),
        table("training", &TRAINING),
        table("extraction", &EXTRACTION),
        table("coupling", &COUPLING),
        table("marker_eval", &MARKER_EVAL),
        table("analysis", &ANALYSIS),
    ]],
    renamed: &[],
};

static EXPERIMENT: Schema = Schema {
    groups: &[&[
        req("name", STRING),
        req("model", "`demo`, an HF model folder or a .gguf file"),
        req("seeds", "a list of whole numbers"),
        req("device", DEVICE_NAMES),
        opt("dtype", "\"f32\", \"bf16\" or \"auto\""),
        req("store", "a folder or s3://bucket/prefix"),
    ]],
    renamed: &[],
};

static CONDITION: Schema = Schema {
    groups: &[&[req("id", STRING), opt("training_system_prompt", STRING)]],
    renamed: &[],
};

static DATA: Schema = Schema {
    groups: &[&[
        req("personas", PATH),
        req("questions", PATH),
        req("extraction_questions", PATH),
    ]],
    renamed: &[],
};

static TRAINING: Schema = Schema {
    groups: &[&[table("em", &TRAINING_SET), table("benign", &TRAINING_SET)]],
    renamed: &[],
};

static TRAINING_SET: Schema = Schema {
    groups: &[
        &[
            req("data", PATH),
            opt("md5", "a string of 32 hexadecimal digits"),
            opt("first_rows", COUNT),
            opt("allow_shortfall", BOOL),
        ],
        &RECIPE,
    ],
    renamed: RECIPE_RENAMED,
};

/// transformers' `TrainingArguments` names (and PEFT's under `lora`).
static RECIPE: [Field; 16] = [
    table("lora", &LORA),
    req(
        "num_train_epochs",
        "a whole number of epochs >= 1 (to stop part-way, set max_steps)",
    ),
    opt("max_steps", COUNT),
    req("per_device_train_batch_size", COUNT),
    req("gradient_accumulation_steps", COUNT),
    req("learning_rate", NUMBER),
    req("lr_scheduler_type", "\"linear\", \"cosine\" or \"constant\""),
    req("warmup_ratio", NUMBER),
    req("adam_beta1", NUMBER),
    req("adam_beta2", NUMBER),
    req("adam_epsilon", NUMBER),
    req("weight_decay", NUMBER),
    req("max_grad_norm", NUMBER),
    req("max_len", COUNT),
    req("pad_to_multiple_of", COUNT),
    opt("padding_free", BOOL),
];

const RECIPE_RENAMED: &[(&str, &[&str])] = &[
    ("epochs", &["num_train_epochs"]),
    ("micro_batch", &["per_device_train_batch_size"]),
    ("grad_accum", &["gradient_accumulation_steps"]),
    ("lr", &["learning_rate"]),
    ("schedule", &["lr_scheduler_type"]),
    ("betas", &["adam_beta1", "adam_beta2"]),
    ("eps", &["adam_epsilon"]),
    ("clip_grad_norm", &["max_grad_norm"]),
    ("pad_to_multiple", &["pad_to_multiple_of"]),
];

static LORA: Schema = Schema {
    groups: &[&[
        req("r", "a whole number (the rank)"),
        req("lora_alpha", NUMBER),
        req("lora_dropout", NUMBER),
        req("target_modules", "a list of module names"),
        req("use_rslora", BOOL),
    ]],
    renamed: &[
        ("alpha", &["lora_alpha"]),
        ("dropout", &["lora_dropout"]),
        ("targets", &["target_modules"]),
        ("rslora", &["use_rslora"]),
    ],
};

/// `dry_run_lengths`, optional in each generating section.
const DRY_RUN: Field = Field {
    key: "dry_run_lengths",
    required: false,
    shape: Shape::Table(&DRY_RUN_LENGTHS),
};

static DRY_RUN_LENGTHS: Schema = Schema {
    groups: &[&[
        req("mean", "a number of tokens (>= 1)"),
        req("sigma", "a number (the standard deviation of the log, 0 to 3)"),
    ]],
    renamed: &[],
};

static EXTRACTION: Schema = Schema {
    groups: &[&[
        req("layers", "a list of layer indices (whole numbers >= 0)"),
        req("methods", "a list of \"A\" and/or \"B\""),
        req("max_new_tokens", COUNT),
        opt("questions", COUNT),
        DRY_RUN,
    ]],
    renamed: &[],
};

static COUPLING: Schema = Schema {
    groups: &[
        &[
            req("source_persona", STRING),
            req("negative_personas", WHOLE),
            req("completions_per_question", COUNT),
            req("positives_per_question", COUNT),
            req("negatives_per_question", WHOLE),
            req("temperature", NUMBER),
            req("top_p", NUMBER),
            req("max_new_tokens", COUNT),
            req("marker_suffix", STRING),
            opt("questions", COUNT),
            DRY_RUN,
            opt("allow_shortfall", BOOL),
            opt("skip_cut_completions", BOOL),
        ],
        &RECIPE,
    ],
    renamed: RECIPE_RENAMED,
};

static MARKER_EVAL: Schema = Schema {
    groups: &[&[
        req("completions", COUNT),
        req("temperature", NUMBER),
        req("top_p", NUMBER),
        req("max_new_tokens", COUNT),
        req("marker", STRING),
        opt("questions", COUNT),
        DRY_RUN,
    ]],
    renamed: &[],
};

static ANALYSIS: Schema = Schema {
    groups: &[&[
        req("permutations", COUNT),
        req("bootstrap", COUNT),
        req("fdr_alpha", "a number (the false discovery rate level)"),
        req("cv_folds", WHOLE),
        opt("anchor_condition", "a condition id"),
    ]],
    renamed: &[("alpha", &["fdr_alpha"])],
};

/// The tables whose recipe keys move into a `recipe` table before serde reads them.
const RECIPE_TABLES: [&[&str]; 3] = [&["training", "em"], &["training", "benign"], &["coupling"]];

/// Parses, checks the keys and deserialises; every problem found at the first stage that has
/// any.
pub(super) fn read(text: &str, origin: &str) -> Result<(Spec, Locations), Vec<Problem>> {
    let doc = ImDocument::parse(text).map_err(|e| {
        vec![Problem {
            file: origin.to_string(),
            position: e.span().map(|s| Position::of(text, s.start)),
            key: None,
            message: format!("not valid TOML: {}", e.message().trim_end()),
        }]
    })?;
    let index = Index::of(doc.as_table(), text);
    let mut problems = Vec::new();
    check_table(doc.as_table(), &ROOT, "", None, &mut |key, span, message| {
        problems.push(Problem {
            file: origin.to_string(),
            position: span.map(|s| Position::of(text, s.start)),
            key: Some(key.to_string()),
            message,
        })
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let spec = deserialize(&doc, &index, text, origin)?;
    Ok((spec, index.locations))
}

/// Receives (key path, span where to report it, message) for each key problem.
type Report<'a> = dyn FnMut(&str, Option<Range<usize>>, String) + 'a;

/// Unknown, renamed and missing keys of `t` and its sub-tables; `at` is the span of the key
/// that names `t` (where a missing key is reported).
fn check_table(
    t: &dyn TableLike,
    schema: &Schema,
    path: &str,
    at: Option<Range<usize>>,
    report: &mut Report<'_>,
) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    for (key, item) in t.iter() {
        let span = t.key(key).and_then(|k| k.span()).or_else(|| item.span());
        let Some(field) = schema.field(key) else {
            let message = match schema.renamed.iter().find(|(old, _)| *old == key) {
                Some((old, [new])) => format!("`{old}` was renamed to `{new}`"),
                Some((old, new)) => format!(
                    "`{old}` was split into {}",
                    new.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                None => unknown_key_message(key, schema),
            };
            report(&join(key), span, message);
            continue;
        };
        match &field.shape {
            Shape::Value(_) => {}
            Shape::Table(sub) => match item.as_table_like() {
                Some(inner) => check_table(inner, sub, &join(key), span, report),
                None => report(
                    &join(key),
                    item.span().or(span),
                    format!("expected a table, found {}", item.type_name()),
                ),
            },
            Shape::Tables(sub) => match tables_of(item) {
                Some(list) => {
                    for (i, inner) in list.into_iter().enumerate() {
                        check_table(inner, sub, &format!("{}[{i}]", join(key)), span.clone(), report);
                    }
                }
                None => report(
                    &join(key),
                    item.span().or(span),
                    format!("expected [[{key}]] tables, found {}", item.type_name()),
                ),
            },
        }
    }
    for field in schema.fields().filter(|f| f.required && !t.contains_key(f.key)) {
        let renamed_here = schema
            .renamed
            .iter()
            .any(|(old, new)| new.contains(&field.key) && t.contains_key(old));
        if renamed_here {
            continue;
        }
        let expects = match &field.shape {
            Shape::Value(e) => e.to_string(),
            Shape::Table(_) => format!("a table [{}]", join(field.key)),
            Shape::Tables(_) => format!("at least one [[{}]] table", join(field.key)),
        };
        report(
            &join(field.key),
            at.clone(),
            format!("missing: expected {expects}"),
        );
    }
}

fn unknown_key_message(key: &str, schema: &Schema) -> String {
    let known: Vec<&str> = schema.fields().map(|f| f.key).collect();
    match known.iter().find(|k| close(key, k)) {
        Some(k) => format!("unknown key: did you mean `{k}`?"),
        None => format!("unknown key: expected one of {}", known.join(", ")),
    }
}

/// Whether `a` looks like a misspelling of `b`: at most two edits apart, or equal but for case
/// and separators.
fn close(a: &str, b: &str) -> bool {
    let squash = |s: &str| s.to_lowercase().replace(['_', '-'], "");
    if squash(a) == squash(b) {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

/// The tables of `[[key]]` or of an array of inline tables.
fn tables_of(item: &Item) -> Option<Vec<&dyn TableLike>> {
    match item {
        Item::ArrayOfTables(a) => Some(a.iter().map(|t| t as &dyn TableLike).collect()),
        Item::Value(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_inline_table().map(|t| t as &dyn TableLike))
            .collect(),
        _ => None,
    }
}

/// Key paths and spans of every key and value of the document.
struct Index {
    locations: Locations,
    /// (span, key path) of every key and every value; the innermost span holding a byte is
    /// the key that byte belongs to.
    spans: Vec<(Range<usize>, String)>,
}

impl Index {
    fn of(root: &Table, text: &str) -> Index {
        let mut index = Index {
            locations: Locations(BTreeMap::new()),
            spans: Vec::new(),
        };
        index.add_table(root, "", text);
        index
    }

    fn add_table(&mut self, t: &dyn TableLike, path: &str, text: &str) {
        for (key, item) in t.iter() {
            let p = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            if let Some(span) = t.key(key).and_then(|k| k.span()) {
                self.spans.push((span, p.clone()));
            }
            self.add_item(item, &p, text);
        }
    }

    fn add_item(&mut self, item: &Item, path: &str, text: &str) {
        if let Some(span) = item.span() {
            self.locations
                .0
                .entry(path.to_string())
                .or_insert(Position::of(text, span.start));
            self.spans.push((span, path.to_string()));
        }
        match item {
            Item::Table(t) => self.add_table(t, path, text),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if let Some(span) = t.span() {
                        self.locations.0.insert(p.clone(), Position::of(text, span.start));
                        self.spans.push((span, p.clone()));
                    }
                    self.add_table(t, &p, text);
                }
            }
            Item::Value(v) => self.add_value(v, path, text),
            Item::None => {}
        }
    }

    fn add_value(&mut self, v: &Value, path: &str, text: &str) {
        match v {
            Value::InlineTable(t) => self.add_table(t, path, text),
            Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if let Some(span) = e.span() {
                        self.locations.0.insert(p.clone(), Position::of(text, span.start));
                        self.spans.push((span, p.clone()));
                    }
                    self.add_value(e, &p, text);
                }
            }
            _ => {}
        }
    }

    /// The innermost key whose key or value span holds `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.spans
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
            .min_by_key(|(s, p)| (s.end - s.start, usize::MAX - p.len()))
            .map(|(_, p)| p.as_str())
    }
}

/// serde over the checked document; see the module comment for the retries.
fn deserialize(
    doc: &ImDocument<&str>,
    index: &Index,
    text: &str,
    origin: &str,
) -> Result<Spec, Vec<Problem>> {
    let demo = ImDocument::parse(DEMO_SPEC).ok();
    let mut replaced: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    loop {
        let mut root = doc.clone().into_table();
        for key in &replaced {
            replace_with_demo(&mut root, key, demo.as_ref().map(|d| d.as_table()));
        }
        nest_recipes(&mut root);
        let de = toml_edit::de::Deserializer::from(DocumentMut::from(root));
        let e = match Spec::deserialize(de) {
            Ok(spec) if problems.is_empty() => return Ok(spec),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let key = e.span().and_then(|s| index.path_at(&s)).map(str::to_string);
        problems.push(Problem {
            file: origin.to_string(),
            position: e.span().map(|s| Position::of(text, s.start)),
            key: key.clone(),
            message: type_message(e.message(), key.as_deref()),
        });
        // The key whose value is replaced: an element's list as a whole.
        let Some(target) = key.map(|k| strip_trailing_index(&k).to_string()) else {
            return Err(problems);
        };
        if demo.is_none() || replaced.contains(&target) || replaced.len() >= 100 {
            return Err(problems);
        }
        replaced.push(target);
    }
}

fn strip_trailing_index(key: &str) -> &str {
    let mut k = key;
    while k.ends_with(']') {
        match k.rfind('[') {
            Some(i) => k = &k[..i],
            None => break,
        }
    }
    k
}

/// One step of a key path.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        out.push(Seg::Key(key));
        while let Some((n, after)) = rest.split_once(']') {
            out.push(Seg::Index(n.parse().unwrap_or(usize::MAX)));
            rest = after.trim_start_matches('[');
        }
    }
    out
}

/// Puts the demo's value of `key` in place of the file's (or drops the key where the demo has
/// none); array-of-tables indices past the demo's count read its first table.
fn replace_with_demo(root: &mut Table, key: &str, demo: Option<&Table>) {
    let segs = segments(key);
    let Some((Seg::Key(last), parents)) = segs.split_last() else {
        return;
    };
    let value = demo
        .and_then(|d| parent(d, parents))
        .and_then(|p| p.get(last))
        .cloned();
    if let Some(p) = parent_mut(root, parents) {
        match value {
            Some(v) => {
                p.insert(last, v);
            }
            None => {
                p.remove(last);
            }
        }
    }
}

fn parent<'a>(t: &'a dyn TableLike, segs: &[Seg<'_>]) -> Option<&'a dyn TableLike> {
    match segs {
        [] => Some(t),
        [Seg::Key(k), Seg::Index(i), rest @ ..] => {
            let list = tables_of(t.get(k)?)?;
            let inner = list.get(*i).or_else(|| list.first())?;
            parent(*inner, rest)
        }
        [Seg::Key(k), rest @ ..] => parent(t.get(k)?.as_table_like()?, rest),
        [Seg::Index(_), ..] => None,
    }
}

fn parent_mut<'a>(t: &'a mut dyn TableLike, segs: &[Seg<'_>]) -> Option<&'a mut dyn TableLike> {
    match segs {
        [] => Some(t),
        [Seg::Key(k), Seg::Index(i), rest @ ..] => {
            let inner: &mut dyn TableLike = match t.get_mut(k)? {
                Item::ArrayOfTables(a) => a.get_mut(*i)?,
                Item::Value(Value::Array(a)) => a.get_mut(*i)?.as_inline_table_mut()?,
                _ => return None,
            };
            parent_mut(inner, rest)
        }
        [Seg::Key(k), rest @ ..] => parent_mut(t.get_mut(k)?.as_table_like_mut()?, rest),
        [Seg::Index(_), ..] => None,
    }
}

/// Moves the recipe keys of each training set and of the coupling into a `recipe` table.
fn nest_recipes(root: &mut Table) {
    for path in RECIPE_TABLES {
        let segs: Vec<Seg> = path.iter().copied().map(Seg::Key).collect();
        let Some(t) = parent_mut(root, &segs) else {
            continue;
        };
        let mut recipe = Table::new();
        for field in &RECIPE {
            if let Some(item) = t.remove(field.key) {
                recipe.insert(field.key, item);
            }
        }
        t.insert("recipe", Item::Table(recipe));
    }
}

/// serde's message as `expected ..., found ...`, with the schema's words for what a key holds.
fn type_message(raw: &str, key: Option<&str>) -> String {
    let schema_expects = key.filter(|k| !k.ends_with(']')).and_then(expects_of);
    let split = raw
        .strip_prefix("invalid type: ")
        .or_else(|| raw.strip_prefix("invalid value: "))
        .and_then(|r| r.rsplit_once(", expected "))
        .or_else(|| {
            raw.strip_prefix("unknown variant ")
                .and_then(|r| r.split_once(", expected "))
        });
    match split {
        Some((found, expected)) => {
            let expected = schema_expects.unwrap_or_else(|| humanize(expected));
            format!("expected {expected}, found {found}")
        }
        None => raw.to_string(),
    }
}

/// What the schema says `key` (a dotted path without indices inside tables' names) holds.
fn expects_of(key: &str) -> Option<String> {
    let segs = segments(key);
    let mut schema = &ROOT;
    let mut found = None;
    for (i, seg) in segs.iter().enumerate() {
        let Seg::Key(k) = seg else { continue };
        let field = schema.field(k)?;
        match &field.shape {
            Shape::Value(e) if i + 1 == segs.len() => found = Some(e.to_string()),
            Shape::Value(_) => return None,
            Shape::Table(s) | Shape::Tables(s) => schema = *s,
        }
    }
    found
}

fn humanize(expected: &str) -> String {
    match expected {
        "f64" | "f32" => NUMBER.into(),
        "usize" | "u64" | "u32" | "u16" | "u8" => WHOLE.into(),
        "i64" | "i32" => "a whole number".into(),
        "a sequence" => "a list".into(),
        e if e.starts_with("struct ") || e == "a map" => "a table".into(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(schema: &Schema) -> Vec<&'static str> {
        schema.fields().map(|f| f.key).collect()
    }

    /// The schema and the structs must list the same keys: serialising a spec gives the
    /// structs' keys.
    #[test]
    fn the_schema_lists_the_keys_the_structs_read() {
        let spec = Spec::demo(std::path::PathBuf::from("experiments")).unwrap();
        let keys = |v: serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        // `dry_run_lengths` and `skip_cut_completions` are left out of the JSON when absent (so
        // they are no part of the task ids of a spec without them).
        let optional = ["dry_run_lengths", "skip_cut_completions"];
        let sorted = |mut v: Vec<&str>| {
            v.retain(|k| *k != "lora" && !optional.contains(k));
            v.sort();
            v.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let recipe = serde_json::to_value(&spec.training.em.recipe).unwrap();
        let mut want: Vec<&str> = RECIPE.iter().map(|f| f.key).collect();
        want.push("lora");
        let mut got = keys(recipe.clone());
        got.retain(|k| k != "lora");
        assert_eq!(got, sorted(want));
        assert_eq!(keys(recipe["lora"].clone()), sorted(names(&LORA)));
        let mut set = keys(serde_json::to_value(&spec.training.em).unwrap());
        set.retain(|k| k != "recipe");
        assert_eq!(
            set,
            sorted(TRAINING_SET.groups[0].iter().map(|f| f.key).collect())
        );
        let mut coupling = keys(serde_json::to_value(&spec.coupling).unwrap());
        coupling.retain(|k| k != "recipe" && !optional.contains(&k.as_str()));
        assert_eq!(
            coupling,
            sorted(COUPLING.groups[0].iter().map(|f| f.key).collect())
        );
        for (value, schema) in [
            (serde_json::to_value(&spec.extraction).unwrap(), &EXTRACTION),
            (serde_json::to_value(&spec.marker_eval).unwrap(), &MARKER_EVAL),
            (serde_json::to_value(&spec.analysis).unwrap(), &ANALYSIS),
            (serde_json::to_value(&spec.data).unwrap(), &DATA),
        ] {
            assert_eq!(keys(value), sorted(names(schema)));
        }
    }

    #[test]
    fn a_misspelling_is_close_and_another_key_is_not() {
        assert!(close("learnig_rate", "learning_rate"));
        assert!(close("LearningRate", "learning_rate"));
        assert!(!close("lr", "learning_rate"));
        assert!(!close("seeds", "store"));
    }

    #[test]
    fn paths_split_into_keys_and_indices() {
        let s = segments("conditions[2].id");
        assert!(matches!(
            s.as_slice(),
            [Seg::Key("conditions"), Seg::Index(2), Seg::Key("id")]
        ));
        assert_eq!(strip_trailing_index("extraction.layers[1]"), "extraction.layers");
        assert_eq!(expects_of("training.em.learning_rate").as_deref(), Some(NUMBER));
        assert_eq!(expects_of("conditions[0].id").as_deref(), Some(STRING));
    }
}
