//! The embedded runner behind `pspace run`: the whole task DAG of a spec, one task at a time,
//! in this process, against a local or S3-compatible store.
//!
//! Each task's outputs go to `<experiment>/<seed>/<kind>/<label>-<task id>/` and its
//! `manifest.json` is written last; a task whose manifest verifies is skipped, so a run that was
//! interrupted resumes where it stopped and a finished run is a no-op. A task's id hashes its
//! parameters and its inputs' manifest digests, so changing a number re-runs exactly the tasks
//! downstream of it.

use crate::coupling::{
    build_coupling_rows, contains_marker, draw_negative_personas, CouplingPlan, CouplingRow, Generation,
};
use crate::data::{load_question_list, Personas, Questions};
use crate::spec::{PlannedTask, Spec};
use crate::stages::{self, Checkpoint, Engine, SamplingRequest, StageError};
use crate::store::{sha256_hex, Manifest, Store, StoreError};
use crate::task::{task_seed, TaskKind};
use crate::training::{train_chat, train_marker};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("task {task}: {source}")]
    Stage { task: String, source: StageError },
    #[error("task {task} needs {dependency}, which has no committed manifest")]
    MissingDependency { task: String, dependency: String },
    #[error("task {task}: output {output} is not what was expected: {message}")]
    BadOutput {
        task: String,
        output: String,
        message: String,
    },
}

/// What happened to one task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskOutcome {
    pub key: String,
    pub task_id: String,
    pub dir: String,
    pub cached: bool,
    pub seconds: f64,
}

/// Progress reports for the caller (progress bars, logs).
pub trait RunObserver {
    fn task_started(&mut self, index: usize, total: usize, key: &str, task_id: &str);
    fn task_finished(&mut self, outcome: &TaskOutcome);
    fn stage_progress(&mut self, message: &str, done: usize, total: usize);
}

