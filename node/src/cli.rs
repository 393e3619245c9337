//! The command line: every subcommand and flag, with the help text users read.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "pspace",
    bin_name = "pspace",
    version,
    about = "Persona-geometry and marker-leakage experiments on fine-tuned language models",
    long_about = "pspace fine-tunes a base model under several system prompts, extracts persona vectors \
from its residual stream, measures how a trained marker leaks between personas, and tests it all \
with permutation statistics and FDR control.\n\nStart with `pspace run` (the embedded demo \
experiment on CPU) or `pspace doctor` (what this machine can do).\n\nModels (`--model`, a spec's \
`experiment.model`): `demo`, an HF folder, a .gguf file, or `random:<preset>[@seed]` with preset \
qwen2.5-7b or tiny: random weights of that architecture built on the device, for benchmarking \
and dry runs at full size. Their results mean nothing about personas."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment spec end to end (default: the embedded demo), resuming finished tasks.
    ///
    /// Every task commits its outputs with a manifest written last; a rerun skips committed tasks
    /// (and re-runs any whose outputs no longer match). Environment: AWS_* for an s3:// store,
    /// PSPACE_SCRATCH for local work files, OTEL_EXPORTER_OTLP_ENDPOINT to export the run as a
    /// trace (OTLP/HTTP, e.g. Jaeger on port 4318).
    Run(RunArgs),
    /// Serve a run to `pspace worker` processes over gRPC (the distributed form of `pspace run`).
    ///
    /// Loads the run's state from the store first: committed tasks are never run again, and the
    /// journal under <experiment>/_coordinator/ keeps attempt numbers and spent retry budgets
    /// across a restart (tasks that were in flight run again). Refuses a store that does not
    /// honour create-only writes. Exits 0 once every task of every seed is committed, printing
    /// the report: and result: lines; on SIGTERM or Ctrl-C it reports NOT_SERVING, stops within
    /// --shutdown-grace-s and exits 143 (130 for Ctrl-C): a restart resumes from the store.
    ///
    /// Security: TLS with --tls-cert/--tls-key (mutual with --client-ca) and a bearer token from
    /// PSPACE_TOKEN or --token-file. A non-loopback --listen without both is refused unless
    /// --insecure. Health (grpc.health.v1) is served on the same port and, with
    /// --health-listen, on a plaintext port of its own. Environment: PSPACE_HEARTBEAT_MS
    /// (default 1000) and PSPACE_LEASE_MS (default 10000; must exceed three heartbeats), AWS_*
    /// for an s3:// store, OTEL_EXPORTER_OTLP_ENDPOINT for traces.
    Coordinator(CoordinatorArgs),
    /// Run tasks for a coordinator: one slot per device, leases pulled over gRPC.
    ///
    /// Registers with the coordinator (retrying with capped backoff while it is unreachable) and
    /// learns the run from it: spec, model path, store, lease timing. The spec's folder and the
    /// model must be at the same paths as on the coordinator's machine. Exits 0 when the run is
    /// finished, 1 when it failed or was refused (wrong token, untrusted certificate: the message
    /// says which), 3 after losing a lease (its task is cancelled first). Use https:// and --ca
    /// for a TLS coordinator, and PSPACE_TOKEN or --token-file for its token.
    Worker(WorkerArgs),
    /// Tasks by state, leases, workers and attempts: from a coordinator, or from the store.
    Status(StatusArgs),
    /// Ask a coordinator's health service: exits 0 when it is SERVING, 1 otherwise.
    Health(HealthArgs),
    /// Report libtorch, CUDA devices, matmul speed and where the demo model is.
    Doctor(DoctorArgs),
    /// Statistics, verdicts, figures and report of a run (or of marker hits alone).
    Analyze(Box<crate::analyze::AnalyzeArgs>),
    /// LoRA SFT (em, benign or marker coupling): writes a PEFT adapter and a JSON training log.
    ///
    /// With PSPACE_TRAIN_PROFILE=1 (here and in the trainings of `run` and `worker`) a table on
    /// stderr says where a step's time went: forward, loss, backward, clipping and AdamW, each
    /// as the host's issue time and the time until the device finished (on a CPU the two are the
    /// same), from the third step on; PSPACE_TRAIN_PROFILE=ops also times each piece of the
    /// layers' forward. Each phase waits for the device, so profiled steps are a little slower.
    ///
    /// On a GPU, padding-free passes run FlashAttention-2's variable-length kernel (bf16/f16);
    /// PSPACE_ATTENTION=padded uses the padded memory-efficient kernel instead (for comparing
    /// the two; pspace falls back to it by itself where the kernel cannot run). train_log.json's
    /// `packed_attention` says which one ran.
    Train(Box<crate::train::TrainArgs>),
    /// One chat prompt through a model: template text and ids, layer states of the last prompt
    /// token, optionally a greedy continuation; one JSON object on stdout.
    Probe(crate::probe::ProbeArgs),
    /// Write a dry run's training sets: chat rows of the real sets' sizes and length
    /// distributions, generated from a seed (filler text; only the token counts are meant).
    ///
    /// For `experiments/issue205-dryrun.toml` (`make dryrun-data`): 6,000 EM rows (single-turn,
    /// user mean 45 tokens, answer mean 180, log-normal) and 6,000 benign rows (mean 775
    /// tokens, sigma 1.0: the Tulu-3 mixture's long tail; 15 % multi-turn). Prints the length
    /// summary of each set as JSON.
    DryrunData(crate::dryrun_data::DryrunDataArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment spec (TOML). Without it the embedded `experiments/demo.toml` runs.
    pub spec: Option<PathBuf>,
    /// Device for model work: cpu, cuda (alias gpu) or cuda:N. Overrides the spec's
    /// [experiment].device. Checked as the run would check it, also with --dry-run.
    #[arg(long, value_parser = crate::devices::device_arg)]
    pub device: Option<String>,
    /// One slot per GPU: `all` or indices like 0,1 (instead of --device: the two together are
    /// refused, since --gpus names CUDA devices and --device another).
    #[arg(long, conflicts_with = "device")]
    pub gpus: Option<String>,
    /// Print the task plan (in plan order, as `status` lists it) and exit without running
    /// anything. A run starts ready tasks longest chain first, not in this order: the task
    /// heading the most expected work still to do after it (benign training, then the EM
    /// trainings), so several GPUs finish together.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only this task and the tasks it depends on: `kind/label` (in every seed, e.g.
    /// `marker_eval/E0_assistant` or `extract/base`) or `seed/kind/label` as --dry-run and
    /// `status` print it. Repeatable. The tasks keep the ids of the whole run, so a later full
    /// run finds them committed.
    #[arg(long, value_name = "[SEED/]KIND/LABEL")]
    pub only: Vec<String>,
    /// Where the run's artifacts go: a folder, or s3://BUCKET[/PREFIX] on any S3-compatible
    /// server (connection from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT,
    /// AWS_ALLOW_HTTP). Overrides the spec's [experiment].store.
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Experiment spec (TOML). Without it the embedded `experiments/demo.toml` runs.
    pub spec: Option<PathBuf>,
    /// Where the run's artifacts go (a folder or s3://BUCKET[/PREFIX]); overrides the spec's.
    #[arg(long)]
    pub store: Option<String>,
    /// Address to serve gRPC on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Also serve grpc.health.v1 alone, in plaintext, on this address (for probes that cannot
    /// speak TLS, such as Kubernetes' gRPC probes).
    #[arg(long)]
    pub health_listen: Option<String>,
    /// On SIGTERM or Ctrl-C: how long calls in flight may take to finish before the process
    /// exits anyway.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_s: u64,
    #[command(flatten)]
    pub security: crate::security::ServerSecurityArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's gRPC endpoint (https:// for a TLS coordinator).
    #[arg(long, env = "PSPACE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Device for one slot: cpu, cuda (alias gpu) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = crate::devices::device_arg)]
    pub device: String,
    /// One slot per GPU: `all` or indices like 0,1 (instead of --device: the two together are
    /// refused, since --gpus names CUDA devices and --device another).
    #[arg(long, conflicts_with = "device")]
    pub gpus: Option<String>,
    /// This worker's name in status and logs (default: host-pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Give up when the coordinator has been unreachable this many seconds.
    #[arg(long, default_value_t = 600)]
    pub give_up_after_s: u64,
    #[command(flatten)]
    pub security: crate::security::ClientSecurityArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Ask a running coordinator (its gRPC endpoint).
    #[arg(long, conflicts_with_all = ["spec", "store"])]
    pub coordinator: Option<String>,
    /// Without --coordinator: the spec whose run to read from the store (default: the demo).
    pub spec: Option<PathBuf>,
    /// Without --coordinator: the store to read (default: the spec's).
    #[arg(long)]
    pub store: Option<String>,
    /// Print JSON instead of a table; on failure, `{"error": "..."}` (and exit 1).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub security: crate::security::ClientSecurityArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The coordinator's gRPC endpoint, or its --health-listen address (http://).
    #[arg(long, env = "PSPACE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    #[command(flatten)]
    pub security: crate::security::ClientSecurityArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Device to check: cpu, cuda (alias gpu) or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
