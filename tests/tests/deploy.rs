//! The Kubernetes manifests of deploy/: both overlays render with `kubectl kustomize` and pass
//! `kubernetes-validate --strict` for Kubernetes 1.32; and the multi-node overlay, rendered with
//! the Secrets a user would create and the tiny spec in place of the demo's, runs as local
//! processes (pspace_tests::kube: one process per container, commands, args, environment,
//! ConfigMap and Secret values and mounts as the manifests say, Services mapped to loopback
//! addresses) until the coordinator Job completes; the readiness probes pass and the Jaeger
//! stand-in receives the run as one trace. No Kubernetes API server can run here, so this is
//! what stands for `kubectl apply`.

use pspace_tests::kube::{self, pods, Rendered};
use pspace_tests::pki::Pki;
use pspace_tests::{repo_root, tiny_spec};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const OVERLAYS: [&str; 2] = ["single-node", "multi-node"];

#[test]
fn overlays_render_and_validate_strictly_for_kubernetes_1_32() {
    let validate = repo_root().join(".venv/bin/kubernetes-validate");
    assert!(
        validate.exists(),
        "kubernetes-validate is not in .venv: run `make setup`"
    );
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let yaml = kube::kustomize(&repo_root().join("deploy/overlays").join(overlay))
            .unwrap_or_else(|e| panic!("{overlay} does not render: {e}"));
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", "1.32.0"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay} does not validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = Rendered::parse(&yaml);
        let kinds: BTreeSet<&str> = rendered
            .objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .collect();
        for kind in ["Job", "Service", "ConfigMap", "Deployment", "Namespace"] {
            assert!(kinds.contains(kind), "{overlay} has no {kind}: {kinds:?}");
        }
        // Every GPU container asks for GPUs, every container for resources.
        let containers: Vec<&serde_json::Value> = rendered
            .objects
            .iter()
            .flat_map(|o| {
                o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .collect();
        for c in &containers {
            assert!(
                c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object(),
                "{c}"
            );
            if c["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "worker"))
            {
                assert!(
                    c["resources"]["limits"]["nvidia.com/gpu"].is_number(),
                    "worker without a GPU: {c}"
                );
            }
        }
        // The coordinator restarts on failure and resumes, and finishes as a Job.
        let coordinator = rendered
            .named("Job", "pspace-coordinator")
            .expect("the coordinator Job");
        assert_eq!(
            coordinator["spec"]["template"]["spec"]["restartPolicy"],
            "OnFailure"
        );
    }
}

/// The tiny spec as the image holds it: its relative paths made absolute under /opt/pspace.
fn tiny_spec_in_image() -> String {
    std::fs::read_to_string(tiny_spec())
        .unwrap()
        .replace("\"../../", "\"/opt/pspace/")
}

/// An overlay of the multi-node overlay, as a user writes one: the Secrets the base expects,
/// the tiny spec, and two workers.
fn user_overlay(dir: &Path, pki: &Pki) {
    std::fs::write(dir.join("spec.toml"), tiny_spec_in_image()).unwrap();
    for (name, from) in [
        ("tls.crt", &pki.server_cert),
        ("tls.key", &pki.server_key),
        ("ca.crt", &pki.ca),
    ] {
        std::fs::copy(from, dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("token"), &pki.token).unwrap();
    let base = pathdiff(dir, &repo_root().join("deploy/overlays/multi-node"));
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: pspace
resources:
  - {base}
configMapGenerator:
  - name: pspace-spec
    behavior: replace
    files: [spec.toml]
secretGenerator:
  - name: pspace-token
    files: [token]
  - name: pspace-tls
    files: [tls.crt, tls.key, ca.crt]
  - name: pspace-store
    literals:
      - PSPACE_STORE=s3://pspace/runs
      - AWS_ACCESS_KEY_ID=pspace-kube
      - AWS_SECRET_ACCESS_KEY=pspace-kube-secret
      - AWS_REGION=us-east-1
      - AWS_ENDPOINT=http://seaweedfs:8333
      - AWS_ALLOW_HTTP=true
patches:
  - target: {{kind: Job, name: pspace-worker}}
    patch: |-
      - op: replace
        path: /spec/parallelism
        value: 2
      - op: replace
        path: /spec/completions
        value: 2
"#
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
}

/// `to` relative to `from` (both absolute).
fn pathdiff(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().to_string()),
    );
    parts.join("/")
}

#[test]
fn multi_node_manifests_run_the_tiny_spec_as_local_processes() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let overlay = work.path().join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let pki = Pki::write(&work.path().join("pki"), &["pspace-coordinator", "localhost"]);
    user_overlay(&overlay, &pki);
    let yaml = kube::kustomize(&overlay).unwrap_or_else(|e| panic!("the user overlay does not render: {e}"));
    let rendered = Rendered::parse(&yaml);
    let subnet = 20 + (std::process::id() % 200) as u8;
    let pods = pods(&rendered, subnet);
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    eprintln!("deploy: pods {names:?}");
    assert_eq!(
        pods.iter()
            .filter(|p| p.name.starts_with("pspace-worker-"))
            .count(),
        2
    );
    let mut cluster = kube::start(&rendered, &pods, &work.path().join("pods"));
    let coordinator_pod = pods
        .iter()
        .find(|p| p.name.starts_with("pspace-coordinator"))
        .unwrap();
    let container = coordinator_pod.spec["containers"][0].clone();
    if let Err(e) = cluster.wait_ready(coordinator_pod, &container, Duration::from_secs(300)) {
        panic!("{e}\n{}", cluster.logs());
    }
    let ready = started.elapsed();
    let coordinator_id = format!("{}/coordinator", coordinator_pod.name);
    let worker_ids: Vec<String> = cluster
        .procs
        .keys()
        .filter(|k| k.starts_with("pspace-worker-"))
        .cloned()
        .collect();
    let began = Instant::now();
    loop {
        let done = cluster.supervise();
        let all = std::iter::once(&coordinator_id)
            .chain(worker_ids.iter())
            .all(|id| done.get(id) == Some(&0));
        if all {
            break;
        }
        if let Some((id, code)) = done.iter().find(|(_, &c)| c != 0) {
            panic!("{id} failed with {code}:\n{}", cluster.logs());
        }
        assert!(
            began.elapsed() < Duration::from_secs(900),
            "the run did not finish in 15 minutes:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let stdout = cluster.procs[&coordinator_id].stdout();
    assert!(stdout.contains("result: s3://pspace/runs/"), "{stdout}");

    // Jaeger's stand-in received the run: one trace, spans from the coordinator and workers.
    let spans = cluster.traces.as_ref().expect("the Jaeger stand-in").all();
    let traces: BTreeSet<&Vec<u8>> = spans.iter().map(|r| &r.span.trace_id).collect();
    assert!(
        spans.iter().any(|r| r.span.name == "run"),
        "no run span reached Jaeger"
    );
    assert_eq!(
        traces.len(),
        1,
        "{} spans in {} traces",
        spans.len(),
        traces.len()
    );
    let logs = cluster.logs();
    assert!(!logs.contains(&pki.token), "the token was printed");
    eprintln!(
        "deploy: multi-node ran as {} processes: coordinator ready in {:.1}s, run done in {:.1}s, {} spans in one trace",
        cluster.procs.len(),
        ready.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        spans.len()
    );
}
