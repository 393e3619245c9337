//! `pspace status`: tasks by state, leases, workers and attempts, from a running coordinator
//! (`--coordinator URL`) or, without one, from the store alone (committed tasks and the
//! coordinator's journal).

use crate::cli::StatusArgs;
use crate::session::{self, load_spec};
use anyhow::{bail, Result};
use pspace_actors::coordinator::journal::{Histories, Journal};
use pspace_actors::plan::{manifest_digest, plan_run};
use pspace_actors::scheduler::{FailureClass, TaskPhase};
use pspace_actors::store::{Manifest, Store};
use pspace_actors::task::Task;
use pspace_actors::transport::Transport;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// With --json a failure is JSON too, `{"error": "..."}` on stdout (as `doctor --json` does: a
/// script reading the rows gets an object it can parse either way), besides the usual line on
/// stderr and exit 1.
pub fn run(args: StatusArgs) -> Result<()> {
    let json = args.json;
    let outcome = report(args);
    if let (true, Err(e)) = (json, &outcome) {
        let error = serde_json::json!({ "error": format!("{e:#}") });
        println!("{}", serde_json::to_string_pretty(&error)?);
    }
    outcome
}

fn report(args: StatusArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Some(endpoint) = &args.coordinator {
            let client = Transport::Remote {
                endpoint: endpoint.clone(),
                security: Arc::new(args.security.load()?),
            }
            .client()?;
            let status = crate::health::retry_transient(|| {
                let mut c = client.clone();
                async move { c.status().await }
            })
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            return Ok(());
        }
        from_store(&args).await
    })
}

