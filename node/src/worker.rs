//! `pspace worker`: one slot per device (`--device`, or `--gpus all|0,1`), pulling leases from a
//! coordinator over gRPC until it reports the run finished (exit 0) or failed (exit 1). A lost
//! lease ends the process (exit 3) after the task is cancelled, so an orchestrator restarts a
//! clean worker.

use crate::cli::WorkerArgs;
use anyhow::{bail, Result};
use pspace_actors::transport::Transport;
use pspace_actors::worker::{run_worker, OnLost, RestartPolicy, WorkerConfig, WorkerOutcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub fn run(args: WorkerArgs) -> Result<()> {
    let security = args.security.load()?;
    // Refuse bad settings (a token bound for plaintext off this machine) before anything starts.
    security.check(&args.coordinator)?;
    let devices = crate::devices::slots(&args.device, args.gpus.as_deref())?;
    crate::devices::activate_all(&devices)?;
    let node = crate::devices::node_name();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{node}-{}", std::process::id()));
    let scratch = match std::env::var_os("PSPACE_SCRATCH") {
        Some(dir) => PathBuf::from(dir).join(&name),
        None => std::env::temp_dir().join(format!("pspace-worker-{name}")),
    };
    eprintln!(
        "worker {name}: coordinator {}, devices {}",
        args.coordinator,
        devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run_worker(WorkerConfig {
        transport: Transport::Remote {
            endpoint: args.coordinator.clone(),
            security: Arc::new(security),
        },
        name: name.clone(),
        node_name: node,
        devices,
        on_lost: OnLost::Exit,
        restart: RestartPolicy::default(),
        scratch,
        give_up_after: Duration::from_secs(args.give_up_after_s),
        store: None,
    }))?;
    match outcome {
        WorkerOutcome::Finished => {
            eprintln!("worker {name}: the run is finished");
            Ok(())
        }
        WorkerOutcome::Failed(why) => bail!("worker {name}: {why}"),
    }
}
