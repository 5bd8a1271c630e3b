//! The scenarios `lastcall check` runs, each on a fresh process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{self, Outcome};
use super::h2;
use super::service::Service;
use super::timeline::Timeline;
use super::ws;
use super::{describe_status, Spec};

mod restart;

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
        "in_flight" => in_flight(spec, &mut service).await,
        "keep_alive" => keep_alive(spec, &mut service).await,
        "readiness" => readiness(spec, &mut service).await,
        "drain_completion" => drain_completion(spec, &mut service).await,
        "idle_exit" => idle_exit(spec, &mut service).await,
        "deadline" => deadline(spec, &mut service).await,
        "second_signal" => second_signal(spec, &mut service).await,
        "idle_connections" => idle_connections(spec, &mut service).await,
        "sse" => sse(spec, &mut service).await,
        "exit_status" => exit_status(spec, &mut service).await,
        "load" => load(spec, &mut service).await,
        "websocket" => websocket(spec, &mut service).await,
        "http2" => http2(spec, &mut service).await,
        "slow_clients" => slow_clients(spec, &mut service).await,
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

/// How long `in_flight` holds its request after the signal: until shortly before the earliest
/// acceptable cut, and past the drain delay in any case.
fn in_flight_length(spec: &Spec) -> Duration {
    let floor = spec.cut_floor();
    let shortly = (floor / 10).min(Duration::from_millis(500));
    floor
        .saturating_sub(shortly)
        .max(spec.drain_delay + Duration::from_millis(200))
}

/// Starts a slow request that lasts `length` after the signal (the preStop comes first).
async fn slow_request(spec: &Spec, service: &Service, length: Duration) -> Result<Slow, Finding> {
    let sent = Instant::now();
    let asked = IN_FLIGHT_OFFSET + spec.pre_stop + length;
    let mut stream = client::connect(service.addr).await.map_err(|o| {
        Finding::fail(
            "",
            format!(
                "could not connect before the signal: {}; fix: check --host and that the service listens on PORT",
                o.describe()
            ),
        )
    })?;
    client::send(&mut stream, &spec.slow(ms(asked)))
        .await
        .map_err(|o| {
            Finding::fail(
                "",
                format!(
                    "could not send the slow request before the signal: {}; fix: check --host and --slow-path",
                    o.describe()
                ),
            )
        })?;
    into_request(sent).await;
    Ok(Slow {
        stream,
        sent,
        asked,
    })
}

/// How far into a request the stop (preStop, then signal) begins: far enough that the server
/// has read it, so the request is known to be in flight. A request that arrives in the same
/// instant as the signal is a race a balancer avoids; the `load` scenario covers that instant.
const IN_FLIGHT_OFFSET: Duration = Duration::from_millis(100);

/// Waits until the request sent at `sent` is [`IN_FLIGHT_OFFSET`] old: a fixed offset into
/// the scenario, not a synchronisation.
async fn into_request(sent: Instant) {
    tokio::time::sleep_until(sent + IN_FLIGHT_OFFSET).await;
}

/// A slow request on its way.
struct Slow {
    stream: TcpStream,
    sent: Instant,
    asked: Duration,
}

impl Slow {
    /// Why a 200 to this request is not the slow path's answer, if it is not: a slow answer
    /// takes its time and carries a body.
    fn not_slow(&self, outcome: &Outcome, answered: Instant) -> Option<String> {
        SlowView {
            sent: self.sent,
            asked: self.asked,
        }
        .not_slow(outcome, answered)
    }
}

