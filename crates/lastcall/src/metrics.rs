//! Records a [`Report`] through the `metrics` facade (feature `metrics`), in two parts: what
//! is known when the flush-telemetry phase begins is recorded then, so that the exporter it
//! flushes ships it; the flush and close phases and the outcome are recorded at exit.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `lastcall_shutdown_total` | counter | `trigger`, `signal`, `exit` |
//! | `lastcall_shutdown_duration_seconds` | histogram | |
//! | `lastcall_shutdown_phase_duration_seconds` | histogram | `phase`, `outcome` |
//! | `lastcall_shutdown_rejected_while_draining_total` | counter | |
//! | `lastcall_shutdown_closed_without_request_total` | counter | |
//! | `lastcall_shutdown_active_at_deadline` | gauge | `kind` |
//! | `lastcall_shutdown_cleanup_failures_total` | counter | `step`, `phase`, `outcome` |
//! | `lastcall_shutdown_later_signals_total` | counter | |
//! | `lastcall_shutdown_exit_code` | gauge | |
//!
//! A failed restart (feature `restart`) is counted as it happens, in
//! `lastcall_restarts_failed_total` (counter, label `reason`: `spawn`, `exited`, `timeout`).

use crate::report::{PhaseReport, Report, StepReport};
use crate::Phase;

/// The counters [`record_before_flush`] recorded, so that [`record_at_exit`] adds only what
/// was counted after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    rejected_while_draining: u64,
    closed_without_request: u64,
}

impl Counted {
    pub(crate) fn of(so_far: &Report) -> Counted {
        Counted {
            rejected_while_draining: so_far.rejected_while_draining,
            closed_without_request: so_far.closed_without_request,
        }
    }
}

/// Records what the shutdown knows before the flush-telemetry phase (`so_far`, see
/// [`Shutdown::report_so_far`](crate::Shutdown::report_so_far)), so an exporter flushed in
/// that phase ships it: the phases up to waiting for work, the rejections, the connections
/// closed without a request, the work active at the deadline, the stop-accepting steps that
/// failed.
pub(crate) fn record_before_flush(so_far: &Report) {
    for phase in &so_far.phases {
        record_phase(phase);
    }
    metrics::counter!("lastcall_shutdown_rejected_while_draining_total")
        .increment(so_far.rejected_while_draining);
    metrics::counter!("lastcall_shutdown_closed_without_request_total")
        .increment(so_far.closed_without_request);
    for (kind, count) in so_far.cut_by_kind() {
        metrics::gauge!("lastcall_shutdown_active_at_deadline", "kind" => kind.as_str())
            .set(count as f64);
    }
    for step in so_far.failed_steps() {
        record_failure(step);
    }
}

/// Records the rest of `report` at exit: the flush and close phases and their failed steps,
/// the shutdown's outcome, duration and later signals, and the counters' growth since
/// [`record_before_flush`] (which recorded `before_flush`).
pub(crate) fn record_at_exit(report: &Report, before_flush: Counted) {
    let (trigger, signal) = report.trigger_labels();
    let exit = report.exit.as_str();
    metrics::counter!("lastcall_shutdown_total", "trigger" => trigger, "signal" => signal, "exit" => exit)
        .increment(1);
    metrics::histogram!("lastcall_shutdown_duration_seconds").record(report.total.as_secs_f64());
    for phase in report
        .phases
        .iter()
        .filter(|p| p.phase >= Phase::FlushTelemetry)
    {
        record_phase(phase);
    }
    metrics::counter!("lastcall_shutdown_rejected_while_draining_total").increment(
        report
            .rejected_while_draining
            .saturating_sub(before_flush.rejected_while_draining),
    );
    metrics::counter!("lastcall_shutdown_closed_without_request_total").increment(
        report
            .closed_without_request
            .saturating_sub(before_flush.closed_without_request),
    );
    for step in report
        .failed_steps()
        .filter(|s| s.phase >= Phase::FlushTelemetry)
    {
        record_failure(step);
    }
    metrics::counter!("lastcall_shutdown_later_signals_total")
        .increment(report.later_signals.len() as u64);
    metrics::gauge!("lastcall_shutdown_exit_code").set(f64::from(report.exit_code));
}

fn record_phase(phase: &PhaseReport) {
    metrics::histogram!(
        "lastcall_shutdown_phase_duration_seconds",
        "phase" => phase.phase.as_str(),
        "outcome" => phase.outcome.as_str()
    )
    .record(phase.duration.as_secs_f64());
}

fn record_failure(step: &StepReport) {
    metrics::counter!(
        "lastcall_shutdown_cleanup_failures_total",
        "step" => step.name.clone(),
        "phase" => step.phase.as_str(),
        "outcome" => step.outcome.as_str()
    )
    .increment(1);
}
