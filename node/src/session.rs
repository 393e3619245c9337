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

/// Settles the spec's `dtype = "auto"` for a run on `devices` whose store has the scratch folder
/// `scratch` (every worker then computes in the type settled here): bf16 when any device is a
/// GPU; on a CPU the faster of f32 and bf16 there, measured once per store and kept in
/// `<scratch>/dtype-auto.json`, so that a resumed run (and `pspace status`) settles the same way
/// even where the two rates are close. One line says what was chosen and why. With `measure`
/// false (`pspace status`, `run --dry-run`: nothing is written, no CPU time spent) only a kept
/// record settles it; without one the spec stays unsettled and the line says so.
pub fn settle_dtype(
    spec: &mut Spec,
    devices: &[pspace_engine::Device],
    scratch: &Path,
    measure: bool,
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
    let path = scratch.join("dtype-auto.json");
    let kept = match std::fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<serde_json::Value>(&bytes).with_context(|| {
                format!(
                    "{} is not the JSON pspace wrote (delete it to measure again)",
                    path.display()
                )
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let record = match kept {
        Some(record) => record,
        None if !measure => {
            eprintln!(
                "dtype auto: not settled for this store yet (the first run measures this CPU and keeps the choice in {})",
                path.display()
            );
            return Ok(());
        }
        None => {
            let (f32_rate, bf16_rate) = pspace_engine::device::cpu_matmul_rates();
            let dtype = if bf16_rate > f32_rate { "bf16" } else { "f32" };
            let record = serde_json::json!({
                "dtype": dtype, "f32_tflops": f32_rate, "bf16_tflops": bf16_rate,
            });
            std::fs::create_dir_all(scratch)
                .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(&record)?))
                .with_context(|| format!("cannot write {}", path.display()))?;
            record
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

/// Every check that needs no compute, all at once (model config, data files, sets, ranges):
/// one line per problem and an error, or a line of what was learned.
pub fn preflight(spec: &Spec) -> Result<()> {
    let demo = crate::paths::project_root()
        .unwrap_or_else(|| ".".into())
        .join(".cache/models")
        .join(crate::paths::DEMO_MODEL_FILE);
    let facts = pspace_actors::spec::preflight(spec, &demo)?;
    eprintln!("{facts}");
    Ok(())
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
    if cache.hashed_bytes > 0 {
        eprintln!(
            "hashed {:.1} MB of model and data files in {:.1} s ({})",
            cache.hashed_bytes as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            match keeping {
                DigestKeeping::Keep => format!("digests kept in {}", cache_path.display()),
                DigestKeeping::ReadOnly => "not kept: this command writes nothing".to_string(),
            }
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
