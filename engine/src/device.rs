//! Device selection and the facts `pspace doctor` reports.
//!
//! libtorch's CUDA backend lives in `libtorch_cuda.so`, which the linker drops because nothing
//! references it by symbol. Instead of linking it (which would make the binary unusable on a
//! machine without CUDA libraries) we `dlopen` it at start-up when the user asks for CUDA, before
//! the first CUDA call: the CPU path never touches a CUDA library.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a computation runs, as the user names it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {found:?}: expected `cpu`, `cuda` (or its alias `gpu`) or `cuda:N`{hint}")]
    Unknown { found: String, hint: String },
    #[error(
        "CUDA was asked for but is not available: {reason}. On a GPU machine, put its libtorch \
         on the library path (e.g. LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib) \
         or set PSPACE_LIBTORCH_LIB to that folder"
    )]
    CudaUnavailable { reason: String },
    /// No NVIDIA driver: no GPU this process could use, whatever libraries are installed (the
    /// library-path advice of `CudaUnavailable` would send the user after the wrong thing).
    #[error(
        "CUDA was asked for but this machine has no CUDA device: no NVIDIA driver was found \
         ({detail}). Use the CPU (`--device cpu`, or `device = \"cpu\"` in the spec), or run on a \
         machine with a GPU and its driver"
    )]
    NoCudaDriver { detail: String },
    #[error("CUDA device {index} was asked for but only {count} device(s) are visible")]
    NoSuchCudaDevice { index: usize, count: usize },
}

impl std::str::FromStr for Device {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => Err(DeviceError::Unknown {
                    found: other.to_string(),
                    // Names are lower case, as in the spec (docs/spec.md).
                    hint: match other.to_ascii_lowercase() {
                        lower if lower != other && lower.parse::<Device>().is_ok() => {
                            format!(" (names are lower case: write `{lower}`)")
                        }
                        _ => String::new(),
                    },
                }),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// Makes the device usable: for CUDA this loads libtorch_cuda and checks the index.
    pub fn activate(self) -> Result<tch::Device, DeviceError> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(index) => {
                load_cuda_backend()?;
                let count = tch::Cuda::device_count() as usize;
                if count == 0 {
                    return Err(DeviceError::CudaUnavailable {
                        reason: "libtorch_cuda loaded but no CUDA device is visible".into(),
                    });
                }
                if index >= count {
                    return Err(DeviceError::NoSuchCudaDevice { index, count });
                }
                Ok(tch::Device::Cuda(index))
            }
        }
    }

    /// The floating-point type the engine computes in on this device by default.
    pub fn compute_kind(self) -> tch::Kind {
        match self {
            Device::Cpu => tch::Kind::Float,
            Device::Cuda(_) => tch::Kind::BFloat16,
        }
    }

    /// The floating-point type to compute in: `dtype` when given, else the device's default.
    pub fn kind_for(self, dtype: Option<Dtype>) -> tch::Kind {
        dtype.map_or(self.compute_kind(), Dtype::kind)
    }
}

/// A floating-point type to compute in (`[experiment] dtype`): f32, or bf16 as the recipe
/// trains on GPUs. A CPU with native bf16 arithmetic (AVX512_BF16, AMX) runs bf16 matmuls
/// several times faster than f32; the LoRA weights stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::F32 => tch::Kind::Float,
            Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    /// `f32` or `bf16`, as [`Dtype`] displays and serialises them; the error says what was found.
    fn from_str(text: &str) -> Result<Dtype, String> {
        match text {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            other => Err(format!("expected \"f32\" or \"bf16\", found {other:?}")),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// The folder holding libtorch's shared libraries that this process actually loaded.
pub fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// Checks for the NVIDIA driver's user-space library, `libcuda.so.1`, which every CUDA program
/// needs and which comes with the driver (on the host, or mounted into a container with the
/// GPU): without it there is no GPU to use, and libtorch_cuda's failure to load (a missing
/// libcusparse, say) would only be a symptom of that.
fn find_cuda_driver() -> Result<(), DeviceError> {
    static FOUND: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let name = CString::new("libcuda.so.1").map_err(|e| e.to_string())?;
            // SAFETY: dlopen with a valid C string; the handle is left open (libtorch_cuda loads
            // the same library next, and unloading a driver library is never worth it).
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
            if !handle.is_null() {
                return Ok(());
            }
            // SAFETY: dlerror returns a thread-local C string or null.
            let err = unsafe { libc::dlerror() };
            Err(if err.is_null() {
                "libcuda.so.1 cannot be loaded".to_string()
            } else {
                unsafe { std::ffi::CStr::from_ptr(err) }
                    .to_string_lossy()
                    .into_owned()
            })
        })
        .clone()
        .map_err(|detail| DeviceError::NoCudaDriver { detail })
}