/// Reads the slow request's answer and puts its span on the timeline; returns it and when it
/// ended.
async fn finish_slow(spec: &Spec, service: &mut Service, slow: &mut Slow) -> (Outcome, Instant) {
    let outcome = client::read(&mut slow.stream, patience(spec) + spec.pre_stop).await;
    let ended = Instant::now();
    service.timeline.span(
        slow.sent,
        ended,
        format!("slow request: {}", outcome.describe()),
        outcome.is_ok(),
    );
    (outcome, ended)
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

/// Whether the server closes the connection after each response: then keep-alive scenarios
/// have nothing to grade.
async fn closes_after_each_response(stream: &mut TcpStream, answer: &Outcome) -> bool {
    if matches!(answer, Outcome::Complete { close: true, .. }) {
        return true;
    }
    // A close without the header shows as an end of stream right after the answer.
    matches!(
        tokio::time::timeout(
            Duration::from_millis(100),
            client::read_to_close(stream, Duration::from_millis(100))
        )
        .await,
        Ok(Ok(_))
    )
}

/// 1. An in-flight request completes after the signal.
async fn in_flight(spec: &Spec, service: &mut Service) -> Finding {
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

/// 2. Keep-alive connections during and after the drain.
async fn keep_alive(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut reused) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect; fix: check --host and PORT");
    };
    let first = match client::send(&mut reused, &spec.path).await {
        Ok(()) => client::read(&mut reused, patience(spec)).await,
        Err(outcome) => outcome,
    };
    if !first.is_ok() {
        return Finding::fail(
            "",
            format!(
                "{} answered {} before the signal; fix: pass a quick path that answers 200 with --path",
                spec.path,
                first.describe()
            ),
        );
    }
    if closes_after_each_response(&mut reused, &first).await {
        return Finding::skip(
            "the server closes the connection after each response (no keep-alive): no reused connection to grade",
        );
    }
    let signalled = service.stop(spec).await;
    let mut during = String::new();
    let mut in_delay = true;
    let mut after = Some(reused);
    // With no drain delay there is nothing to grade before the close.
    if !spec.drain_delay.is_zero() {
        // Readiness saying 503 proves the drain has begun.
        let (seen, _) = service.watch_readiness(patience(spec)).await;
        if !matches!(seen, Outcome::Complete { status: 503, .. }) {
            return Finding::fail(
                seen.describe(),
                "readiness never answered 503, so the drain delay cannot be observed; fix: \
                 answer 503 on the readiness path from the signal on (--ready-path, --ready-url)",
            );
        }
        let Some(mut reused) = after.take() else {
            return Finding::fail("", "the reused connection was lost");
        };
        let sent = Instant::now();
        let during_reused = match client::send(&mut reused, &spec.path).await {
            Ok(()) => client::read(&mut reused, patience(spec)).await,
            Err(outcome) => outcome,
        };
        let during_new = client::get(service.addr, &spec.path, patience(spec)).await;
        service.timeline.span(
            sent,
            Instant::now(),
            format!(
                "reused + new during the delay: {} / {}",
                during_reused.describe(),
                during_new.describe()
            ),
            during_reused.is_ok() && during_new.is_ok(),
        );
        in_delay = signalled.elapsed() < spec.drain_delay;
        if !during_reused.is_ok() || !during_new.is_ok() {
            return Finding::fail(
                format!(
                    "reused: {}, new: {}",
                    during_reused.describe(),
                    during_new.describe()
                ),
                "a request during the drain delay was not served: the balancer is still routing \
                 here and does not retry that; fix: keep serving normally during the drain delay \
                 (only readiness says 503), close the listener after it",
            );
        }
        during = format!(
            "during the delay{}: reused 200, new 200; ",
            if in_delay { "" } else { " (late)" }
        );
        // The reused connection may have been closed by now; reopen one for after the close.
        after = if matches!(during_reused, Outcome::Complete { close: true, .. }) {
            client::connect(service.addr).await.ok()
        } else {
            Some(reused)
        };
    }
    let _ = in_delay;
    let Some(closed_at) = service.wait_listener_closed(patience(spec)).await else {
        return Finding::fail(
            "listener never closed",
            "new connections were still accepted at the end of the budget; fix: close the \
             listener when the drain delay ends",
        );
    };
    let sent = Instant::now();
    let after_reused = match after.as_mut() {
        Some(stream) => match client::send(stream, &spec.path).await {
            Ok(()) => client::read(stream, patience(spec)).await,
            Err(outcome) => outcome,
        },
        None => Outcome::ClosedBeforeResponse,
    };
    service.timeline.span(
        sent,
        Instant::now(),
        format!("reused after the close: {}", after_reused.describe()),
        !matches!(after_reused, Outcome::Reset | Outcome::Truncated),
    );
    let acceptable = matches!(
        &after_reused,
        Outcome::Complete {
            status: 200 | 503,
            close: true,
            ..
        } | Outcome::ClosedBeforeResponse
    );
    let measurement = format!(
        "{during}after close (+{} ms): {}",
        ms(closed_at - signalled),
        after_reused.describe()
    );
    let _ = service.exit(patience(spec)).await;
    if acceptable {
        Finding::pass(measurement)
    } else {
        Finding::fail(
            measurement,
            format!(
                "a request on a reused connection after the listener closed got {}; fix: answer \
                 it with Connection: close (or close idle connections with a FIN at \
                 stop-accepting), never a reset",
                after_reused.describe()
            ),
        )
    }
}

