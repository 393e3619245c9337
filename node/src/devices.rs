//! Which devices a process runs slots on: `--device cpu|cuda|cuda:N` for one slot, or
//! `--gpus all|0,1,...` for one slot per GPU.

use anyhow::{bail, Context, Result};
use pspace_engine::Device;

/// Clap's check of a `--device` value: the name as given when the engine knows it. A wrong
/// one is then reported by clap, naming the flag (`invalid value 'GPU' for '--device
/// <DEVICE>': ...`), rather than as a bare device name the user cannot place.
pub fn device_arg(name: &str) -> Result<String, pspace_engine::device::DeviceError> {
    name.parse::<Device>().map(|_| name.to_string())
}

/// The slots' devices.
pub fn slots(device: &str, gpus: Option<&str>) -> Result<Vec<Device>> {
    let Some(gpus) = gpus else {
        return Ok(vec![device.parse()?]);
    };
    if gpus == "all" {
        let found = pspace_engine::device::cuda_devices();
        if found.is_empty() {
            bail!("--gpus all: no CUDA device is visible (pspace doctor --device cuda says why)");
        }
        return Ok((0..found.len()).map(Device::Cuda).collect());
    }
    gpus.split(',')
        .map(|g| {
            g.trim().parse::<usize>().map(Device::Cuda).with_context(|| {
                format!("--gpus {gpus}: expected `all` or GPU indices like 0,1; found {g:?}")
            })
        })
        .collect()
}

/// This machine's name (for status and logs).
pub fn node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Makes every device usable before any task is leased (CUDA: libtorch_cuda loads and the index
/// exists), so that a machine without the GPU the run asks for stops at once with the reason
/// instead of failing each task as a crash and retrying it.
pub fn activate_all(devices: &[Device]) -> Result<()> {
    for device in devices {
        device.activate().with_context(|| format!("device {device}"))?;
    }
    Ok(())
}
