//! Unit tests of the scheduler, driven by feeding it events on a clock the test controls.

use super::*;
use crate::task::TaskKind;

const ALL_KINDS: &[TaskKind] = &[
    TaskKind::TrainEm,
    TaskKind::TrainBenign,
    TaskKind::Extract,
    TaskKind::GenerateOnpolicy,
    TaskKind::BuildCoupling,
    TaskKind::TrainCoupling,
    TaskKind::MarkerEval,
    TaskKind::Analyse,
];
const LEASE_MS: u64 = 10_000;

fn t(key: &str) -> TaskRef {
    TaskRef::new(key)
}

/// A task of cost 1: in a plan of such tasks the longer chain of tasks comes first.
fn node(task: &str, kind: TaskKind, deps: &[&str]) -> PlanNode {
    weighted(task, kind, 1, deps)
}

fn weighted(task: &str, kind: TaskKind, cost: u64, deps: &[&str]) -> PlanNode {
    PlanNode {
        task: t(task),
        kind,
        depends_on: deps.iter().map(|d| t(d)).collect(),
        cost,
    }
}

fn commit(name: &str) -> Committed {
    Committed {
        dir: format!("runs/x/{name}"),
        digest: format!("sha-{name}"),
    }
}

/// train_em(E1) -> extract(E1); extract(base); both extracts -> analyse.
fn plan() -> Vec<PlanNode> {
    vec![
        node("42/train_em/E1", TaskKind::TrainEm, &[]),
        node("42/extract/base", TaskKind::Extract, &[]),
        node("42/extract/E1", TaskKind::Extract, &["42/train_em/E1"]),
        node(
            "42/analyse/all",
            TaskKind::Analyse,
            &["42/extract/base", "42/extract/E1"],
        ),
    ]
}

fn timing() -> Timing {
    Timing {
        lease_ms: LEASE_MS,
        heartbeat_ms: 1_000,
    }
}

fn scheduler(plan: Vec<PlanNode>) -> Scheduler {
    Scheduler::new(plan, 1, timing(), RetryPolicy::default(), 7).expect("a valid plan")
}

/// A one-task plan, for the retry tests.
fn single() -> Scheduler {
    scheduler(vec![node("42/extract/base", TaskKind::Extract, &[])])
}

