//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The graceful-shutdown control plane for Rust services.
#[derive(Debug, Parser)]
#[command(name = "lastcall", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the reference orders service (SQLite, health routes, slow reports, SSE) until a
    /// signal, then shut it down gracefully. Shutdown settings come from `LASTCALL_*` variables.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Port to listen on, on 127.0.0.1 (0 picks a free one; the address is printed).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub(crate) port: u16,

    /// SQLite database file, created and seeded on first start [default: lastcall-demo.sqlite3
    /// in the temporary directory].
    #[arg(long, env = "LASTCALL_DEMO_DB")]
    pub(crate) db: Option<PathBuf>,
}
