//! The coordinator's append-only journal in the store: every lease granted, every failure and
//! every expiry, one small object per event under `<experiment>/_coordinator/journal/`, and one
//! create-only marker per coordinator start under `<experiment>/_coordinator/epochs/`. It also
//! keeps the run's trace context (its trace id and the first run span's id), so a restarted
//! coordinator's spans join the run's trace instead of starting a new one.
//!
//! Object stores cannot append, so the journal is a folder of objects named
//! `<epoch>-<sequence>.json` (zero-padded, so listing order is journal order). A restarted
//! coordinator reads it back to keep attempt numbers counting and spent retry budgets spent;
//! commits need no journal entry (the manifests in the store are the commits). The epoch marker
//! is created with `PutMode::Create`, so two coordinators started at once get different epochs.

use crate::scheduler::{FailureClass, TaskRef};
use crate::store::{Created, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One journaled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Granted {
        task: TaskRef,
        /// The task's content id: a key (`seed/kind/label`) names a different task once the spec
        /// or an input changes, and its attempts are not this one's. Absent in journals written
        /// before ids were journaled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        attempt: u32,
        lease: String,
        worker: String,
        unix_ms: u64,
    },
    Failed {
        task: TaskRef,
        /// As in `Granted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        attempt: u32,
        class: FailureClass,
        message: String,
        unix_ms: u64,
    },
    /// The run ended (finished or failed): a later start is a new run whose retry budgets start
    /// afresh (a coordinator that crashed mid-run leaves no such event, so its budgets carry over).
    RunEnded { failure: Option<String>, unix_ms: u64 },
    /// The run's trace: the W3C trace context (`traceparent`, `tracestate`) of the run span of
    /// the first coordinator that traced this run. Ids and sampling flags only.
    RunTrace {
        context: BTreeMap<String, String>,
        unix_ms: u64,
    },
}

/// What the journal says about one task, for `Scheduler::restore`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskHistory {
    pub attempts: u32,
    pub failures: Vec<(FailureClass, String)>,
}

/// The journal of one experiment in one store, writing as epoch `epoch`.
pub struct Journal {
    store: Store,
    prefix: String,
    pub epoch: u64,
    seq: u64,
}

impl Journal {
    /// Claims the next epoch (create-only) and reads the events of earlier ones.
    pub async fn open(store: &Store, experiment: &str) -> Result<(Journal, Vec<Event>), StoreError> {
        let prefix = format!("{experiment}/_coordinator");
        let mut epoch = store
            .list(&format!("{prefix}/epochs/"))
            .await?
            .iter()
            .filter_map(|k| k.rsplit('/').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        loop {
            let marker = format!("{prefix}/epochs/{epoch:08}");
            match store.create(&marker, unix_ms().to_string().into_bytes()).await? {
                Created::Yes => break,
                Created::AlreadyExists => epoch += 1,
            }
        }
        let events = read_events(store, &prefix).await?;
        Ok((
            Journal {
                store: store.clone(),
                prefix,
                epoch,
                seq: 0,
            },
            events,
        ))
    }

    /// The events of every epoch so far, without claiming an epoch (for `pspace status`).
    pub async fn read(store: &Store, experiment: &str) -> Result<Vec<Event>, StoreError> {
        read_events(store, &format!("{experiment}/_coordinator")).await
    }

    /// Appends one event (create-only: a sequence number is never written twice).
    pub async fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        self.seq += 1;
        let key = format!("{}/journal/{:08}-{:08}.json", self.prefix, self.epoch, self.seq);
        let bytes = serde_json::to_vec(event).map_err(|cause| StoreError::BadManifest {
            key: key.clone(),
            cause,
        })?;
        self.store.create(&key, bytes).await?;
        Ok(())
    }
}

