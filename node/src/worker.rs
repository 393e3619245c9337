//! `pspace worker`: one slot per device (`--device`, or `--gpus all|0,1`), pulling leases from a
//! coordinator over gRPC until it reports the run finished (exit 0) or failed (exit 1). A lost
//! lease ends the process (exit 3) after the task is cancelled, so an orchestrator restarts a
//! clean worker.
//!
//! SIGTERM (what Kubernetes sends a pod it deletes, then waits its grace period) or Ctrl-C
//! drains the worker: each slot finishes and reports the task in hand, takes no new lease, and
//! the process exits 143 (130 for Ctrl-C) once they are done, so no attempt is thrown away. A
//! second signal stops it at once; the coordinator then runs that task again when its lease
//! expires.

use crate::cli::WorkerArgs;
use anyhow::{bail, Result};
use pspace_actors::transport::Transport;
use pspace_actors::worker::{run_worker, OnLost, RestartPolicy, WorkerConfig, WorkerOutcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let draining = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(std::sync::Mutex::new(None::<(&'static str, i32)>));
    runtime.spawn(drain_on_signal(name.clone(), draining.clone(), signal.clone()));
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
        draining,
    }))?;
    match outcome {
        WorkerOutcome::Finished => {
            eprintln!("worker {name}: the run is finished");
            Ok(())
        }
        WorkerOutcome::Drained => {
            let (signal, code) = signal.lock().ok().and_then(|s| *s).unwrap_or(("SIGTERM", 143));
            eprintln!("worker {name}: drained after {signal}: the tasks in hand were finished and reported");
            std::process::exit(code);
        }
        WorkerOutcome::Failed(why) => bail!("worker {name}: {why}"),
    }
}

/// Waits for SIGTERM or Ctrl-C, then sets `draining` and records which signal came (for the
/// exit code); a second signal ends the process at once.
async fn drain_on_signal(
    name: String,
    draining: Arc<AtomicBool>,
    signal: Arc<std::sync::Mutex<Option<(&'static str, i32)>>>,
) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return;
    };
    let first = tokio::select! {
        _ = term.recv() => ("SIGTERM", 143),
        _ = tokio::signal::ctrl_c() => ("SIGINT", 130),
    };
    if let Ok(mut s) = signal.lock() {
        *s = Some(first);
    }
    draining.store(true, Ordering::SeqCst);
    eprintln!(
        "worker {name}: {}: finishing the task in hand, taking no new one (a second signal stops at once)",
        first.0
    );
    let second = tokio::select! {
        _ = term.recv() => 143,
        _ = tokio::signal::ctrl_c() => 130,
    };
    eprintln!("worker {name}: second signal: stopping now; the coordinator reruns the task in hand");
    std::process::exit(second);
}
