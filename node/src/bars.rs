//! The front end of a running coordinator (`pspace run`, `pspace coordinator`): polls its status
//! and shows a progress bar over the tasks, a bar for the stage a worker reports, one line per
//! task as it commits, and at the end the summary and where the report is.

use indicatif::{ProgressBar, ProgressStyle};
use pspace_actors::coordinator::{RunStatus, TaskOutcome};
use pspace_actors::transport::CoordinatorClient;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Progress bars (hidden when stderr is not a terminal: then only the task lines print).
pub struct Bars {
    tasks: ProgressBar,
    stage: ProgressBar,
    printed: BTreeSet<String>,
}

impl Bars {
    pub fn new() -> Bars {
        let tasks = ProgressBar::new(0);
        tasks.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} tasks  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        tasks.set_prefix("pspace");
        tasks.enable_steady_tick(Duration::from_millis(250));
        let stage = ProgressBar::hidden();
        Bars {
            tasks,
            stage,
            printed: BTreeSet::new(),
        }
    }

    fn line(&self, line: String) {
        if self.tasks.is_hidden() {
            eprintln!("{line}");
        } else {
            self.tasks.println(line);
        }
    }

    /// Shows a new status: task lines for newly committed tasks (in commit order), the bars.
    pub fn update(&mut self, status: &RunStatus) {
        let mut fresh: Vec<(&String, &pspace_actors::coordinator::TaskOutcome)> = status
            .outcomes
            .iter()
            .filter(|(k, _)| !self.printed.contains(*k))
            .collect();
        fresh.sort_by_key(|(_, o)| o.order);
        for (key, o) in fresh {
            let how = if o.cached {
                "cached".to_string()
            } else {
                format!("{:.1}s", o.seconds)
            };
            self.line(format!("  {:<34} {how}", display_key(status, key)));
            self.printed.insert(key.clone());
        }
        self.tasks.set_length(status.snapshot.tasks.len() as u64);
        self.tasks.set_position(status.snapshot.counts.committed as u64);
        let running: Vec<String> = status.progress.keys().map(|k| display_key(status, k)).collect();
        self.tasks.set_message(running.join(", "));
        match status.progress.values().next() {
            Some(p) if p.total > 0 && !self.tasks.is_hidden() => {
                if self.stage.is_hidden() {
                    self.stage = ProgressBar::new(p.total);
                    self.stage.set_style(
                        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len}  {msg} ({eta})")
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    self.stage.set_prefix("stage");
                }
                self.stage.set_length(p.total);
                self.stage.set_position(p.done);
                self.stage.set_message(p.stage.clone());
            }
            _ => {}
        }
    }

    pub fn finish(&mut self) {
        self.stage.finish_and_clear();
        self.tasks.finish();
    }
}

/// A task's key as people read it: `kind/label` when the run has one seed, `seed/kind/label`
/// otherwise.
fn display_key(status: &RunStatus, key: &str) -> String {
    let seeds: BTreeSet<&str> = status
        .snapshot
        .tasks
        .iter()
        .filter_map(|t| t.task.as_str().split('/').next())
        .collect();
    if seeds.len() <= 1 {
        key.split_once('/')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_else(|| key.to_string())
    } else {
        key.to_string()
    }
}

