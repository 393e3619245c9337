//! What `pspace run` and `pspace coordinator` share: reading the spec (the embedded demo when
//! none is given), resolving its model and store, and starting the coordinator actor on them.

use anyhow::{Context, Result};
use pspace_actors::coordinator::{self, CoordinatorConfig, CoordinatorMsg};
use pspace_actors::fingerprint::{DigestCache, Fingerprints, CACHE_FILE};
use pspace_actors::plan::plan_run;
use pspace_actors::scheduler::{RetryPolicy, Timing};
use pspace_actors::spec::Spec;
use pspace_actors::store::{sha256_hex, Location, Store};
use pspace_engine::model::ModelSource;
use ractor::ActorRef;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A spec as read, with its TOML text (workers receive the text).
pub struct LoadedSpec {
    pub spec: Spec,
    pub toml: String,
}

/// The spec at `path`, or the embedded demo.
pub fn load_spec(path: Option<&Path>) -> Result<LoadedSpec> {
    match path {
        Some(path) => {
            let spec = Spec::from_file_well_formed(path)?;
            let toml =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(LoadedSpec { spec, toml })
        }
        None => {
            let root = crate::paths::project_root()
                .context("cannot find the project root (experiments/demo.toml): set PSPACE_HOME")?;
            Ok(LoadedSpec {
                spec: Spec::demo(root.join("experiments"))?,
                toml: pspace_actors::spec::DEMO_SPEC.to_string(),
            })
        }
    }
}

/// How [`settle_dtype`] may settle `dtype = "auto"` when the store has no kept record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settling {
    /// Measure this CPU and keep the choice (a run, a coordinator).
    Keep,
    /// Measure and settle for this command only, writing nothing (`pspace status`: the task ids
    /// name the type, so without it status would look up the ids of no run).
    Peek,
    /// Neither measure nor write (`run --dry-run`): the spec stays unsettled and a line says so.
    Leave,
}

/// Settles the spec's `dtype = "auto"` for a run on `devices` whose store has the scratch folder
/// `scratch` (every worker then computes in the type settled here): bf16 when any device is a
/// GPU; on a CPU the faster of f32 and bf16 there, measured once per store and kept in
/// `<scratch>/dtype-auto.json`, so that a resumed run (and `pspace status`) settles the same way
/// even where the two rates are close. One line says what was chosen and why. Without a kept
/// record, `settling` says whether to measure and whether to keep the choice.
pub fn settle_dtype(
    spec: &mut Spec,
    devices: &[pspace_engine::Device],
    scratch: &Path,
    settling: Settling,
) -> Result<()> {
    let mut rates = pspace_engine::device::cpu_matmul_rates;
    settle_dtype_measured_by(
        spec,
        devices,
        scratch,
        (settling != Settling::Leave).then_some(&mut rates as &mut dyn FnMut() -> (f64, f64)),
        settling == Settling::Keep,
    )
}