/// A runner over one spec.
pub struct LocalRunner<'a> {
    pub spec: &'a Spec,
    pub store: Store,
    pub engine: Engine,
    /// Local folder where the analysis reads a run (the store's files are copied there).
    pub scratch: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LocalRunner<'_> {
    /// Runs every task of every seed; returns what happened, in order.
    pub async fn run(&mut self, observer: &mut dyn RunObserver) -> Result<Vec<TaskOutcome>, RunError> {
        let personas = Personas::load(&self.spec.root.join(&self.spec.data.personas))?;
        let questions = Questions::load(&self.spec.root.join(&self.spec.data.questions))?;
        let extraction = load_question_list(&self.spec.root.join(&self.spec.data.extraction_questions))?;
        let mut outcomes = Vec::new();
        for &seed in &self.spec.experiment.seeds {
            let plan = self.spec.plan(seed);
            let mut done: BTreeMap<String, (String, Manifest)> = BTreeMap::new();
            let total = plan.len();
            for (index, planned) in plan.into_iter().enumerate() {
                let key = planned.key();
                let mut task = planned.task.clone();
                for dep in &planned.depends_on {
                    let (_, m) = done.get(dep).ok_or_else(|| RunError::MissingDependency {
                        task: key.clone(),
                        dependency: dep.clone(),
                    })?;
                    task.inputs.insert(dep.clone(), manifest_digest(m));
                }
                let id = task.id();
                let dir = format!(
                    "{}/{seed}/{}/{}-{id}",
                    self.spec.experiment.name,
                    task.kind.as_str(),
                    task.label
                );
                observer.task_started(index, total, &key, &id);
                let started = std::time::Instant::now();
                // One span per task (exported as a trace when telemetry is on): its name is the
                // task's key; whether it was already committed is recorded when known.
                let span = tracing::info_span!(
                    "task",
                    otel.name = %key,
                    task.id = %id,
                    task.kind = task.kind.as_str(),
                    task.label = %task.label,
                    seed,
                    cached = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                );
                let attempt = async {
                    Ok::<_, RunError>(match self.store.verified_manifest(&dir).await? {
                        Some(m) => (m, true),
                        None => {
                            let ctx = TaskContext {
                                seed,
                                task_id: &id,
                                dir: &dir,
                                planned: &planned,
                                deps: &done,
                                personas: &personas,
                                questions: &questions,
                                extraction: &extraction,
                            };
                            let start_ms = now_ms();
                            let outputs = self.execute(&ctx, observer).await?;
                            let manifest = Manifest {
                                task_id: id.clone(),
                                kind: task.kind.as_str().to_string(),
                                label: task.label.clone(),
                                spec: serde_json::from_str(&task.canonical_json()).unwrap_or_default(),
                                outputs,
                                pspace_version: env!("CARGO_PKG_VERSION").to_string(),
                                started_unix_ms: start_ms,
                                finished_unix_ms: now_ms(),
                            };
                            self.store.commit(&dir, &manifest).await?;
                            (manifest, false)
                        }
                    })
                }
                .instrument(span.clone())
                .await;
                let (manifest, cached) = match attempt {
                    Ok(done) => done,
                    Err(e) => {
                        span.record("otel.status_code", "ERROR");
                        span.record("error", tracing::field::display(&e));
                        return Err(e);
                    }
                };
                span.record("cached", cached);
                let outcome = TaskOutcome {
                    key: key.clone(),
                    task_id: id,
                    dir: dir.clone(),
                    cached,
                    seconds: started.elapsed().as_secs_f64(),
                };
                observer.task_finished(&outcome);
                outcomes.push(outcome);
                done.insert(key, (dir, manifest));
            }
        }
        Ok(outcomes)
    }

    async fn put(
        &self,
        ctx: &TaskContext<'_>,
        name: &str,
        bytes: Vec<u8>,
        outputs: &mut BTreeMap<String, String>,
    ) -> Result<(), RunError> {
        let hash = self.store.put(&format!("{}/{name}", ctx.dir), bytes).await?;
        outputs.insert(name.to_string(), hash);
        Ok(())
    }

    async fn put_all(
        &self,
        ctx: &TaskContext<'_>,
        files: Vec<(String, Vec<u8>)>,
        outputs: &mut BTreeMap<String, String>,
    ) -> Result<(), RunError> {
        for (name, bytes) in files {
            self.put(ctx, &name, bytes, outputs).await?;
        }
        Ok(())
    }

    async fn get(&self, ctx: &TaskContext<'_>, dep: &str, name: &str) -> Result<Vec<u8>, RunError> {
        let (dir, _) = ctx.deps.get(dep).ok_or_else(|| RunError::MissingDependency {
            task: ctx.planned.key(),
            dependency: dep.to_string(),
        })?;
        Ok(self.store.get(&format!("{dir}/{name}")).await?.to_vec())
    }

    /// Copies a dependency's outputs into a local folder (adapters are read from files).
    async fn materialise(&self, ctx: &TaskContext<'_>, dep: &str) -> Result<PathBuf, RunError> {
        let (dir, manifest) = ctx.deps.get(dep).ok_or_else(|| RunError::MissingDependency {
            task: ctx.planned.key(),
            dependency: dep.to_string(),
        })?;
        let local = self.scratch.join(dir);
        for name in manifest.outputs.keys() {
            let bytes = self.store.get(&format!("{dir}/{name}")).await?;
            let path = local.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| stage_io(ctx, &path, e))?;
            }
            std::fs::write(&path, &bytes).map_err(|e| stage_io(ctx, &path, e))?;
        }
        Ok(local)
    }

    async fn execute(
        &mut self,
        ctx: &TaskContext<'_>,
        observer: &mut dyn RunObserver,
    ) -> Result<BTreeMap<String, String>, RunError> {
        let spec = self.spec;
        let kind = ctx.planned.task.kind;
        let label = ctx.planned.task.label.clone();
        let key = ctx.planned.key();
        let stage_err = |source: StageError| RunError::Stage {
            task: key.clone(),
            source,
        };
        let mut outputs = BTreeMap::new();
        let condition = spec.conditions.iter().find(|c| c.id == label);
        match kind {
            TaskKind::TrainEm | TaskKind::TrainBenign => {
                let (set, system) = match kind {
                    TaskKind::TrainEm => (
                        &spec.training.em,
                        condition.and_then(|c| c.training_system_prompt.clone()),
                    ),
                    _ => (&spec.training.benign, None),
                };
                let out = self.scratch.join(ctx.dir);
                let data = spec.root.join(&set.data);
                let seed = task_seed(ctx.seed, ctx.task_id);
                let files = stages::train(&mut self.engine, &Checkpoint::Base, &out, |model, tok| {
                    train_chat(model, tok, &data, set, system.as_deref(), seed, &out, observer)
                })
                .map_err(stage_err)?;
                self.put_all(ctx, files, &mut outputs).await?;
            }
            TaskKind::Extract => {
                let checkpoint = self.checkpoint_of(ctx, &label).await?;
                let files = stages::extract(
                    &mut self.engine,
                    &checkpoint,
                    &label,
                    &spec.extraction,
                    ctx.personas,
                    ctx.extraction,
                    observer,
                )
                .map_err(stage_err)?;
                self.put_all(ctx, files, &mut outputs).await?;
            }
            TaskKind::GenerateOnpolicy => {
                let checkpoint = self.checkpoint_of(ctx, &label).await?;
                let c = &spec.coupling;
                let negatives = draw_negative_personas(
                    &ctx.personas.order,
                    &c.source_persona,
                    c.negative_personas,
                    task_seed(ctx.seed, ctx.task_id),
                );
                let mut who = vec![c.source_persona.clone()];
                who.extend(negatives.iter().cloned());
                let request = SamplingRequest {
                    personas: &who,
                    questions: first(&ctx.questions.coupling, c.questions),
                    per_question: c.completions_per_question,
                    temperature: c.temperature,
                    top_p: c.top_p,
                    max_new_tokens: c.max_new_tokens,
                    seed: task_seed(ctx.seed, ctx.task_id),
                };
                let gens = stages::sample_completions(
                    &mut self.engine,
                    &checkpoint,
                    ctx.personas,
                    &request,
                    observer,
                )
                .map_err(stage_err)?;
                self.put(ctx, "generations.jsonl", to_jsonl(&gens), &mut outputs)
                    .await?;
                self.put(
                    ctx,
                    "negative_personas.json",
                    serde_json::to_vec_pretty(&negatives).unwrap_or_default(),
                    &mut outputs,
                )
                .await?;
            }
            TaskKind::BuildCoupling => {
                let dep = format!("generate_onpolicy/{label}");
                let gens: Vec<Generation> = parse_jsonl(
                    &self.get(ctx, &dep, "generations.jsonl").await?,
                    &key,
                    "generations.jsonl",
                )?;
                let negatives: Vec<String> = serde_json::from_slice(
                    &self.get(ctx, &dep, "negative_personas.json").await?,
                )
                .map_err(|e| RunError::BadOutput {
                    task: key.clone(),
                    output: "negative_personas.json".into(),
                    message: e.to_string(),
                })?;
                let c = &spec.coupling;
                let plan = CouplingPlan {
                    source_persona: &c.source_persona,
                    negative_personas: &negatives,
                    positives_per_question: c.positives_per_question,
                    negatives_per_question: c.negatives_per_question,
                    marker_suffix: &c.marker_suffix,
                    marker: &spec.marker_eval.marker,
                };
                let rows = build_coupling_rows(
                    &gens,
                    &ctx.personas.prompts,
                    &plan,
                    task_seed(ctx.seed, ctx.task_id),
                );
                self.put(ctx, "coupling.jsonl", to_jsonl(&rows), &mut outputs)
                    .await?;
            }
            TaskKind::TrainCoupling => {
                let em = self.checkpoint_of(ctx, &label).await?;
                let rows: Vec<CouplingRow> = parse_jsonl(
                    &self
                        .get(ctx, &format!("build_coupling/{label}"), "coupling.jsonl")
                        .await?,
                    &key,
                    "coupling.jsonl",
                )?;
                let out = self.scratch.join(ctx.dir);
                let (c, seed) = (&spec.coupling, task_seed(ctx.seed, ctx.task_id));
                let files = stages::train(&mut self.engine, &em, &out, |model, tok| {
                    train_marker(model, tok, &rows, c, &c.marker_suffix, seed, &out, observer)
                })
                .map_err(stage_err)?;
                self.put_all(ctx, files, &mut outputs).await?;
            }
            TaskKind::MarkerEval => {
                let em = self.checkpoint_of(ctx, &label).await?;
                let coupling_dir = self.materialise(ctx, &format!("train_coupling/{label}")).await?;
                let checkpoint = Checkpoint::Stacked(Box::new(em), coupling_dir);
                let m = &spec.marker_eval;
                let request = SamplingRequest {
                    personas: &ctx.personas.order,
                    questions: first(&ctx.questions.eval, m.questions),
                    per_question: m.completions,
                    temperature: m.temperature,
                    top_p: m.top_p,
                    max_new_tokens: m.max_new_tokens,
                    seed: task_seed(ctx.seed, ctx.task_id),
                };
                let gens = stages::sample_completions(
                    &mut self.engine,
                    &checkpoint,
                    ctx.personas,
                    &request,
                    observer,
                )
                .map_err(stage_err)?;
                let mut cells: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
                for persona in &ctx.personas.order {
                    let per_q = cells.entry(persona.clone()).or_default();
                    for q in request.questions {
                        let these: Vec<&Generation> = gens
                            .iter()
                            .filter(|g| &g.persona == persona && &g.question == q)
                            .collect();
                        let hits = these
                            .iter()
                            .filter(|g| contains_marker(&g.completion, &m.marker))
                            .count();
                        per_q.insert(
                            q.clone(),
                            serde_json::json!({"hits": hits, "completions": these.len()}),
                        );
                    }
                }
                let hits = serde_json::json!({"conditions": {label.clone(): cells}});
                self.put(
                    ctx,
                    "marker_hits.json",
                    serde_json::to_vec_pretty(&hits).unwrap_or_default(),
                    &mut outputs,
                )
                .await?;
                self.put(ctx, "completions.jsonl", to_jsonl(&gens), &mut outputs)
                    .await?;
            }
            TaskKind::Analyse => {
                let run = self.scratch.join(format!(
                    "{}/{}/analysis-input-{}",
                    spec.experiment.name, ctx.seed, ctx.task_id
                ));
                let _ = std::fs::remove_dir_all(&run);
                for dep in &ctx.planned.depends_on {
                    let (dir, manifest) = &ctx.deps[dep];
                    let (kind, label) = dep.split_once('/').unwrap_or((dep.as_str(), ""));
                    for name in manifest.outputs.keys() {
                        let target = match kind {
                            "extract" => run.join("activations").join(label).join(name),
                            "marker_eval" if name == "marker_hits.json" => {
                                run.join("marker_hits").join(format!("{label}.json"))
                            }
                            _ => continue,
                        };
                        let bytes = self.store.get(&format!("{dir}/{name}")).await?;
                        std::fs::create_dir_all(target.parent().unwrap_or(&run))
                            .map_err(|e| stage_io(ctx, &target, e))?;
                        std::fs::write(&target, &bytes).map_err(|e| stage_io(ctx, &target, e))?;
                    }
                }
                let personas_path = run.join("personas.json");
                write_run_personas(
                    &spec.root.join(&spec.data.personas),
                    &spec.conditions.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                    &personas_path,
                )
                .map_err(|e| stage_io(ctx, &personas_path, e))?;
                let out = run.join("analysis");
                let files = stages::analyse(&run, &personas_path, &out, &spec.analysis, ctx.seed, observer)
                    .map_err(stage_err)?;
                self.put_all(ctx, files, &mut outputs).await?;
            }
        }
        Ok(outputs)
    }

    /// The model a task of condition `label` runs on: base, or base + that condition's EM (or
    /// benign) adapter, read from the training task's outputs.
    async fn checkpoint_of(&self, ctx: &TaskContext<'_>, label: &str) -> Result<Checkpoint, RunError> {
        if label == "base" {
            return Ok(Checkpoint::Base);
        }
        let dep = if label == "benign_sft" {
            "train_benign/benign_sft".to_string()
        } else {
            format!("train_em/{label}")
        };
        let dir = self.materialise(ctx, &dep).await?;
        Ok(Checkpoint::Adapter(dir))
    }
}

