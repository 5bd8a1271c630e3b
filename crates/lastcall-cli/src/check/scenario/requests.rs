//! The scenarios of a request in flight at the signal: it completes (`in_flight`), the exit
//! follows its answer (`drain_completion`), one that never completes is cut by the service's
//! own deadline (`deadline`), and repeated signals sent into it change nothing
//! (`second_signal`).

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::slow::{finish_slow, into_request, slow_request, Slow, SlowView};
use super::{cut_fix, ms, patience, unclean_exit, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::{describe_status, Spec};

/// How long `in_flight` holds its request after the signal: until shortly before the earliest
/// acceptable cut, and past the drain delay in any case.
fn in_flight_length(spec: &Spec) -> Duration {
    let floor = spec.cut_floor();
    let shortly = (floor / 10).min(Duration::from_millis(500));
    floor
        .saturating_sub(shortly)
        .max(spec.drain_delay + Duration::from_millis(200))
}

/// 1. An in-flight request completes after the signal.
pub(super) async fn in_flight(spec: &Spec, service: &mut Service) -> Finding {
    let length = in_flight_length(spec);
    let mut slow = match slow_request(spec, service, length).await {
        Ok(slow) => slow,
        Err(finding) => return finding,
    };
    let signalled = service.stop(spec).await;
    let (outcome, ended) = finish_slow(spec, service, &mut slow).await;
    let answered = ended.saturating_duration_since(signalled);
    let exit = service.exit(patience(spec)).await;
    if !outcome.is_ok() {
        return Finding::fail(
            format!("{} {} ms after the signal", outcome.describe(), ms(answered)),
            format!(
                "a request in flight at {}, due {} ms after it, got {} after {} ms instead of 200; {}",
                spec.signal,
                ms(length),
                outcome.describe(),
                ms(answered),
                cut_fix(spec, answered)
            ),
        );
    }
    if let Some(reason) = slow.not_slow(&outcome, ended) {
        return Finding::fail(format!("200 {} ms after the signal", ms(answered)), reason);
    }
    match exit {
        Some(_) => Finding::pass(format!(
            "200 {} ms after the signal (held until {} ms)",
            ms(answered),
            ms(length)
        )),
        None => Finding::fail(
            "200, no exit",
            "the service did not exit within its budget plus the tolerance; fix: end the \
             shutdown at the budget with a deadline of its own",
        ),
    }
}

/// 4. Time from the last in-flight response to exit.
pub(super) async fn drain_completion(spec: &Spec, service: &mut Service) -> Finding {
    let mut slow =
        match slow_request(spec, service, spec.drain_delay + Duration::from_millis(500)).await {
            Ok(slow) => slow,
            Err(finding) => return finding,
        };
    let signalled = service.stop(spec).await;
    // The stream is closed as soon as its answer is read, as a client does.
    let (outcome, answered) = finish_slow(spec, service, &mut slow).await;
    let not_slow = slow.not_slow(&outcome, answered);
    drop(slow);
    let Some((_, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            outcome.describe(),
            "the service did not exit after its last response; fix: exit when the last piece of \
             work ends (close idle connections, stop background tasks)",
        );
    };
    let took = exited.saturating_duration_since(answered);
    let measurement = format!(
        "exit {:.1} ms after the last response",
        took.as_secs_f64() * 1000.0
    );
    if !outcome.is_ok() {
        let at = answered.saturating_duration_since(signalled);
        Finding::fail(
            measurement,
            format!(
                "the last request got {} {} ms after the signal; {}",
                outcome.describe(),
                ms(at),
                cut_fix(spec, at)
            ),
        )
    } else if let Some(reason) = not_slow {
        Finding::fail(measurement, reason)
    } else if took > spec.tolerance {
        Finding::fail(
            measurement,
            format!(
                "the service lingered more than {} ms after its work was done; fix: exit the \
                 moment the last request ends (no fixed sleep, no polling interval)",
                ms(spec.tolerance)
            ),
        )
    } else {
        Finding::pass(measurement)
    }
}

/// 6. A request that never completes is cut by the service's own deadline, near the budget,
///    with a status that differs from a clean shutdown's.
pub(super) async fn deadline(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut stream) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect; fix: check --host and PORT");
    };
    let sent = Instant::now();
    if client::send(&mut stream, &spec.slow(600_000))
        .await
        .is_err()
    {
        return Finding::fail("", "could not send the request; fix: check --slow-path");
    }
    into_request(sent).await;
    let signalled = service.stop(spec).await;
    let Some((status, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            "no exit",
            format!(
                "still running {} ms after the signal: the service has no deadline of its own; \
                 fix: end the shutdown at the budget ({} ms), cutting what is left, with a \
                 non-zero status",
                ms(patience(spec)),
                ms(spec.budget)
            ),
        );
    };
    let got = client::read(&mut stream, Duration::from_millis(500)).await;
    // The request never completes: whatever the client got, it was cut.
    service
        .timeline
        .cut(sent, exited, format!("cut at the exit: {}", got.describe()));
    let took = exited - signalled;
    let measurement = format!(
        "cut {} ms after the signal, {}",
        ms(took),
        describe_status(status)
    );
    if matches!(got, Outcome::Complete { status: 200, .. }) {
        return Finding::fail(
            measurement,
            "the request that never completes (ms=600000) was answered 200: the slow path does \
             not honour {ms}; fix: --slow-path must name a path that answers after {ms} ms",
        );
    }
    let floor = spec.cut_floor();
    if took < floor {
        return Finding::fail(
            measurement,
            format!(
                "it cut the request {} ms after the signal, {} ms before budget {} ms minus \
                 max(tolerance, 30 %) = {} ms: requests that would have finished in time are \
                 cut; fix: set the graceful timeout near the budget (at least {} ms after the \
                 signal), not just past the drain delay",
                ms(took),
                ms(floor - took),
                ms(spec.budget),
                ms(floor),
                ms(floor)
            ),
        );
    }
    let same_as_clean = spec.baseline == Some(status);
    if same_as_clean || spec.clean_exit.accepts(status, spec.signal) {
        let clean = spec
            .baseline
            .map_or_else(|| spec.clean_exit.describe(spec.signal), describe_status);
        return Finding::fail(
            measurement,
            format!(
                "after cutting a request: {}, the same as after a clean shutdown ({clean}): \
                 the exit status hides the cut request; fix: exit with a distinct non-zero \
                 status when the deadline cuts work (lastcall exits 3)",
                describe_status(status)
            ),
        );
    }
    Finding::pass(measurement)
}