/// [`settle_dtype`] with this CPU's (f32, bf16) matmul rates from `measure` (`None`: do not
/// measure), so a test can stand in for the benchmark; `keep`: write the measured choice.
fn settle_dtype_measured_by(
    spec: &mut Spec,
    devices: &[pspace_engine::Device],
    scratch: &Path,
    measure: Option<&mut dyn FnMut() -> (f64, f64)>,
    keep: bool,
) -> Result<()> {
    use pspace_engine::Dtype;
    if spec.experiment.dtype != Some(pspace_actors::spec::DtypeSetting::Auto) {
        return Ok(());
    }
    if devices
        .iter()
        .any(|d| matches!(d, pspace_engine::Device::Cuda(_)))
    {
        eprintln!("dtype auto: bf16 (the run computes on CUDA)");
        spec.settle_dtype(Dtype::Bf16);
        return Ok(());
    }
    let path = scratch.join(DTYPE_AUTO_FILE);
    let record = match (read_dtype_record(&path)?, measure) {
        (Some(record), _) => record,
        (None, None) => {
            eprintln!(
                "dtype auto: not settled for this store yet (the first run measures this CPU and keeps the choice in {})",
                path.display()
            );
            return Ok(());
        }
        (None, Some(measure)) => {
            let (f32_rate, bf16_rate) = measure();
            let dtype = if bf16_rate > f32_rate { "bf16" } else { "f32" };
            let record = serde_json::json!({
                "dtype": dtype, "f32_tflops": f32_rate, "bf16_tflops": bf16_rate,
            });
            if !keep {
                eprintln!(
                    "dtype auto: not settled for this store yet; planned here as {dtype} (this CPU multiplies at \
                     {f32_rate:.3} TFLOP/s in f32, {bf16_rate:.3} in bf16, measured now and not kept: the first run \
                     measures again and keeps its choice in {})",
                    path.display()
                );
                spec.settle_dtype(
                    dtype
                        .parse::<Dtype>()
                        .map_err(|_| anyhow::anyhow!("dtype {dtype}"))?,
                );
                return Ok(());
            }
            keep_first_dtype_record(scratch, &path, record)?
        }
    };
    let chosen = match record["dtype"].as_str().map(str::parse::<Dtype>) {
        Some(Ok(dtype)) => dtype,
        _ => anyhow::bail!(
            "{}: expected \"dtype\": \"f32\" or \"bf16\", found {} (delete the file to measure again)",
            path.display(),
            if record.get("dtype").is_some() {
                record["dtype"].to_string()
            } else {
                format!("no \"dtype\" in {record}")
            }
        ),
    };
    let rates = match (record["f32_tflops"].as_f64(), record["bf16_tflops"].as_f64()) {
        (Some(f), Some(b)) => format!("this CPU multiplies at {f:.3} TFLOP/s in f32, {b:.3} in bf16"),
        _ => "no rates in the record".to_string(),
    };
    eprintln!("dtype auto: {chosen} ({rates}; kept in {})", path.display());
    spec.settle_dtype(chosen);
    Ok(())
}

/// The `dtype = "auto"` record's file name in the scratch folder.
const DTYPE_AUTO_FILE: &str = "dtype-auto.json";

/// The kept `dtype = "auto"` record at `path`, if there is one.
fn read_dtype_record(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not the JSON pspace wrote (delete it to measure again)",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Keeps `record` at `path` unless a record is there already, and returns the one kept: two
/// runs (or coordinators) starting on one store at once both measure, and the first to create
/// the file decides for both, so they never compute in different types or give the same tasks
/// different ids. Create-only and whole: the record is written to a temporary file of this
/// process and hard-linked into place, which fails when the name exists, so a reader never sees
/// half a record and nobody overwrites the winner's.
fn keep_first_dtype_record(
    scratch: &Path,
    path: &Path,
    record: serde_json::Value,
) -> Result<serde_json::Value> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cannot = || format!("cannot write {}", path.display());
    std::fs::create_dir_all(scratch).with_context(cannot)?;
    let tmp = scratch.join(format!(
        ".{DTYPE_AUTO_FILE}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&record)?).with_context(cannot)?;
    let linked = std::fs::hard_link(&tmp, path);
    // The temporary name goes either way; a leftover would only be clutter.
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(record),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let kept = read_dtype_record(path)?
                .with_context(|| format!("{} existed and then went: start the run again", path.display()))?;
            eprintln!(
                "dtype auto: another start on this store kept its choice first in {}: following it",
                path.display()
            );
            Ok(kept)
        }
        Err(e) => Err(e).with_context(cannot),
    }
}

/// Every check that needs no compute, all at once (model config, data files, sets, ranges):
/// one line per problem and an error, or a line of what was learned.
pub fn preflight(spec: &Spec) -> Result<()> {
    let facts = check(spec)?;
    eprintln!("{facts}");
    Ok(())
}

