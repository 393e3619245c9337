//! `pspace-core`: the pspace program proper (started through the `pspace` launcher, which puts
//! libtorch on the library path). Parses the command line and dispatches to the subcommands.

mod analyze;
mod bars;
mod cli;
mod coordinator;
mod devices;
mod doctor;
mod dryrun_data;
mod health;
mod paths;
mod probe;
mod run;
mod security;
mod session;
mod status;
mod telemetry;
mod train;
mod worker;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // Rust ignores SIGPIPE, so `pspace status --json | head -1` panicked with "failed printing
    // to stdout: Broken pipe". A reader that stopped reading ends the command quietly, as Unix
    // tools end (exit 141, 128 + SIGPIPE). SIGPIPE itself stays ignored: a TLS peer that drops
    // a connection mid-write must be an error the command reports, not a silent death.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    // Read deep inside the engine's forward pass, where no error can be returned: a mistyped
    // value stops here, before any work, instead of being taken for the default.
    if let Err(message) = pspace_engine::model::padded_attention_requested() {
        eprintln!("pspace: error: {message}");
        std::process::exit(2);
    }
    let role = match &cli.command {
        cli::Command::Coordinator(_) => "coordinator",
        cli::Command::Worker(_) => "worker",
        _ => "run",
    };
    let mut telemetry = match telemetry::init(role) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("pspace: error: {err:#}");
            std::process::exit(1);
        }
    };
    let outcome = dispatch(cli);
    telemetry.shutdown();
    if let Err(err) = outcome {
        eprintln!("pspace: error: {err:#}");
        // A coordinator stopped by SIGTERM / Ctrl-C exits 143 / 130, as shells expect.
        let code = err.downcast_ref::<coordinator::Stopped>().map_or(1, |s| s.code);
        std::process::exit(code);
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Doctor(args) => doctor::run(args),
        cli::Command::Run(args) => run::run(args),
        cli::Command::Coordinator(args) => coordinator::run(args),
        cli::Command::Worker(args) => worker::run(args),
        cli::Command::Status(args) => status::run(args),
        cli::Command::Health(args) => health::run(args),
        cli::Command::Analyze(args) => analyze::run(*args),
        cli::Command::Train(args) => train::run(*args),
        cli::Command::Probe(args) => probe::run(args),
        cli::Command::DryrunData(args) => dryrun_data::run(args),
    }
}
