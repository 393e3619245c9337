//! The heartbeat of a worker slot: its own OS thread with its own small tokio runtime and its
//! own coordinator client, so model work (which blocks other threads for minutes) cannot starve
//! it. While a lease is tracked it sends KeepAlive every heartbeat interval with the task's
//! progress; when the coordinator says the lease is no longer ours, or nothing has been renewed
//! for a whole lease time, it cancels the task (cooperatively) and, if the worker is set to,
//! ends the process after a grace period in case the task does not stop by itself (a task that
//! did stop is reported first, late or not, and then the slot ends the process).

use crate::executor::{CancelToken, Progress};
use crate::transport::Transport;
use pspace_proto::Heartbeat;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the task last reported, shared between the stage (writer) and the heartbeat (reader).
#[derive(Clone, Default)]
pub struct ProgressCell(Arc<Mutex<(String, u64, u64)>>);

impl ProgressCell {
    pub fn read(&self) -> (String, u64, u64) {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Progress for ProgressCell {
    fn stage_progress(&mut self, message: &str, done: usize, total: usize) {
        if let Ok(mut g) = self.0.lock() {
            if g.0 != message {
                g.0 = message.to_string();
            }
            g.1 = done as u64;
            g.2 = total as u64;
        }
    }
}

/// What happens when a lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// Cancel the task; the slot goes on (the in-process worker of `pspace run`).
    Cancel,
    /// Cancel the task, then end the process with status 3: after reporting it, or after a
    /// grace of three lease times (at least 30 s) if it does not stop (`pspace worker`: the
    /// orchestrator restarts a clean process).
    Exit,
}

enum Command {
    Track {
        lease_id: String,
        cancel: CancelToken,
        progress: ProgressCell,
    },
    Untrack,
}

/// The handle of one slot's heartbeat thread (the thread ends when the handle is dropped).
pub struct Heartbeats {
    tx: mpsc::UnboundedSender<Command>,
}

impl Heartbeats {
    pub fn start(
        transport: Transport,
        worker_id: String,
        interval: Duration,
        lease: Duration,
        on_lost: OnLost,
    ) -> Heartbeats {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = format!("heartbeat-{worker_id}");
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || beat(rx, transport, worker_id, interval, lease, on_lost));
        if let Err(e) = spawned {
            tracing::error!("cannot start the heartbeat thread: {e}");
        }
        Heartbeats { tx }
    }

    pub fn track(&self, lease_id: &str, cancel: &CancelToken, progress: &ProgressCell) {
        let _ = self.tx.send(Command::Track {
            lease_id: lease_id.to_string(),
            cancel: cancel.clone(),
            progress: progress.clone(),
        });
    }

    pub fn untrack(&self) {
        let _ = self.tx.send(Command::Untrack);
    }
}

struct Tracked {
    lease_id: String,
    cancel: CancelToken,
    progress: ProgressCell,
    renewed: Instant,
}

fn beat(
    mut rx: mpsc::UnboundedReceiver<Command>,
    transport: Transport,
    worker_id: String,
    interval: Duration,
    lease: Duration,
    on_lost: OnLost,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("heartbeat runtime: {e}");
            return;
        }
    };
    let mut client = match runtime.block_on(async { transport.client() }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("heartbeat client: {e}");
            return;
        }
    };
    let mut current: Option<Tracked> = None;
    let mut last_reconnect = Instant::now();
    // Set once the task of a lost lease has stopped (the slot untracked it): the exit after the
    // grace is then left to the slot, which reports first.
    let mut stopped_after_loss: Option<Arc<AtomicBool>> = None;
    loop {
        // Waiting inside the runtime keeps the connection driven between beats: it answers
        // the coordinator's keep-alive PINGs, and its own find a dead connection.
        let command = runtime.block_on(async { tokio::time::timeout(interval, rx.recv()).await });
        match command {
            Ok(Some(Command::Track {
                lease_id,
                cancel,
                progress,
            })) => {
                current = Some(Tracked {
                    lease_id,
                    cancel,
                    progress,
                    renewed: Instant::now(),
                })
            }
            Ok(Some(Command::Untrack)) => {
                current = None;
                if let Some(stopped) = stopped_after_loss.take() {
                    stopped.store(true, Ordering::SeqCst);
                }
            }
            Ok(None) => return,
            Err(_elapsed) => {}
        }
        let Some(t) = &mut current else { continue };
        let (stage, done, total) = t.progress.read();
        let request = Heartbeat {
            lease_id: t.lease_id.clone(),
            worker_id: worker_id.clone(),
            done,
            total,
            stage,
        };
        let answer = runtime.block_on(async {
            tokio::time::timeout(
                interval.max(Duration::from_millis(200)),
                client.keep_alive(request),
            )
            .await
        });
        let lost = match answer {
            Ok(Ok(reply)) if reply.still_yours => {
                t.renewed = Instant::now();
                None
            }
            Ok(Ok(_)) => Some("the coordinator says the lease is no longer ours".to_string()),
            Ok(Err(e)) if t.renewed.elapsed() > lease => {
                Some(format!("no renewal for a whole lease time ({e})"))
            }
            Err(_) if t.renewed.elapsed() > lease => {
                Some("no renewal for a whole lease time (timeouts)".to_string())
            }
            Err(_) if t.renewed.elapsed() > lease / 2 && last_reconnect.elapsed() > lease / 2 => {
                // Unanswered for half a lease: the next beats go over a fresh connection rather
                // than one that may have died silently (keep-alive finds that out within 10 s,
                // which can be longer than a lease). At most once per half lease, so a slow
                // connection attempt is not started over at every beat.
                let _in_runtime = runtime.enter();
                client.reconnect();
                last_reconnect = Instant::now();
                None
            }
            _ => None,
        };
        if let Some(why) = lost {
            eprintln!(
                "worker {worker_id}: lease {} lost: {why}; stopping the task",
                t.lease_id
            );
            t.cancel.cancel();
            if on_lost == OnLost::Exit {
                // Its outputs cannot commit any more; training and generation stop within a
                // step, so the grace only bounds how long work that cannot stop mid-way (a
                // model load, an analysis, an upload) holds the device. Long enough for a task
                // that does stop to report (late: refused).
                let grace = crate::scheduler::report_window(lease);
                let who = worker_id.clone();
                let stopped = Arc::new(AtomicBool::new(false));
                stopped_after_loss = Some(stopped.clone());
                let _ = std::thread::Builder::new().name("lease-lost-exit".into()).spawn(move || {
                    std::thread::sleep(grace);
                    if !stopped.load(Ordering::SeqCst) {
                        eprintln!("worker {who}: the task did not stop within {grace:?} of losing its lease; exiting");
                        std::process::exit(3);
                    }
                });
            }
            current = None;
        }
    }
}