/// Walks the plan in order: a task is committed when its inputs are and its manifest is in
/// the store; attempts and failures come from the journal, all runs (read only: no epoch is
/// claimed).
async fn from_store(args: &StatusArgs) -> Result<()> {
    let mut spec = load_spec(args.spec.as_deref())?.spec;
    // The spec as `pspace run` checks it, before the store is read: a spec a run refuses is an
    // error here too (it was listed as if it could run), and a missing data file is named with
    // the key that names it rather than found later, pathless, by the hashing. The device is
    // not activated: a spec for a GPU can be looked at from a machine without one.
    session::check(&spec)?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| spec.experiment.store.clone());
    // A local folder that does not exist is a store no run wrote to yet, as an empty one is:
    // the plan is listed under `nothing committed yet`, and the folder is not created (status
    // writes nothing). A file in its place is no store at all.
    let absent = match pspace_actors::store::Location::parse(&location)? {
        pspace_actors::store::Location::Local(root) if root.exists() && !root.is_dir() => bail!(
            "{} is a file, not a store folder: expected the folder a run writes to (the spec's \
             `store`, or --store)",
            root.display()
        ),
        pspace_actors::store::Location::Local(root) => (!root.exists()).then_some(root),
        pspace_actors::store::Location::S3 { .. } => None,
    };
    let store = match &absent {
        Some(_) => None,
        None => Some(Store::open(&location)?),
    };
    // Asked before anything is measured: a folder that is not this spec's store must not read
    // as a run with nothing done (every task `ready` or `waiting`, exit 0).
    let fresh = match &store {
        None => true,
        Some(store) => match holding(store, &spec.experiment.name).await? {
            Holding::Run => false,
            Holding::Nothing => true,
            Holding::Other(found) => bail!(
                "{location} holds no store of experiment {:?}: a run of this spec writes under \
                 {location}/{}/, which is not there; found {}. Pass the store this spec ran into \
                 (--store, or the spec's `store`), or the spec that ran into this one",
                spec.experiment.name,
                spec.experiment.name,
                found.join(", ")
            ),
        },
    };
    // As the run settled it (the ids of the tasks that run the model name it); unsettled, as a
    // run here would settle it, without keeping the choice.
    let device = spec.device()?;
    session::settle_dtype(
        &mut spec,
        &[device],
        &session::scratch_for(&location)?,
        session::Settling::Peek,
    )?;
    let events = match &store {
        Some(store) => Journal::read(store, &spec.experiment.name).await?,
        None => Vec::new(),
    };
    // Every run's events: the highest attempt a task reached and every failure it had, by
    // task id (a key's earlier tasks, before the spec or an input changed, are other tasks).
    let history = Histories::from_events(&events);
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = Vec::new();
    // Every key under a kind's folder, listed once for all the tasks of that kind.
    let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let files = session::fingerprints(&spec, &location, session::DigestKeeping::ReadOnly)?;
    for entry in plan_run(&spec, &files) {
        let key = entry.key.to_string();
        // The coordinator's words for the states the store shows (a task that can start now
        // is `ready` in both forms); leases and backoffs only a coordinator knows.
        let task = entry.resolve(|d| digests.get(d.as_str()).cloned());
        let id = task.as_ref().map(|t| t.id());
        let committed = match (&task, &store) {
            (Some(task), Some(store)) => {
                store
                    .committed_manifest(&entry.dir(&spec.experiment.name, task))
                    .await?
            }
            _ => None,
        };
        let state = match &task {
            None => TaskPhase::Waiting,
            Some(_) => match committed {
                Some(m) => {
                    digests.insert(key.clone(), manifest_digest(&m));
                    TaskPhase::Committed
                }
                None => TaskPhase::Ready,
            },
        };
        let h = history.of(&entry.key, id.as_deref());
        // Why a task is `ready` again, where the store knows: its failures under this id, and
        // an earlier commit of its key under another id (the spec, a file or an input changed).
        let mut why = Vec::new();
        if let (TaskPhase::Ready, Some(task), Some(store)) = (&state, &task, &store) {
            why.extend(failed_before(&h.failures));
            let kind_dir = format!(
                "{}/{}/{}/",
                spec.experiment.name,
                entry.folder,
                task.kind.as_str()
            );
            if !listed.contains_key(&kind_dir) {
                listed.insert(kind_dir.clone(), store.list(&kind_dir).await?);
            }
            if let Some(before) = earlier_commit(store, &kind_dir, &listed[&kind_dir], task).await? {
                why.extend(changed_since(&before.spec, &task_json(task)));
            }
        }
        rows.push(serde_json::json!({
            "task": key, "id": id, "state": state, "attempts": h.attempts,
            "failures": h.failures.iter().map(|(c, m)| format!("{c}: {m}")).collect::<Vec<_>>(),
            "reason": (!why.is_empty()).then(|| why.join("; ")),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "experiment {}  store {location}  (from the store; no coordinator asked)",
        spec.experiment.name
    );
    if let Some(root) = &absent {
        println!(
            "nothing committed yet: the store folder {} does not exist yet (a run of this spec creates it and writes under {location}/{}/)",
            root.display(),
            spec.experiment.name
        );
    } else if fresh {
        println!(
            "nothing committed yet: {location} holds no run of experiment {:?} (a run of this spec writes under {location}/{}/)",
            spec.experiment.name, spec.experiment.name
        );
    }
    let count = |word: &str| rows.iter().filter(|r| r["state"] == word).count();
    let committed = count(TaskPhase::Committed.as_str());
    for r in &rows {
        let state = r["state"].as_str().unwrap_or_default();
        let state = match r["reason"].as_str() {
            Some(reason) => format!("{state} ({reason})"),
            None => state.to_string(),
        };
        println!(
            "  {:<36} {:<9} attempts {}",
            r["task"].as_str().unwrap_or_default(),
            state,
            r["attempts"]
        );
        // `class: message`, printed as the coordinator's table prints a failure.
        for f in r["failures"].as_array().into_iter().flatten() {
            let first = f.as_str().unwrap_or_default().lines().next().unwrap_or_default();
            match first.split_once(": ") {
                Some((class, message)) => println!("      failed ({class}): {message}"),
                None => println!("      failed ({first})"),
            }
        }
    }
    println!(
        "tasks: {committed} of {} committed, {} ready, {} waiting",
        rows.len(),
        count(TaskPhase::Ready.as_str()),
        count(TaskPhase::Waiting.as_str())
    );
    if committed == rows.len() {
        return Ok(());
    }
    let _ = session::scratch_for(&location)?;
    if rows.is_empty() {
        bail!("the spec plans no task");
    }
    Ok(())
}

/// `failed 2x: <the last error's first line, shortened>`, for a task that failed before.
fn failed_before(failures: &[(FailureClass, String)]) -> Option<String> {
    let (_, last) = failures.last()?;
    Some(format!(
        "failed {}x: {}",
        failures.len(),
        shortened(last.lines().next().unwrap_or_default(), 60)
    ))
}

/// `text` cut to at most `most` characters, `...` marking a cut.
fn shortened(text: &str, most: usize) -> String {
    if text.chars().count() <= most {
        return text.to_string();
    }
    let kept: String = text.chars().take(most.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// The task as its manifest records it (`Manifest::spec`: its canonical JSON).
fn task_json(task: &Task) -> Value {
    serde_json::from_str(&task.canonical_json()).unwrap_or(Value::Null)
}

/// The latest manifest committed under `task`'s key with another id: the task as it was before
/// the spec, a file or an input changed. `keys` is every key under `kind_dir`.
async fn earlier_commit(
    store: &Store,
    kind_dir: &str,
    keys: &[String],
    task: &Task,
) -> Result<Option<Manifest>> {
    let mut latest: Option<Manifest> = None;
    for key in keys {
        // `<kind_dir><label>-<id>/manifest.json`: a task folder of this label.
        let Some(folder) = key
            .strip_prefix(kind_dir)
            .and_then(|k| k.strip_suffix("/manifest.json"))
        else {
            continue;
        };
        let Some(id) = folder
            .strip_prefix(task.label.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
        else {
            continue;
        };
        if id == task.id() || id.contains('/') {
            continue;
        }
        if let Some(m) = store.read_manifest(&format!("{kind_dir}{folder}")).await? {
            if latest
                .as_ref()
                .is_none_or(|l| m.finished_unix_ms > l.finished_unix_ms)
            {
                latest = Some(m);
            }
        }
    }
    Ok(latest)
}

/// How many changed values of one sort a reason names before it counts the rest.
const NAMED: usize = 3;

/// What differs between a task as it committed (`before`) and as planned now (`now`), both
/// as their manifests record them, grouped as a person would change them: `spec changed: max_len
/// 256 -> 512`, `file changed: em_data` (a data or model file's digest), `input changed:
/// train_em/E0` (a dependency committed again with other outputs).
fn changed_since(before: &Value, now: &Value) -> Vec<String> {
    let mut found = Vec::new();
    differences(before, now, "", &mut found);
    let (mut spec, mut files, mut inputs) = (Vec::new(), Vec::new(), Vec::new());
    for (path, old, new) in found {
        if let Some(name) = path.strip_prefix("params.files.") {
            files.push(name.to_string());
        } else if let Some(name) = path.strip_prefix("inputs.") {
            inputs.push(name.to_string());
        } else {
            let key = path
                .strip_prefix("params.stage.")
                .or_else(|| path.strip_prefix("params."))
                .unwrap_or(&path);
            spec.push(format!("{key} {} -> {}", value_text(old), value_text(new)));
        }
    }
    let group = |what: &str, items: Vec<String>| {
        (!items.is_empty()).then(|| {
            let rest = items.len().saturating_sub(NAMED);
            let mut named = items.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
            if rest > 0 {
                named.push_str(&format!(" and {rest} more"));
            }
            format!("{what}: {named}")
        })
    };
    [
        group("spec changed", spec),
        group("file changed", files),
        group("input changed", inputs),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every leaf where `a` and `b` differ, as (dotted path, a's value, b's value); objects are
/// walked, anything else (lists included) compared whole.
fn differences<'v>(
    a: &'v Value,
    b: &'v Value,
    path: &str,
    out: &mut Vec<(String, Option<&'v Value>, Option<&'v Value>)>,
) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => differences(x, y, &at(key), out),
                    (x, y) => out.push((at(key), x, y)),
                }
            }
        }
        _ if a != b => out.push((path.to_string(), Some(a), Some(b))),
        _ => {}
    }
}

/// A value as a reason shows it: compact JSON, long ones shortened; `(none)` for an absent key.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None => "(none)".to_string(),
        Some(v) => shortened(&v.to_string(), 24),
    }
}

