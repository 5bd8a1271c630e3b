//! Records a [`Report`] through the `metrics` facade (feature `metrics`).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `lastcall_shutdown_total` | counter | `trigger`, `signal`, `exit` |
//! | `lastcall_shutdown_duration_seconds` | histogram | |
//! | `lastcall_shutdown_phase_duration_seconds` | histogram | `phase`, `outcome` |
//! | `lastcall_shutdown_rejected_while_draining_total` | counter | |
//! | `lastcall_shutdown_active_at_deadline` | gauge | `kind` |
//! | `lastcall_shutdown_cleanup_failures_total` | counter | `step`, `phase`, `outcome` |
//! | `lastcall_shutdown_later_signals_total` | counter | |
//! | `lastcall_shutdown_exit_code` | gauge | |

use crate::report::{Report, StepOutcome, TriggerCause};
use crate::{KindCounts, WorkKind};

/// Records `report` with whatever `metrics` recorder is installed (none: a no-op).
pub(crate) fn record(report: &Report) {
    let (trigger, signal) = match &report.trigger {
        TriggerCause::Signal { signal } => ("signal", signal.as_str()),
        TriggerCause::Requested { .. } => ("requested", "none"),
        TriggerCause::Fatal { .. } => ("fatal", "none"),
    };
    let exit = report.exit.as_str();
    metrics::counter!("lastcall_shutdown_total", "trigger" => trigger, "signal" => signal, "exit" => exit)
        .increment(1);
    metrics::histogram!("lastcall_shutdown_duration_seconds").record(report.total.as_secs_f64());
    for phase in &report.phases {
        let outcome = phase.outcome.as_str();
        metrics::histogram!(
            "lastcall_shutdown_phase_duration_seconds",
            "phase" => phase.phase.as_str(),
            "outcome" => outcome
        )
        .record(phase.duration.as_secs_f64());
    }
    metrics::counter!("lastcall_shutdown_rejected_while_draining_total")
        .increment(report.rejected_while_draining);
    let cut = report
        .work_at_deadline
        .as_ref()
        .map(|w| w.by_kind)
        .unwrap_or_default();
    for kind in [
        WorkKind::Request,
        WorkKind::Stream,
        WorkKind::Job,
        WorkKind::Task,
        WorkKind::Connection,
    ] {
        metrics::gauge!("lastcall_shutdown_active_at_deadline", "kind" => kind.as_str())
            .set(KindCounts::get(&cut, kind) as f64);
    }
    for step in report.failed_steps() {
        let outcome = match step.outcome {
            StepOutcome::Ok => "ok",
            StepOutcome::Failed { .. } => "failed",
            StepOutcome::TimedOut => "timed_out",
            StepOutcome::Panicked { .. } => "panicked",
        };
        metrics::counter!(
            "lastcall_shutdown_cleanup_failures_total",
            "step" => step.name.clone(),
            "phase" => step.phase.as_str(),
            "outcome" => outcome
        )
        .increment(1);
    }
    metrics::counter!("lastcall_shutdown_later_signals_total")
        .increment(report.later_signals.len() as u64);
    metrics::gauge!("lastcall_shutdown_exit_code").set(f64::from(report.exit_code));
}
