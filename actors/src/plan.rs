//! The plan of a whole run: every seed's task DAG (from `Spec::plan`) under one key space, the
//! store folder of a task, and the digest of a committed task that its dependants' ids hash.
//!
//! Keys: a task of seed 42 is `42/extract/base`; within one seed, a task's inputs are named by
//! `kind/label` as `Spec::plan` names them, so ids do not depend on how many seeds run together.
//! A spec of several seeds adds one task across them, `all/summarise/seeds` (the analyst's
//! cross-seed summary), whose inputs are named `<seed>/analyse/all`.

use crate::fingerprint::Fingerprints;
use crate::scheduler::{PlanNode, TaskRef};
use crate::spec::Spec;
use crate::store::{sha256_hex, Manifest};
use crate::task::{Task, TaskKind};
use serde_json::Value;
use std::collections::BTreeMap;

/// Outputs that record how a task ran (timings, throughput) rather than what it made: they differ
/// from run to run, so no downstream id may depend on them.
/// (The engine's `train::run::LOG_FILE`, written out so the plan does not link the engine; a
/// test in the executor checks they agree.)
pub const RUN_RECORDS: [&str; 1] = ["train_log.json"];

/// A digest of a dependency's outputs (all but the run records): what a downstream task id
/// hashes. The same inputs and parameters thus give the same ids on every run and machine.
pub fn manifest_digest(m: &Manifest) -> String {
    // The JSON text of the name -> sha256 map, written out by hand so no fallible serialiser
    // sits in the path (the same bytes serde_json writes for a BTreeMap<String, String>).
    let body: Vec<String> = m
        .outputs
        .iter()
        .filter(|(name, _)| !RUN_RECORDS.contains(&name.as_str()))
        .map(|(name, hash)| format!("{}:{}", Value::String(name.clone()), Value::String(hash.clone())))
        .collect();
    sha256_hex(format!("{{{}}}", body.join(",")).as_bytes())
}

/// The folder of the tasks that span every seed (`<experiment>/all/...`).
pub const ALL_SEEDS: &str = "all";

/// The store folder of a task: `<experiment>/<folder>/<kind>/<label>-<id>`, where the folder is
/// the task's seed or [`ALL_SEEDS`].
pub fn task_dir(experiment: &str, folder: &str, task: &Task) -> String {
    format!(
        "{experiment}/{folder}/{}/{}-{}",
        task.kind.as_str(),
        task.label,
        task.id()
    )
}

/// One task of a run: its globally unique key, its seed, the task without its inputs' digests
/// (filled in once its dependencies commit), and its dependencies as (key, input name).
#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub key: TaskRef,
    /// The seed of the task's random draws (for the cross-seed summary: the first seed).
    pub seed: u64,
    /// Its folder in the store: the seed, or [`ALL_SEEDS`].
    pub folder: String,
    pub task: Task,
    /// (the dependency's key, the name this task's `inputs` give it: `kind/label`).
    pub deps: Vec<(TaskRef, String)>,
}

impl PlanEntry {
    /// The scheduler's view of this entry.
    pub fn node(&self) -> PlanNode {
        PlanNode {
            task: self.key.clone(),
            kind: self.task.kind,
            depends_on: self.deps.iter().map(|(k, _)| k.clone()).collect(),
            cost: expected_cost(self.task.kind),
        }
    }

    /// The store folder of this entry's task once resolved (see [`task_dir`]).
    pub fn dir(&self, experiment: &str, task: &Task) -> String {
        task_dir(experiment, &self.folder, task)
    }

    /// The task with its inputs' digests filled in from its committed dependencies, or None while
    /// one is not committed.
    pub fn resolve(&self, digest_of: impl Fn(&TaskRef) -> Option<String>) -> Option<Task> {
        let mut task = self.task.clone();
        for (key, input) in &self.deps {
            task.inputs.insert(input.clone(), digest_of(key)?);
        }
        Some(task)
    }
}

/// The expected cost of a task of `kind`, in seconds of one H200: the weight from which the
/// scheduler's grant order (critical path first) is computed. It orders grants only: no task id,
/// output or result depends on it, so a wrong weight costs wall time, never correctness.
///
/// Source: the task seconds of the full-size dry run on 2 x H200, 2026-11-30 (bench/results, one
/// task per GPU), rounded to whole seconds. Extract is per kind, so one weight: an adapter's 28 s
/// (extract/base took 44 s, but there is one of it against one per condition). Summarise was
/// not measured there; it is the single sink of a multi-seed plan, so its weight adds the same
/// to every priority and orders nothing: analyse's is given. Only the relative sizes matter.
pub fn expected_cost(kind: TaskKind) -> u64 {
    match kind {
        TaskKind::TrainEm => 108,
        TaskKind::TrainBenign => 292,
        TaskKind::Extract => 28,
        TaskKind::GenerateOnpolicy => 9,
        TaskKind::BuildCoupling => 0,
        TaskKind::TrainCoupling => 157,
        TaskKind::MarkerEval => 5,
        TaskKind::Analyse => 22,
        TaskKind::Summarise => 22,
    }
}

