//! deploy/compose.yaml with real containers, built here without a registry: the CPU image of
//! deploy/Dockerfile on a base made from this machine's libraries (deploy/image/rootfs.sh and
//! `docker import`), a SeaweedFS image from the venv's static `weed` (standing in for
//! chrislusf/seaweedfs, which cannot be pulled here), secrets from deploy/image/secrets.sh.
//! SeaweedFS, the coordinator and three workers run as containers on the project's network,
//! each with its own address. During the tiny spec (tests/data/tiny_long_eval.toml: its marker
//! eval lasts seconds, so a cut lands inside it) one worker container is killed, one is cut
//! off the network past its lease and reconnected (its late result is refused and nothing of
//! its attempt is committed), and the coordinator container is restarted (SIGTERM: it exits
//! 143, Docker starts it again, it resumes from the store). result.json is byte-identical to
//! `pspace run`'s on the same spec, and no container printed the token.

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use pspace_tests::cluster::{free_port, result_paths, run_embedded};
use pspace_tests::{pspace_bin, repo_root};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

// Long enough that a cancelled tiny task stops within the grace (one lease) under load, so the
// cut-off worker reports late instead of exiting first.
const LEASE_MS: u64 = 6000;

/// The workers that may be cut off: worker-0 is killed first (`docker kill` is a manual stop,
/// which Docker does not restart), and its lease stays "leased" in the status until it expires.
const WORKERS: &[&str] = &["worker-1", "worker-2"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever this machine has.
fn compose_program() -> Vec<String> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// Takes the project down and the images away, whatever happened.
struct Cleanup {
    compose: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo_root().join("deploy/compose.yaml"))
            .args(["down", "-v", "-t", "2"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let _ = c.output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

struct Project<'a> {
    compose: &'a [String],
    name: &'a str,
    env: &'a [(String, String)],
}

impl Project<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", self.name, "-f"])
            .arg(repo_root().join("deploy/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn container(&self, service: &str) -> String {
        run(&mut self.cmd(&["ps", "-q", service]))
    }
}

/// Status and exit code of a container.
fn state(id: &str) -> (String, i64) {
    let s = docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", id]);
    let (status, code) = s.split_once(' ').unwrap_or((&s, "0"));
    (status.to_string(), code.parse().unwrap_or(-1))
}

fn logs(id: &str) -> String {
    let out = Command::new("docker").args(["logs", id]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn build_images(dir: &Path, tag: &str) -> Vec<String> {
    let t0 = Instant::now();
    let root = repo_root();
    let rootfs = dir.join("rootfs");
    run(Command::new(root.join("deploy/image/rootfs.sh")).arg(&rootfs));
    let base = format!("pspace-rootfs:{tag}");
    run(Command::new("bash").arg("-c").arg(format!(
        "tar -C '{}' -c . | docker import - {base} > /dev/null",
        rootfs.display()
    )));
    let context = dir.join("context");
    run(Command::new(root.join("deploy/image/context.sh"))
        .arg("cpu")
        .arg(&context));
    let image = format!("pspace-ci:{tag}");
    run(Command::new("docker")
        .args(["build", "-q", "-f"])
        .arg(root.join("deploy/Dockerfile"))
        .args(["--build-arg", &format!("BASE={base}"), "-t", &image])
        .arg(&context));
    // SeaweedFS: the venv's static binary in an image of its own.
    let weed_dir = dir.join("weed");
    std::fs::create_dir_all(weed_dir.join("tmp")).unwrap();
    std::fs::copy(pspace_tests::seaweedfs::weed_bin(), weed_dir.join("weed")).unwrap();
    std::fs::write(
        weed_dir.join("Dockerfile"),
        "FROM scratch\nCOPY weed /usr/bin/weed\nCOPY tmp /tmp\nENTRYPOINT [\"/usr/bin/weed\"]\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("1777").arg(weed_dir.join("tmp")));
    let weed = format!("pspace-weed-ci:{tag}");
    run(Command::new("docker")
        .args(["build", "-q", "-t", &weed])
        .arg(&weed_dir));
    let size = docker(&["image", "inspect", "-f", "{{.Size}}", &image]);
    eprintln!(
        "containers: images built in {:.1}s (pspace {} MB)",
        t0.elapsed().as_secs_f64(),
        size.parse::<u64>().unwrap_or(0) / 1_000_000
    );
    vec![image, weed, base]
}

fn status_json(port: u16, secrets: &Path) -> Option<serde_json::Value> {
    let out = Command::new(pspace_bin())
        .args([
            "status",
            "--json",
            "--coordinator",
            &format!("https://localhost:{port}"),
        ])
        .arg("--ca")
        .arg(secrets.join("ca.crt"))
        .arg("--token-file")
        .arg(secrets.join("token"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())?
}

fn committed(status: &serde_json::Value) -> usize {
    status["snapshot"]["tasks"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["state"] == "committed").count())
        .unwrap_or(0)
}

/// (worker service, task, lease id) of a marker_eval lease held by one of `services`: the
/// spec's longest tasks, so a cut lands before the task ends.
fn lease_held(status: &serde_json::Value, services: &[&str]) -> Option<(String, String, String)> {
    status["snapshot"]["tasks"].as_array()?.iter().find_map(|t| {
        if !t["task"].as_str()?.contains("/marker_eval/") {
            return None;
        }
        let worker = t["worker"].as_str()?;
        let service = services.iter().find(|s| worker.starts_with(&format!("{s}/")))?;
        (t["state"] == "leased").then(|| {
            (
                service.to_string(),
                t["task"].as_str().unwrap_or_default().to_string(),
                t["lease"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

#[test]
fn compose_survives_a_killed_a_cut_off_and_a_restarted_container() {
    let started = Instant::now();
    let info = Command::new("docker")
        .args(["info", "-f", "{{.ServerVersion}}"])
        .output();
    assert!(
        info.is_ok_and(|o| o.status.success()),
        "this test needs a Docker engine (docker info failed)"
    );
    let work = tempfile::tempdir().unwrap();
    let tag = format!("t{}", std::process::id());
    let images = build_images(work.path(), &tag);
    let built = started.elapsed();

    // The reference: `pspace run` on the same spec, on this machine.
    let spec = repo_root().join("tests/data/tiny_long_eval.toml");
    let (stdout, _) = run_embedded(&spec, work.path().join("embedded").to_str().unwrap(), &[]);
    let expected = std::fs::read(&result_paths(&stdout)[0]).unwrap();

    let secrets = work.path().join("secrets");
    run(Command::new(repo_root().join("deploy/image/secrets.sh")).arg(&secrets));
    let token = std::fs::read_to_string(secrets.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let keys = std::fs::read_to_string(secrets.join("env")).unwrap();
    let key = |name: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    let (coordinator_port, s3_port) = (free_port(), free_port());
    let env: Vec<(String, String)> = [
        ("PSPACE_IMAGE", images[0].clone()),
        ("SEAWEEDFS_IMAGE", images[1].clone()),
        ("PSPACE_SPEC", "/opt/pspace/tests/data/tiny_long_eval.toml".into()),
        ("PSPACE_SECRETS", secrets.display().to_string()),
        ("PSPACE_S3_ACCESS_KEY", key("PSPACE_S3_ACCESS_KEY")),
        ("PSPACE_S3_SECRET_KEY", key("PSPACE_S3_SECRET_KEY")),
        ("PSPACE_LEASE_MS", LEASE_MS.to_string()),
        ("PSPACE_HEARTBEAT_MS", "1000".into()),
        ("PSPACE_COORDINATOR_PORT", coordinator_port.to_string()),
        ("PSPACE_S3_PORT", s3_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let compose = compose_program();
    let name = format!("pspacect{}", std::process::id());
    let _cleanup = Cleanup {
        compose: compose.clone(),
        project: name.clone(),
        env: env.clone(),
        images: images.clone(),
    };
    let project = Project {
        compose: &compose,
        name: &name,
        env: &env,
    };
    run(&mut project.cmd(&["up", "-d"]));
    let all_logs = || {
        let mut text = String::new();
        for s in ["seaweedfs", "coordinator", "worker-0", "worker-1", "worker-2"] {
            let id = project.container(s);
            text.push_str(&format!("==== {s}\n{}\n", logs(&id)));
        }
        text
    };
    let coordinator = project.container("coordinator");
    let deadline = Instant::now() + Duration::from_secs(900);
    // The coordinator's status once `want` holds it; None once the coordinator container has
    // exited for good (the run is over, or it failed): nothing will answer any more, so the
    // caller says what it was waiting for instead of polling until the deadline.
    let wait_status = |want: &dyn Fn(&serde_json::Value) -> bool| -> Option<serde_json::Value> {
        loop {
            assert!(Instant::now() < deadline, "timed out:\n{}", all_logs());
            match status_json(coordinator_port, &secrets) {
                Some(s) if want(&s) => return Some(s),
                Some(_) => {}
                // "exited" is final: a restart on failure shows "restarting" meanwhile.
                None if state(&coordinator).0 == "exited" => return None,
                None => {}
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let exited = || {
        let (status, code) = state(&coordinator);
        format!("the coordinator container is {status} (exit code {code})")
    };

    // 1. Once a task is committed, kill worker-0's container.
    if wait_status(&|s| committed(s) >= 1).is_none() {
        panic!("{} before a task was committed:\n{}", exited(), all_logs());
    }
    let worker0 = project.container("worker-0");
    let kill = Command::new("docker").args(["kill", &worker0]).output().unwrap();
    assert!(
        kill.status.success(),
        "cannot kill worker-0 ({:?}; {}): {}\n{}",
        state(&worker0),
        exited(),
        String::from_utf8_lossy(&kill.stderr).trim(),
        all_logs()
    );
    eprintln!(
        "containers: killed worker-0 at {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 2. Cut a worker that holds a lease off the network past its lease, then reconnect it:
    //    its late result is refused.
    let mut cut_off = None;
    for _ in 0..5 {
        let Some(s) = wait_status(&|s| lease_held(s, WORKERS).is_some() || s["snapshot"]["finished"] == true)
        else {
            break;
        };
        let Some((service, task, lease)) = lease_held(&s, WORKERS) else {
            break;
        };
        let id = project.container(&service);
        let network = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
            &id,
        ]);
        // The worker's line for a refused completion (not, say, a "connection refused").
        let refused = format!("completion of {task} refused");
        let before = logs(&id).matches(&refused).count();
        docker(&["network", "disconnect", &network, &id]);
        std::thread::sleep(Duration::from_millis(2 * LEASE_MS + 1000));
        docker(&["network", "connect", &network, &id]);
        // The cancelled task stops at its next check (a generation under load can take a
        // while), then its report, retried across the reconnection, is refused.
        let t = Instant::now();
        let gave_up = format!("cannot report {task}");
        while t.elapsed() < Duration::from_secs(60)
            && logs(&id).matches(&refused).count() == before
            && !logs(&id).contains(&gave_up)
        {
            std::thread::sleep(Duration::from_millis(250));
        }
        if logs(&id).matches(&refused).count() > before {
            eprintln!(
                "containers: {service} cut off for {} ms while holding {task}; its late result was refused",
                2 * LEASE_MS + 1000
            );
            cut_off = Some((service, task, lease));
            break;
        }
        let log = logs(&id);
        let tail: Vec<&str> = log.lines().rev().take(6).collect();
        eprintln!(
            "containers: no refusal from {service} for {task}; trying again. Its last lines:\n  {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        );
    }
    let Some((cut_service, cut_task, cut_lease)) = cut_off else {
        panic!(
            "no cut-off worker's late result was refused ({}):\n{}",
            exited(),
            all_logs()
        );
    };

    // 3. Restart the coordinator container (SIGTERM, exit 143, started again, resumes). When
    //    the run has finished meanwhile, the restart finds every task committed.
    let s = wait_status(&|_| true);
    let finished_before = s.as_ref().is_none_or(|s| s["snapshot"]["finished"] == true);
    docker(&["restart", "-t", "15", &coordinator]);
    eprintln!(
        "containers: restarted the coordinator at {:.1}s ({})",
        started.elapsed().as_secs_f64(),
        s.as_ref()
            .map_or("after the run finished".to_string(), |s| format!(
                "{} tasks committed",
                committed(s)
            ))
    );

    // The run ends: the coordinator container exits 0 and stays down.
    loop {
        assert!(
            Instant::now() < deadline,
            "the run did not finish:\n{}",
            all_logs()
        );
        let (status, code) = state(&coordinator);
        if status == "exited" && code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let coordinator_log = logs(&coordinator);
    assert!(
        coordinator_log.contains("stopped by SIGTERM") || finished_before,
        "the coordinator did not stop on SIGTERM:\n{coordinator_log}"
    );
    assert!(
        coordinator_log.matches("listening on").count() >= 2,
        "the coordinator did not start again:\n{coordinator_log}"
    );
    let result = result_paths(&coordinator_log);
    let result = result.last().expect("a result line");

    // result.json, read from SeaweedFS through its published port, is `pspace run`'s.
    let s3 = AmazonS3Builder::new()
        .with_bucket_name("pspace")
        .with_region("us-east-1")
        .with_endpoint(format!("http://127.0.0.1:{s3_port}"))
        .with_allow_http(true)
        .with_access_key_id(key("PSPACE_S3_ACCESS_KEY"))
        .with_secret_access_key(key("PSPACE_S3_SECRET_KEY"))
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let object = result
        .strip_prefix("s3://pspace/")
        .expect("an s3://pspace/ result");
    let got = runtime.block_on(async {
        s3.get(&object_store::path::Path::from(object))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    });
    assert_eq!(got, expected, "result.json differs from pspace run's");

    // Nothing of the cut-off attempt is committed.
    let parts: Vec<&str> = cut_lease.rsplitn(3, ':').collect();
    let prefix = format!("a{}-{}", parts[1], &parts[0][parts[0].len().saturating_sub(8)..]);
    let manifests: Vec<serde_json::Value> = runtime.block_on(async {
        use futures::TryStreamExt;
        let listed: Vec<_> = s3
            .list(Some(&object_store::path::Path::from("runs")))
            .try_collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for m in listed
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with("/manifest.json"))
        {
            let bytes = s3.get(&m.location).await.unwrap().bytes().await.unwrap();
            out.push(serde_json::from_slice(&bytes).unwrap());
        }
        out
    });
    assert!(manifests.len() >= 16, "{} manifests", manifests.len());
    assert!(
        !manifests.iter().any(|m| m["attempt"] == prefix.as_str()),
        "{cut_service}'s refused attempt {prefix} of {cut_task} was committed"
    );

    let text = all_logs();
    assert!(!text.contains(&token), "the token was printed by a container");
    eprintln!(
        "containers: images {:.1}s, whole test {:.1}s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
