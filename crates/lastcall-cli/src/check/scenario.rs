//! The scenarios `lastcall check` runs, each on a fresh process: their names ([`ALL`]), what
//! one finds ([`Finding`], [`Verdict`]), [`run`], and the helpers every family shares. The
//! scenarios themselves live one family a file below `scenario/`.

use std::time::Duration;

use super::service::Service;
use super::timeline::Timeline;
use super::{describe_status, Spec};

mod connections;
mod exit;
mod load;
mod requests;
mod restart;
mod slow;
mod streams;

pub(crate) use restart::Report as RestartReport;

/// Scenarios that run only when named with `--only` (or, for `restart`, asked for with
/// `--restart-signal`): a restart is not a shutdown, and many services have none.
pub(crate) const OPT_IN: [&str; 1] = ["restart"];

/// Every scenario, in the order they run.
pub(crate) const ALL: [&str; 15] = [
    "in_flight",
    "keep_alive",
    "readiness",
    "drain_completion",
    "idle_exit",
    "deadline",
    "second_signal",
    "idle_connections",
    "sse",
    "exit_status",
    "load",
    "websocket",
    "http2",
    "slow_clients",
    "restart",
];

/// A scenario's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// The scenario does not apply to this service; the reason says why.
    Skip,
    Fail,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Skip => "skip",
            Verdict::Fail => "fail",
        }
    }

    /// Worse verdicts rank higher: a repeated scenario reports its worst run.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Skip => 1,
            Verdict::Fail => 2,
        }
    }
}

/// What a scenario found.
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) verdict: Verdict,
    pub(crate) measurement: String,
    pub(crate) reason: Option<String>,
    /// What the `restart` scenario measured, for the JSON.
    pub(crate) restart: Option<RestartReport>,
}

impl Finding {
    fn pass(measurement: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Pass,
            measurement: measurement.into(),
            reason: None,
            restart: None,
        }
    }

    /// A failure; `reason` says what a client saw and ends with the fix.
    fn fail(measurement: impl Into<String>, reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Fail,
            measurement: measurement.into(),
            reason: Some(reason.into()),
            restart: None,
        }
    }

    fn skip(reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Skip,
            measurement: String::new(),
            reason: Some(reason.into()),
            restart: None,
        }
    }
}

/// Runs the scenario called `name`.
///
/// # Errors
///
/// Only when the service cannot be started: that is no verdict on its shutdown.
pub(crate) async fn run(name: &str, spec: &Spec) -> anyhow::Result<(Finding, Timeline)> {
    let mut service = Service::start(spec).await?;
    let finding = match name {
        "in_flight" => requests::in_flight(spec, &mut service).await,
        "keep_alive" => connections::keep_alive(spec, &mut service).await,
        "readiness" => exit::readiness(spec, &mut service).await,
        "drain_completion" => requests::drain_completion(spec, &mut service).await,
        "idle_exit" => exit::idle_exit(spec, &mut service).await,
        "deadline" => requests::deadline(spec, &mut service).await,
        "second_signal" => requests::second_signal(spec, &mut service).await,
        "idle_connections" => connections::idle_connections(spec, &mut service).await,
        "sse" => streams::sse(spec, &mut service).await,
        "exit_status" => exit::exit_status(spec, &mut service).await,
        "load" => load::load(spec, &mut service).await,
        "websocket" => streams::websocket(spec, &mut service).await,
        "http2" => streams::http2(spec, &mut service).await,
        "slow_clients" => connections::slow_clients(spec, &mut service).await,
        "restart" => restart::restart(spec, &mut service).await,
        other => anyhow::bail!("unknown scenario {other:?}"),
    };
    // Whatever the scenario saw, a port still served after the exit means the process that
    // was graded is not the server.
    service.settle().await;
    let finding = if let Some(survivor) = service.survivor.take() {
        Finding {
            restart: finding.restart,
            ..Finding::fail(finding.measurement, survivor)
        }
    } else if let (Some(failure), false) = (
        service.pre_stop_failure.take(),
        finding.verdict == Verdict::Fail,
    ) {
        Finding {
            restart: finding.restart,
            ..Finding::fail(finding.measurement, failure)
        }
    } else {
        finding
    };
    Ok((finding, service.timeline.clone()))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// How long to wait for anything: the service's own budget plus the tolerance.
fn patience(spec: &Spec) -> Duration {
    spec.budget + spec.tolerance
}

/// The fix for a request cut `at` after the signal.
fn cut_fix(spec: &Spec, at: Duration) -> String {
    let floor = spec.cut_floor();
    if at < spec.drain_delay + Duration::from_millis(100) {
        format!(
            "fix: keep serving requests in flight after {}: wait the drain delay, close the \
             listener, then wait for them until near the budget ({} ms)",
            spec.signal,
            ms(floor)
        )
    } else {
        format!(
            "fix: wait for requests in flight until at least {} ms after the signal (budget \
             {} ms minus max(tolerance, 30 %)): a graceful timeout below the budget, not at \
             the drain delay",
            ms(floor),
            ms(spec.budget)
        )
    }
}

/// Why the exit status is not a clean shutdown's, with the fix.
fn unclean_exit(spec: &Spec, status: std::process::ExitStatus, after: &str) -> String {
    let clean = spec.clean_exit.describe(spec.signal);
    format!(
        "{after}: {}, where a clean shutdown is {clean}; fix: make a clean shutdown end with \
         {clean}, or, if this status is the server's documented design, accept it with \
         --expect-exit (e.g. --expect-exit 0,signal)",
        describe_status(status),
    )
}
