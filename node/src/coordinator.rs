//! `pspace coordinator`: serves a run over gRPC to `pspace worker` processes. It loads the run's
//! state from the store (committed tasks are never run again; the journal keeps attempts and
//! spent budgets across a restart), shows progress, and exits 0 once every task of every seed is
//! committed, printing the `report:` and `result:` lines as `pspace run` does.
//!
//! The port is served from the start with health NOT_SERVING (calls are answered Unavailable
//! while the state loads), SERVING once the state is loaded, and NOT_SERVING again when the
//! coordinator stops: at the end of the run, or on SIGTERM / Ctrl-C, after which calls in flight
//! get `--shutdown-grace-s` to finish and the process exits 143 (130 for Ctrl-C). Nothing is
//! lost by that exit: the state is in the store and a restart resumes it.

use crate::bars::{follow, summary, Bars};
use crate::cli::CoordinatorArgs;
use crate::session::{self, load_spec};
use anyhow::{Context, Result};
use pspace_actors::transport::grpc::{self, Serving};
use pspace_actors::transport::security::listen_policy;
use pspace_actors::transport::Transport;
use std::time::Duration;
use tokio::sync::watch;

/// The coordinator was stopped by a signal before the run finished; `main` exits with `code`.
#[derive(Debug)]
pub struct Stopped {
    pub signal: &'static str,
    pub code: i32,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {} before the run finished (its state is in the store: a restart resumes it)",
            self.signal
        )
    }
}

impl std::error::Error for Stopped {}

/// Resolves at the first SIGTERM or SIGINT, with what `main` should exit with.
async fn signalled() -> Stopped {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => Stopped { signal: "SIGTERM", code: 143 },
        _ = tokio::signal::ctrl_c() => Stopped { signal: "SIGINT", code: 130 },
    }
}

pub fn run(args: CoordinatorArgs) -> Result<()> {
    let security = args.security.load()?;
    let mut loaded = load_spec(args.spec.as_deref())?;
    // The workers' devices are theirs; the spec's device says whether they are GPUs.
    let device = loaded.spec.device()?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| loaded.spec.experiment.store.clone());
    session::settle_dtype(
        &mut loaded.spec,
        &[device],
        &session::scratch_for(&location)?,
        session::Settling::Keep,
    )?;
    let spec = &loaded.spec;
    eprintln!(
        "experiment {:?}: model {}, seeds {:?}, store {location}",
        spec.experiment.name, spec.experiment.model, spec.experiment.seeds
    );
    session::preflight(spec)?;
    let files = session::fingerprints(spec, &location, session::DigestKeeping::Keep)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let run_span = tracing::info_span!(
        "run",
        experiment = %spec.experiment.name,
        model = %spec.experiment.model,
        store = %location,
        epoch = tracing::field::Empty,
    );
    let grace = Duration::from_secs(args.shutdown_grace_s);
    let outcome = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        if let Some(warning) = listen_policy(&address, &security, args.security.insecure)? {
            eprintln!("{warning}");
        }
        grpc::check_server_tls(&security)?;
        let serving = Serving::new().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let until_stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let mut servers = vec![tokio::spawn(grpc::serve_listener(
            serving.clone(),
            listener,
            security.clone(),
            until_stop(stop_rx.clone()),
        ))];
        if let Some(health) = &args.health_listen {
            let listener = tokio::net::TcpListener::bind(health)
                .await
                .with_context(|| format!("cannot listen on {health} (--health-listen)"))?;
            eprintln!(
                "coordinator: health (grpc.health.v1, plaintext) on {}",
                listener.local_addr()?
            );
            servers.push(tokio::spawn(grpc::serve_health(
                serving.clone(),
                listener,
                until_stop(stop_rx.clone()),
            )));
        }
        let mut signal = Box::pin(signalled());
        let session = tokio::select! {
            s = session::start(loaded, &location, &[], &files, run_span.clone()) => s?,
            stopped = &mut signal => {
                shut_down(&serving, &stop_tx, servers, grace).await;
                return Err(anyhow::Error::new(stopped));
            }
        };
        serving.loaded(session.actor.clone()).await;
        // Tests and scripts read this line to learn the port of `--listen HOST:0`.
        eprintln!(
            "coordinator: listening on {address}{} (epoch {})",
            if security.tls.is_some() { ", TLS" } else { "" },
            epoch(&session).await
        );
        let mut client = Transport::Local(session.actor.clone()).client()?;
        let mut bars = Bars::new();
        let status = tokio::select! {
            status = follow(&mut client, &mut bars) => status,
            stopped = &mut signal => {
                bars.finish();
                shut_down(&serving, &stop_tx, servers, grace).await;
                let _ = tokio::time::timeout(grace, session.stop()).await;
                return Err(anyhow::Error::new(stopped));
            }
        };
        bars.finish();
        let lease = Duration::from_millis(session::timing()?.lease_ms);
        tokio::select! {
            _ = linger(&mut client, lease) => {}
            _ = &mut signal => {}
        }
        shut_down(&serving, &stop_tx, servers, grace).await;
        session.stop().await;
        summary(&status?)
    });
    drop(run_span);
    outcome
}

/// Keeps a finished run's coordinator serving: workers learn the run ended at their next
/// acquire (one lease time, at most 5 s), and a worker whose lease expired while it was cut off
/// still gets its late report answered ("refused") rather than finding no coordinator, until
/// that report arrives or its window passes (`RunStatus::awaiting_reports`, at most a lease
/// plus the report window after the expiry).
async fn linger(client: &mut pspace_actors::transport::CoordinatorClient, lease: Duration) {
    tokio::time::sleep(lease.min(Duration::from_secs(5))).await;
    let mut said = false;
    loop {
        let Ok(status) = client.status().await else {
            return;
        };
        let now = pspace_actors::coordinator::journal::unix_ms();
        let Some(until) = status
            .awaiting_reports
            .values()
            .copied()
            .filter(|u| *u > now)
            .max()
        else {
            return;
        };
        if !said {
            eprintln!(
                "coordinator: run ended; serving up to {:.0} s more for the late report of {} expired lease(s) ({})",
                (until - now) as f64 / 1e3,
                status.awaiting_reports.len(),
                status.awaiting_reports.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// NOT_SERVING, then stop accepting and give the calls in flight `grace` to finish.
async fn shut_down(
    serving: &Serving,
    stop: &watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<Result<(), pspace_actors::transport::TransportError>>>,
    grace: Duration,
) {
    serving.stopping().await;
    let _ = stop.send(true);
    let all = futures::future::join_all(servers);
    match tokio::time::timeout(grace, all).await {
        Ok(results) => {
            for r in results {
                if let Ok(Err(e)) = r {
                    eprintln!("coordinator: {e}");
                }
            }
        }
        Err(_) => eprintln!("coordinator: calls still in flight after {grace:?}; exiting anyway"),
    }
}

async fn epoch(session: &session::Session) -> u64 {
    let Ok(mut client) = Transport::Local(session.actor.clone()).client() else {
        return 0;
    };
    client.status().await.map(|s| s.snapshot.epoch).unwrap_or(0)
}
