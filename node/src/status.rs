//! `pspace status`: tasks by state, leases, workers and attempts, from a running coordinator
//! (`--coordinator URL`) or, without one, from the store alone (committed tasks and the
//! coordinator's journal).

use crate::cli::StatusArgs;
use crate::session::{self, load_spec};
use anyhow::{bail, Result};
use pspace_actors::coordinator::journal::{histories, Journal};
use pspace_actors::plan::{manifest_digest, plan_run};
use pspace_actors::scheduler::TaskPhase;
use pspace_actors::store::Store;
use pspace_actors::transport::Transport;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn run(args: StatusArgs) -> Result<()> {
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
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| spec.experiment.store.clone());
    // A mistyped folder would otherwise be created and reported as a run with nothing done.
    if let pspace_actors::store::Location::Local(root) = pspace_actors::store::Location::parse(&location)? {
        if !root.is_dir() {
            bail!(
                "no store at {}: expected the folder a run wrote (the spec's `store`, or --store)",
                root.display()
            );
        }
    }
    // As the run settled it (the ids of the tasks that run the model name it); unsettled, as a
    // run here would settle it, without keeping the choice.
    let device = spec.device()?;
    session::settle_dtype(
        &mut spec,
        &[device],
        &session::scratch_for(&location)?,
        session::Settling::Peek,
    )?;
    let store = Store::open(&location)?;
    let events = Journal::read(&store, &spec.experiment.name).await?;
    // Every run's events: the highest attempt a task reached and every failure it had.
    let history = histories(&events);
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = Vec::new();
    let files = session::fingerprints(&spec, &location, session::DigestKeeping::ReadOnly)?;
    for entry in plan_run(&spec, &files) {
        let key = entry.key.to_string();
        // The coordinator's words for the states the store shows (a task that can start now
        // is `ready` in both forms); leases and backoffs only a coordinator knows.
        let state = match entry.resolve(|d| digests.get(d.as_str()).cloned()) {
            None => TaskPhase::Waiting,
            Some(task) => match store
                .committed_manifest(&entry.dir(&spec.experiment.name, &task))
                .await?
            {
                Some(m) => {
                    digests.insert(key.clone(), manifest_digest(&m));
                    TaskPhase::Committed
                }
                None => TaskPhase::Ready,
            },
        };
        let h = history.get(&entry.key).cloned().unwrap_or_default();
        rows.push(serde_json::json!({
            "task": key, "state": state, "attempts": h.attempts,
            "failures": h.failures.iter().map(|(c, m)| format!("{c}: {m}")).collect::<Vec<_>>(),
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
    let count = |word: &str| rows.iter().filter(|r| r["state"] == word).count();
    let committed = count(TaskPhase::Committed.as_str());
    for r in &rows {
        println!(
            "  {:<36} {:<9} attempts {}",
            r["task"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
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