fn granted(answer: Acquire) -> Grant {
    match answer {
        Acquire::Granted(grant) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn retry(decision: Decision) -> (u32, u64) {
    match decision {
        Decision::Retry {
            attempt,
            not_before_ms,
        } => (attempt, not_before_ms),
        other => panic!("expected a retry, got {other:?}"),
    }
}

fn run_failed(decision: Decision) -> RunFailure {
    match decision {
        Decision::RunFailed(failure) => failure,
        other => panic!("expected the run to fail, got {other:?}"),
    }
}

fn phase_of(s: &Scheduler, task: &str, now_ms: u64) -> TaskPhase {
    let snapshot = s.snapshot(now_ms);
    snapshot
        .tasks
        .iter()
        .find(|status| status.task == t(task))
        .map(|status| status.state)
        .expect("task in plan")
}

#[test]
fn timing_requires_a_lease_longer_than_three_heartbeats() {
    assert!(Timing {
        lease_ms: 3_001,
        heartbeat_ms: 1_000
    }
    .check()
    .is_ok());
    let err = Timing {
        lease_ms: 3_000,
        heartbeat_ms: 1_000,
    }
    .check()
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("3000") && text.contains("1000"), "{text}");
    assert!(Timing {
        lease_ms: 10,
        heartbeat_ms: 0
    }
    .check()
    .is_err());
    assert!(Timing::default().check().is_ok());
    let refused = Scheduler::new(
        plan(),
        1,
        Timing {
            lease_ms: 2_000,
            heartbeat_ms: 1_000,
        },
        RetryPolicy::default(),
        0,
    );
    assert!(matches!(
        refused,
        Err(SchedulerError::LeaseTooShort {
            lease_ms: 2_000,
            heartbeat_ms: 1_000
        })
    ));
}

#[test]
fn plans_with_bad_keys_or_cycles_are_refused_by_name() {
    let new = |plan| Scheduler::new(plan, 1, timing(), RetryPolicy::default(), 0).expect_err("refused");
    let unknown = new(vec![node("a", TaskKind::Extract, &["ghost"])]);
    assert_eq!(
        unknown,
        SchedulerError::UnknownDependency {
            task: t("a"),
            dependency: t("ghost")
        }
    );
    assert!(unknown.to_string().contains("ghost"));
    let twice = new(vec![
        node("a", TaskKind::Extract, &[]),
        node("a", TaskKind::Analyse, &[]),
    ]);
    assert_eq!(twice, SchedulerError::DuplicateTask { task: t("a") });
    let repeated = new(vec![
        node("a", TaskKind::Extract, &[]),
        node("b", TaskKind::Analyse, &["a", "a"]),
    ]);
    assert_eq!(
        repeated,
        SchedulerError::DuplicateDependency {
            task: t("b"),
            dependency: t("a")
        }
    );
    let cycle = new(vec![
        node("root", TaskKind::TrainEm, &[]),
        node("a", TaskKind::Extract, &["root", "c"]),
        node("b", TaskKind::Extract, &["a"]),
        node("c", TaskKind::Extract, &["b"]),
    ]);
    assert_eq!(
        cycle,
        SchedulerError::Cycle {
            cycle: vec![t("a"), t("c"), t("b"), t("a")]
        }
    );
    assert!(cycle.to_string().contains("a -> c -> b -> a"), "{cycle}");
    let itself = new(vec![node("a", TaskKind::Extract, &["a"])]);
    assert_eq!(
        itself,
        SchedulerError::Cycle {
            cycle: vec![t("a"), t("a")]
        }
    );
}

#[test]
fn ready_tasks_are_granted_only_to_workers_of_their_kind() {
    let mut s = scheduler(plan());
    // An extract-only worker skips train_em (first in plan) and gets the base extract.
    let g = granted(s.acquire("w-extract", &[TaskKind::Extract], 0));
    assert_eq!(
        (g.lease.task.clone(), g.kind, g.lease.attempt),
        (t("42/extract/base"), TaskKind::Extract, 1)
    );
    assert_eq!(g.expires_ms, LEASE_MS);
    assert!(g.deps.is_empty());
    // extract(E1) waits on train_em: nothing else for that worker.
    assert_eq!(
        s.acquire("w-extract", &[TaskKind::Extract], 0),
        Acquire::Wait {
            retry_after_ms: MAX_WAIT_MS
        }
    );
    let g = granted(s.acquire("w-all", ALL_KINDS, 0));
    assert_eq!(g.lease.task, t("42/train_em/E1"));
    assert_eq!(
        s.acquire("w-all", ALL_KINDS, 0),
        Acquire::Wait {
            retry_after_ms: MAX_WAIT_MS
        }
    );
    assert_eq!(
        s.acquire("w-none", &[], 0),
        Acquire::Wait {
            retry_after_ms: MAX_WAIT_MS
        }
    );
}

/// The shape of one seed's plan with one condition, costs in seconds as `plan::expected_cost`
/// gives them: train_benign, the longest chain, comes late in plan order.
fn one_seed_plan() -> Vec<PlanNode> {
    vec![
        weighted("42/extract/base", TaskKind::Extract, 28, &[]),
        weighted("42/train_em/E1", TaskKind::TrainEm, 108, &[]),
        weighted("42/extract/E1", TaskKind::Extract, 28, &["42/train_em/E1"]),
        weighted(
            "42/train_coupling/E1",
            TaskKind::TrainCoupling,
            157,
            &["42/train_em/E1"],
        ),
        weighted("42/train_benign/benign_sft", TaskKind::TrainBenign, 292, &[]),
        weighted(
            "42/extract/benign_sft",
            TaskKind::Extract,
            28,
            &["42/train_benign/benign_sft"],
        ),
        weighted(
            "42/analyse/all",
            TaskKind::Analyse,
            22,
            &[
                "42/extract/base",
                "42/extract/E1",
                "42/train_coupling/E1",
                "42/extract/benign_sft",
            ],
        ),
    ]
}

#[test]
fn the_longest_chain_is_granted_first_even_late_in_plan_order() {
    let mut s = scheduler(one_seed_plan());
    // Bottom levels: train_benign 292 + 28 + 22 = 342, train_em 108 + 157 + 22 = 287,
    // extract/base 28 + 22 = 50. In plan order the two workers would get extract/base and
    // train_em, and train_benign would start only when one of them is done.
    let first = granted(s.acquire("gpu0", ALL_KINDS, 0));
    assert_eq!(first.lease.task, t("42/train_benign/benign_sft"));
    let second = granted(s.acquire("gpu1", ALL_KINDS, 0));
    assert_eq!(second.lease.task, t("42/train_em/E1"));
    // train_em's commit readies train_coupling (179) and extract/E1 (50): the longer chain
    // first, then, of the two equal 50s, the one earlier in the plan (extract/base).
    s.committed(&second.lease, commit("E1")).unwrap();
    let order: Vec<TaskRef> = (0..3)
        .map(|_| granted(s.acquire("gpu1", ALL_KINDS, 1)).lease.task)
        .collect();
    assert_eq!(
        order,
        [
            t("42/train_coupling/E1"),
            t("42/extract/base"),
            t("42/extract/E1")
        ]
    );
    // A worker that cannot run the head of the order gets the best task it can run.
    let mut s = scheduler(one_seed_plan());
    let g = granted(s.acquire("extractor", &[TaskKind::Extract], 0));
    assert_eq!(g.lease.task, t("42/extract/base"));
}

#[test]
fn equal_priorities_keep_plan_order() {
    // Three independent tasks of equal cost, listed against the order of their keys and kinds.
    let mut s = scheduler(vec![
        weighted("c", TaskKind::MarkerEval, 5, &[]),
        weighted("a", TaskKind::TrainEm, 5, &[]),
        weighted("b", TaskKind::Extract, 5, &[]),
    ]);
    let order: Vec<TaskRef> = (0..3)
        .map(|_| granted(s.acquire("w", ALL_KINDS, 0)).lease.task)
        .collect();
    assert_eq!(order, [t("c"), t("a"), t("b")]);
    // Costs all 0 (a plan without weights): plan order, however long the chains behind a task.
    let mut s = scheduler(vec![
        weighted("short", TaskKind::Extract, 0, &[]),
        weighted("long", TaskKind::TrainBenign, 0, &[]),
        weighted("after", TaskKind::Extract, 0, &["long"]),
    ]);
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("short"));
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("long"));
}