async fn read_events(store: &Store, prefix: &str) -> Result<Vec<Event>, StoreError> {
    let mut keys = store.list(&format!("{prefix}/journal/")).await?;
    keys.sort();
    let mut events = Vec::with_capacity(keys.len());
    for key in keys {
        let bytes = store.get(&key).await?;
        let event: Event = serde_json::from_slice(&bytes).map_err(|cause| StoreError::BadManifest {
            key: key.clone(),
            cause,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// The events of the run in progress: those after the last `RunEnded` (what a restarted
/// coordinator restores; empty when the last run ended).
pub fn current_run(events: &[Event]) -> &[Event] {
    let start = events
        .iter()
        .rposition(|e| matches!(e, Event::RunEnded { .. }))
        .map_or(0, |i| i + 1);
    &events[start..]
}

/// The trace context the run's first traced coordinator journaled, if any (pass the events
/// of [`current_run`]).
pub fn run_trace(events: &[Event]) -> Option<&BTreeMap<String, String>> {
    events.iter().find_map(|e| match e {
        Event::RunTrace { context, .. } if !context.is_empty() => Some(context),
        _ => None,
    })
}

/// Per task: the highest attempt granted and every failure, from a journal's events.
pub fn histories(events: &[Event]) -> BTreeMap<TaskRef, TaskHistory> {
    let mut out: BTreeMap<TaskRef, TaskHistory> = BTreeMap::new();
    for event in events {
        match event {
            Event::RunEnded { .. } | Event::RunTrace { .. } => {}
            Event::Granted { task, attempt, .. } => {
                let h = out.entry(task.clone()).or_default();
                h.attempts = h.attempts.max(*attempt);
            }
            Event::Failed {
                task,
                attempt,
                class,
                message,
                ..
            } => {
                let h = out.entry(task.clone()).or_default();
                h.attempts = h.attempts.max(*attempt);
                h.failures.push((*class, message.clone()));
            }
        }
    }
    out
}

/// Every run's history of each task, by task id: what `pspace status` shows beside a task of
/// the plan. A key's events under another id (an earlier spec, other inputs) are not counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histories {
    by_id: BTreeMap<String, TaskHistory>,
    /// Events journaled before ids were, by key: the only way to place them.
    without_id: BTreeMap<TaskRef, TaskHistory>,
}

impl Histories {
    pub fn from_events(events: &[Event]) -> Histories {
        let mut out = Histories::default();
        for event in events {
            let (task, id, attempt, failure) = match event {
                Event::RunEnded { .. } | Event::RunTrace { .. } => continue,
                Event::Granted {
                    task, id, attempt, ..
                } => (task, id, attempt, None),
                Event::Failed {
                    task,
                    id,
                    attempt,
                    class,
                    message,
                    ..
                } => (task, id, attempt, Some((*class, message.clone()))),
            };
            let h = match id {
                Some(id) => out.by_id.entry(id.clone()).or_default(),
                None => out.without_id.entry(task.clone()).or_default(),
            };
            h.attempts = h.attempts.max(*attempt);
            h.failures.extend(failure);
        }
        out
    }

    /// The history of the task `key` whose id is `id` (None: not known yet, its inputs are
    /// not committed, so no attempt of it can have run).
    pub fn of(&self, key: &TaskRef, id: Option<&str>) -> TaskHistory {
        id.and_then(|id| self.by_id.get(id))
            .or_else(|| self.without_id.get(key))
            .cloned()
            .unwrap_or_default()
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn epochs_grow_and_events_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let (mut j1, events) = Journal::open(&store, "x").await.unwrap();
        assert_eq!((j1.epoch, events.len()), (1, 0));
        let t = TaskRef::new("42/extract/base");
        j1.append(&Event::Granted {
            task: t.clone(),
            id: None,
            attempt: 1,
            lease: "1:42/extract/base:1:0".into(),
            worker: "w".into(),
            unix_ms: 1,
        })
        .await
        .unwrap();
        j1.append(&Event::Failed {
            task: t.clone(),
            id: None,
            attempt: 1,
            class: FailureClass::Crash,
            message: "boom".into(),
            unix_ms: 2,
        })
        .await
        .unwrap();
        let (mut j2, events) = Journal::open(&store, "x").await.unwrap();
        assert_eq!(j2.epoch, 2);
        assert_eq!(current_run(&events).len(), 2);
        j2.append(&Event::RunEnded {
            failure: None,
            unix_ms: 3,
        })
        .await
        .unwrap();
        let all = Journal::read(&store, "x").await.unwrap();
        assert!(current_run(&all).is_empty(), "a finished run restores nothing");
        assert_eq!(events.len(), 2);
        let h = &histories(&events)[&t];
        assert_eq!(h.attempts, 1);
        assert_eq!(h.failures, vec![(FailureClass::Crash, "boom".to_string())]);
    }

    /// A key's attempts under another task id (the spec changed between two runs) are not the
    /// current task's: status showed the old task's three attempts and its failures beside the
    /// new task that ran once.
    #[test]
    fn histories_count_the_attempts_of_one_task_id_only() {
        let t = TaskRef::new("42/train_em/E0");
        let granted = |id: Option<&str>, attempt| Event::Granted {
            task: t.clone(),
            id: id.map(str::to_string),
            attempt,
            lease: format!("1:42/train_em/E0:{attempt}:0"),
            worker: "w".into(),
            unix_ms: 1,
        };
        let failed = |id: Option<&str>, attempt| Event::Failed {
            task: t.clone(),
            id: id.map(str::to_string),
            attempt,
            class: FailureClass::Crash,
            message: format!("boom {attempt}"),
            unix_ms: 2,
        };
        let events = vec![
            granted(Some("aaaa"), 1),
            failed(Some("aaaa"), 1),
            granted(Some("aaaa"), 2),
            failed(Some("aaaa"), 2),
            granted(Some("aaaa"), 3),
            Event::RunEnded {
                failure: None,
                unix_ms: 3,
            },
            granted(Some("bbbb"), 1),
        ];
        let h = Histories::from_events(&events);
        assert_eq!(
            h.of(&t, Some("bbbb")),
            TaskHistory {
                attempts: 1,
                failures: vec![]
            }
        );
        assert_eq!(h.of(&t, Some("aaaa")).attempts, 3);
        assert_eq!(h.of(&t, Some("aaaa")).failures.len(), 2);
        assert_eq!(h.of(&t, Some("cccc")), TaskHistory::default());
        assert_eq!(
            h.of(&t, None),
            TaskHistory::default(),
            "no id yet: no attempt of it ran"
        );
        // A journal from before ids were journaled still counts, by key.
        let old = Histories::from_events(&[granted(None, 1), failed(None, 1), granted(None, 2)]);
        assert_eq!(old.of(&t, Some("bbbb")).attempts, 2);
        // And such an event parses: `id` is optional.
        let text = r#"{"event":"granted","task":"42/train_em/E0","attempt":1,"lease":"1:42/train_em/E0:1:0","worker":"w","unix_ms":1}"#;
        assert_eq!(serde_json::from_str::<Event>(text).unwrap(), granted(None, 1));
    }

    #[tokio::test]
    async fn the_first_trace_of_the_run_in_progress_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let context = |span: &str| {
            BTreeMap::from([(
                "traceparent".to_string(),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01"),
            )])
        };
        let (mut j1, _) = Journal::open(&store, "x").await.unwrap();
        for (c, ms) in [
            (BTreeMap::new(), 1),
            (context("00f067aa0ba902b7"), 2),
            (context("1111111111111111"), 3),
        ] {
            j1.append(&Event::RunTrace {
                context: c,
                unix_ms: ms,
            })
            .await
            .unwrap();
        }
        let (mut j2, events) = Journal::open(&store, "x").await.unwrap();
        assert_eq!(
            run_trace(current_run(&events)),
            Some(&context("00f067aa0ba902b7")),
            "the first non-empty context"
        );
        j2.append(&Event::RunEnded {
            failure: None,
            unix_ms: 4,
        })
        .await
        .unwrap();
        let (_, events) = Journal::open(&store, "x").await.unwrap();
        assert_eq!(
            run_trace(current_run(&events)),
            None,
            "the next run gets a trace of its own"
        );
    }
}
