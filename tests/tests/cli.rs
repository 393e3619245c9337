//! The `pspace` binary as a user runs it: help, doctor, and the launcher's one-line errors.

use pspace_tests::{pspace_bin, repo_root};
use std::process::Command;

#[test]
fn help_explains_every_subcommand() {
    let out = Command::new(pspace_bin())
        .arg("--help")
        .output()
        .expect("run pspace");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "doctor"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn doctor_reports_libtorch_and_the_demo_model() {
    let out = Command::new(pspace_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("run pspace");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["libtorch_version"].as_str().unwrap().split('+').next(),
        Some("2.11.0")
    );
    assert_eq!(v["cuda_available"], false);
    assert!(v["matmul"]["tflops"].as_f64().unwrap() > 0.0);
    assert!(v["cpu_bf16_matmul_tflops"].as_f64().unwrap() > 0.0);
    assert!(v["demo_model"]
        .as_str()
        .unwrap()
        .ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
}

#[test]
fn a_missing_venv_gives_one_clear_line() {
    // A copy of the launcher and core in a folder with no .venv above it.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("a/b");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["pspace", "pspace-core"] {
        std::fs::copy(repo_root().join("target/release").join(name), bin.join(name)).unwrap();
    }
    let out = Command::new(bin.join("pspace"))
        .arg("doctor")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("PSPACE_LIBTORCH_LIB")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("make setup"), "{err}");
}

#[test]
fn a_wrong_torch_version_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let torch = dir.path().join("torch");
    std::fs::create_dir_all(torch.join("lib")).unwrap();
    std::fs::write(torch.join("lib/libtorch_cpu.so"), b"").unwrap();
    std::fs::write(torch.join("version.py"), "__version__ = '2.5.1+cpu'\n").unwrap();
    let out = Command::new(pspace_bin())
        .arg("doctor")
        .env("PSPACE_LIBTORCH_LIB", torch.join("lib"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("2.5.1") && err.contains("2.11.0") && err.contains("make setup"),
        "{err}"
    );
}

/// A GPU the machine does not have stops `pspace run` before any task, with the reason, instead
/// of failing every task as a crash and retrying it four times (a fresh user's report). cuda:99
/// is missing on a CPU machine and on a GPU one alike.
#[test]
fn a_missing_gpu_stops_the_run_before_any_task() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(pspace_bin())
        .args(["run", "--device", "cuda:99", "--store"])
        .arg(dir.path().join("store"))
        .arg(pspace_tests::tiny_spec())
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("device cuda:99"), "{stderr}");
    assert!(
        !stderr.contains("retry") && !stderr.contains("extract/base"),
        "a task was started: {stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{stderr}");
}

/// Whether this machine has an NVIDIA driver (tests of the no-CUDA messages skip where it has).
fn has_nvidia_driver() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// `run --dry-run` of a spec with `device = "gpu"` printed the plan on a machine without CUDA,
/// and only the real run said CUDA was missing (fresh-user probe). The dry run now stops where
/// the run would, with the reason and how to see the plan here, and prints no plan.
#[test]
fn a_dry_run_of_a_gpu_spec_without_cuda_says_cuda_is_missing() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = pspace_tests::cluster::tiny_spec_with_seeds(dir.path(), &[42]);
    pspace_tests::cluster::rewrite_device_line(&spec, "device = \"gpu\"");
    let out = Command::new(pspace_bin())
        .args(["run", "--dry-run"])
        .arg(&spec)
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "no plan: {stderr}");
    assert!(
        stderr.contains("pspace: error: device cuda:0: CUDA was asked for but"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`--dry-run --device cpu` prints the plan"),
        "{stderr}"
    );
}

/// A wrong `--device` named no flag (`unknown device "GPU"`); clap now checks the value and
/// names `--device`, and every command that takes a device says `gpu` is an alias of `cuda`.
#[test]
fn a_wrong_device_flag_is_named_and_help_mentions_the_gpu_alias() {
    for command in ["run", "worker", "train", "probe"] {
        let out = Command::new(pspace_bin())
            .args([command, "--device", "GPU"])
            .output()
            .expect("run pspace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("invalid value 'GPU' for '--device <DEVICE>'") && stderr.contains("write `gpu`"),
            "{command}: {stderr}"
        );
    }
    for command in ["run", "worker", "train", "probe", "doctor"] {
        let out = Command::new(pspace_bin())
            .args([command, "--help"])
            .output()
            .expect("run pspace");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("cuda (alias gpu)"), "{command} --help: {help}");
    }
}

