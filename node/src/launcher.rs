//! `pspace`: the command users run. It links no libtorch, so it can say in one clear line what
//! is missing (the venv, the right torch, the core binary) instead of a dynamic-loader error,
//! then hands over to `pspace-core` (same folder, same arguments) with libtorch on its path.
//!
//! libtorch is looked for in this order: `PSPACE_LIBTORCH_LIB` (a folder holding
//! libtorch_cpu.so, e.g. a GPU machine's own torch), then the project's `.venv` two folders above
//! the binary (`target/release/pspace` -> `.venv`), then `LD_LIBRARY_PATH`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const EXPECTED_TORCH: &str = "2.11.0";

fn main() {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| fail(&format!("cannot locate the pspace binary itself: {e}")));
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let core = bin_dir.join("pspace-core");
    if !core.exists() {
        fail(&format!(
            "{} is missing (it is built with pspace): run 'make setup'",
            core.display()
        ));
    }
    let lib = find_libtorch(&bin_dir);
    check_torch_version(&lib);
    let mut cmd = Command::new(&core);
    cmd.args(std::env::args_os().skip(1));
    let mut paths = vec![lib.display().to_string()];
    if let Some(cuda) = lib
        .parent()
        .and_then(|t| t.parent())
        .map(|sp| sp.join("nvidia/cu13/lib"))
    {
        if cuda.exists() {
            paths.push(cuda.display().to_string());
        }
    }
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        paths.push(old);
    }
    cmd.env("LD_LIBRARY_PATH", paths.join(":"));
    cmd.env("PSPACE_LIBTORCH_LIB", &lib);
    // libtorch's OpenMP (libgomp) keeps its worker threads spinning between parallel regions.
    // On a CPU that other work shares (a 2-core box running a build), the spinning threads take
    // the core the computing thread needs: generation on the demo model ran 5x slower than with
    // passive waiting at a load of 6, which costs a futex wake per region (a few per cent of a
    // decode step on an idle machine). It is read when the library loads, so it is set here;
    // the user's own setting wins.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    // libtorch's CUDA caching allocator keeps fixed-size segments: padding-free training, whose
    // passes change shape every step, kept allocating new ones. Expandable segments grow one
    // mapping instead: a 7B EM step's forward took 184 ms instead of 220 ms on an H200
    // (bench/train_profile.sh, same call, 2026-11-30). Read when the allocator starts; the
    // user's setting wins.
    if std::env::var_os("PYTORCH_CUDA_ALLOC_CONF").is_none() {
        cmd.env("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True");
    }
    let err = cmd.exec();
    fail(&format!("cannot start {}: {err}", core.display()));
}

fn find_libtorch(bin_dir: &Path) -> PathBuf {
    if let Ok(dir) = std::env::var("PSPACE_LIBTORCH_LIB") {
        let dir = PathBuf::from(dir);
        if dir.join("libtorch_cpu.so").exists() {
            return dir;
        }
        fail(&format!(
            "PSPACE_LIBTORCH_LIB={} holds no libtorch_cpu.so: point it at a torch/lib folder of torch {EXPECTED_TORCH}",
            dir.display()
        ));
    }
    for up in [2usize, 3] {
        let mut root = bin_dir.to_path_buf();
        for _ in 0..up {
            root.pop();
        }
        let venv = root.join(".venv");
        if venv.exists() {
            let lib = venv.join("lib/python3.11/site-packages/torch/lib");
            if lib.join("libtorch_cpu.so").exists() {
                return lib;
            }
            fail(&format!(
                "{} is broken (no torch/lib/libtorch_cpu.so): run 'rm -rf {} && make setup'",
                venv.display(),
                venv.display()
            ));
        }
    }
    if let Ok(paths) = std::env::var("LD_LIBRARY_PATH") {
        for p in paths.split(':').filter(|p| !p.is_empty()) {
            if Path::new(p).join("libtorch_cpu.so").exists() {
                return PathBuf::from(p);
            }
        }
    }
    fail("libtorch not found: no .venv next to this build and none on LD_LIBRARY_PATH: run 'make setup' (or set PSPACE_LIBTORCH_LIB to a torch/lib folder)")
}

fn check_torch_version(lib: &Path) {
    let version_file = lib.parent().map(|t| t.join("version.py"));
    let Some(text) = version_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    else {
        // A bare libtorch folder (no Python package around it) carries no version.py: trust it.
        return;
    };
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| {
            v.trim_matches(|c| c == '\'' || c == '"')
                .split('+')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    if found != EXPECTED_TORCH {
        fail(&format!(
            "libtorch in {} is torch {found}, expected {EXPECTED_TORCH} (tch 0.24): run 'rm -rf .venv && make setup'",
            lib.display()
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("pspace: {message}");
    exit(2)
}
