//! A worker cut off from its coordinator by a network partition, with real processes on
//! loopback: a proxy between them (pspace_tests::partition) goes silent without closing
//! anything while the worker holds a lease, for longer than the lease, and then lets new
//! connections through again. The lease is lost, and the worker's report of that attempt, sent
//! into the dead connection, must still reach the coordinator over a fresh one and be refused
//! within the worker's report window (30 s here), never given up. The task cut is a marker eval,
//! whose generation stops within a decoding step once its lease is lost: it must stop within the
//! worker's grace. A cut that cannot tell (the lease ended just before it) is repeated on a fresh
//! run.
//!
//! This is CI's `containers` failure on loopback and in seconds: before HTTP/2 keep-alive and
//! per-call deadlines, the report waited 60 s on the dead connection, past the window, and the
//! worker printed "cannot report".
//!
//! The second test cuts the worker off while it holds the run's last task; another worker takes
//! the expired lease over and the run ends during the cut. The coordinator must keep serving
//! until the late report arrives and refuse it (CI's next `containers` failure: the coordinator
//! exited one lease after the end, and the cut-off worker found no coordinator and gave up).

use pspace_tests::cluster::{
    coordinator, free_port, lease_of, status_json, tiny_long_analysis_spec_with_seeds,
    tiny_long_eval_spec_with_seeds, worker, Proc,
};
use pspace_tests::partition::Partition;
use std::time::{Duration, Instant};

/// The worker's report window with the test timing (1.5 s leases): max(3 leases, 30 s).
const REPORT_WINDOW: Duration = Duration::from_secs(30);

/// How long the link stays cut: past the 1.5 s lease, so the coordinator expires it.
const CUT: Duration = Duration::from_secs(4);

/// How long a worker gives a cancelled task to stop before it exits without reporting.
const GRACE: Duration = Duration::from_secs(30);