#[test]
fn priorities_need_no_dependency_first_plan_and_saturate() {
    // A dependant listed before its dependency: head's level (1 + 10) is known only once tail's
    // is, whatever the plan's order.
    let mut s = scheduler(vec![
        weighted("mid", TaskKind::Extract, 5, &[]),
        weighted("tail", TaskKind::Extract, 10, &["head"]),
        weighted("head", TaskKind::TrainEm, 1, &[]),
    ]);
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("head"));
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("mid"));
    // Costs whose sum overflows u64 saturate instead of panicking.
    let mut s = scheduler(vec![
        weighted("small", TaskKind::Extract, 1, &[]),
        weighted("huge", TaskKind::TrainEm, u64::MAX, &[]),
        weighted("after", TaskKind::Extract, u64::MAX, &["huge"]),
    ]);
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("huge"));
    assert_eq!(granted(s.acquire("w", ALL_KINDS, 0)).lease.task, t("small"));
}

#[test]
fn a_task_is_ready_only_once_every_dependency_is_committed_and_its_grant_carries_them_in_plan_order() {
    let mut s = scheduler(plan());
    let train = granted(s.acquire("w", ALL_KINDS, 0));
    let base = granted(s.acquire("w", ALL_KINDS, 0));
    s.committed(&train.lease, commit("E1")).unwrap();
    let extract_e1 = granted(s.acquire("w", ALL_KINDS, 1));
    assert_eq!(extract_e1.lease.task, t("42/extract/E1"));
    assert_eq!(extract_e1.deps, vec![(t("42/train_em/E1"), commit("E1"))]);
    // Committed in the reverse of the plan's dependency order: the grant still follows the plan.
    s.committed(&extract_e1.lease, commit("xE1")).unwrap();
    assert_eq!(phase_of(&s, "42/analyse/all", 2), TaskPhase::Waiting);
    assert!(matches!(s.acquire("w", ALL_KINDS, 2), Acquire::Wait { .. }));
    s.committed(&base.lease, commit("xbase")).unwrap();
    let analyse = granted(s.acquire("w", &[TaskKind::Analyse], 3));
    assert_eq!(
        analyse.deps,
        vec![
            (t("42/extract/base"), commit("xbase")),
            (t("42/extract/E1"), commit("xE1"))
        ]
    );
    assert!(!s.is_finished());
    s.committed(&analyse.lease, commit("result")).unwrap();
    assert!(s.is_finished());
    assert_eq!(s.acquire("w", ALL_KINDS, 4), Acquire::Finished);
}

#[test]
fn an_empty_plan_is_finished_at_once() {
    let mut s = scheduler(Vec::new());
    assert!(s.is_finished());
    assert_eq!(s.acquire("w", ALL_KINDS, 0), Acquire::Finished);
}

#[test]
fn lease_ids_round_trip_through_their_wire_form() {
    let keys = [
        "42/extract/base",
        "all/summarise/seeds",
        "",
        "a:b::c",
        "7/x/é ü:1:2",
        ":",
        "1:2:3",
    ];
    for key in keys {
        for (epoch, attempt, nonce) in [
            (0, 0, 0),
            (3, 2, 0x9f3c_5a01_d2e4_b786),
            (u64::MAX, u32::MAX, u64::MAX),
        ] {
            let id = LeaseId {
                epoch,
                task: t(key),
                attempt,
                nonce,
            };
            let wire = id.to_string();
            assert_eq!(wire.parse::<LeaseId>(), Ok(id), "{wire}");
        }
    }
    let id = LeaseId {
        epoch: 3,
        task: t("42/extract/base"),
        attempt: 2,
        nonce: 0x9f3c_5a01_d2e4_b786,
    };
    assert_eq!(id.to_string(), "3:42/extract/base:2:9f3c5a01d2e4b786");
}

