//! `lastcall`: the command-line side of the lastcall project.
//!
//! `lastcall check` grades any HTTP service's graceful shutdown from the outside, with real
//! signals. `lastcall demo` runs the reference orders service (the article's service, rebuilt on the
//! library) in this process, so the process that gets the signal is the server itself.
//! `lastcall plan` checks the shutdown arithmetic of a Kubernetes manifest, a Compose file, a
//! systemd unit or an ECS task definition.
//!
//! Exit codes are the library's contract ([`lastcall::Exit`]): 0 clean, 1 fatal or a startup
//! failure, 3 work cut, 4 cleanup failed, 5 hard deadline, 78 bad configuration, 130 forced.

use std::process::ExitCode;

use clap::Parser;

mod check;
mod demo;
mod flags;
mod plan;

fn main() -> ExitCode {
    let cli = flags::Cli::parse();
    match cli.command {
        flags::Command::Demo(args) => demo::main(args),
        flags::Command::Check(args) => check::main(*args),
        flags::Command::Plan(args) => plan::main(args),
    }
}
