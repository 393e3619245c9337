//! Real processes for the distributed tests: a `pspace coordinator` on a loopback port and
//! `pspace worker` processes against it, with their stderr captured, and the signals a test uses
//! to lose a pod (SIGKILL), stall one past its lease (SIGSTOP, then SIGCONT) or restart the
//! coordinator. Specs are written into a temporary folder with the tiny spec's relative paths
//! made absolute, so a test can change a value (seeds) without touching the repository.

use crate::{pspace_bin, repo_root, tiny_spec};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lease timing the tests run with: heartbeats every 200 ms, leases of 1.5 s.
pub const TEST_TIMING: [(&str, &str); 2] = [("PSPACE_HEARTBEAT_MS", "200"), ("PSPACE_LEASE_MS", "1500")];

/// The tiny spec with `seeds` instead of its own, written to `dir/tiny.toml`.
pub fn tiny_spec_with_seeds(dir: &Path, seeds: &[u64]) -> PathBuf {
    spec_with_seeds(&tiny_spec(), dir, seeds)
}

/// Replaces the written tiny spec's `device = "cpu"` line with `lines` (one or more lines, e.g.
/// `device = "gpu"`, or `device = "cpu"\ndtype = "auto"`) and returns the new text.
pub fn rewrite_device_line(spec: &Path, lines: &str) -> String {
    let text = std::fs::read_to_string(spec).expect("read the written spec");
    let line = "\ndevice = \"cpu\"\n";
    assert!(text.contains(line), "the tiny spec's device line moved");
    let text = text.replace(line, &format!("\n{lines}\n"));
    std::fs::write(spec, &text).expect("write the spec");
    text
}

/// tests/data/tiny_long_eval.toml (the tiny spec whose two marker_eval tasks take seconds) with
/// `seeds`, written to `dir/tiny.toml`: for tests that must stop a worker inside a task, where
/// the tiny spec's sub-second tasks often end first.
pub fn tiny_long_eval_spec_with_seeds(dir: &Path, seeds: &[u64]) -> PathBuf {
    spec_with_seeds(&repo_root().join("tests/data/tiny_long_eval.toml"), dir, seeds)
}

/// The tiny spec with `seeds` and an analysis of 10 times its permutations (several seconds
/// rather than a fraction of one), written to `dir/tiny.toml`: for tests that must catch a worker
/// holding the run's last task, `analyse/all`.
pub fn tiny_long_analysis_spec_with_seeds(dir: &Path, seeds: &[u64]) -> PathBuf {
    let path = spec_with_seeds(&tiny_spec(), dir, seeds);
    let text = std::fs::read_to_string(&path).expect("read the written spec");
    let (from, to) = ("permutations = 2000\n", "permutations = 20000\n");
    assert!(text.contains(from), "the tiny spec's permutations line moved");
    std::fs::write(&path, text.replace(from, to)).expect("write the spec");
    path
}

/// `base` (a spec in tests/data with `seeds = [42]`) with `seeds` and absolute data paths,
/// written to `dir/tiny.toml`.
fn spec_with_seeds(base: &Path, dir: &Path, seeds: &[u64]) -> PathBuf {
    let text = std::fs::read_to_string(base).expect("read the tiny spec");
    let root = repo_root().display().to_string();
    let seeds = seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let text = text
        .replace("\"../../", &format!("\"{root}/"))
        .replace("seeds = [42]", &format!("seeds = [{seeds}]"));
    assert!(
        text.contains(&format!("seeds = [{seeds}]")),
        "the tiny spec's seeds line moved"
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).expect("write the spec");
    path
}

/// A free loopback port (taken back by the OS for the caller to bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process whose stderr lines are collected as they come.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                lines.clone(),
            ),
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                stdout.clone(),
            ),
        ] {
            if let Some(pipe) = pipe {
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        sink.lock().unwrap().push(line);
                    }
                });
            }
        }
        Proc {
            name: name.to_string(),
            child,
            lines,
            stdout,
        }
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a pid this test started; no memory is shared.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `limit` for the process to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until a stderr line contains `needle` (or `limit` passes); returns the line.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if self.try_wait().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pspace coordinator SPEC --store STORE --listen 127.0.0.1:PORT` with test timing and `env`;
/// waits until it listens.
pub fn coordinator(spec: &Path, store: &str, port: u16, env: &[(String, String)]) -> Proc {
    coordinator_with(spec, store, &format!("127.0.0.1:{port}"), &[], env)
}

/// `pspace coordinator SPEC --store STORE --listen LISTEN ARGS...` with test timing and `env`;
/// waits until it listens.
pub fn coordinator_with(
    spec: &Path,
    store: &str,
    listen: &str,
    args: &[String],
    env: &[(String, String)],
) -> Proc {
    let mut c = Command::new(pspace_bin());
    c.arg("coordinator")
        .arg(spec)
        .args(["--store", store, "--listen", listen])
        .args(args)
        .envs(TEST_TIMING)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut p = Proc::spawn("coordinator", c);
    if p.wait_line("coordinator: listening on", Duration::from_secs(120))
        .is_none()
    {
        panic!("the coordinator did not start listening:\n{}", p.stderr());
    }
    p
}

/// `pspace worker --coordinator http://127.0.0.1:PORT --name NAME` with `env`.
pub fn worker(name: &str, port: u16, env: &[(String, String)]) -> Proc {
    worker_at(name, &format!("http://127.0.0.1:{port}"), &[], env)
}

