//! `pspace-core`: the pspace program proper (started through the `pspace` launcher, which puts
//! libtorch on the library path). Parses the command line and dispatches to the subcommands.

mod analyze;
mod cli;
mod doctor;
mod paths;
mod probe;
mod run;
mod train;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(err) = dispatch(cli) {
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
