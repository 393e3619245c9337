//! Runs what rendered Kubernetes manifests describe as local processes, because no Kubernetes
//! API server can run on these machines: every pod of every Job, Deployment and StatefulSet
//! becomes one process per container, started with the container's command and args, its
//! environment (values, ConfigMap and Secret keys, `envFrom`, the downward API) and its volumes
//! (ConfigMaps, Secrets with their `items`, emptyDirs and claims become folders), `$(VAR)`
//! expanded as the kubelet does. So a wrong flag, port, path, key or variable name in the
//! manifests fails a test.
//!
//! What stands in for the cluster, and nothing else:
//! - each pod gets its own loopback address (127.R.0.N): `0.0.0.0`, `localhost` and `127.0.0.1`
//!   in its containers become that address, `status.podIP` is it, and a Service's name in a URL
//!   (`//NAME:`) becomes the address of the pod it selects;
//! - images become binaries: `pspace` is the release build, `weed` the venv's SeaweedFS, and
//!   Jaeger all-in-one is replaced by an OTLP receiver in the test on the Jaeger pod's address;
//! - the image's layout maps to the checkout (`/opt/pspace` is the repository root, in args,
//!   environment and mounted ConfigMap files), mounts to folders, and `--device cuda` to
//!   `--device cpu` (no GPU here);
//! - readiness probes are checked (tcpSocket: a connection; grpc: `pspace health` on the port);
//! - `restartPolicy: OnFailure` restarts a container that exits non-zero (up to 20 times).

use crate::cluster::Proc;
use crate::otlp::{start_collector_on, Spans};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The rendered objects, as JSON values.
pub struct Rendered {
    pub objects: Vec<Value>,
}