/// `pspace worker --coordinator ENDPOINT --name NAME ARGS...` with `env`.
pub fn worker_at(name: &str, endpoint: &str, args: &[String], env: &[(String, String)]) -> Proc {
    let mut c = Command::new(pspace_bin());
    c.arg("worker")
        .args(["--coordinator", endpoint, "--name", name])
        .args(["--give-up-after-s", "120"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Proc::spawn(name, c)
}

/// `pspace status --json` of the plaintext coordinator on loopback port `port` (None while it
/// is down or not answering).
pub fn status_json(port: u16) -> Option<serde_json::Value> {
    let out = Command::new(pspace_bin())
        .args([
            "status",
            "--json",
            "--coordinator",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// (task, lease id) leased to the worker process named `name` (its slots are `name/<device>`),
/// from a status.
pub fn lease_of(status: &serde_json::Value, name: &str) -> Option<(String, String)> {
    status["snapshot"]["tasks"].as_array()?.iter().find_map(|t| {
        let leased = t["state"] == "leased" && t["worker"].as_str()?.starts_with(&format!("{name}/"));
        leased.then(|| {
            (
                t["task"].as_str().unwrap_or_default().to_string(),
                t["lease"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// `pspace status --json SPEC --store STORE` (the store's view, one row per task: task,
/// state, attempts, failures); panics with its stderr when it fails.
pub fn store_status_rows(spec: &Path, store: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(pspace_bin())
        .args(["status", "--json"])
        .arg(spec)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run pspace status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// How many tasks a status shows committed.
pub fn committed_count(status: &serde_json::Value) -> usize {
    status["snapshot"]["tasks"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["state"] == "committed").count())
        .unwrap_or(0)
}

/// `pspace run SPEC --store STORE` to the end; panics with its stderr when it fails. Returns
/// stdout (the report/result lines) and stderr.
pub fn run_embedded(spec: &Path, store: &str, env: &[(String, String)]) -> (String, String) {
    let out = Command::new(pspace_bin())
        .arg("run")
        .arg(spec)
        .args(["--store", store])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run pspace");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "pspace run failed:\n{stderr}");
    (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

/// The paths after `result: ` in a run's stdout, in order.
pub fn result_paths(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("result: "))
        .map(str::to_string)
        .collect()
}

/// Edits the spec file in place: the first (or, with `last`, the last) occurrence of `from`
/// becomes `to`. Panics naming `from` when the spec no longer holds it (a test fixture moved).
pub fn edit_spec(spec: &Path, from: &str, to: &str, last: bool) {
    let text = std::fs::read_to_string(spec).unwrap();
    let at = if last { text.rfind(from) } else { text.find(from) };
    let at = at.unwrap_or_else(|| panic!("the tiny spec no longer holds {from:?}"));
    let edited = format!("{}{to}{}", &text[..at], &text[at + from.len()..]);
    std::fs::write(spec, edited).unwrap();
}

/// Every manifest.json under a local store folder: task folder (relative) -> manifest.
pub fn manifests(store: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "manifest.json") {
                let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let task = path.parent().unwrap().strip_prefix(store).unwrap();
                found.insert(task.display().to_string(), m);
            }
        }
    }
    found
}

/// Checks every output of every manifest under a local store hashes to its recorded sha256;
/// returns how many outputs were checked.
pub fn verify_all(store: &Path) -> usize {
    use sha2::{Digest, Sha256};
    let mut checked = 0;
    for (dir, m) in manifests(store) {
        let attempt = m["attempt"].as_str().unwrap_or_default();
        for (name, want) in m["outputs"].as_object().unwrap() {
            let path = store.join(&dir).join(attempt).join(name);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let found = hex(&Sha256::digest(&bytes));
            assert_eq!(
                found,
                want.as_str().unwrap(),
                "{} does not hash to its manifest",
                path.display()
            );
            checked += 1;
        }
    }
    checked
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