/// [`preflight`]'s checks without the line of what was learned: `pspace status` refuses the
/// specs `pspace run` refuses, with the same messages (a missing data file named with the key
/// and line that name it), and otherwise prints only the tasks.
pub fn check(spec: &Spec) -> Result<pspace_actors::spec::Preflight> {
    let demo = crate::paths::project_root()
        .unwrap_or_else(|| ".".into())
        .join(".cache/models")
        .join(crate::paths::DEMO_MODEL_FILE);
    Ok(pspace_actors::spec::preflight(spec, &demo)?)
}

/// The spec's model: `demo` is the bundled GGUF, `random:<preset>[@seed]` random weights, a
/// relative path is relative to the spec's folder (made absolute, as workers open it).
pub fn resolve_spec_model(spec: &Spec) -> Result<ModelSource> {
    if spec.experiment.model == "demo" {
        return crate::paths::resolve_model("demo");
    }
    match ModelSource::parse(&spec.experiment.model)? {
        ModelSource::Files(p) => {
            let p = if p.is_absolute() { p } else { spec.root.join(p) };
            let resolved = crate::paths::resolve_model(&p.display().to_string())?;
            // Workers open the same path: make it absolute so it does not depend on their folder.
            Ok(match resolved {
                ModelSource::Files(path) => ModelSource::Files(std::fs::canonicalize(&path).unwrap_or(path)),
                other => other,
            })
        }
        random => Ok(random),
    }
}

/// Local work files: `PSPACE_SCRATCH`, else beside a local store, else a temporary folder named
/// after the store.
pub fn scratch_for(location: &str) -> Result<PathBuf> {
    Ok(
        match (std::env::var_os("PSPACE_SCRATCH"), Location::parse(location)?) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Location::Local(root)) => root.join(".scratch"),
            (None, Location::S3 { .. }) => std::env::temp_dir().join(format!(
                "pspace-scratch-{}",
                &sha256_hex(location.as_bytes())[..12]
            )),
        },
    )
}

/// Lease timing from the environment (`PSPACE_HEARTBEAT_MS`, default 1,000; `PSPACE_LEASE_MS`,
/// default 10,000), checked: the lease must exceed three heartbeats.
pub fn timing() -> Result<Timing> {
    let read = |name: &str, default: u64| -> Result<u64> {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .with_context(|| format!("{name}={v:?}: expected a whole number of milliseconds")),
            Err(_) => Ok(default),
        }
    };
    let timing = Timing {
        heartbeat_ms: read("PSPACE_HEARTBEAT_MS", 1_000)?,
        lease_ms: read("PSPACE_LEASE_MS", 10_000)?,
    };
    timing.check().context("PSPACE_LEASE_MS / PSPACE_HEARTBEAT_MS")?;
    Ok(timing)
}

/// A started coordinator and what the front end prints about it.
pub struct Session {
    pub actor: ActorRef<CoordinatorMsg>,
    pub store: Store,
    handle: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Stops the coordinator actor and waits until its state (and the spans it holds) is gone,
    /// so the run's trace is complete before telemetry flushes.
    pub async fn stop(self) {
        self.actor.stop(None);
        let _ = self.handle.await;
    }
}

/// Whether [`fingerprints`] may keep what it hashed in the scratch folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKeeping {
    /// Kept in `file-digests.json` (a run, a coordinator).
    Keep,
    /// Read from it if there, never written: `pspace status` changes nothing on disk.
    ReadOnly,
}

