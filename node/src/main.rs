//! `pspace-core`: the pspace program proper (started through the `pspace` launcher, which puts
//! libtorch on the library path). Parses the command line and dispatches to the subcommands.

mod analyze;
mod cli;
mod doctor;
mod paths;
mod probe;
mod run;
mod telemetry;
mod train;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let mut telemetry = match telemetry::init() {
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
        std::process::exit(1);
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Doctor(args) => doctor::run(args),
        cli::Command::Run(args) => run::run(args),
        cli::Command::Analyze(args) => analyze::run(*args),
        cli::Command::Train(args) => train::run(*args),
        cli::Command::Probe(args) => probe::run(args),
    }
}