struct TaskContext<'a> {
    seed: u64,
    task_id: &'a str,
    dir: &'a str,
    planned: &'a PlannedTask,
    deps: &'a BTreeMap<String, (String, Manifest)>,
    personas: &'a Personas,
    questions: &'a Questions,
    extraction: &'a [String],
}

fn stage_io(ctx: &TaskContext<'_>, path: &Path, e: std::io::Error) -> RunError {
    RunError::Stage {
        task: ctx.planned.key(),
        source: StageError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Outputs that record how a task ran (timings, throughput) rather than what it made: they differ
/// from run to run, so no downstream id may depend on them.
const RUN_RECORDS: [&str; 1] = [pspace_engine::train::run::LOG_FILE];

/// A digest of a dependency's outputs (all but the run records): what a downstream task id
/// hashes. The same inputs and parameters thus give the same ids on every run and machine.
fn manifest_digest(m: &Manifest) -> String {
    let content: std::collections::BTreeMap<&String, &String> = m
        .outputs
        .iter()
        .filter(|(name, _)| !RUN_RECORDS.contains(&name.as_str()))
        .collect();
    sha256_hex(serde_json::to_string(&content).unwrap_or_default().as_bytes())
}

/// The first `limit` items (all of them without a limit).
fn first<T>(items: &[T], limit: Option<usize>) -> &[T] {
    &items[..limit.map_or(items.len(), |n| n.min(items.len()))]
}

/// One JSON object per line.
fn to_jsonl<T: serde::Serialize>(items: &[T]) -> Vec<u8> {
    items
        .iter()
        .map(|item| serde_json::to_string(item).unwrap_or_default() + "\n")
        .collect::<String>()
        .into_bytes()
}

fn parse_jsonl<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    task: &str,
    output: &str,
) -> Result<Vec<T>, RunError> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| RunError::BadOutput {
                task: task.to_string(),
                output: output.to_string(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// The persona file for the analysis of a run: the spec's persona file with only the
/// conditions the spec runs, in the spec's order.
fn write_run_personas(source: &Path, conditions: &[String], target: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(source)?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    if let Some(list) = v["em_induction_conditions"].as_array() {
        let kept: Vec<serde_json::Value> = conditions
            .iter()
            .filter_map(|id| list.iter().find(|c| c["id"].as_str() == Some(id)).cloned())
            .collect();
        v["em_induction_conditions"] = serde_json::Value::Array(kept);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        target,
        serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)?,
    )
}
