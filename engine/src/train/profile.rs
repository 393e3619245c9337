//! Where a training step's time goes, for benchmarking (`PSPACE_TRAIN_PROFILE=1`). Off by
//! default: it waits for the device at each phase's end, which costs the overlap of host and
//! device that a step normally has. On, each phase's time is measured twice: how long the host
//! took to issue its work (`issue`), and how long until the device finished it (`device`, the
//! issue time included). A step whose forward issues in about the time the device needs for it
//! is bound by the host (kernel launches, or a hidden wait for the device), not by the GPU. The
//! first [`WARMUP_STEPS`] steps (allocator growth, kernel selection) are left out. The table goes
//! to stderr when training ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// `PSPACE_TRAIN_PROFILE=ops` also times the pieces of each decoder layer's forward
/// ([`op_lap`]): process-wide, since the model's layer code has no handle on a trainer.
static OPS_ON: AtomicBool = AtomicBool::new(false);
/// Per op: (name, device seconds, times), in first-seen order.
type OpTimes = Vec<(&'static str, f64, usize)>;
/// The ops' times, and when the last lap ended.
static OPS: Mutex<(OpTimes, Option<Instant>)> = Mutex::new((Vec::new(), None));

/// Ends the op that ran since the previous lap (or `op_start`), waiting for the device: only
/// when `PSPACE_TRAIN_PROFILE=ops`, otherwise nothing (one atomic load).
pub fn op_lap(op: &'static str, device: tch::Device) {
    if !OPS_ON.load(Ordering::Relaxed) {
        return;
    }
    sync(device);
    if let Ok(mut ops) = OPS.lock() {
        let now = Instant::now();
        let Some(last) = ops.1.replace(now) else { return };
        let seconds = now.duration_since(last).as_secs_f64();
        match ops.0.iter_mut().find(|(name, _, _)| *name == op) {
            Some(entry) => {
                entry.1 += seconds;
                entry.2 += 1;
            }
            None => ops.0.push((op, seconds, 1)),
        }
    }
}

/// Starts the op laps of a layer (after waiting for what is queued).
pub fn op_start(device: tch::Device) {
    if !OPS_ON.load(Ordering::Relaxed) {
        return;
    }
    sync(device);
    if let Ok(mut ops) = OPS.lock() {
        ops.1 = Some(Instant::now());
    }
}

/// Steps left out of the table: the first ones grow libtorch's caching allocator and pick
/// kernels, and take several times a later step.
pub const WARMUP_STEPS: usize = 2;

/// Accumulated phase times of the steps of one training run.
pub struct StepProfile {
    device: Option<tch::Device>,
    /// Steps finished, warm-up included.
    steps: usize,
    phase_started: Instant,
    /// phase -> (issue seconds, issue + wait seconds, times)
    phases: BTreeMap<&'static str, (f64, f64, usize)>,
    order: Vec<&'static str>,
}

impl StepProfile {
    /// On when `PSPACE_TRAIN_PROFILE` is set to anything but "" or "0".
    pub fn from_env(device: tch::Device) -> StepProfile {
        let setting = std::env::var("PSPACE_TRAIN_PROFILE").unwrap_or_default();
        let on = !setting.is_empty() && setting != "0";
        OPS_ON.store(setting == "ops", Ordering::Relaxed);
        StepProfile::on(on.then_some(device))
    }

    /// Timing `device`'s work, or nothing (None).
    fn on(device: Option<tch::Device>) -> StepProfile {
        StepProfile {
            device,
            steps: 0,
            phase_started: Instant::now(),
            phases: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.device.is_some()
    }

    /// Starts timing the next phase (after waiting for what is queued, so it is not counted).
    pub fn start(&mut self) {
        if let Some(device) = self.device {
            sync(device);
            self.phase_started = Instant::now();
        }
    }

    /// Ends `phase`: the host's issue time now, then waits for the device.
    pub fn end(&mut self, phase: &'static str) {
        let Some(device) = self.device else { return };
        let issued = self.phase_started.elapsed().as_secs_f64();
        sync(device);
        let done = self.phase_started.elapsed().as_secs_f64();
        let entry = self.phases.entry(phase).or_insert_with(|| {
            self.order.push(phase);
            (0.0, 0.0, 0)
        });
        entry.0 += issued;
        entry.1 += done;
        entry.2 += 1;
        self.phase_started = Instant::now();
    }

    /// Ends a step; the phases of the warm-up steps are dropped.
    pub fn step_done(&mut self) {
        self.steps += 1;
        if self.steps <= WARMUP_STEPS {
            self.phases.clear();
            self.order.clear();
            if let Ok(mut ops) = OPS.lock() {
                ops.0.clear();
            }
        }
    }

    /// The table: per phase, total issue and device seconds, times, share of the device time.
    pub fn table(&self) -> String {
        let total: f64 = self.phases.values().map(|p| p.1).sum();
        if self.steps <= WARMUP_STEPS {
            return format!(
                "training profile (PSPACE_TRAIN_PROFILE): no step to time: the first {WARMUP_STEPS} steps \
                 are warm-up and this training took {} (run at least {})\n",
                self.steps,
                WARMUP_STEPS + 1
            );
        }
        let timed = self.steps.saturating_sub(WARMUP_STEPS).max(1) as f64;
        let mut out = format!(
            "training profile (PSPACE_TRAIN_PROFILE), steps {}..{}, ms per step: {:>8} {:>8} {:>6} {:>6}\n",
            WARMUP_STEPS + 1,
            self.steps,
            "issue",
            "device",
            "times",
            "share"
        );
        for phase in &self.order {
            let (issue, done, times) = self.phases[phase];
            out.push_str(&format!(
                "  {phase:<61} {:>8.1} {:>8.1} {times:>6} {:>5.1}%\n",
                1000.0 * issue / timed,
                1000.0 * done / timed,
                100.0 * done / total.max(1e-12)
            ));
        }
        if let Ok(ops) = OPS.lock() {
            if !ops.0.is_empty() {
                out.push_str("  forward by op, all layers (the forward above is slower by these waits):\n");
            }
            for (op, seconds, times) in &ops.0 {
                out.push_str(&format!(
                    "    {op:<59} {:>8.1} ms per step {times:>6}\n",
                    1000.0 * seconds / timed
                ));
            }
        }
        out
    }
}

impl Drop for StepProfile {
    /// `ops` times the layers' forward process-wide: it ends with the training that asked for
    /// it, so the later tasks of a run (extraction, sampling) do not wait after every op.
    fn drop(&mut self) {
        if self.device.is_some() {
            OPS_ON.store(false, Ordering::Relaxed);
            if let Ok(mut ops) = OPS.lock() {
                ops.0.clear();
                ops.1 = None;
            }
        }
    }
}

fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_in_their_first_order() {
        let mut p = StepProfile::on(Some(tch::Device::Cpu));
        for _ in 0..WARMUP_STEPS + 2 {
            p.start();
            p.end("forward");
            p.end("backward");
            p.step_done();
        }
        let table = p.table();
        let forward = table.find("forward").unwrap();
        let backward = table.find("backward").unwrap();
        assert!(forward < backward, "{table}");
        assert_eq!(p.phases["forward"].2, 2);
    }

    #[test]
    fn a_training_of_warm_up_steps_only_says_there_is_nothing_to_time() {
        let mut p = StepProfile::on(Some(tch::Device::Cpu));
        p.start();
        p.end("forward");
        p.step_done();
        let table = p.table();
        assert!(
            table.contains("no step to time") && table.contains("run at least 3"),
            "{table}"
        );
    }

    #[test]
    fn off_records_nothing() {
        let mut p = StepProfile::on(None);
        p.start();
        p.end("forward");
        assert!(p.phases.is_empty() && !p.enabled());
    }
}