/// The digests of every file the run reads (the model's files, the data files), which the ids
/// of the tasks that read them hash. Kept in `file-digests.json` of the run's scratch folder by
/// path, size and modification time, so an unchanged model is not hashed again; with
/// [`DigestKeeping::ReadOnly`] the kept digests are used and what they lack is hashed for this
/// call alone.
pub fn fingerprints(spec: &Spec, location: &str, keeping: DigestKeeping) -> Result<Fingerprints> {
    let model = resolve_spec_model(spec)?;
    let cache_path = scratch_for(location)?.join(CACHE_FILE);
    let mut cache = match keeping {
        DigestKeeping::Keep => DigestCache::open(&cache_path),
        DigestKeeping::ReadOnly => DigestCache::read_only(&cache_path),
    };
    let started = std::time::Instant::now();
    let files = Fingerprints::compute(spec, &model, &mut cache)?;
    // Said where the digests are kept (a run, a coordinator), to account for the time of a
    // first start; a read-only command (`pspace status`) keeps quiet about its own hashing.
    if cache.hashed_bytes > 0 && keeping == DigestKeeping::Keep {
        eprintln!(
            "hashed {:.1} MB of model and data files in {:.1} s (digests kept in {})",
            cache.hashed_bytes as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            cache_path.display()
        );
    }
    cache.save()?;
    Ok(files)
}

/// Opens the store and starts the coordinator on the spec (must run inside a tokio runtime);
/// with `only` (`kind/label` names), on those tasks and their dependencies alone; `files` are
/// the run's [`fingerprints`].
pub async fn start(
    loaded: LoadedSpec,
    location: &str,
    only: &[String],
    files: &Fingerprints,
    run_span: tracing::Span,
) -> Result<Session> {
    let model = resolve_spec_model(&loaded.spec)?;
    let store = Store::open(location)?;
    let spec = Arc::new(loaded.spec);
    let config = CoordinatorConfig {
        spec: spec.clone(),
        spec_toml: loaded.toml,
        model: model.to_string(),
        store_location: location.to_string(),
        store: store.clone(),
        timing: timing()?,
        policy: RetryPolicy::default(),
        run_span,
    };
    let mut plan = plan_run(&spec, files);
    if !only.is_empty() {
        plan = pspace_actors::plan::only(plan, only).map_err(|e| anyhow::anyhow!("--only: {e}"))?;
    }
    let (actor, handle) = coordinator::start(config, plan).await?;
    Ok(Session { actor, store, handle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pspace_engine::{Device, Dtype};

    /// The embedded demo, whose `dtype` is `auto`.
    fn auto_spec() -> Spec {
        let spec = Spec::parse(pspace_actors::spec::DEMO_SPEC, "demo.toml", PathBuf::new()).unwrap();
        assert_eq!(
            spec.experiment.dtype,
            Some(pspace_actors::spec::DtypeSetting::Auto)
        );
        spec
    }

    /// Two starts on one store at once: both find no record and measure; the first settles
    /// (f32 here) and keeps its record while the second is still measuring (bf16 faster for
    /// it). The second, finding the record there when it creates its own, follows it instead
    /// of overwriting it, so both compute in f32 and the file keeps the first's record whole.
    #[test]
    fn a_second_start_that_finds_the_record_when_creating_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join(".scratch");
        let (mut first, mut second) = (auto_spec(), auto_spec());
        let mut racing = || {
            settle_dtype_measured_by(
                &mut first,
                &[Device::Cpu],
                &scratch,
                Some(&mut || (0.3, 0.1)),
                true,
            )
            .unwrap();
            (0.1, 0.3)
        };
        settle_dtype_measured_by(&mut second, &[Device::Cpu], &scratch, Some(&mut racing), true).unwrap();
        assert_eq!(first.experiment.fixed_dtype(), Some(Dtype::F32));
        assert_eq!(
            second.experiment.fixed_dtype(),
            Some(Dtype::F32),
            "the second overwrote the first"
        );
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(scratch.join(DTYPE_AUTO_FILE)).unwrap()).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({"dtype": "f32", "f32_tflops": 0.3, "bf16_tflops": 0.1})
        );
        let names: Vec<_> = std::fs::read_dir(&scratch)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DTYPE_AUTO_FILE], "a temporary file was left");
        // A later start reads the record and measures nothing.
        let mut later = auto_spec();
        let mut never = || -> (f64, f64) { panic!("measured again") };
        settle_dtype_measured_by(&mut later, &[Device::Cpu], &scratch, Some(&mut never), true).unwrap();
        assert_eq!(later.experiment.fixed_dtype(), Some(Dtype::F32));
    }
}