/// `doctor --device cuda` on a machine without a GPU blamed the library path (libtorch_cuda
/// could not load libcusparse); it now says no driver, so no CUDA device, was found. With
/// --json every failure is a JSON object on stdout (it was the bare stderr line), a wrong
/// device name included, which names `--device`.
#[test]
fn doctor_without_a_gpu_says_so_and_its_json_errors_are_json() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let doctor = |args: &[&str]| {
        let out = Command::new(pspace_bin())
            .arg("doctor")
            .args(args)
            .output()
            .expect("run pspace");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = doctor(&["--device", "cuda"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("this machine has no CUDA device: no NVIDIA driver was found"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("libcusparse") && !stderr.contains("LD_LIBRARY_PATH"),
        "{stderr}"
    );

    let (code, stdout, stderr) = doctor(&["--device", "cuda", "--json"]);
    assert_eq!(code, Some(1), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"));
    assert_eq!(v["device"], "cuda", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no NVIDIA driver was found"),
        "{v}"
    );

    let (code, stdout, stderr) = doctor(&["--device", "GPU", "--json"]);
    assert_eq!(code, Some(1), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"));
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("--device GPU: unknown device") && error.contains("write `gpu`"),
        "{v}"
    );
}

/// PSPACE_ATTENTION is read deep in the engine, where a mistyped value would be taken for the
/// default: the binary refuses it at start-up, saying what it accepts; the accepted values pass.
#[test]
fn a_mistyped_pspace_attention_is_refused_at_start_up() {
    let run = |value: &str| {
        Command::new(pspace_bin())
            .args(["doctor", "--json"])
            .env("PSPACE_ATTENTION", value)
            .output()
            .expect("run pspace")
    };
    let out = run("PADDED");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"PSPACE_ATTENTION: expected "flash" (the default) or "padded", found "PADDED""#),
        "{stderr}"
    );
    for ok in ["padded", "flash", ""] {
        let out = run(ok);
        assert!(
            out.status.success(),
            "{ok:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `--gpus all --device cpu` was accepted silently (fresh-user probe): the two name different
/// devices, so the pair is refused naming both flags, with clap's usage error (exit 2). A
/// worker's `--device` has a default, which does not count as given.
#[test]
fn gpus_and_device_together_are_refused_naming_both() {
    for command in ["run", "worker"] {
        let out = Command::new(pspace_bin())
            .args([command, "--gpus", "all", "--device", "cpu"])
            .output()
            .expect("run pspace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("the argument '--gpus <GPUS>' cannot be used with '--device <DEVICE>'"),
            "{command}: {stderr}"
        );
    }
    // (It then stops for want of a GPU, or of the coordinator within a second.)
    let out = Command::new(pspace_bin())
        .args(["worker", "--gpus", "all", "--give-up-after-s", "1"])
        .args(["--coordinator", "http://127.0.0.1:9"])
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("cannot be used with"), "{stderr}");
}

/// `pspace train --max-steps -1` got clap's raw "unexpected argument '-1' found" (fresh-user
/// probe): a count of steps or epochs below 1 (0 trains nothing) is refused naming the flag
/// and the bound, exit 2, before anything is loaded.
#[test]
fn train_counts_below_one_say_a_whole_number_at_least_one() {
    for (flag, value) in [
        ("--max-steps", "-1"),
        ("--max-steps", "0"),
        ("--max-steps", "two"),
        ("--epochs", "-3"),
    ] {
        let out = Command::new(pspace_bin())
            .args([
                "train",
                "--model",
                "demo",
                "--data",
                "rows.jsonl",
                "--recipe",
                "em",
            ])
            .args(["--out", "never-written", flag, value])
            .output()
            .expect("run pspace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '{flag} <N>': expected a whole number >= 1"
            )),
            "{flag} {value}: {stderr}"
        );
    }
}

/// `--coordinator foo` said the coordinator was unreachable (fresh-user probe): a URL that
/// does not parse is malformed, and the message gives the form expected.
#[test]
fn a_malformed_coordinator_url_says_so_and_the_form_expected() {
    for command in [
        &["status"][..],
        &["health"][..],
        &["worker", "--give-up-after-s", "1"][..],
    ] {
        let out = Command::new(pspace_bin())
            .args(command)
            .args(["--coordinator", "foo"])
            .output()
            .expect("run pspace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("coordinator foo: malformed URL")
                && stderr.contains("expected http://HOST:PORT")
                && !stderr.contains("unreachable"),
            "{command:?}: {stderr}"
        );
    }
}