/// Polls the coordinator until the run has finished or failed, showing progress; returns the
/// last status.
pub async fn follow(client: &mut CoordinatorClient, bars: &mut Bars) -> anyhow::Result<RunStatus> {
    loop {
        let status = client.status().await?;
        bars.update(&status);
        if status.snapshot.finished || status.snapshot.failure.is_some() {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` and `word`, in the plural unless `n` is 1: `1 task`, `2 tasks`.
pub fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The first line of the summary: `done: ...`, or for a run that failed what was committed
/// and which task stopped it (its error is the command's error, said once, after this).
pub fn summary_line(status: &RunStatus) -> String {
    let (ran, cached) = status.ran_and_cached();
    let how = format!("({ran} ran, {cached} already committed) in {}", status.store);
    match &status.snapshot.failure {
        None => format!("done: {} {how}", count(ran + cached, "task")),
        Some(f) => format!(
            "failed: {} of {} committed {how}; task {} stopped the run",
            ran + cached,
            count(status.snapshot.tasks.len(), "task"),
            f.task
        ),
    }
}

/// The summary line, where each seed's report and result are, and the cross-seed summary;
/// for a failed run the summary line, then the failure as the error.
pub fn summary(status: &RunStatus) -> anyhow::Result<()> {
    eprintln!("{}", summary_line(status));
    if let Some(line) = stage_times(&status.outcomes) {
        eprintln!("{line}");
    }
    if let Some(f) = &status.snapshot.failure {
        anyhow::bail!("{f}");
    }
    let root = status.store.trim_end_matches('/');
    for t in &status.snapshot.tasks {
        let key = t.task.as_str();
        if key.ends_with("/analyse/all") {
            if let Some(o) = status.outcomes.get(key) {
                println!("report: {root}/{}/report.md", o.outputs_dir);
                println!("result: {root}/{}/result.json", o.outputs_dir);
            }
        }
        if key.ends_with("/summarise/seeds") {
            if let Some(o) = status.outcomes.get(key) {
                println!("seeds: {root}/{}/seeds.md", o.outputs_dir);
            }
        }
    }
    Ok(())
}

/// Where the time went, by stage: `time by stage: train_em 5 x 20.1 s = 100.5 s, ...` over the
/// tasks that ran now (cached ones cost nothing), in the order the stages first committed;
/// None when nothing ran. Keys are `seed/kind/label`. A task's time is its committing
/// attempt's; what attempts that did not commit cost (and the backoff between them) is added up
/// apart, after the total, naming the tasks, so that a retried task does not make its stage
/// look slow.
pub fn stage_times(outcomes: &BTreeMap<String, TaskOutcome>) -> Option<String> {
    let mut ran: Vec<(&String, &TaskOutcome)> = outcomes.iter().filter(|(_, o)| !o.cached).collect();
    if ran.is_empty() {
        return None;
    }
    ran.sort_by_key(|(_, o)| o.order);
    let mut kinds: Vec<(&str, usize, f64)> = Vec::new();
    for (key, o) in &ran {
        let kind = key.split('/').nth(1).unwrap_or(key);
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += o.seconds;
            }
            None => kinds.push((kind, 1, o.seconds)),
        }
    }
    let total: f64 = ran.iter().map(|(_, o)| o.seconds).sum();
    let parts: Vec<String> = kinds
        .iter()
        .map(|(kind, n, s)| {
            if *n == 1 {
                format!("{kind} {s:.1} s")
            } else {
                format!("{kind} {n} x {:.1} s = {s:.1} s", s / *n as f64)
            }
        })
        .collect();
    let whole = total.round() as u64;
    let mut line = format!(
        "time by stage: {}; {} {:.1} s ({} min {} s)",
        parts.join(", "),
        count(ran.len(), "task"),
        total,
        whole / 60,
        whole % 60
    );
    let retried: Vec<(&String, f64)> = ran
        .iter()
        .filter(|(_, o)| o.lost_seconds > 0.0)
        .map(|(key, o)| (*key, o.lost_seconds))
        .collect();
    if !retried.is_empty() {
        let lost: f64 = retried.iter().map(|(_, s)| s).sum();
        let names: Vec<&str> = retried.iter().map(|(key, _)| key.as_str()).collect();
        line.push_str(&format!(
            "; not counted above, attempts that did not commit: {lost:.1} s ({})",
            names.join(", ")
        ));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seconds: f64, cached: bool, order: usize) -> TaskOutcome {
        TaskOutcome {
            task_id: String::new(),
            dir: String::new(),
            outputs_dir: String::new(),
            cached,
            seconds,
            lost_seconds: 0.0,
            order,
        }
    }

    /// A run of one task said "1 tasks" (fresh-user probe).
    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(
            (count(0, "task"), count(1, "task"), count(2, "task")),
            ("0 tasks".to_string(), "1 task".to_string(), "2 tasks".to_string())
        );
        let one = BTreeMap::from([("42/extract/base".to_string(), outcome(10.0, false, 0))]);
        assert_eq!(
            stage_times(&one).unwrap(),
            "time by stage: extract 10.0 s; 1 task 10.0 s (0 min 10 s)"
        );
    }

    #[test]
    fn stage_times_add_up_the_tasks_that_ran_by_kind() {
        let outcomes = BTreeMap::from([
            ("42/extract/base".to_string(), outcome(10.0, false, 1)),
            ("42/train_em/E0".to_string(), outcome(20.0, false, 0)),
            ("42/train_em/E4".to_string(), outcome(30.5, false, 2)),
            ("42/extract/E0".to_string(), outcome(99.0, true, 3)),
        ]);
        assert_eq!(
            stage_times(&outcomes).unwrap(),
            "time by stage: train_em 2 x 25.2 s = 50.5 s, extract 10.0 s; 3 tasks 60.5 s (1 min 1 s)"
        );
        let cached = BTreeMap::from([("42/extract/E0".to_string(), outcome(1.0, true, 0))]);
        assert_eq!(stage_times(&cached), None);
    }

    /// A retried task counted its failed attempts into its stage's time (its seconds ran from
    /// its first grant): a stage whose task crashed once looked twice as slow. Its committing
    /// attempt's time counts; the rest is named apart.
    #[test]
    fn a_retried_task_s_lost_attempts_are_named_apart_from_its_stage_time() {
        let mut retried = outcome(10.0, false, 0);
        retried.lost_seconds = 31.5;
        let outcomes = BTreeMap::from([
            ("42/extract/base".to_string(), retried),
            ("42/extract/E0".to_string(), outcome(12.0, false, 1)),
        ]);
        assert_eq!(
            stage_times(&outcomes).unwrap(),
            "time by stage: extract 2 x 11.0 s = 22.0 s; 2 tasks 22.0 s (0 min 22 s); not counted \
             above, attempts that did not commit: 31.5 s (42/extract/base)"
        );
    }
}