/// 3. Readiness flips to 503 before the listener closes.
async fn readiness(spec: &Spec, service: &mut Service) -> Finding {
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

/// 4. Time from the last in-flight response to exit.
async fn drain_completion(spec: &Spec, service: &mut Service) -> Finding {
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

/// 5. Time from the signal to exit with nothing in flight.
async fn idle_exit(spec: &Spec, service: &mut Service) -> Finding {
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

/// 6. A request that never completes is cut by the service's own deadline, near the budget,
///    with a status that differs from a clean shutdown's.
async fn deadline(spec: &Spec, service: &mut Service) -> Finding {
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
async fn second_signal(spec: &Spec, service: &mut Service) -> Finding {
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

/// A slow request's timing, apart from its stream.
struct SlowView {
    sent: Instant,
    asked: Duration,
}

impl SlowView {
    /// Why a 200 to this request is not the slow path's answer, if it is not: a slow answer
    /// takes its time and carries a body.
    fn not_slow(&self, outcome: &Outcome, answered: Instant) -> Option<String> {
        let took = answered.saturating_duration_since(self.sent);
        let Outcome::Complete { body, .. } = outcome else {
            return None;
        };
        if took + Duration::from_millis(50) < self.asked.mul_f64(0.9) || body.is_empty() {
            Some(format!(
                "the slow request, asked to take {} ms, was answered after {} ms{}: that is not \
                 the slow path's answer; fix: --slow-path must name a path that answers after \
                 {{ms}} ms with a body, also while draining",
                ms(self.asked),
                ms(took),
                if body.is_empty() {
                    " with an empty body"
                } else {
                    ""
                }
            ))
        } else {
            None
        }
    }
}

/// 8. Many idle keep-alive connections are closed with FIN and do not hold the process.
async fn idle_connections(spec: &Spec, service: &mut Service) -> Finding {
    let mut streams = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let Ok(mut stream) = client::connect(service.addr).await else {
            return Finding::fail("", "could not open the idle connections; fix: raise the service's connection limit, or lower --connections");
        };
        let answer = match client::send(&mut stream, &spec.path).await {
            Ok(()) => client::read(&mut stream, patience(spec)).await,
            Err(outcome) => outcome,
        };
        if !answer.is_ok() {
            return Finding::fail(
                "",
                format!(
                    "{} answered {} on connection {}; fix: pass a quick path that answers 200 with --path",
                    spec.path,
                    answer.describe(),
                    i + 1
                ),
            );
        }
        if i == 0 && closes_after_each_response(&mut stream, &answer).await {
            return Finding::skip(
                "the server closes the connection after each response (no keep-alive): there are no idle connections to grade",
            );
        }
        streams.push(stream);
    }
    let signalled = service.stop(spec).await;
    let mut resets = 0;
    let mut open = 0;
    let mut last_close = signalled;
    for stream in &mut streams {
        match client::read_to_close(stream, patience(spec)).await {
            Ok(_) => last_close = last_close.max(Instant::now()),
            Err(Outcome::Reset) => resets += 1,
            Err(_) => open += 1,
        }
    }
    let exit = service.exit(patience(spec)).await;
    service.timeline.span(
        signalled,
        last_close,
        format!(
            "{} idle connections closing ({resets} reset)",
            spec.connections
        ),
        resets == 0 && open == 0,
    );
    let measurement = format!(
        "{} connections: last closed {} ms after the signal, {resets} reset, {open} never closed",
        spec.connections,
        ms(last_close - signalled)
    );
    if resets > 0 {
        Finding::fail(
            measurement,
            "idle connections were reset instead of closed; fix: shut idle connections down \
             with a FIN (close after reading what is pending), not SO_LINGER 0 or an abort",
        )
    } else if open > 0 || exit.is_none() {
        Finding::fail(
            measurement,
            "idle connections held the process open; fix: close idle keep-alive connections at \
             stop-accepting (Node: server.closeIdleConnections())",
        )
    } else {
        Finding::pass(measurement)
    }
}

/// 9. A Server-Sent Events client is ended cleanly.
async fn sse(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut stream) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect; fix: check --host and PORT");
    };
    if client::send(&mut stream, &spec.events_path).await.is_err() {
        return Finding::fail("", "could not send the request; fix: check --events-path");
    }
    let mut head = [0u8; 1024];
    let first = tokio::time::timeout(
        patience(spec),
        tokio::io::AsyncReadExt::read(&mut stream, &mut head),
    )
    .await;
    let started = matches!(first, Ok(Ok(n)) if n > 0 && String::from_utf8_lossy(&head[..n]).to_ascii_lowercase().contains("text/event-stream"));
    if !started {
        return Finding::fail(
            "",
            format!(
                "{} did not start an event stream; fix: pass the path of an SSE stream with --events-path, or --skip sse",
                spec.events_path
            ),
        );
    }
    let signalled = service.stop(spec).await;
    let ended = client::read_to_close(&mut stream, patience(spec)).await;
    service.timeline.span(
        signalled,
        Instant::now(),
        "event stream after the signal",
        matches!(&ended, Ok(rest) if rest.ends_with(b"0\r\n\r\n")),
    );
    let at = signalled.elapsed();
    let _ = service.exit(patience(spec)).await;
    match ended {
        Ok(rest) if rest.ends_with(b"0\r\n\r\n") => {
            Finding::pass(format!("ended cleanly {} ms after the signal", ms(at)))
        }
        Ok(_) => Finding::fail(
            format!("cut {} ms after the signal", ms(at)),
            "the stream was cut without its final chunk: the client cannot tell a shutdown from \
             a crash; fix: at stop-accepting send a final event (event: shutdown, retry: N) and \
             end the response (lastcall: sse::until_shutdown)",
        ),
        Err(Outcome::Timeout) => Finding::fail(
            format!("still open {} ms after the signal", ms(at)),
            "the stream was still open at the end of the budget plus the tolerance: nothing ended \
             it, and it held the shutdown; fix: at stop-accepting send a final event and end the \
             response (lastcall: sse::until_shutdown)",
        ),
        Err(outcome) => Finding::fail(
            outcome.describe(),
            format!(
                "the stream ended with {}; fix: end it with a final event and the terminating \
                 chunk at stop-accepting, before the exit",
                outcome.describe()
            ),
        ),
    }
}

/// 10. The exit status after a clean shutdown is the expected one.
async fn exit_status(spec: &Spec, service: &mut Service) -> Finding {
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

/// One request of the `load` scenario.
#[derive(Debug)]
struct Sample {
    sent: Instant,
    reused: bool,
    outcome: Outcome,
}

/// 11. A bounded stream of requests on new and reused connections, from the signal to the
///     exit: none fails while readiness still answers 200, and none is answered with a
///     server error (but 503) or, on a new connection, closed unanswered at any time.
async fn load(spec: &Spec, service: &mut Service) -> Finding {
    const WORKERS: usize = 4;
    const MAX_REQUESTS: usize = 3000;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let ready_seen = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut tasks = Vec::new();
    {
        let (stop, ready_seen) = (stop.clone(), ready_seen.clone());
        let (addr, path) = (service.ready_addr, service.ready_path.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                if client::get(addr, &path, Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    ready_seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(asked);
                }
                // Paced probes, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for worker in 0..WORKERS {
        let (stop, count, samples) = (stop.clone(), count.clone(), samples.clone());
        let (addr, path) = (service.addr, spec.path.clone());
        // Half the workers keep one connection as long as the server lets them.
        let reuse = worker % 2 == 0;
        tasks.push(tokio::spawn(async move {
            let mut kept: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed)
                && count.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
            {
                let sent = Instant::now();
                let reused = kept.is_some();
                let mut stream = match kept.take() {
                    Some(stream) => stream,
                    None => match client::connect(addr).await {
                        Ok(stream) => stream,
                        Err(outcome) => {
                            samples
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Sample {
                                    sent,
                                    reused,
                                    outcome,
                                });
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    },
                };
                let outcome = match client::send(&mut stream, &path).await {
                    Ok(()) => client::read(&mut stream, Duration::from_secs(5)).await,
                    Err(outcome) => outcome,
                };
                if reuse && matches!(outcome, Outcome::Complete { close: false, .. }) {
                    kept = Some(stream);
                }
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Sample {
                        sent,
                        reused,
                        outcome,
                    });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let signalled = service.stop(spec).await;
    let exit = service.exit(patience(spec)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let ready_seen = std::mem::take(&mut *ready_seen.lock().unwrap_or_else(|e| e.into_inner()));
    let last_ready = ready_seen.iter().copied().max();
    let after_signal: Vec<&Sample> = samples.iter().filter(|s| s.sent >= signalled).collect();
    let ok = after_signal.iter().filter(|s| s.outcome.is_ok()).count();
    // A reused connection closed before any byte of an answer is retried by every client.
    let retried = |s: &Sample| s.reused && s.outcome == Outcome::ClosedBeforeResponse;
    let failed: Vec<&&Sample> = after_signal
        .iter()
        .filter(|s| !s.outcome.is_ok() && !retried(s))
        .collect();
    let while_ready: Vec<&&Sample> = failed
        .iter()
        .copied()
        .filter(|s| last_ready.is_some_and(|ready| ready >= s.sent))
        .collect();
    let reused = after_signal.iter().filter(|s| s.reused).count();
    if let (Some(first), Some(last)) = (after_signal.first(), after_signal.last()) {
        service.timeline.span(
            first.sent,
            last.sent,
            format!(
                "{} requests: {ok} 200, {} failed while ready",
                after_signal.len(),
                while_ready.len()
            ),
            while_ready.is_empty(),
        );
    }
    let measurement = format!(
        "{} requests from the signal to the exit ({} new, {reused} reused): {ok} 200, {} refused or failed after readiness left 200, {} failed while it said 200",
        after_signal.len(),
        after_signal.len() - reused,
        failed.len() - while_ready.len(),
        while_ready.len()
    );
    if let Some(first) = while_ready.first() {
        return Finding::fail(
            measurement,
            format!(
                "{} requests failed while readiness still answered 200 (the first, on a {} connection {} ms after the signal: {}): a balancer still routes here then and does not retry that; fix: answer 503 on readiness from the signal on, and keep serving every request until the listener closes",
                while_ready.len(),
                if first.reused { "reused" } else { "new" },
                ms(first.sent.saturating_duration_since(signalled)),
                first.outcome.describe()
            ),
        );
    }
    // Whatever readiness says: an error answer other than 503 (the "go elsewhere" a drain may
    // give), or a new connection the server accepted and closed without answering its
    // request, is the service failing work it took because it is stopping.
    let dropped: Vec<&&Sample> = failed
        .iter()
        .copied()
        .filter(|s| match s.outcome {
            Outcome::Complete { status, .. } => status >= 500 && status != 503,
            Outcome::ClosedBeforeResponse => !s.reused,
            _ => false,
        })
        .collect();
    if let Some(first) = dropped.first() {
        return Finding::fail(
            measurement,
            format!(
                "{} requests sent after the signal were answered with a server error or, on a new connection, closed without an answer (the first, on a {} connection {} ms after the signal: {}): the service failed requests it had accepted because it was stopping; fix: close dependencies (database pools, clients) only after every accepted connection has been answered, and count a connection as work from its accept, including those taken from the listen backlog",
                dropped.len(),
                if first.reused { "reused" } else { "new" },
                ms(first.sent.saturating_duration_since(signalled)),
                first.outcome.describe()
            ),
        );
    }
    if exit.is_none() {
        return Finding::fail(measurement, "the service did not exit under load within its budget plus the tolerance; fix: close the listener after the drain delay and answer requests on open connections with Connection: close");
    }
    if after_signal.is_empty() {
        return Finding::fail(
            measurement,
            "no request was sent after the signal; fix: check --path and --host",
        );
    }
    Finding::pass(measurement)
}

/// How long after the last real response connections with a half-sent head may hold the exit.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(1);

/// 12. Connections with a half-sent request head at the signal neither hold the exit past a
///     short grace after the last real response nor turn a clean exit into a failure.
async fn slow_clients(spec: &Spec, service: &mut Service) -> Finding {
    const CLIENTS: usize = 5;
    let mut idle = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let Ok(mut stream) = client::connect(service.addr).await else {
            return Finding::fail("", "could not connect; fix: check --host and PORT");
        };
        let head = client::request_head(&stream, &spec.path);
        // All but the blank line that ends the head.
        let half = &head.as_bytes()[..head.len() - 2];
        if client::send_raw(&mut stream, half).await.is_err() {
            return Finding::fail(
                "",
                "could not send a half request head; fix: check --host and PORT",
            );
        }
        idle.push(stream);
    }
    let mut slow =
        match slow_request(spec, service, spec.drain_delay + Duration::from_millis(500)).await {
            Ok(slow) => slow,
            Err(finding) => return finding,
        };
    let signalled = service.stop(spec).await;
    let (outcome, answered) = finish_slow(spec, service, &mut slow).await;
    drop(slow);
    let exit = service.exit(patience(spec)).await;
    let Some((status, exited)) = exit else {
        return Finding::fail(
            "no exit",
            format!(
                "{CLIENTS} connections with a half-sent request head held the process past its budget; fix: close connections that have not sent a whole request head at stop-accepting (a header read timeout shorter than the drain)"
            ),
        );
    };
    let took = exited.saturating_duration_since(answered);
    let measurement = format!(
        "exit {} ms after the last real response, {}, with {CLIENTS} half-sent heads",
        ms(took),
        describe_status(status)
    );
    if !outcome.is_ok() {
        let at = answered.saturating_duration_since(signalled);
        return Finding::fail(
            measurement,
            format!(
                "the real request in flight got {} {} ms after the signal; {}",
                outcome.describe(),
                ms(at),
                cut_fix(spec, at)
            ),
        );
    }
    if took > SLOW_CLIENT_GRACE {
        return Finding::fail(
            measurement,
            format!(
                "{CLIENTS} connections with a half-sent request head held the exit {} ms past the last real response; fix: at stop-accepting, close connections that have not sent a whole request head (they carry no request yet)",
                ms(took)
            ),
        );
    }
    if !spec.clean_exit.accepts(status, spec.signal) {
        return Finding::fail(
            measurement,
            unclean_exit(
                spec,
                status,
                "with half-sent request heads open at the signal",
            ) + "; and do not count a connection without a whole request as work in flight",
        );
    }
    Finding::pass(measurement)
}

/// 13. A WebSocket client receives a close frame 1001 "going away" before the TCP close.
async fn websocket(spec: &Spec, service: &mut Service) -> Finding {
    let session = match ws::open(service.addr, &spec.ws_path, Duration::from_secs(5)).await {
        Ok(session) => session,
        Err(why) => {
            return Finding::skip(format!(
                "the server does not speak WebSocket on {} ({why}): nothing to grade (--ws-path names the endpoint)",
                spec.ws_path
            ))
        }
    };
    let signalled = service.stop(spec).await;
    let ending = session.until_end(patience(spec)).await;
    let ended = Instant::now();
    let _ = service.exit(patience(spec)).await;
    let good = ending.close == Some(Some(1001)) && ending.tcp.is_none();
    service
        .timeline
        .span(signalled, ended, "WebSocket session after the signal", good);
    let close_ms = ending
        .close_at
        .map_or(0, |at| ms(at.saturating_duration_since(signalled)));
    let tcp = ending
        .tcp
        .as_ref()
        .map_or("FIN".to_owned(), Outcome::describe);
    match ending.close {
        Some(Some(1001)) if ending.tcp.is_none() => Finding::pass(format!("close 1001 {close_ms} ms after the signal, then FIN")),
        Some(Some(1001)) => Finding::fail(
            format!("close 1001 {close_ms} ms after the signal, then {tcp}"),
            format!("after its close frame the connection ended with {tcp}, not a clean close; fix: wait for the client's close frame (a second or so), then close the TCP connection"),
        ),
        Some(code) => Finding::fail(
            format!("close {} {close_ms} ms after the signal", code.map_or("without a code".to_owned(), |c| c.to_string())),
            "the session was closed with another code than 1001 \"going away\", so the client does not know to reconnect elsewhere; fix: close WebSockets with 1001 at stop-accepting (lastcall: http::ws::recv_until_shutdown)",
        ),
        None => Finding::fail(
            format!("{tcp} {} ms after the signal, no close frame", ms(ended.saturating_duration_since(signalled))),
            format!("the TCP connection ended ({tcp}) without a WebSocket close frame: the client cannot tell a shutdown from a crash; fix: send a close frame 1001 \"going away\" at stop-accepting (lastcall: http::ws::recv_until_shutdown)"),
        ),
    }
}

/// 14. HTTP/2 (cleartext, prior knowledge): a stream in flight at the signal completes, and the
///     client receives GOAWAY before the connection closes.
async fn http2(spec: &Spec, service: &mut Service) -> Finding {
    let length = spec.drain_delay + Duration::from_millis(1000);
    let sent = Instant::now();
    let asked = IN_FLIGHT_OFFSET + spec.pre_stop + length;
    let path = spec.slow(ms(asked));
    let connection = match h2::open(service.addr, &path, Duration::from_secs(5)).await {
        Ok(connection) => connection,
        Err(why) => {
            return Finding::skip(format!(
                "the server does not speak HTTP/2 cleartext with prior knowledge ({why}): nothing to grade"
            ))
        }
    };
    into_request(sent).await;
    let signalled = service.stop(spec).await;
    let ending = connection.until_end(patience(spec) + spec.pre_stop).await;
    let closed = Instant::now();
    let _ = service.exit(patience(spec)).await;
    let ok = ending.complete && ending.status == Some(200) && ending.reset.is_none();
    service.timeline.span(
        sent,
        ending.completed_at.unwrap_or(closed),
        format!(
            "HTTP/2 stream: {}",
            if ok {
                "200".to_owned()
            } else {
                "not completed".to_owned()
            }
        ),
        ok,
    );
    if let Some((at, _, _)) = ending.goaway {
        service.timeline.mark(at, "GOAWAY");
    }
    let goaway = ending
        .goaway
        .map_or("no GOAWAY".to_owned(), |(at, last, code)| {
            format!(
                "GOAWAY (last stream {last}, code {code}) +{} ms",
                ms(at.saturating_duration_since(signalled))
            )
        });
    let tcp = ending
        .tcp
        .as_ref()
        .map_or("FIN".to_owned(), Outcome::describe);
    let stream = match (ending.complete, ending.status, ending.reset) {
        (_, _, Some(code)) => format!("stream reset (code {code})"),
        (true, Some(status), None) => format!("stream {status}, {} body bytes", ending.body_bytes),
        (true, None, None) => "stream complete, status unread".to_owned(),
        (false, _, None) => "stream cut".to_owned(),
    };
    let measurement = format!("{stream}; {goaway}; then {tcp}");
    if !ok {
        let at = closed.saturating_duration_since(signalled);
        return Finding::fail(
            measurement,
            format!(
                "the HTTP/2 stream in flight at the signal did not complete with 200 ({stream}); {}",
                cut_fix(spec, at)
            ),
        );
    }
    if let Some(reason) = (SlowView { sent, asked }).not_slow(
        &Outcome::Complete {
            status: 200,
            close: false,
            body: vec![0; ending.body_bytes],
        },
        ending.completed_at.unwrap_or(closed),
    ) {
        return Finding::fail(measurement, reason);
    }
    match ending.goaway {
        None => Finding::fail(
            measurement,
            format!("the connection ended ({tcp}) without a GOAWAY: an HTTP/2 client cannot tell which streams were processed, nor that it should reconnect; fix: send GOAWAY at stop-accepting and close once the streams are done (hyper: graceful_shutdown; Node: session.close())"),
        ),
        Some((_, _, code)) if code != 0 => Finding::fail(
            measurement,
            format!("the GOAWAY carried error code {code}, not NO_ERROR (0): clients treat it as a failure; fix: a graceful GOAWAY with NO_ERROR"),
        ),
        Some(_) if ending.tcp.is_some() => Finding::fail(
            measurement,
            format!("after the GOAWAY the connection ended with {tcp}, not a clean close; fix: close the connection with a FIN once its streams are done"),
        ),
        Some(_) => Finding::pass(measurement),
    }
}