/// The key of seed `seed`'s task `kind/label`.
pub fn task_key(seed: u64, kind_label: &str) -> TaskRef {
    TaskRef::new(format!("{seed}/{kind_label}"))
}

/// Every task of every seed of the spec, dependencies first (seed by seed, in `Spec::plan`'s
/// order), then, with two seeds or more, the cross-seed summary. `files` are the digests of the
/// files the run reads (model, data), which the ids of the tasks that read them hash.
pub fn plan_run(spec: &Spec, files: &Fingerprints) -> Vec<PlanEntry> {
    let mut entries = Vec::new();
    let seeds = &spec.experiment.seeds;
    for &seed in seeds {
        for planned in spec.plan(seed, files) {
            entries.push(PlanEntry {
                key: task_key(seed, &planned.key()),
                seed,
                folder: seed.to_string(),
                deps: planned
                    .depends_on
                    .iter()
                    .map(|d| (task_key(seed, d), d.clone()))
                    .collect(),
                task: planned.task,
            });
        }
    }
    if seeds.len() > 1 {
        entries.push(summary_entry(spec));
    }
    entries
}

/// The analyst's cross-seed summary: reads every seed's `analyse/all`.
fn summary_entry(spec: &Spec) -> PlanEntry {
    let seeds = &spec.experiment.seeds;
    let deps = seeds
        .iter()
        .map(|&seed| {
            let key = task_key(seed, &format!("{}/all", TaskKind::Analyse.as_str()));
            let input = key.as_str().to_string();
            (key, input)
        })
        .collect();
    let task = spec.summary_task();
    PlanEntry {
        key: TaskRef::new(format!("{ALL_SEEDS}/{}/seeds", TaskKind::Summarise.as_str())),
        seed: seeds[0],
        folder: ALL_SEEDS.into(),
        task,
        deps,
    }
}

