//! A kernel-level trace of a stretch of work: libtorch's profiler (Kineto; CUPTI on CUDA)
//! records every aten operator and every GPU kernel it launched, with times and the link
//! between them, and writes a Chrome trace (open it in Perfetto or chrome://tracing;
//! `bench/kernel_summary.py` totals it by kernel and by operator).
//!
//! A benchmarking tool (bench_train, bench_engine `--kernel-trace PATH`): recording costs host
//! time, so a traced stretch is slower than an untraced one; kernel durations are the GPU's.
//! The profiler is process-wide: one trace at a time.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

extern "C" {
    fn pspace_kernel_trace_start(cuda: i32) -> *mut c_char;
    fn pspace_kernel_trace_stop(path: *const c_char) -> *mut c_char;
    fn pspace_free_message(message: *mut c_char);
}

/// A failure of libtorch's profiler, with its message.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("kernel trace: starting libtorch's profiler failed: {0}")]
    Start(String),
    #[error("kernel trace: writing {path}: {message}")]
    Stop { path: PathBuf, message: String },
    #[error("kernel trace: the path {0} contains a NUL byte")]
    Path(PathBuf),
}

/// Takes ownership of a message from engine/csrc.
fn message(raw: *mut c_char) -> Option<String> {
    if raw.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string from strdup, freed once here.
    let text = unsafe { CStr::from_ptr(raw) }.to_string_lossy().into_owned();
    unsafe { pspace_free_message(raw) };
    Some(text)
}

/// A running trace; [`KernelTrace::finish`] writes it. Dropped unfinished, it stops the
/// profiler and writes nothing.
pub struct KernelTrace {
    finished: bool,
    /// Not Send: libtorch's profiler state belongs to the thread that started it.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl KernelTrace {
    /// Starts recording aten operators, and CUDA kernels when `cuda`.
    ///
    /// Errors: [`TraceError::Start`] when libtorch's profiler refuses (e.g. one already runs).
    pub fn start(cuda: bool) -> Result<KernelTrace, TraceError> {
        // SAFETY: no pointers cross; the shim catches every C++ exception.
        match message(unsafe { pspace_kernel_trace_start(i32::from(cuda)) }) {
            Some(m) => Err(TraceError::Start(m)),
            None => Ok(KernelTrace {
                finished: false,
                _thread_bound: std::marker::PhantomData,
            }),
        }
    }

    /// Stops recording and writes the Chrome trace (JSON) to `path`.
    ///
    /// Errors: [`TraceError::Stop`] when the trace cannot be written there.
    pub fn finish(mut self, path: &Path) -> Result<(), TraceError> {
        // A path that cannot cross is refused before the profiler is stopped; dropping `self`
        // then stops it.
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| TraceError::Path(path.to_path_buf()))?;
        self.finished = true;
        // SAFETY: c_path outlives the call; the shim catches every C++ exception.
        match message(unsafe { pspace_kernel_trace_stop(c_path.as_ptr()) }) {
            Some(m) => Err(TraceError::Stop {
                path: path.to_path_buf(),
                message: m,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for KernelTrace {
    fn drop(&mut self) {
        if !self.finished {
            // The trace is discarded: saving to /dev/null stops the profiler.
            let null = CString::new("/dev/null").unwrap_or_default();
            // SAFETY: as in `finish`.
            let _ = message(unsafe { pspace_kernel_trace_stop(null.as_ptr()) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// On the CPU the trace holds the aten operators that ran between start and finish.
    #[test]
    fn a_cpu_trace_names_the_operators_that_ran() {
        let dir = std::env::temp_dir().join(format!("pspace-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        let trace = KernelTrace::start(false).unwrap();
        let a = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
        let _ = a.matmul(&a).sum(Kind::Float);
        trace.finish(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names: Vec<&str> = json["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(names.contains(&"aten::matmul"), "{names:?}");
        assert!(names.contains(&"aten::sum"), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