#[test]
fn garbage_lease_ids_are_refused_with_the_reason() {
    let garbage = [
        "",
        "garbage",
        "3:42/extract/base:2",
        "x:42/extract/base:2:9f3c5a01d2e4b786",
        "+3:42/extract/base:2:9f3c5a01d2e4b786",
        "3:42/extract/base:-2:9f3c5a01d2e4b786",
        "3:42/extract/base:4294967296:9f3c5a01d2e4b786",
        "3:42/extract/base:2:9f3c",
        "3:42/extract/base:2:9F3C5A01D2E4B786",
        "3:42/extract/base:2:9f3c5a01d2e4b78g",
        "18446744073709551616:t:2:9f3c5a01d2e4b786",
    ];
    for input in garbage {
        let err = input.parse::<LeaseId>().expect_err(input);
        assert!(err.to_string().contains("epoch:task:attempt:nonce"), "{err}");
    }
    let long = "y".repeat(500);
    assert_eq!(long.parse::<LeaseId>().unwrap_err().input.len(), 80);
}

#[test]
fn nonces_are_reproducible_from_the_seed() {
    // SplitMix64's reference output for seed 0 (Vigna's splitmix64.c).
    let mut rng = lease::SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    let nonces = |seed| {
        let mut s = Scheduler::new(plan(), 1, timing(), RetryPolicy::default(), seed).unwrap();
        (0..2)
            .map(|_| granted(s.acquire("w", ALL_KINDS, 0)).lease.nonce)
            .collect::<Vec<_>>()
    };
    assert_eq!(nonces(7), nonces(7));
    assert_ne!(nonces(7), nonces(8));
    let pair = nonces(7);
    assert_ne!(pair[0], pair[1]);
}

#[test]
fn keep_alive_extends_a_live_lease_and_loses_an_expired_one() {
    let mut s = single();
    let g = granted(s.acquire("w", ALL_KINDS, 0));
    assert_eq!(
        s.keep_alive(&g.lease, 4_000),
        KeepAlive::Extended {
            expires_ms: 4_000 + LEASE_MS
        }
    );
    assert_eq!(
        s.keep_alive(&g.lease, 13_999),
        KeepAlive::Extended {
            expires_ms: 13_999 + LEASE_MS
        }
    );
    // No heartbeat for a whole lease: past the deadline it is lost even before expire() runs,
    // and the failed renewal does not move the deadline.
    assert_eq!(s.keep_alive(&g.lease, 23_999 + 1), KeepAlive::Lost);
    assert_eq!(s.check_completion(&g.lease, 24_000), Err(Refusal::Expired));
    assert_eq!(phase_of(&s, "42/extract/base", 24_000), TaskPhase::Leased);
    let expired = s.expire(24_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, g.lease);
    assert_eq!(
        expired[0].1,
        Decision::Retry {
            attempt: 2,
            not_before_ms: 24_000
        }
    );
    assert_eq!(s.keep_alive(&g.lease, 24_001), KeepAlive::Lost);
}

#[test]
fn expire_only_touches_leases_past_their_deadline() {
    let mut s = scheduler(plan());
    let first = granted(s.acquire("a", ALL_KINDS, 0));
    let second = granted(s.acquire("b", ALL_KINDS, 5_000));
    assert!(s.expire(LEASE_MS - 1).is_empty());
    let expired = s.expire(LEASE_MS);
    assert_eq!(
        expired.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
        vec![first.lease.clone()]
    );
    assert_eq!(s.check_completion(&second.lease, LEASE_MS), Ok(()));
    let snapshot = s.snapshot(LEASE_MS);
    let failures = &snapshot.tasks[0].failures;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, FailureClass::Preempted);
    assert!(
        failures[0].1.contains(&first.lease.to_string()) && failures[0].1.contains("held by a"),
        "{failures:?}"
    );
    assert_eq!(s.failures(&first.lease.task), Some(failures.as_slice()));
    assert_eq!(s.attempts(&first.lease.task), Some(1));
    assert_eq!(s.attempts(&t("ghost")), None);
}

