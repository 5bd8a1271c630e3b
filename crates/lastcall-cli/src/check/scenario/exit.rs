//! The scenarios of the service as a whole: readiness answers 503 before the listener closes
//! (`readiness`), an idle service exits soon after its drain delay (`idle_exit`), and a clean
//! shutdown ends with the expected status (`exit_status`).

use super::{ms, patience, unclean_exit, Finding};
use crate::check::client::Outcome;
use crate::check::service::Service;
use crate::check::{describe_status, Spec};

/// 3. Readiness flips to 503 before the listener closes.
pub(super) async fn readiness(spec: &Spec, service: &mut Service) -> Finding {
    let signalled = service.stop(spec).await;
    let (seen, at) = service.watch_readiness(patience(spec)).await;
    let _ = service.exit(patience(spec)).await;
    match seen {
        Outcome::Complete { status: 503, .. } => Finding::pass(format!("503 {} ms after the signal", ms(at - signalled))),
        // With no drain delay the listener closes at the signal: a probe is refused, or
        // accepted in the instant before and closed unanswered.
        Outcome::Refused | Outcome::ClosedBeforeResponse | Outcome::Reset
            if spec.drain_delay.is_zero() =>
        {
            Finding::skip(format!(
                "with --drain-delay 0s the listener closes at the signal (readiness: {}): there is no window in which readiness could be seen",
                seen.describe()
            ))
        }
        Outcome::Refused => Finding::fail(
            format!("refused {} ms after the signal", ms(at - signalled)),
            "the listener closed before readiness ever answered 503: balancers kept routing here \
             until connections failed; fix: answer 503 on readiness at the signal and close the \
             listener only after the drain delay",
        ),
        other => Finding::fail(
            other.describe(),
            format!(
                "readiness answered {} instead of 503; fix: answer 503 on the readiness path from the signal on",
                other.describe()
            ),
        ),
    }
}

/// 5. Time from the signal to exit with nothing in flight.
pub(super) async fn idle_exit(spec: &Spec, service: &mut Service) -> Finding {
    let signalled = service.stop(spec).await;
    let Some((_, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            "no exit",
            "the idle service did not exit within its budget plus the tolerance; fix: exit when \
             the drain delay is over and nothing is in flight",
        );
    };
    let took = exited - signalled;
    let measurement = format!(
        "exit {} ms after the signal (drain delay {} ms)",
        ms(took),
        ms(spec.drain_delay)
    );
    if took > spec.drain_delay + spec.tolerance {
        Finding::fail(
            measurement,
            "an idle service should exit soon after its drain delay; fix: close idle keep-alive \
             connections and stop background tasks at stop-accepting",
        )
    } else {
        Finding::pass(measurement)
    }
}

/// 10. The exit status after a clean shutdown is the expected one.
pub(super) async fn exit_status(spec: &Spec, service: &mut Service) -> Finding {
    service.stop(spec).await;
    match service.exit(patience(spec)).await {
        Some((status, _)) if spec.clean_exit.accepts(status, spec.signal) => {
            Finding::pass(describe_status(status))
        }
        Some((status, _)) => Finding::fail(
            describe_status(status),
            unclean_exit(spec, status, "after a clean, idle shutdown"),
        ),
        None => Finding::fail(
            "no exit",
            "the service did not exit; fix: exit when the drain is over",
        ),
    }
}