/// `kubectl kustomize DIR` to YAML text.
pub fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run kubectl (needed to render deploy/): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl Rendered {
    /// Parses multi-document YAML (with the venv's PyYAML, which kubernetes-validate brings).
    pub fn parse(yaml: &str) -> Rendered {
        let python = crate::repo_root().join(".venv/bin/python");
        let mut child = Command::new(python)
            .args([
                "-c",
                "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the venv's python (make setup)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "YAML did not parse");
        Rendered {
            objects: serde_json::from_slice(&out.stdout).expect("JSON from PyYAML"),
        }
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The decoded keys of a Secret (`data` base64, `stringData` plain) or a ConfigMap.
    pub fn keys(&self, kind: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let Some(o) = self.named(kind, name) else {
            panic!("no {kind} {name} in the rendered manifests");
        };
        let mut out = BTreeMap::new();
        for (field, encoded) in [("data", kind == "Secret"), ("stringData", false)] {
            if let Some(map) = o[field].as_object() {
                for (k, v) in map {
                    let text = v.as_str().unwrap_or_default();
                    let bytes = if encoded {
                        base64_decode(text)
                    } else {
                        text.as_bytes().to_vec()
                    };
                    out.insert(k.clone(), bytes);
                }
            }
        }
        out
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// One pod to run: its name, address, labels and spec.
#[derive(Clone)]
pub struct Pod {
    pub name: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Value,
    /// The workload's env additions (JOB_COMPLETION_INDEX for Indexed Jobs).
    pub extra_env: Vec<(String, String)>,
}

/// The pods of every workload: Jobs (`parallelism`, Indexed: one per index), Deployments and
/// StatefulSets (`replicas`), each with its own loopback address.
pub fn pods(rendered: &Rendered, subnet: u8) -> Vec<Pod> {
    let mut pods = Vec::new();
    for o in &rendered.objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let count = match kind {
            "Job" => o["spec"]["parallelism"].as_u64().unwrap_or(1),
            "Deployment" | "StatefulSet" => o["spec"]["replicas"].as_u64().unwrap_or(1),
            _ => continue,
        };
        let template = &o["spec"]["template"];
        let labels: BTreeMap<String, String> = template["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let indexed = o["spec"]["completionMode"] == "Indexed";
        for i in 0..count {
            let pod_name = match kind {
                "StatefulSet" => format!("{name}-{i}"),
                "Job" if indexed => format!("{name}-{i}-x{i}"),
                _ => format!("{name}-{i}-x"),
            };
            let mut spec = template["spec"].clone();
            // A StatefulSet's claims are volumes of its pods.
            if let Some(claims) = o["spec"]["volumeClaimTemplates"].as_array() {
                let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
                let mut volumes = volumes;
                for c in claims {
                    volumes.push(serde_json::json!({"name": c["metadata"]["name"], "emptyDir": {}}));
                }
                spec["volumes"] = Value::Array(volumes);
            }
            let extra_env = if indexed {
                vec![("JOB_COMPLETION_INDEX".to_string(), i.to_string())]
            } else {
                Vec::new()
            };
            pods.push(Pod {
                name: pod_name,
                ip: format!("127.{subnet}.0.{}", pods.len() + 2),
                labels: labels.clone(),
                spec,
                extra_env,
            });
        }
    }
    pods
}

/// Service name -> address of the first pod its selector matches.
pub fn service_addresses(rendered: &Rendered, pods: &[Pod]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in rendered.of_kind("Service") {
        let name = s["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let selector = s["spec"]["selector"].as_object().cloned().unwrap_or_default();
        let pod = pods.iter().find(|p| {
            selector
                .iter()
                .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
        });
        match pod {
            Some(p) => {
                out.insert(name, p.ip.clone());
            }
            None => panic!("Service {name} selects no pod"),
        }
    }
    out
}

/// `$(VAR)` expanded from `env` (unknown references stay, as the kubelet leaves them).
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                let var = &after[..end];
                match env.iter().rev().find(|(k, _)| k == var) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// What the run of a set of manifests left.
pub struct Cluster {
    pub procs: BTreeMap<String, Proc>,
    pub services: BTreeMap<String, String>,
    /// What the Jaeger stand-in received.
    pub traces: Option<Spans>,
    pub dir: PathBuf,
    specs: BTreeMap<String, (Command, u32)>,
}

/// Sets up and starts every container of `pods` (see the module doc); `dir` holds their folders.
pub fn start(rendered: &Rendered, pods: &[Pod], dir: &Path) -> Cluster {
    let services = service_addresses(rendered, pods);
    let repo = crate::repo_root();
    let mut cluster = Cluster {
        procs: BTreeMap::new(),
        services: services.clone(),
        traces: None,
        dir: dir.to_path_buf(),
        specs: BTreeMap::new(),
    };
    for pod in pods {
        let pod_dir = dir.join(&pod.name);
        // Volumes -> folders.
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in pod.spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            let folder = pod_dir.join("volumes").join(&vname);
            std::fs::create_dir_all(&folder).unwrap();
            let source = if let Some(cm) = v["configMap"].as_object() {
                Some((
                    "ConfigMap",
                    cm["name"].as_str().unwrap_or_default(),
                    &v["configMap"]["items"],
                ))
            } else if let Some(s) = v["secret"].as_object() {
                Some((
                    "Secret",
                    s["secretName"].as_str().unwrap_or_default(),
                    &v["secret"]["items"],
                ))
            } else if v["emptyDir"].is_object() {
                None
            } else {
                panic!(
                    "pod {}: volume {vname} is of a kind this runner does not know: {v}",
                    pod.name
                )
            };
            if let Some((kind, name, items)) = source {
                let keys = rendered.keys(kind, name);
                let wanted: Vec<(String, String)> = match items.as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            let key = i["key"].as_str().unwrap_or_default().to_string();
                            assert!(keys.contains_key(&key), "{kind} {name} has no key {key}");
                            (key, i["path"].as_str().unwrap_or_default().to_string())
                        })
                        .collect(),
                    None => keys.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in wanted {
                    // The image's layout in a mounted file (a spec's paths) maps like args do.
                    let bytes = match (kind, String::from_utf8(keys[&key].clone())) {
                        ("ConfigMap", Ok(text)) => text
                            .replace("/opt/pspace", &repo.display().to_string())
                            .into_bytes(),
                        _ => keys[&key].clone(),
                    };
                    std::fs::write(folder.join(path), bytes).unwrap();
                }
            }
            volumes.insert(vname, folder);
        }
        for c in pod.spec["containers"].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or_default();
            let image = c["image"].as_str().unwrap_or_default();
            let id = format!("{}/{cname}", pod.name);
            if image.contains("jaeger") {
                // The Jaeger stand-in: an OTLP/HTTP receiver on the pod's address and port.
                let port = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == "otlp-http")
                    .and_then(|p| p["containerPort"].as_u64())
                    .expect("Jaeger's otlp-http port") as u16;
                let (_, spans) = start_collector_on(&pod.ip, port);
                cluster.traces = Some(spans);
                continue;
            }
            // Mounts, longest path first, so a nested mount wins.
            let mut mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let volume = m["name"].as_str().unwrap_or_default();
                    let folder = volumes
                        .get(volume)
                        .unwrap_or_else(|| panic!("{id}: no volume {volume}"))
                        .clone();
                    (m["mountPath"].as_str().unwrap_or_default().to_string(), folder)
                })
                .collect();
            mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            let map = |text: &str| -> String {
                let mut t = text.to_string();
                for (path, folder) in &mounts {
                    t = t.replace(path.as_str(), &folder.display().to_string());
                }
                t = t.replace("/opt/pspace", &repo.display().to_string());
                t = t.replace("0.0.0.0", &pod.ip).replace("localhost", &pod.ip);
                t = t.replace("127.0.0.1", &pod.ip);
                for (svc, ip) in &services {
                    t = t.replace(&format!("//{svc}:"), &format!("//{ip}:"));
                }
                t
            };
            // Environment, in order: envFrom, then env (later wins), then $(VAR) expansion.
            let mut env: Vec<(String, String)> = pod.extra_env.clone();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                let (kind, name) = if from["secretRef"].is_object() {
                    ("Secret", from["secretRef"]["name"].as_str().unwrap_or_default())
                } else {
                    (
                        "ConfigMap",
                        from["configMapRef"]["name"].as_str().unwrap_or_default(),
                    )
                };
                for (k, v) in rendered.keys(kind, name) {
                    env.push((k, String::from_utf8_lossy(&v).to_string()));
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default().to_string();
                let value = if let Some(v) = e["value"].as_str() {
                    expand(v, &env)
                } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    match field {
                        "metadata.name" => pod.name.clone(),
                        "status.podIP" => pod.ip.clone(),
                        "metadata.namespace" => "pspace".into(),
                        other => panic!("{id}: fieldRef {other} is not emulated"),
                    }
                } else if e["valueFrom"]["secretKeyRef"].is_object()
                    || e["valueFrom"]["configMapKeyRef"].is_object()
                {
                    let (kind, r) = if e["valueFrom"]["secretKeyRef"].is_object() {
                        ("Secret", &e["valueFrom"]["secretKeyRef"])
                    } else {
                        ("ConfigMap", &e["valueFrom"]["configMapKeyRef"])
                    };
                    let keys = rendered.keys(kind, r["name"].as_str().unwrap_or_default());
                    let key = r["key"].as_str().unwrap_or_default();
                    String::from_utf8_lossy(
                        keys.get(key)
                            .unwrap_or_else(|| panic!("{id}: {kind} has no key {key}")),
                    )
                    .to_string()
                } else {
                    panic!("{id}: env {name} has a source this runner does not know: {e}")
                };
                env.push((name, value));
            }
            let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), map(v))).collect();
            let command: Vec<String> = c["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: no command (the image's entrypoint is not emulated)"))
                .iter()
                .map(|s| map(&expand(s.as_str().unwrap_or_default(), &env)))
                .collect();
            let mut args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| map(&expand(s.as_str().unwrap_or_default(), &env)))
                .collect();
            for i in 1..args.len() {
                if args[i - 1] == "--device" && args[i].starts_with("cuda") {
                    args[i] = "cpu".into();
                }
            }
            let program = match command[0].rsplit('/').next().unwrap_or_default() {
                "pspace" => crate::pspace_bin(),
                "weed" => crate::seaweedfs::weed_bin(),
                other => panic!("{id}: no local binary for command {other}"),
            };
            let workdir = pod_dir.join(format!("{cname}-cwd"));
            std::fs::create_dir_all(&workdir).unwrap();
            let mut cmd = Command::new(program);
            cmd.args(&command[1..])
                .args(&args)
                .current_dir(&workdir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &workdir)
                .env("TMPDIR", &workdir)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let restarts = if pod.spec["restartPolicy"] == "Never" {
                0
            } else {
                20
            };
            let proc = Proc::spawn(&id, clone_command(&cmd));
            cluster.procs.insert(id.clone(), proc);
            cluster.specs.insert(id, (cmd, restarts));
        }
    }
    cluster
}

fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

impl Cluster {
    /// Restarts containers that exited non-zero (restartPolicy OnFailure / Always), and returns
    /// the exit status of each container that exited 0, by id.
    pub fn supervise(&mut self) -> BTreeMap<String, i32> {
        let mut done = BTreeMap::new();
        let ids: Vec<String> = self.procs.keys().cloned().collect();
        for id in ids {
            let status = self.procs.get_mut(&id).and_then(|p| p.try_wait());
            let Some(status) = status else { continue };
            let code = status.code().unwrap_or(-1);
            if code == 0 {
                done.insert(id, 0);
                continue;
            }
            let (cmd, restarts) = self.specs.get_mut(&id).unwrap();
            if *restarts == 0 {
                done.insert(id, code);
                continue;
            }
            *restarts -= 1;
            eprintln!("kube: {id} exited {code}; restarting it (OnFailure)");
            std::thread::sleep(Duration::from_millis(500));
            let old = std::mem::replace(
                self.procs.get_mut(&id).unwrap(),
                Proc::spawn(&id, clone_command(cmd)),
            );
            let log = self.dir.join(format!("{}.log", id.replace('/', "_")));
            let mut text = std::fs::read_to_string(&log).unwrap_or_default();
            text.push_str(&old.stderr());
            std::fs::write(&log, text).unwrap();
        }
        done
    }