/// 7. Repeated signals, sent at fixed offsets into a request in flight, change nothing.
pub(super) async fn second_signal(spec: &Spec, service: &mut Service) -> Finding {
    if spec.repeat_signals.is_empty() {
        return Finding::skip("no repeated signal to send (--repeat-signal none)");
    }
    let delay = spec.drain_delay;
    let length = delay + Duration::from_millis(1000);
    let slow = match slow_request(spec, service, length).await {
        Ok(slow) => slow,
        Err(finding) => return finding,
    };
    let signalled = service.stop(spec).await;
    // One during the drain delay, one while the service waits for the request.
    let offsets = [
        if delay.is_zero() {
            Duration::from_millis(100)
        } else {
            delay / 2
        },
        delay + Duration::from_millis(300),
    ];
    let limit = patience(spec);
    let Slow {
        mut stream,
        sent,
        asked,
    } = slow;
    let reading = tokio::spawn(async move {
        let outcome = client::read(&mut stream, limit).await;
        (outcome, Instant::now())
    });
    let mut sent_signals: Vec<(Signal, Duration)> = Vec::new();
    for offset in offsets {
        tokio::time::sleep_until(signalled + offset).await;
        // Only into a request known to be in flight.
        if reading.is_finished() {
            break;
        }
        for signal in &spec.repeat_signals {
            let at = service.signal(*signal);
            sent_signals.push((*signal, at - signalled));
        }
    }
    let (outcome, ended) = match reading.await {
        Ok(done) => done,
        Err(err) => return Finding::fail("", format!("the reading task failed: {err}")),
    };
    service.timeline.span(
        sent,
        ended,
        format!("slow request: {}", outcome.describe()),
        outcome.is_ok(),
    );
    let exit = service.exit(patience(spec)).await;
    let ended_at = ended.saturating_duration_since(signalled);
    let list = sent_signals
        .iter()
        .map(|(s, at)| format!("{s} +{} ms", ms(*at)))
        .collect::<Vec<_>>()
        .join(", ");
    let measurement = format!(
        "repeated: {}; request: {} at +{} ms; {}",
        if list.is_empty() { "none" } else { &list },
        outcome.describe(),
        ms(ended_at),
        exit.map_or("no exit".into(), |(s, _)| describe_status(s))
    );
    // The signal sent last before the damage.
    let culprit = sent_signals.iter().rev().find(|(_, at)| *at <= ended_at);
    if !outcome.is_ok() {
        return match culprit {
            Some((signal, at)) => Finding::fail(
                measurement,
                format!(
                    "the {signal} sent {} ms after the first signal, into a request in flight, \
                     cut it ({} {} ms later); fix: log a repeated signal and keep draining: \
                     only the deadline may cut work{}",
                    ms(*at),
                    outcome.describe(),
                    ms(ended_at.saturating_sub(*at)),
                    if *signal == Signal::SIGINT {
                        " (or, if SIGINT is this server's documented fast stop, leave it out: --repeat-signal SIGTERM)"
                    } else {
                        ""
                    }
                ),
            ),
            None => Finding::fail(
                measurement,
                format!(
                    "the request was cut ({}) before any repeated signal; {}",
                    outcome.describe(),
                    cut_fix(spec, ended_at)
                ),
            ),
        };
    }
    let slow = SlowView { sent, asked };
    if let Some(reason) = slow.not_slow(&outcome, ended) {
        return Finding::fail(measurement, reason);
    }
    match exit {
        None => Finding::fail(
            measurement,
            "the service did not exit within its budget plus the tolerance after the repeated \
             signals; fix: a repeated signal must not start a second shutdown",
        ),
        Some((status, _)) if !spec.clean_exit.accepts(status, spec.signal) => Finding::fail(
            measurement,
            unclean_exit(
                spec,
                status,
                &format!("after the repeated signals ({list})"),
            ),
        ),
        Some(_) => Finding::pass(measurement),
    }
}