/// How one cut ended.
enum Outcome {
    /// The worker's late report was refused: the line saying so.
    Refused(String),
    /// Nothing to judge, and why: the lease ended before the cut landed, or a cancelled task that
    /// cannot stop mid-way (an analysis) outlived the worker's grace and nothing was reported.
    Inconclusive(&'static str),
}

#[test]
fn a_late_report_over_a_dead_connection_is_refused_within_the_window() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Cut while the worker holds a marker_eval task (about 10 s with this spec): the tiny
    // spec's first tasks take a fraction of a second and often committed before the cut landed.
    let spec = tiny_long_eval_spec_with_seeds(dir.path(), &[42]);
    // Each try is a run of its own (coordinator, store, proxy, worker): an inconclusive cut can
    // end the run or the worker, and the next try must not depend on what is left of it (CI,
    // 2026-12-01: "a process ended before the cut" on the try after an inconclusive one).
    for attempt in 1..=5 {
        let port = free_port();
        let store = dir.path().join(format!("store-{attempt}"));
        let mut coord = coordinator(&spec, store.to_str().unwrap(), port, &[]);
        let proxy = Partition::start(port);
        let mut w = worker(&format!("w{attempt}"), proxy.port, &[]);
        let name = w.name.clone();
        let since = Instant::now();
        let task = loop {
            match leased(port, &mut coord, &mut w, since) {
                Ok(task) if task.contains("/marker_eval/") => break Some(task),
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                // The polls missed both marker evals and the run ended: nothing was cut.
                Err(_) => break None,
            }
        };
        let Some(task) = task else {
            eprintln!("partition: try {attempt}: the run ended before {name} was seen holding a marker_eval; trying again with a fresh run");
            continue;
        };
        proxy.cut();
        let cut_at = Instant::now();
        std::thread::sleep(CUT);
        proxy.heal();
        match outcome(&mut w, port, &task, cut_at, true, true) {
            Outcome::Refused(line) => {
                eprintln!(
                    "partition: cut {name} off for {:.1}s while it held {task}; its late report was refused {:.1}s after the cut ({line}); test {:.1}s",
                    CUT.as_secs_f64(),
                    cut_at.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
                for line in w
                    .stderr()
                    .lines()
                    .filter(|l| l.contains(task.as_str()) || l.contains("lost"))
                {
                    eprintln!("  {line}");
                }
                return;
            }
            Outcome::Inconclusive(why) => {
                eprintln!("partition: try {attempt}, {name}, {task}: {why}; trying again with a fresh run")
            }
        }
    }
    panic!("five cuts in a row were inconclusive");
}

#[test]
fn a_late_report_after_the_run_ended_is_still_refused() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // The tiny run's analysis takes a fraction of a second: the status polls (a process each)
    // could miss w1 holding it, and the run ended before the cut (CI, 2026-11-30).
    let spec = tiny_long_analysis_spec_with_seeds(dir.path(), &[42]);
    let port = free_port();
    let mut coord = coordinator(&spec, dir.path().join("store").to_str().unwrap(), port, &[]);
    let proxy = Partition::start(port);
    let mut w = worker("w1", proxy.port, &[]);
    let last = "42/analyse/all";
    loop {
        let task = leased(port, &mut coord, &mut w, started).unwrap_or_else(|ended| panic!("{ended}"));
        if task == last {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.cut();
    let cut_at = Instant::now();
    // The run ends without w1: a second worker, straight to the coordinator, takes the task
    // over once w1's lease expires.
    let mut direct = worker("w2", port, &[]);
    let ended = loop {
        if status_json(port).is_some_and(|s| s["snapshot"]["finished"] == true) {
            break Some(cut_at.elapsed());
        }
        if cut_at.elapsed() > Duration::from_secs(300) || coord.try_wait().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(CUT.saturating_sub(cut_at.elapsed()));
    proxy.heal();
    let Some(ended) = ended else {
        panic!(
            "the run did not end without the cut-off worker:\n{}\n{}",
            coord.stderr(),
            direct.stderr()
        );
    };
    match outcome(&mut w, port, last, cut_at, false, false) {
        Outcome::Refused(line) => eprintln!(
            "partition: the run ended {:.1}s into w1's cut; its late report was refused {:.1}s after the cut ({line})",
            ended.as_secs_f64(),
            cut_at.elapsed().as_secs_f64()
        ),
        Outcome::Inconclusive(why) => eprintln!("partition: {last}: {why}; nothing to judge"),
    }
    assert!(
        coord
            .wait_for(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "the coordinator did not exit cleanly once the late report was answered:\n{}",
        coord.stderr()
    );
    let _ = direct.wait_for(Duration::from_secs(30));
}

/// The task the worker `w` holds a lease of, once it holds one (within 480 s of `since`), or
/// Err with both processes' output if one of them ended first.
fn leased(port: u16, coord: &mut Proc, w: &mut Proc, since: Instant) -> Result<String, String> {
    loop {
        assert!(
            since.elapsed() < Duration::from_secs(480),
            "{} never held a lease:\n{}\n{}",
            w.name,
            coord.stderr(),
            w.stderr()
        );
        if w.try_wait().is_some() || coord.try_wait().is_some() {
            return Err(format!(
                "a process ended before the cut:\n{}\n{}",
                coord.stderr(),
                w.stderr()
            ));
        }
        if let Some((task, _)) = status_json(port).and_then(|s| lease_of(&s, &w.name)) {
            return Ok(task);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follows the worker after a cut that began at `cut_at` while it held `task`. `alone`: no other
/// worker can commit the task, so a commit means the attempt committed before the cut landed.
/// `stops`: the task's engine loops heed cancellation (generation, training), so it must stop
/// within the worker's grace; an analysis does not, and outliving the grace is inconclusive.
fn outcome(w: &mut Proc, port: u16, task: &str, cut_at: Instant, alone: bool, stops: bool) -> Outcome {
    let refused = format!("completion of {task} refused");
    let gave_up = format!("cannot report {task}");
    let retrying = format!("reporting {task} failed");
    let refusal = |text: &str| text.lines().find(|l| l.contains(&refused)).map(str::to_string);
    let mut reporting_since: Option<Instant> = None;
    loop {
        let text = w.stderr();
        if let Some(line) = refusal(&text) {
            return Outcome::Refused(line);
        }
        assert!(!text.contains(&gave_up), "the worker gave its report up:\n{text}");
        if reporting_since.is_none() && text.contains(&retrying) {
            reporting_since = Some(Instant::now());
        }
        assert!(
            reporting_since.is_none_or(|t| t.elapsed() < REPORT_WINDOW),
            "no answer to the late report of {task} within the report window:\n{text}"
        );
        if !text.contains(&retrying) && text.contains("the run is finished") {
            return Outcome::Inconclusive("its attempt committed before the cut landed");
        }
        if text.contains("did not stop within") {
            assert!(
                !stops,
                "the cancelled {task} did not stop within the grace:\n{text}"
            );
            let _ = w.wait_for(Duration::from_secs(10));
            return Outcome::Inconclusive("the cancelled task outlived the worker's grace");
        }
        // With one worker, the task commits again only after the late report's refusal; a
        // commit without one means this attempt committed before the cut landed.
        let committed = alone
            && status_json(port)
                .and_then(|s| {
                    s["snapshot"]["tasks"]
                        .as_array()?
                        .iter()
                        .find(|t| t["task"] == task)
                        .map(|t| t["state"] == "committed")
                })
                .unwrap_or(false);
        if committed {
            std::thread::sleep(Duration::from_millis(500));
            return match refusal(&w.stderr()) {
                Some(line) => Outcome::Refused(line),
                None => Outcome::Inconclusive("its lease ended before the cut landed"),
            };
        }
        // Lease lost after one lease time, the task stopped within the grace, the report
        // answered within the window.
        assert!(
            cut_at.elapsed() < CUT + GRACE + REPORT_WINDOW,
            "no refusal of the late report of {task}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