fn load_cuda_backend() -> Result<(), DeviceError> {
    find_cuda_driver()?;
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut candidates: Vec<PathBuf> = Vec::new();
            if let Ok(dir) = std::env::var("PSPACE_LIBTORCH_LIB") {
                candidates.push(PathBuf::from(dir).join("libtorch_cuda.so"));
            }
            if let Some(dir) = loaded_libtorch_dir() {
                candidates.push(dir.join("libtorch_cuda.so"));
            }
            candidates.push(PathBuf::from("libtorch_cuda.so"));
            let mut errors = Vec::new();
            for path in candidates {
                let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
                // SAFETY: dlopen with a valid C string; the handle is intentionally leaked so the
                // library stays loaded for the life of the process.
                let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
                if !handle.is_null() {
                    return Ok(());
                }
                // SAFETY: dlerror returns a thread-local C string or null.
                let err = unsafe { libc::dlerror() };
                let msg = if err.is_null() {
                    "unknown dlopen error".to_string()
                } else {
                    unsafe { std::ffi::CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned()
                };
                errors.push(format!("{}: {msg}", path.display()));
            }
            Err(format!("could not load libtorch_cuda.so ({})", errors.join("; ")))
        })
        .clone()
        .map_err(|reason| DeviceError::CudaUnavailable { reason })
}

/// One visible accelerator as `pspace doctor` describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub total_memory_gib: f64,
}

/// Names and memory of the visible CUDA devices (empty when CUDA is not active).
pub fn cuda_devices() -> Vec<GpuInfo> {
    if load_cuda_backend().is_err() || !tch::Cuda::is_available() {
        return Vec::new();
    }
    (0..tch::Cuda::device_count() as usize)
        .map(|index| {
            let (name, total) = cuda_properties(index);
            GpuInfo {
                index,
                name,
                total_memory_gib: total as f64 / (1u64 << 30) as f64,
            }
        })
        .collect()
}

fn cuda_properties(index: usize) -> (String, u64) {
    // tch exposes no device-name call. The CUDA runtime is already loaded (libtorch_cuda links
    // it), so resolve cudaGetDeviceProperties through dlsym: `name` is the struct's first field
    // (char[256]) in every CUDA version, and the buffer is larger than any version's struct.
    type GetProps = unsafe extern "C" fn(*mut u8, libc::c_int) -> libc::c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> libc::c_int;
    type SetDevice = unsafe extern "C" fn(libc::c_int) -> libc::c_int;
    let name = unsafe {
        let mut sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetDeviceProperties_v2".as_ptr());
        if sym.is_null() {
            sym = libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetDeviceProperties".as_ptr());
        }
        let mut buf = vec![0u8; 16 * 1024];
        if !sym.is_null()
            && std::mem::transmute::<*mut libc::c_void, GetProps>(sym)(buf.as_mut_ptr(), index as libc::c_int)
                == 0
        {
            let end = buf[..256].iter().position(|&b| b == 0).unwrap_or(256);
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            "unknown".to_string()
        }
    };
    let total = unsafe {
        let set = libc::dlsym(libc::RTLD_DEFAULT, c"cudaSetDevice".as_ptr());
        let mem = libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr());
        if set.is_null() || mem.is_null() {
            0
        } else {
            let set: SetDevice = std::mem::transmute(set);
            let mem: MemGetInfo = std::mem::transmute(mem);
            let (mut free, mut total) = (0usize, 0usize);
            if set(index as libc::c_int) == 0 && mem(&mut free, &mut total) == 0 {
                total as u64
            } else {
                0
            }
        }
    };
    (name, total)
}

