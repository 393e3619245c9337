//! `pspace run`: the coordinator and one worker per local slot in one process, talking through
//! the same actor messages as `pspace coordinator` and `pspace worker` do over gRPC. Progress
//! bars while it runs; committed tasks are skipped (resume).

use crate::bars::{follow, summary, Bars};
use crate::cli::RunArgs;
use crate::session::{self, load_spec};
use anyhow::Result;
use pspace_actors::transport::Transport;
use pspace_actors::worker::{run_worker, OnLost, RestartPolicy, WorkerConfig, WorkerOutcome};
use std::time::Duration;

pub fn run(args: RunArgs) -> Result<()> {
    let mut loaded = load_spec(args.spec.as_deref())?;
    // The spec's device is checked here, before the other checks, since the dtype settles on
    // it: a name it does not know is reported at its line in the spec.
    let device = match &args.device {
        Some(device) => device.clone(),
        None => loaded.spec.device()?.to_string(),
    };
    let devices = crate::devices::slots(&device, args.gpus.as_deref())?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| loaded.spec.experiment.store.clone());
    session::settle_dtype(
        &mut loaded.spec,
        &devices,
        &session::scratch_for(&location)?,
        if args.dry_run {
            session::Settling::Leave
        } else {
            session::Settling::Keep
        },
    )?;
    let spec = &loaded.spec;
    let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    eprintln!(
        "experiment {:?}: model {}, device {}{}, seeds {:?}, store {location}",
        spec.experiment.name,
        spec.experiment.model,
        names.join(","),
        spec.experiment
            .fixed_dtype()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        spec.experiment.seeds
    );
    session::preflight(spec)?;
    if args.dry_run {
        // A dry run stops where the run would: a GPU spec on a machine without CUDA is refused
        // here, not after the plan looked fine.
        crate::devices::activate_all(&devices).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(a dry run checks the device as the run does; `--dry-run --device cpu` \
                 prints the plan on this machine)"
            )
        })?;
        return print_plan(spec, &args.only);
    }
    crate::devices::activate_all(&devices)?;
    let scratch = session::scratch_for(&location)?;
    let files = session::fingerprints(spec, &location, session::DigestKeeping::Keep)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let run_span = tracing::info_span!(
        "run",
        experiment = %spec.experiment.name,
        model = %spec.experiment.model,
        device = %names.join(","),
        store = %location,
        epoch = tracing::field::Empty,
    );
    let outcome = runtime.block_on(async {
        let session = session::start(loaded, &location, &args.only, &files, run_span.clone()).await?;
        let transport = Transport::Local(session.actor.clone());
        let worker = tokio::spawn(run_worker(WorkerConfig {
            transport: transport.clone(),
            name: "local".into(),
            node_name: crate::devices::node_name(),
            devices,
            on_lost: OnLost::Cancel,
            restart: RestartPolicy::default(),
            scratch,
            give_up_after: Duration::from_secs(60),
            store: Some(session.store.clone()),
            // `pspace run` stops as one process (Ctrl-C ends it; the store keeps what committed).
            draining: Default::default(),
        }));
        let mut client = transport.client()?;
        let mut bars = Bars::new();
        let status = follow(&mut client, &mut bars).await;
        bars.finish();
        let worker = worker.await;
        session.stop().await;
        let status = status?;
        if let Ok(Err(e)) = &worker {
            anyhow::bail!("the worker could not start: {e}");
        }
        if let Ok(Ok(WorkerOutcome::Failed(why))) = &worker {
            if status.snapshot.failure.is_none() {
                anyhow::bail!("the worker stopped: {why}");
            }
        }
        summary(&status)
    });
    drop(run_span);
    outcome
}

/// The task plan of every seed (only the tasks `only` needs, when given), one line per task.
pub fn print_plan(spec: &pspace_actors::spec::Spec, only: &[String]) -> Result<()> {
    // No ids are printed: a dry run hashes no file.
    let files = pspace_actors::fingerprint::Fingerprints::placeholder();
    let mut plan = pspace_actors::plan::plan_run(spec, &files);
    if !only.is_empty() {
        plan = pspace_actors::plan::only(plan, only).map_err(|e| anyhow::anyhow!("--only: {e}"))?;
    }
    for entry in plan {
        println!(
            "{:<44} needs [{}]",
            entry.key.as_str(),
            entry
                .deps
                .iter()
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