    /// Everything the containers printed so far (earlier runs of restarted ones included).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (id, p) in &self.procs {
            let log = self.dir.join(format!("{}.log", id.replace('/', "_")));
            all.push_str(&format!(
                "==== {id}\n{}{}\n{}\n",
                std::fs::read_to_string(log).unwrap_or_default(),
                p.stderr(),
                p.stdout()
            ));
        }
        all
    }

    /// Waits (at most `limit`) until the readiness probe of a container passes: tcpSocket (a
    /// connection) or grpc (`pspace health` on the probe's port, which must ask for the
    /// coordinator's service).
    pub fn wait_ready(&mut self, pod: &Pod, container: &Value, limit: Duration) -> Result<(), String> {
        let probe = &container["readinessProbe"];
        let began = Instant::now();
        let port_of = |p: &Value| -> u16 {
            if let Some(n) = p.as_u64() {
                return n as u16;
            }
            let name = p.as_str().unwrap_or_default();
            container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| q["name"] == name)
                .and_then(|q| q["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no port {name}")) as u16
        };
        while began.elapsed() < limit {
            self.supervise();
            let ok = if probe["tcpSocket"].is_object() {
                std::net::TcpStream::connect((pod.ip.as_str(), port_of(&probe["tcpSocket"]["port"]))).is_ok()
            } else if probe["grpc"].is_object() {
                assert_eq!(
                    probe["grpc"]["service"], "pspace.v1.Coordinator",
                    "the gRPC probe asks for the coordinator's service"
                );
                let port = port_of(&probe["grpc"]["port"]);
                Command::new(crate::pspace_bin())
                    .args(["health", "--coordinator", &format!("http://{}:{port}", pod.ip)])
                    .output()
                    .is_ok_and(|o| o.status.success())
            } else if probe["httpGet"].is_object() || probe.is_null() {
                true
            } else {
                return Err(format!("unknown probe {probe}"));
            };
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("{} did not become ready in {limit:?}", pod.name))
    }
}