#[test]
fn a_stale_worker_can_neither_extend_nor_complete_nor_fail_its_replacements_lease() {
    let mut s = single();
    let a = granted(s.acquire("A", ALL_KINDS, 0));
    s.expire(LEASE_MS);
    let b = granted(s.acquire("B", ALL_KINDS, LEASE_MS + 1));
    assert_eq!(b.lease.attempt, 2);
    assert_eq!(b.lease.task, a.lease.task);
    let before = s.snapshot(LEASE_MS + 2);

    // A wakes up (SIGCONT) and carries on as if nothing happened.
    assert_eq!(s.keep_alive(&a.lease, LEASE_MS + 2), KeepAlive::Lost);
    assert_eq!(
        s.check_completion(&a.lease, LEASE_MS + 2),
        Err(Refusal::Superseded)
    );
    assert_eq!(s.committed(&a.lease, commit("A")), Err(Refusal::Superseded));
    assert_eq!(
        s.failed(&a.lease, FailureClass::Crash, "A crashed", LEASE_MS + 2),
        Err(Refusal::Superseded)
    );
    assert_eq!(
        s.snapshot(LEASE_MS + 2),
        before,
        "a refused event changed the state"
    );
    assert_eq!(
        before.tasks[0].expires_in_ms,
        Some(LEASE_MS - 1),
        "B's deadline moved"
    );

    // B's lease is untouched: it renews and commits.
    assert_eq!(
        s.keep_alive(&b.lease, LEASE_MS + 3),
        KeepAlive::Extended {
            expires_ms: 2 * LEASE_MS + 3
        }
    );
    assert_eq!(s.check_completion(&b.lease, LEASE_MS + 4), Ok(()));
    s.committed(&b.lease, commit("B")).unwrap();
    assert_eq!(s.committed(&a.lease, commit("A")), Err(Refusal::AlreadyCommitted));
    assert_eq!(
        s.check_completion(&b.lease, LEASE_MS + 5),
        Err(Refusal::AlreadyCommitted)
    );
    assert_eq!(s.snapshot(LEASE_MS + 5).tasks[0].commit, Some(commit("B")));
}

#[test]
fn a_late_completion_is_refused_even_when_nobody_else_holds_the_task() {
    let mut s = single();
    let a = granted(s.acquire("A", ALL_KINDS, 0));
    s.expire(LEASE_MS);
    assert_eq!(s.check_completion(&a.lease, LEASE_MS + 1), Err(Refusal::Expired));
    assert_eq!(s.committed(&a.lease, commit("A")), Err(Refusal::Expired));
    assert_eq!(phase_of(&s, "42/extract/base", LEASE_MS + 1), TaskPhase::Ready);
}

#[test]
fn leases_of_an_earlier_epoch_or_never_granted_are_refused() {
    let mut old = single();
    let stale = granted(old.acquire("w", ALL_KINDS, 0));
    // The coordinator restarts with a new epoch and the journal's attempts.
    let mut s = Scheduler::new(
        vec![node("42/extract/base", TaskKind::Extract, &[])],
        2,
        timing(),
        RetryPolicy::default(),
        7,
    )
    .unwrap();
    s.restore(&stale.lease.task, 1, &[]);
    let fresh = granted(s.acquire("w", ALL_KINDS, 0));
    assert_eq!(fresh.lease.epoch, 2);
    assert_eq!(
        fresh.lease.attempt, 2,
        "attempt numbers keep counting across the restart"
    );
    assert_eq!(s.keep_alive(&stale.lease, 1), KeepAlive::Lost);
    assert_eq!(s.check_completion(&stale.lease, 1), Err(Refusal::WrongEpoch));
    assert_eq!(s.committed(&stale.lease, commit("old")), Err(Refusal::WrongEpoch));
    assert_eq!(
        s.failed(&stale.lease, FailureClass::Crash, "x", 1),
        Err(Refusal::WrongEpoch)
    );

    let forged = LeaseId {
        nonce: fresh.lease.nonce ^ 1,
        ..fresh.lease.clone()
    };
    assert_eq!(s.check_completion(&forged, 1), Err(Refusal::UnknownLease));
    assert_eq!(s.keep_alive(&forged, 1), KeepAlive::Lost);
    let future = LeaseId {
        attempt: 9,
        ..fresh.lease.clone()
    };
    assert_eq!(s.committed(&future, commit("f")), Err(Refusal::UnknownLease));
    let elsewhere = LeaseId {
        task: t("42/extract/ghost"),
        ..fresh.lease.clone()
    };
    assert_eq!(
        s.failed(&elsewhere, FailureClass::Crash, "x", 1),
        Err(Refusal::UnknownLease)
    );
    assert_eq!(s.check_completion(&fresh.lease, 1), Ok(()));
}