/// The part of a plan that `wanted` (`kind/label` names, e.g. `marker_eval/E0_assistant`,
/// for every seed) needs: those tasks and everything they depend on, in plan order. Every name
/// must be a task of the plan; the error lists the names there are.
pub fn only(entries: Vec<PlanEntry>, wanted: &[String]) -> Result<Vec<PlanEntry>, String> {
    let suffix = |e: &PlanEntry| format!("{}/{}", e.task.kind.as_str(), e.task.label);
    // `kind/label` names the task in every seed; a key as `status` and `--dry-run` print it
    // (`42/kind/label`), that seed's only.
    let named = |e: &PlanEntry| wanted.iter().any(|w| *w == suffix(e) || w == e.key.as_str());
    let known: std::collections::BTreeSet<String> = entries.iter().map(suffix).collect();
    let keys: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let unknown: Vec<&String> = wanted
        .iter()
        .filter(|w| !known.contains(*w) && !keys.contains(w.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "no task {} in this plan: expected kind/label (every seed) or seed/kind/label, one of {}",
            unknown
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            known.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let index = by_key(&entries);
    let mut keep: std::collections::BTreeSet<TaskRef> = std::collections::BTreeSet::new();
    let mut stack: Vec<TaskRef> = entries
        .iter()
        .filter(|e| named(e))
        .map(|e| e.key.clone())
        .collect();
    while let Some(key) = stack.pop() {
        if keep.insert(key.clone()) {
            if let Some(e) = index.get(&key) {
                stack.extend(e.deps.iter().map(|(d, _)| d.clone()));
            }
        }
    }
    Ok(entries.into_iter().filter(|e| keep.contains(&e.key)).collect())
}

/// Entries by key.
pub fn by_key(entries: &[PlanEntry]) -> BTreeMap<TaskRef, PlanEntry> {
    entries.iter().map(|e| (e.key.clone(), e.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn demo_with_seeds(seeds: &[u64]) -> Spec {
        let mut spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        spec.experiment.seeds = seeds.to_vec();
        spec
    }

    #[test]
    fn one_seed_has_no_cross_seed_summary() {
        let spec = demo_with_seeds(&[42]);
        let entries = plan_run(&spec, &Fingerprints::placeholder());
        assert_eq!(entries.len(), spec.plan(42, &Fingerprints::placeholder()).len());
        assert!(entries.iter().all(|e| e.task.kind != TaskKind::Summarise));
    }

    #[test]
    fn several_seeds_end_with_a_summary_that_reads_every_analysis() {
        let spec = demo_with_seeds(&[42, 7, 3]);
        let entries = plan_run(&spec, &Fingerprints::placeholder());
        assert_eq!(
            entries.len(),
            3 * spec.plan(42, &Fingerprints::placeholder()).len() + 1
        );
        let summary = entries.last().unwrap();
        assert_eq!(summary.key.as_str(), "all/summarise/seeds");
        assert_eq!(summary.folder, ALL_SEEDS);
        let deps: Vec<(&str, &str)> = summary
            .deps
            .iter()
            .map(|(k, n)| (k.as_str(), n.as_str()))
            .collect();
        assert_eq!(
            deps,
            [
                ("42/analyse/all", "42/analyse/all"),
                ("7/analyse/all", "7/analyse/all"),
                ("3/analyse/all", "3/analyse/all")
            ]
        );
        // Every dependency is a task of the plan, so the scheduler can order it.
        for (dep, _) in &summary.deps {
            assert!(entries.iter().any(|e| &e.key == dep), "{dep:?}");
        }
        assert!(summary
            .dir("x", &summary.task)
            .starts_with("x/all/summarise/seeds-"));
        // The seeds are part of its id: another set of seeds is another summary.
        let other = plan_run(&demo_with_seeds(&[42, 7]), &Fingerprints::placeholder());
        assert_ne!(other.last().unwrap().task.id(), summary.task.id());
    }

    #[test]
    fn the_weights_grant_every_seeds_benign_training_before_the_conditions() {
        use crate::scheduler::{Acquire, RetryPolicy, Scheduler, Timing};
        let spec = demo_with_seeds(&[42, 7]);
        let entries = plan_run(&spec, &Fingerprints::placeholder());
        let nodes = entries.iter().map(PlanEntry::node).collect();
        let mut s = Scheduler::new(nodes, 1, Timing::default(), RetryPolicy::default(), 0).unwrap();
        let mut grant = || match s.acquire("gpu", &TaskKind::ALL, 0) {
            Acquire::Granted(g) => g.lease.task.as_str().to_string(),
            other => panic!("expected a grant, got {other:?}"),
        };
        let first: Vec<String> = (0..3).map(|_| grant()).collect();
        // train_benign (292 s, then its extract and the analysis) is the longest chain of a
        // seed; seed 42's before seed 7's (plan order), then seed 42's first condition.
        let condition = &spec.conditions[0].id;
        assert_eq!(
            first,
            [
                "42/train_benign/benign_sft".to_string(),
                "7/train_benign/benign_sft".to_string(),
                format!("42/train_em/{condition}"),
            ]
        );
    }

    #[test]
    fn only_keeps_the_named_tasks_and_their_dependencies() {
        let spec = Spec::demo(PathBuf::from("experiments")).unwrap();
        let all = plan_run(&spec, &Fingerprints::placeholder());
        let condition = spec.conditions[0].id.clone();
        let part = only(
            all.clone(),
            &[format!("marker_eval/{condition}"), "extract/base".into()],
        )
        .unwrap();
        let keys: Vec<String> = part.iter().map(|e| e.key.as_str().to_string()).collect();
        let seed = spec.experiment.seeds[0];
        let want: Vec<String> = [
            "extract/base".to_string(),
            format!("train_em/{condition}"),
            format!("generate_onpolicy/{condition}"),
            format!("build_coupling/{condition}"),
            format!("train_coupling/{condition}"),
            format!("marker_eval/{condition}"),
        ]
        .iter()
        .map(|k| format!("{seed}/{k}"))
        .collect();
        assert_eq!(keys, want);
        // The whole plan's ids are kept: the same tasks, the same folders.
        for e in &part {
            let full = all.iter().find(|a| a.key == e.key).unwrap();
            assert_eq!(full.task.id(), e.task.id());
        }
        let err = only(all, &["extract/nobody".into()]).unwrap_err();
        assert!(
            err.contains("\"extract/nobody\"") && err.contains("analyse/all"),
            "{err}"
        );
    }

    /// A key as `status` prints it (`seed/kind/label`) names that seed's task only; `kind/label`
    /// names it in every seed.
    #[test]
    fn only_takes_a_seed_qualified_key_for_one_seed() {
        let spec = demo_with_seeds(&[42, 7]);
        let all = plan_run(&spec, &Fingerprints::placeholder());
        let keys = |wanted: &[&str]| -> Vec<String> {
            let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
            let part = only(all.clone(), &wanted).unwrap();
            part.iter().map(|e| e.key.as_str().to_string()).collect()
        };
        assert_eq!(keys(&["7/extract/base"]), ["7/extract/base"]);
        assert_eq!(keys(&["extract/base"]), ["42/extract/base", "7/extract/base"]);
        let err = only(all.clone(), &["9/extract/base".into()]).unwrap_err();
        assert!(
            err.contains("\"9/extract/base\"") && err.contains("seed/kind/label"),
            "{err}"
        );
    }
}