/// Measures the dense matmul rate in TFLOP/s in the device's default type: bf16 8192^3 on
/// CUDA, f32 1024^3 on CPU.
pub fn matmul_tflops(device: tch::Device) -> f64 {
    let kind = match device {
        tch::Device::Cuda(_) => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    matmul_tflops_in(device, kind)
}

/// Measures the dense matmul rate in TFLOP/s in `kind` (8192^3 on CUDA, 1024^3 on CPU).
pub fn matmul_tflops_in(device: tch::Device, kind: tch::Kind) -> f64 {
    let _guard = tch::no_grad_guard();
    let (n, reps) = match device {
        tch::Device::Cuda(_) => (8192i64, 20),
        _ => (1024i64, 5),
    };
    let a = tch::Tensor::randn([n, n], (kind, device));
    let b = tch::Tensor::randn([n, n], (kind, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = a.matmul(&b);
    sync();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b);
    }
    sync();
    let secs = start.elapsed().as_secs_f64();
    2.0 * (n as f64).powi(3) * reps as f64 / secs / 1e12
}

/// The kernel libtorch's `scaled_dot_product_attention` picks on `device` (bf16 on CUDA, f32 on a
/// CPU) for pspace's two attention layouts: "causal" (training passes and prompts without
/// padding: q, k, v [16, 28, 512, 128], the kv heads repeated) and "masked" (left-padded prompts
/// with an explicit mask: q [16, 4, 448, 128] over k, v [16, 4, 64, 128]). Names: math, flash,
/// efficient, cudnn, overrideable, or "none" (libtorch found none). On an H200 with libtorch 2.11
/// the causal choice was cuDNN, whose per-shape graphs made padding-free training slow, so pspace
/// calls the memory-efficient kernel there itself (`model::causal_attention`).
pub fn sdpa_backends(device: tch::Device) -> Vec<(&'static str, &'static str)> {
    let _guard = tch::no_grad_guard();
    let kind = if device.is_cuda() {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let name = |choice: i64| match choice {
        0 => "math",
        1 => "flash",
        2 => "efficient",
        3 => "cudnn",
        4 => "overrideable",
        _ => "none",
    };
    let causal = tch::Tensor::zeros([16, 28, 512, 128], (kind, device));
    let q = tch::Tensor::zeros([16, 4, 448, 128], (kind, device));
    let kv = tch::Tensor::zeros([16, 4, 64, 128], (kind, device));
    let mask = tch::Tensor::ones([16, 1, 448, 64], (tch::Kind::Bool, device));
    let causal_choice = tch::Tensor::internal_fused_sdp_choice(
        &causal,
        &causal,
        &causal,
        None::<tch::Tensor>,
        0.0,
        true,
        None,
        false,
    );
    let masked_choice =
        tch::Tensor::internal_fused_sdp_choice(&q, &kv, &kv, Some(&mask), 0.0, false, None, false);
    vec![("causal", name(causal_choice)), ("masked", name(masked_choice))]
}

/// This CPU's dense matmul rates in TFLOP/s, (f32, bf16), for `dtype = "auto"`: machines of one
/// kind differ by 9x in which is faster (measured on two 2-core machines of this project's CI
/// kind with `pspace doctor`: bf16 0.33 against f32 0.07 on one, 0.14 against 0.28 on another
/// with AVX512_BF16 but no AMX). The best of three alternating rounds of each, so that other
/// work on a shared machine, which only ever slows a round down, does not decide it (one round
/// each picked bf16 at 0.085 against 0.069 on a loaded box where f32 is faster). About half a
/// second.
pub fn cpu_matmul_rates() -> (f64, f64) {
    let (mut f32_rate, mut bf16_rate) = (0f64, 0f64);
    for _ in 0..3 {
        f32_rate = f32_rate.max(matmul_tflops_in(tch::Device::Cpu, tch::Kind::Float));
        bf16_rate = bf16_rate.max(matmul_tflops_in(tch::Device::Cpu, tch::Kind::BFloat16));
    }
    (f32_rate, bf16_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_a_wrong_case_gets_a_hint() {
        assert_eq!("gpu".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        let message = "GPU".parse::<Device>().unwrap_err().to_string();
        assert!(
            message.contains("`gpu`") && message.contains("write `gpu`"),
            "{message}"
        );
        let message = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(!message.contains("write"), "{message}");
    }

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
    }

    /// Without a driver, CUDA is refused for that reason, not for a library libtorch_cuda lacks
    /// (on this project's CPU machines the lean venv has no libcusparse, and the message
    /// blamed the library path). Skipped where a driver is installed.
    #[test]
    fn without_a_driver_cuda_is_refused_for_the_missing_driver() {
        if Path::new("/proc/driver/nvidia/version").exists() {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        let message = Device::Cuda(0).activate().unwrap_err().to_string();
        assert!(message.contains("no NVIDIA driver was found"), "{message}");
        assert!(
            !message.contains("libcusparse") && !message.contains("LD_LIBRARY_PATH"),
            "{message}"
        );
        assert!(cuda_devices().is_empty());
    }

    #[test]
    fn cpu_matmul_runs_and_reports_a_positive_rate() {
        let rate = matmul_tflops(tch::Device::Cpu);
        assert!(rate > 0.0 && rate.is_finite());
    }

    #[test]
    fn libtorch_is_found_in_the_process() {
        let dir = loaded_libtorch_dir().expect("libtorch_cpu.so mapped");
        assert!(dir.join("libtorch_cpu.so").exists());
    }
}