/// What a store's root holds for an experiment.
#[derive(Debug, PartialEq)]
enum Holding {
    /// The experiment's folder: a run of the spec wrote here.
    Run,
    /// Nothing but pspace's own working files: a store no run has written to yet.
    Nothing,
    /// No folder of the experiment, but other content, described for a person (at most a few
    /// names; other experiments' stores named as such).
    Other(Vec<String>),
}

/// Names at the root that pspace itself leaves in any store it opened: the scratch folder
/// (dtype choice, file digests) and the create-only probe's folder.
const OWN_NAMES: [&str; 2] = [".scratch/", "_pspace/"];

/// How many names of foreign content an error lists before it counts the rest.
const LISTED: usize = 8;

/// Whether `store` holds a run of `experiment`, nothing yet, or something else: one listing
/// of the root, and for each folder there whether it is some experiment's (a coordinator's
/// journal under it: every run, local or distributed, keeps one).
async fn holding(store: &Store, experiment: &str) -> Result<Holding> {
    let names: Vec<String> = store
        .top_level()
        .await?
        .into_iter()
        .filter(|n| !OWN_NAMES.contains(&n.as_str()))
        .collect();
    if names.iter().any(|n| n.trim_end_matches('/') == experiment) {
        return Ok(Holding::Run);
    }
    if names.is_empty() {
        return Ok(Holding::Nothing);
    }
    let mut found = Vec::new();
    if names.iter().any(|n| n == "_coordinator/") {
        found.push(
            "a coordinator's journal (`_coordinator/`): this looks like one experiment's folder \
             inside a store, and the store is the folder above it"
                .to_string(),
        );
    }
    let others: Vec<&String> = names.iter().filter(|n| *n != "_coordinator/").collect();
    for name in others.iter().take(LISTED) {
        let journal = match name.strip_suffix('/') {
            Some(folder) => !store
                .list(&format!("{folder}/_coordinator/epochs/"))
                .await?
                .is_empty(),
            None => false,
        };
        found.push(if journal {
            format!(
                "{name} (the store of experiment {:?})",
                name.trim_end_matches('/')
            )
        } else {
            name.to_string()
        });
    }
    let rest = others.len().saturating_sub(LISTED);
    if rest > 0 {
        found.push(format!("{rest} more"));
    }
    Ok(Holding::Other(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding_of(dir: &std::path::Path, experiment: &str) -> Holding {
        let store = Store::local(dir).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(holding(&store, experiment))
            .unwrap()
    }

    /// A `ready` task's reason names what changed since its key last committed, by sort, and
    /// how often it failed with its last error's first line.
    #[test]
    fn a_ready_task_s_reason_names_what_changed_and_how_it_failed() {
        let before = serde_json::json!({
            "inputs": {"train_em/E0": "aa"}, "kind": "extract", "label": "E0",
            "params": {"files": {"model": "m1"}, "seed": 42,
                       "stage": {"max_new_tokens": 24, "layers": [0, 1], "temperature": 1.0}},
        });
        let now = serde_json::json!({
            "inputs": {"train_em/E0": "bb"}, "kind": "extract", "label": "E0",
            "params": {"files": {"model": "m2"}, "seed": 42,
                       "stage": {"max_new_tokens": 20, "layers": [0, 1, 2], "top_p": 0.9,
                                 "temperature": 1.0}},
        });
        assert_eq!(
            changed_since(&before, &now),
            [
                "spec changed: layers [0,1] -> [0,1,2], max_new_tokens 24 -> 20, top_p (none) -> 0.9",
                "file changed: model",
                "input changed: train_em/E0"
            ]
        );
        assert!(changed_since(&now, &now).is_empty());
        let long = "x".repeat(100);
        let failures = vec![
            (FailureClass::Crash, "first".to_string()),
            (FailureClass::Deterministic, format!("{long}\nbacktrace")),
        ];
        assert_eq!(
            failed_before(&failures).unwrap(),
            format!("failed 2x: {}...", "x".repeat(57))
        );
        assert_eq!(failed_before(&[]), None);
    }

    #[test]
    fn a_store_holds_this_run_nothing_yet_or_something_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Only pspace's own working files: a store no run wrote to yet.
        std::fs::create_dir_all(root.join(".scratch")).unwrap();
        std::fs::write(root.join(".scratch/dtype-auto.json"), b"{}").unwrap();
        std::fs::create_dir_all(root.join("_pspace/probe")).unwrap();
        assert_eq!(holding_of(root, "tiny"), Holding::Nothing);
        // Another experiment's run, and a file of the user's.
        std::fs::create_dir_all(root.join("demo/_coordinator/epochs")).unwrap();
        std::fs::write(root.join("demo/_coordinator/epochs/00000001"), b"1").unwrap();
        std::fs::write(root.join("notes.txt"), b"n").unwrap();
        assert_eq!(
            holding_of(root, "tiny"),
            Holding::Other(vec![
                "demo/ (the store of experiment \"demo\")".to_string(),
                "notes.txt".to_string()
            ])
        );
        std::fs::create_dir_all(root.join("tiny/42")).unwrap();
        assert_eq!(holding_of(root, "tiny"), Holding::Run);
        // The experiment's own folder given as the store.
        match holding_of(&root.join("demo"), "demo") {
            Holding::Other(found) => assert!(found[0].contains("the folder above it"), "{found:?}"),
            other => panic!("{other:?}"),
        }
    }
}