#[test]
fn crash_retries_back_off_exponentially_up_to_the_cap() {
    let policy = RetryPolicy {
        crash: ClassPolicy {
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_ms: 5_000,
        },
        ..RetryPolicy::default()
    };
    let mut s = Scheduler::new(vec![node("t", TaskKind::Extract, &[])], 1, timing(), policy, 0).unwrap();
    let mut now = 0;
    let mut waits = Vec::new();
    for attempt in 1..=5u32 {
        let g = granted(s.acquire("w", ALL_KINDS, now));
        assert_eq!(g.lease.attempt, attempt);
        let (next, not_before) = retry(s.failed(&g.lease, FailureClass::Crash, "panic", now).unwrap());
        assert_eq!(next, attempt + 1);
        waits.push(not_before - now);
        // Not granted before the backoff ends.
        assert!(matches!(
            s.acquire("w", ALL_KINDS, not_before - 1),
            Acquire::Wait { .. }
        ));
        now = not_before;
    }
    assert_eq!(waits, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
}

#[test]
fn wait_asks_for_the_time_until_the_earliest_useful_backoff_ends_capped() {
    let mut s = scheduler(vec![
        node("a", TaskKind::Extract, &[]),
        node("b", TaskKind::TrainEm, &[]),
    ]);
    let a = granted(s.acquire("w", &[TaskKind::Extract], 0));
    let b = granted(s.acquire("w", &[TaskKind::TrainEm], 0));
    // a: OOM backoff 5 s; b: crash backoff 1 s.
    retry(
        s.failed(&a.lease, FailureClass::OutOfMemory, "CUDA out of memory", 100)
            .unwrap(),
    );
    retry(s.failed(&b.lease, FailureClass::Crash, "panic", 100).unwrap());
    assert_eq!(
        s.acquire("w", &[TaskKind::TrainEm], 700),
        Acquire::Wait { retry_after_ms: 400 }
    );
    assert_eq!(
        s.acquire("w", &[TaskKind::Extract], 700),
        Acquire::Wait {
            retry_after_ms: MAX_WAIT_MS
        }
    );
    assert_eq!(
        s.acquire("w", &[TaskKind::Extract], 4_800),
        Acquire::Wait { retry_after_ms: 300 }
    );
    assert_eq!(phase_of(&s, "a", 4_800), TaskPhase::Backoff);
    assert_eq!(s.snapshot(4_800).tasks[0].retry_in_ms, Some(300));
    assert_eq!(
        granted(s.acquire("w", &[TaskKind::Extract], 5_100)).lease.attempt,
        2
    );
}

#[test]
fn each_failure_class_spends_its_own_budget() {
    // OOM budget 3, crash 4: two OOMs and three crashes still retry; the third OOM fails the run.
    let mut s = single();
    let mut now = 0;
    let classes = [
        FailureClass::OutOfMemory,
        FailureClass::Crash,
        FailureClass::OutOfMemory,
        FailureClass::Crash,
        FailureClass::Preempted,
        FailureClass::Crash,
    ];
    for class in classes {
        let g = granted(s.acquire("w", ALL_KINDS, now));
        let (_, not_before) = retry(s.failed(&g.lease, class, "boom", now).unwrap());
        now = not_before;
    }
    let g = granted(s.acquire("w", ALL_KINDS, now));
    assert_eq!(g.lease.attempt, 7);
    let failure = run_failed(
        s.failed(&g.lease, FailureClass::OutOfMemory, "CUDA out of memory", now)
            .unwrap(),
    );
    assert_eq!(failure.class, FailureClass::OutOfMemory);
    assert_eq!(failure.attempts, 3);
    assert_eq!(
        failure.to_string(),
        "task 42/extract/base failed 3 times (out of memory), last error: CUDA out of memory"
    );
    assert_eq!(s.failure(), Some(&failure));
    assert_eq!(s.acquire("w", ALL_KINDS, now + 100_000), Acquire::Failed(failure));
}

#[test]
fn preemptions_have_a_large_budget_without_backoff() {
    let mut s = single();
    let mut now = 0;
    for attempt in 1..=29u32 {
        granted(s.acquire("w", ALL_KINDS, now));
        now += LEASE_MS;
        let expired = s.expire(now);
        assert_eq!(
            expired[0].1,
            Decision::Retry {
                attempt: attempt + 1,
                not_before_ms: now
            }
        );
    }
    granted(s.acquire("w", ALL_KINDS, now));
    let expired = s.expire(now + LEASE_MS);
    let failure = run_failed(expired[0].1.clone());
    assert_eq!((failure.class, failure.attempts), (FailureClass::Preempted, 30));
    assert!(failure
        .to_string()
        .starts_with("task 42/extract/base failed 30 times (preempted), last error: lease "));
}

#[test]
fn a_deterministic_error_fails_the_run_at_once_with_the_tasks_message() {
    let mut s = scheduler(plan());
    let g = granted(s.acquire("w", ALL_KINDS, 0));
    let message = "spec.toml line 12: personas file has 0 rows\n  at data.rs:40";
    let failure = run_failed(
        s.failed(&g.lease, FailureClass::Deterministic, message, 5)
            .unwrap(),
    );
    assert_eq!(failure.message, message);
    let line = failure.to_string();
    assert_eq!(
        line,
        "task 42/train_em/E1 failed with a deterministic error (not retried): spec.toml line 12: personas file has 0 rows / at data.rs:40"
    );
    assert!(!line.contains('\n'));
    assert_eq!(s.acquire("w", ALL_KINDS, 6), Acquire::Failed(failure));
    assert_eq!(phase_of(&s, "42/train_em/E1", 6), TaskPhase::Failed);
    assert_eq!(s.snapshot(6).counts.failed, 1);
}

#[test]
fn after_the_run_fails_leases_already_out_still_commit_but_nothing_new_is_granted() {
    let mut s = scheduler(plan());
    let train = granted(s.acquire("w1", ALL_KINDS, 0));
    let base = granted(s.acquire("w2", ALL_KINDS, 0));
    run_failed(
        s.failed(&train.lease, FailureClass::Deterministic, "bad input", 1)
            .unwrap(),
    );
    assert_eq!(
        s.keep_alive(&base.lease, 2),
        KeepAlive::Extended {
            expires_ms: 2 + LEASE_MS
        }
    );
    assert_eq!(s.check_completion(&base.lease, 3), Ok(()));
    s.committed(&base.lease, commit("base")).unwrap();
    assert_eq!(phase_of(&s, "42/extract/base", 3), TaskPhase::Committed);
    assert!(matches!(s.acquire("w2", ALL_KINDS, 4), Acquire::Failed(_)));
    assert!(!s.is_finished());
}

#[test]
fn the_first_spent_budget_stays_the_runs_failure() {
    let mut s = scheduler(plan());
    let train = granted(s.acquire("w1", ALL_KINDS, 0));
    let base = granted(s.acquire("w2", ALL_KINDS, 0));
    run_failed(
        s.failed(&train.lease, FailureClass::Deterministic, "first", 1)
            .unwrap(),
    );
    run_failed(
        s.failed(&base.lease, FailureClass::Deterministic, "second", 2)
            .unwrap(),
    );
    assert_eq!(s.failure().map(|f| f.message.as_str()), Some("first"));
}

#[test]
fn a_reported_failure_releases_the_lease() {
    let mut s = single();
    let g = granted(s.acquire("w", ALL_KINDS, 0));
    retry(s.failed(&g.lease, FailureClass::Crash, "panic", 0).unwrap());
    assert_eq!(
        s.failed(&g.lease, FailureClass::Crash, "again", 0),
        Err(Refusal::Released)
    );
    assert_eq!(s.committed(&g.lease, commit("late")), Err(Refusal::Released));
    assert_eq!(s.keep_alive(&g.lease, 1), KeepAlive::Lost);
    assert_eq!(
        s.snapshot(1).tasks[0].failures.len(),
        1,
        "a refused failure was counted"
    );
}

#[test]
fn committed_takes_no_time_so_a_commit_the_store_accepted_at_the_deadline_still_counts() {
    let mut s = single();
    let g = granted(s.acquire("w", ALL_KINDS, 0));
    assert_eq!(s.check_completion(&g.lease, LEASE_MS - 1), Ok(()));
    // The store answered after the deadline, before the coordinator ran expire().
    s.committed(&g.lease, commit("c")).unwrap();
    assert!(s.expire(2 * LEASE_MS).is_empty());
    assert!(s.is_finished());
}

#[test]
fn restore_keeps_attempts_counting_and_budgets_spent() {
    let mut s = single();
    let task = t("42/extract/base");
    let history = vec![
        (FailureClass::Crash, "c1".to_string()),
        (FailureClass::Preempted, "p".into()),
        (FailureClass::Crash, "c2".into()),
    ];
    s.restore(&task, 4, &history);
    s.restore(&t("42/extract/removed-from-the-spec"), 9, &[]);
    let g = granted(s.acquire("w", ALL_KINDS, 0));
    assert_eq!(g.lease.attempt, 5);
    // Crash budget 4: two spent before the restart, so the second crash after it fails the run.
    let (attempt, _) = retry(s.failed(&g.lease, FailureClass::Crash, "c3", 0).unwrap());
    assert_eq!(attempt, 6);
    let g = granted(s.acquire("w", ALL_KINDS, 100_000));
    let failure = run_failed(s.failed(&g.lease, FailureClass::Crash, "c4", 100_000).unwrap());
    assert_eq!((failure.attempts, failure.message.as_str()), (4, "c4"));
    assert_eq!(s.snapshot(100_000).tasks[0].failures.len(), 5);
}

#[test]
fn restoring_a_spent_budget_fails_the_run_again() {
    let mut s = scheduler(plan());
    s.restore(
        &t("42/extract/base"),
        1,
        &[(FailureClass::Deterministic, "bad row 3".into())],
    );
    let failure = s.failure().cloned().expect("the run failed");
    assert_eq!(
        (failure.task, failure.class, failure.message.as_str()),
        (t("42/extract/base"), FailureClass::Deterministic, "bad row 3")
    );
    assert!(matches!(s.acquire("w", ALL_KINDS, 0), Acquire::Failed(_)));
}

#[test]
fn mark_committed_readies_dependants_and_ends_a_lease_still_out() {
    let mut s = scheduler(plan());
    s.mark_committed(&t("42/train_em/E1"), commit("E1")).unwrap();
    s.mark_committed(&t("42/train_em/E1"), commit("E1")).unwrap();
    let conflict = s
        .mark_committed(&t("42/train_em/E1"), commit("other"))
        .unwrap_err();
    assert!(matches!(conflict, SchedulerError::CommitConflict { .. }));
    assert_eq!(
        s.mark_committed(&t("ghost"), commit("g")),
        Err(SchedulerError::UnknownTask { task: t("ghost") })
    );
    let base = granted(s.acquire("w", ALL_KINDS, 0));
    assert_eq!(base.lease.task, t("42/extract/base"));
    // Another attempt's create won in the store: the coordinator records it.
    s.mark_committed(&t("42/extract/base"), commit("base")).unwrap();
    assert_eq!(s.keep_alive(&base.lease, 1), KeepAlive::Lost);
    assert_eq!(
        s.committed(&base.lease, commit("base")),
        Err(Refusal::AlreadyCommitted)
    );
    let e1 = granted(s.acquire("w", ALL_KINDS, 1));
    assert_eq!(e1.lease.task, t("42/extract/E1"));
    s.mark_committed(&t("42/extract/E1"), commit("xE1")).unwrap();
    s.mark_committed(&t("42/analyse/all"), commit("result")).unwrap();
    assert!(s.is_finished());
}

#[test]
fn snapshot_counts_states_and_serialises_for_status() {
    let mut s = scheduler(plan());
    let train = granted(s.acquire("gpu-0", ALL_KINDS, 1_000));
    let base = granted(s.acquire("gpu-1", ALL_KINDS, 1_000));
    s.committed(&base.lease, commit("base")).unwrap();
    let snapshot = s.snapshot(4_000);
    assert_eq!(
        snapshot.counts,
        StateCounts {
            waiting: 2,
            ready: 0,
            backoff: 0,
            leased: 1,
            committed: 1,
            failed: 0
        }
    );
    let leased = &snapshot.tasks[0];
    assert_eq!(leased.worker.as_deref(), Some("gpu-0"));
    assert_eq!(leased.lease, Some(train.lease.to_string()));
    assert_eq!(leased.expires_in_ms, Some(LEASE_MS - 3_000));
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["tasks"][0]["state"], "leased");
    assert_eq!(json["tasks"][0]["kind"], "train_em");
    assert_eq!(json["tasks"][1]["state"], "committed");
    assert_eq!(json["tasks"][2]["state"], "waiting");
    assert_eq!(json["counts"]["waiting"], 2);
    let back: Snapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, snapshot);
    s.failed(&train.lease, FailureClass::OutOfMemory, "oom", 4_000)
        .unwrap();
    let json = serde_json::to_value(s.snapshot(4_001)).unwrap();
    assert_eq!(json["tasks"][0]["state"], "backoff");
    assert_eq!(json["tasks"][0]["failures"][0][0], "out_of_memory");
}

#[test]
fn backoff_saturates_instead_of_overflowing() {
    let p = ClassPolicy {
        max_attempts: 3,
        backoff_base_ms: 5_000,
        backoff_max_ms: 60_000,
    };
    assert_eq!(
        [1, 2, 3, 4, 5].map(|n| p.backoff_ms(n)),
        [5_000, 10_000, 20_000, 40_000, 60_000]
    );
    assert_eq!(p.backoff_ms(64), 60_000);
    assert_eq!(p.backoff_ms(u32::MAX), 60_000);
    let huge = ClassPolicy {
        max_attempts: 1,
        backoff_base_ms: u64::MAX / 2,
        backoff_max_ms: u64::MAX,
    };
    assert_eq!(huge.backoff_ms(3), u64::MAX);
    assert!(!p.is_spent(2) && p.is_spent(3));
    let zero = ClassPolicy {
        max_attempts: 0,
        backoff_base_ms: 0,
        backoff_max_ms: 0,
    };
    assert!(zero.is_spent(1) && !zero.is_spent(0));
}
