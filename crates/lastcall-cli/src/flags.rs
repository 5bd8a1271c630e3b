//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Grade the graceful shutdown of any HTTP service, from the outside, with real signals.
    ///
    /// Starts the command once per scenario on a free port (passed as PORT), drives traffic,
    /// signals it, and reports what a client saw. Exit status 0 only if every selected
    /// scenario passed.
    Check(Box<CheckArgs>),
    /// Check a deployment file's shutdown arithmetic against lastcall's budget.
    ///
    /// Reads a Kubernetes manifest, a Docker Compose file, a systemd service unit or an ECS
    /// task definition (recognised from its content), finds the service that carries
    /// LASTCALL_* variables, and prints the shutdown timeline as the platform will run it and
    /// one finding per problem with the setting and the value to set. Exit status 0 with no
    /// error, 1 on an error, 2 when the file cannot be read or the service cannot be chosen.
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// The deployment file (YAML, JSON or a systemd unit; `-` reads standard input, as in
    /// `helm template . | lastcall plan -`).
    pub(crate) file: PathBuf,

    /// The container (Kubernetes, ECS) or Compose service that runs lastcall [default: the
    /// one carrying LASTCALL_* variables].
    #[arg(long, visible_alias = "service", value_name = "NAME")]
    pub(crate) container: Option<String>,

    /// The Kubernetes workload to check, by name or KIND/NAME, when the file has several
    /// [default: the one whose containers carry LASTCALL_* variables].
    #[arg(long, value_name = "NAME")]
    pub(crate) workload: Option<String>,

    /// Print the plan as JSON (schema `lastcall-plan/1`, in the README) instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// The load balancer's deregistration delay: on ECS it runs before SIGTERM; on Kubernetes
    /// (the AWS Load Balancer Controller) it starts at the pod's deletion.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) deregistration_delay: Option<Duration>,

    /// The longest request the service serves, which the deregistration delay must cover
    /// [default: the budget's wait-for-work deadline].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) longest_request: Option<Duration>,

    /// Time for endpoint removal to reach kube-proxy and the ingress, on top of the readiness
    /// probe's detection time.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) propagation: Duration,

    /// The least time wanted between the end of the budget and SIGKILL.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) margin: Duration,

    /// The path lastcall answers readiness on.
    #[arg(long, default_value = "/health/ready")]
    pub(crate) ready_path: String,

    /// The path lastcall answers liveness on.
    #[arg(long, default_value = "/health/live")]
    pub(crate) live_path: String,

    /// A `LASTCALL_*` variable the application reads itself and allows with
    /// `Builder::allow_env` (repeatable); `lastcall demo`'s `LASTCALL_DEMO_DB` is known.
    #[arg(long = "allow-env", value_name = "NAME")]
    pub(crate) allow_env: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Check the built-in reference service (`lastcall demo` on a temporary SQLite file).
    #[arg(long, conflicts_with = "command")]
    pub(crate) demo: bool,

    /// The service's total shutdown budget, passed in --budget-var.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) budget: Duration,

    /// The drain delay, passed in --drain-delay-var.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) drain_delay: Duration,

    /// Environment variable that sets the service's budget.
    #[arg(long, default_value = "LASTCALL_BUDGET")]
    pub(crate) budget_var: String,

    /// Environment variable that sets the service's drain delay.
    #[arg(long, default_value = "LASTCALL_DRAIN_DELAY")]
    pub(crate) drain_delay_var: String,

    /// Slack allowed on top of each expected time.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) tolerance: Duration,

    /// How long the service may take to answer 200 on the readiness path.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) start_timeout: Duration,

    /// The signal that starts the shutdown.
    #[arg(long, default_value = "SIGTERM")]
    pub(crate) signal: String,

    /// The signals second_signal repeats into a request in flight (comma-separated: `stop`
    /// for the stop signal again, SIGTERM, SIGINT, ..., or none). SIGINT is opt-in: several
    /// servers document it as a fast stop.
    #[arg(long, value_delimiter = ',', default_value = "stop")]
    pub(crate) repeat_signal: Vec<String>,

    /// The exit statuses a clean shutdown may end with (comma-separated): numbers, and
    /// `signal` to accept death by the stop signal (reported as such).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub(crate) expect_exit: Vec<String>,

    /// Also run the opt-in `restart` scenario with this restart signal (HUP, USR2, ...):
    /// under load, the service must hand its listener to a successor and drain the old
    /// process, refusing and failing nothing. `--only restart` selects it with SIGHUP.
    #[arg(long, value_name = "SIGNAL")]
    pub(crate) restart_signal: Option<String>,

    /// How long, from the restart signal, a successor may take to serve the port; past it,
    /// a service still served by the old process alone ignored the restart (or rolled it
    /// back).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) restart_timeout: Duration,

    /// The PID file the service rewrites with its successor's pid on a restart (lastcall:
    /// LASTCALL_PID_FILE, which --env must then also set): the restart scenario reads the new
    /// pid there and fails if it still names the old one.
    #[arg(long, value_name = "FILE")]
    pub(crate) pid_file: Option<PathBuf>,

    /// Play a Kubernetes preStop sleep of this length before each signal: readiness must keep
    /// answering 200 and requests must be served throughout.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) pre_stop: Duration,

    /// Run every scenario N times; a scenario's verdict is its worst run, with counts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) repeat: u32,

    /// The address the service listens on (it still gets PORT).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// Readiness path (200 when ready, 503 once draining).
    #[arg(long, default_value = "/health/ready")]
    pub(crate) ready_path: String,

    /// Readiness on another port or host, as a URL (`http://127.0.0.1:9901/ready`; `{port}`
    /// is the service's port). Overrides --ready-path.
    #[arg(long, value_name = "URL")]
    pub(crate) ready_url: Option<String>,

    /// A quick request that answers 200.
    #[arg(long, default_value = "/orders/1")]
    pub(crate) path: String,

    /// A request that answers after {ms} milliseconds.
    #[arg(long, default_value = "/reports/slow?ms={ms}")]
    pub(crate) slow_path: String,

    /// A Server-Sent Events stream.
    #[arg(long, default_value = "/events")]
    pub(crate) events_path: String,

    /// A WebSocket endpoint (any messages; the websocket scenario only watches it close).
    #[arg(long, default_value = "/ws")]
    pub(crate) ws_path: String,

    /// Idle keep-alive connections opened by the idle_connections scenario.
    #[arg(long, default_value_t = 200)]
    pub(crate) connections: usize,

    /// Run only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,

    /// Skip these scenarios (comma-separated), for a service that cannot support them.
    #[arg(long, value_delimiter = ',')]
    pub(crate) skip: Vec<String>,

    /// Extra environment for the service, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub(crate) env: Vec<String>,

    /// Print the results as JSON (schema in the README) instead of a table, or, with a FILE,
    /// write the JSON there and print the table.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub(crate) json: Option<PathBuf>,

    /// Also write a self-contained HTML report, with a timeline picture per scenario.
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,

    /// The service's command and arguments; `{port}` in them is replaced by the port.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Port to listen on, on 127.0.0.1 (0 picks a free one; the address is printed)
    /// [env: PORT] [default: 3000].
    #[arg(long)]
    pub(crate) port: Option<u16>,

    /// SQLite database file, created and seeded on first start [env: LASTCALL_DEMO_DB]
    /// [default: lastcall-demo.sqlite3 in the temporary directory].
    #[arg(long)]
    pub(crate) db: Option<PathBuf>,
}
