//! `pspace doctor`: what this machine gives pspace (libtorch, CUDA devices, matmul rate, the
//! demo model), so a user can tell a broken set-up from a slow one before starting a run.

use crate::cli::DoctorArgs;
use anyhow::{Context, Result};
use pspace_engine::device::{self, Device};
use serde_json::json;

/// With --json a failure is JSON too, `{pspace, device, error}` on stdout (a script reading the
/// report gets an object it can parse either way), besides the usual line on stderr and exit 1.
pub fn run(args: DoctorArgs) -> Result<()> {
    let json = args.json;
    let device = args.device.clone();
    let outcome = report(args);
    if let (true, Err(e)) = (json, &outcome) {
        let error = json!({
            "pspace": env!("CARGO_PKG_VERSION"),
            "device": device,
            "error": format!("{e:#}"),
        });
        println!("{}", serde_json::to_string_pretty(&error)?);
    }
    outcome
}

fn report(args: DoctorArgs) -> Result<()> {
    // Parsed here rather than by clap, so that --json can report a wrong name as JSON.
    let requested: Device = args
        .device
        .parse()
        .with_context(|| format!("--device {}", args.device))?;
    let tch_device = requested.activate()?;
    let libtorch_dir = device::loaded_libtorch_dir();
    let gpus = if matches!(requested, Device::Cuda(_)) {
        device::cuda_devices()
    } else {
        Vec::new()
    };
    let rate = device::matmul_tflops(tch_device);
    // A CPU with native bf16 (AVX512_BF16, AMX) multiplies several times faster in bf16 than in
    // f32: whether `[experiment] dtype = "bf16"` pays here.
    let cpu_bf16 =
        matches!(requested, Device::Cpu).then(|| device::matmul_tflops_in(tch_device, tch::Kind::BFloat16));
    let attention = device::sdpa_backends(tch_device);
    let demo = crate::paths::resolve_model("demo")
        .map(|source| source.to_string())
        .map_err(|e| e.to_string());
    let dtype = if matches!(requested, Device::Cuda(_)) {
        "bf16"
    } else {
        "f32"
    };
    let report = json!({
        "pspace": env!("CARGO_PKG_VERSION"),
        "libtorch_version": libtorch_version(libtorch_dir.as_deref()),
        "libtorch_dir": libtorch_dir.as_ref().map(|d| d.display().to_string()),
        "cuda_available": tch::Cuda::is_available(),
        "cuda_device_count": tch::Cuda::device_count(),
        "device": requested.to_string(),
        "gpus": gpus,
        "matmul": {"dtype": dtype, "tflops": significant(rate)},
        "cpu_bf16_matmul_tflops": cpu_bf16.map(significant),
        "sdpa_backends": attention.iter().map(|(layout, kernel)| (layout.to_string(), json!(kernel))).collect::<serde_json::Map<_, _>>(),
        "cpu_threads": tch::get_num_threads(),
        "cpu_interop_threads": tch::get_num_interop_threads(),
        "omp_wait_policy": std::env::var("OMP_WAIT_POLICY").ok(),
        "demo_model": demo.as_ref().ok(),
        "demo_model_problem": demo.as_ref().err(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("pspace {}", env!("CARGO_PKG_VERSION"));
    println!(
        "libtorch       {} ({})",
        report["libtorch_version"].as_str().unwrap_or("unknown"),
        report["libtorch_dir"].as_str().unwrap_or("?")
    );
    println!(
        "CUDA           {}",
        if tch::Cuda::is_available() {
            format!("yes, {} device(s)", tch::Cuda::device_count())
        } else {
            "no".into()
        }
    );
    for g in &gpus {
        println!(
            "  cuda:{}       {} ({:.1} GiB)",
            g.index, g.name, g.total_memory_gib
        );
    }
    println!("device         {requested}");
    match cpu_bf16 {
        Some(bf16) => println!(
            "matmul rate    {} TFLOP/s ({dtype}), {} TFLOP/s (bf16)",
            significant(rate),
            significant(bf16)
        ),
        None => println!("matmul rate    {} TFLOP/s ({dtype})", significant(rate)),
    }
    // What SDPA would run; on CUDA pspace calls the memory-efficient kernel for both layouts.
    let picks: Vec<String> = attention
        .iter()
        .map(|(layout, kernel)| format!("{kernel} ({layout})"))
        .collect();
    println!("attention      libtorch's SDPA picks {}", picks.join(", "));
    if matches!(requested, Device::Cuda(_)) {
        println!(
            "               pspace runs causal and masked attention on the memory-efficient kernel itself"
        );
    }
    println!(
        "CPU threads    {} intra-op, {} inter-op (OpenMP wait policy {})",
        tch::get_num_threads(),
        tch::get_num_interop_threads(),
        std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "default".into())
    );
    match &demo {
        Ok(p) => println!("demo model     {p}"),
        Err(e) => println!("demo model     MISSING: {e}"),
    }
    Ok(())
}

/// A rate to three significant digits: a CPU without native bf16 multiplies at a few GFLOP/s,
/// which three decimals of TFLOP/s showed as 0 (a loaded CI machine, 2026-12-01).
fn significant(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn libtorch_version(dir: Option<&std::path::Path>) -> Option<String> {
    let text = std::fs::read_to_string(dir?.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
}

#[cfg(test)]
mod tests {
    use super::significant;

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(significant(0.000_412_7), 0.000_413);
        assert_eq!(significant(1.234_56), 1.23);
        assert_eq!(significant(987.65), 988.0);
        assert_eq!(significant(0.0), 0.0);
    }
}
