//! The scenarios `lastcall check` runs, each on a fresh process.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{self, Outcome};
use super::service::Service;
use super::timeline::Timeline;
use super::Spec;

/// Every scenario, in the order they run.
pub(crate) const ALL: [&str; 10] = [
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
];

/// What a scenario found.
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) passed: bool,
    pub(crate) measurement: String,
    pub(crate) reason: Option<String>,
}

impl Finding {
    fn pass(measurement: impl Into<String>) -> Finding {
        Finding {
            passed: true,
            measurement: measurement.into(),
            reason: None,
        }
    }

    fn fail(measurement: impl Into<String>, reason: impl Into<String>) -> Finding {
        Finding {
            passed: false,
            measurement: measurement.into(),
            reason: Some(reason.into()),
        }
    }
}

/// Runs the scenario called `name`.
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
        other => anyhow::bail!("unknown scenario {other:?}"),
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

/// Starts a slow request that outlives the drain delay.
async fn slow_request(spec: &Spec, service: &Service, extra: Duration) -> Result<Slow, Finding> {
    let sent = Instant::now();
    let millis = ms(spec.drain_delay + extra);
    let mut stream = client::connect(service.addr)
        .await
        .map_err(|o| Finding::fail("", format!("could not connect: {}", o.describe())))?;
    client::send(&mut stream, &spec.slow(millis))
        .await
        .map_err(|o| {
            Finding::fail(
                "",
                format!("could not send the slow request: {}", o.describe()),
            )
        })?;
    Ok(Slow { stream, sent })
}

/// A slow request on its way.
struct Slow {
    stream: TcpStream,
    sent: Instant,
}

/// Reads the slow request's answer and puts its span on the timeline.
async fn finish_slow(spec: &Spec, service: &mut Service, mut slow: Slow) -> Outcome {
    let outcome = client::read(&mut slow.stream, patience(spec)).await;
    service.timeline.span(
        slow.sent,
        Instant::now(),
        format!("slow request: {}", outcome.describe()),
        outcome.is_ok(),
    );
    outcome
}

/// 1. An in-flight request completes after the signal.
async fn in_flight(spec: &Spec, service: &mut Service) -> Finding {
    let slow = match slow_request(spec, service, Duration::from_millis(1000)).await {
        Ok(slow) => slow,
        Err(finding) => return finding,
    };
    let signalled = service.signal(spec.signal);
    let outcome = finish_slow(spec, service, slow).await;
    let answered = signalled.elapsed();
    let exit = service.exit(patience(spec)).await;
    if !outcome.is_ok() {
        return Finding::fail(
            outcome.describe(),
            format!(
                "the request in flight at {} got {} instead of 200",
                spec.signal,
                outcome.describe()
            ),
        );
    }
    match exit {
        Some(_) => Finding::pass(format!("200 {} ms after the signal", ms(answered))),
        None => Finding::fail(
            "200",
            "the service did not exit within its budget plus the tolerance",
        ),
    }
}

/// 2. Keep-alive connections during and after the drain.
async fn keep_alive(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut reused) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect");
    };
    if client::send(&mut reused, &spec.path).await.is_err()
        || !client::read(&mut reused, patience(spec)).await.is_ok()
    {
        return Finding::fail(
            "",
            format!("{} did not answer 200 before the signal", spec.path),
        );
    }
    let signalled = service.signal(spec.signal);
    // Readiness saying 503 proves the drain has begun.
    let (seen, _) = service.watch_readiness(spec, patience(spec)).await;
    if !matches!(seen, Outcome::Complete { status: 503, .. }) {
        return Finding::fail(
            seen.describe(),
            "readiness never answered 503, so the drain delay cannot be observed",
        );
    }
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
    let in_delay = signalled.elapsed() < spec.drain_delay;
    if !during_reused.is_ok() || !during_new.is_ok() {
        return Finding::fail(
            format!("reused: {}, new: {}", during_reused.describe(), during_new.describe()),
            "a request during the drain delay was not served: the balancer is still routing here and does not retry that",
        );
    }
    // The reused connection may have been closed by now; reopen one for after the close.
    let mut after = if matches!(during_reused, Outcome::Complete { close: true, .. }) {
        client::connect(service.addr).await.ok()
    } else {
        Some(reused)
    };
    let Some(closed_at) = service.wait_listener_closed(patience(spec)).await else {
        return Finding::fail(
            "listener never closed",
            "new connections were still accepted at the end of the budget",
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
        "during the delay{}: reused 200, new 200; after close (+{} ms): {}",
        if in_delay { "" } else { " (late)" },
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
                "a request on a reused connection after the listener closed got {}",
                after_reused.describe()
            ),
        )
    }
}

/// 3. Readiness flips to 503 before the listener closes.
async fn readiness(spec: &Spec, service: &mut Service) -> Finding {
    let signalled = service.signal(spec.signal);
    let (seen, at) = service.watch_readiness(spec, patience(spec)).await;
    let _ = service.exit(patience(spec)).await;
    match seen {
        Outcome::Complete { status: 503, .. } => Finding::pass(format!("503 {} ms after the signal", ms(at - signalled))),
        Outcome::Refused => Finding::fail(
            format!("refused {} ms after the signal", ms(at - signalled)),
            "the listener closed before readiness ever answered 503: balancers kept routing here until connections failed",
        ),
        other => Finding::fail(other.describe(), format!("readiness answered {} instead of 503", other.describe())),
    }
}

/// 4. Time from the last in-flight response to exit.
async fn drain_completion(spec: &Spec, service: &mut Service) -> Finding {
    let slow = match slow_request(spec, service, Duration::from_millis(500)).await {
        Ok(slow) => slow,
        Err(finding) => return finding,
    };
    service.signal(spec.signal);
    // The stream is closed as soon as its answer is read, as a client does.
    let outcome = finish_slow(spec, service, slow).await;
    let answered = Instant::now();
    let Some((status, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            outcome.describe(),
            "the service did not exit after its last response",
        );
    };
    let took = exited.saturating_duration_since(answered);
    let measurement = format!(
        "exit {:.1} ms after the last response",
        took.as_secs_f64() * 1000.0
    );
    if !outcome.is_ok() {
        Finding::fail(
            measurement,
            format!("the last request got {}", outcome.describe()),
        )
    } else if took > spec.tolerance {
        Finding::fail(
            measurement,
            format!(
                "the service lingered more than {} ms after its work was done",
                ms(spec.tolerance)
            ),
        )
    } else {
        let _ = status;
        Finding::pass(measurement)
    }
}

/// 5. Time from the signal to exit with nothing in flight.
async fn idle_exit(spec: &Spec, service: &mut Service) -> Finding {
    let signalled = service.signal(spec.signal);
    let Some((_, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            "no exit",
            "the idle service did not exit within its budget plus the tolerance",
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
            "an idle service should exit soon after its drain delay",
        )
    } else {
        Finding::pass(measurement)
    }
}

/// 6. A request that never completes is cut by the service's own deadline.
async fn deadline(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut stream) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect");
    };
    if client::send(&mut stream, &spec.slow(600_000))
        .await
        .is_err()
    {
        return Finding::fail("", "could not send the request");
    }
    let signalled = service.signal(spec.signal);
    let Some((status, exited)) = service.exit(patience(spec)).await else {
        return Finding::fail(
            "no exit",
            format!(
                "still running {} ms after the signal: the service has no deadline of its own",
                ms(patience(spec))
            ),
        );
    };
    service.timeline.span(
        signalled,
        exited,
        "a request that never completes",
        !status.success(),
    );
    let measurement = format!(
        "exit {} ms after the signal, {status}",
        ms(exited - signalled)
    );
    if status.success() {
        Finding::fail(
            measurement,
            "it cut work yet exited 0: the exit status hides the cut request",
        )
    } else {
        Finding::pass(measurement)
    }
}

/// 7. A second signal and a SIGINT during the drain change nothing.
async fn second_signal(spec: &Spec, service: &mut Service) -> Finding {
    let slow = match slow_request(spec, service, Duration::from_millis(800)).await {
        Ok(slow) => slow,
        Err(finding) => return finding,
    };
    service.signal(spec.signal);
    let (seen, _) = service.watch_readiness(spec, patience(spec)).await;
    let _ = seen;
    service.signal(spec.signal);
    service.signal(Signal::SIGINT);
    let outcome = finish_slow(spec, service, slow).await;
    let exit = service.exit(patience(spec)).await;
    let measurement = format!(
        "in-flight request: {}; exit: {}",
        outcome.describe(),
        exit.map_or("none".into(), |(s, _)| s.to_string())
    );
    if !outcome.is_ok() {
        Finding::fail(
            measurement,
            "the repeated signals cut the request in flight",
        )
    } else if !exit.is_some_and(|(s, _)| s.success()) {
        Finding::fail(measurement, "the repeated signals changed the exit status")
    } else {
        Finding::pass(measurement)
    }
}

/// 8. Many idle keep-alive connections are closed with FIN and do not hold the process.
async fn idle_connections(spec: &Spec, service: &mut Service) -> Finding {
    let mut streams = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        let Ok(mut stream) = client::connect(service.addr).await else {
            return Finding::fail("", "could not open the idle connections");
        };
        if client::send(&mut stream, &spec.path).await.is_err()
            || !client::read(&mut stream, patience(spec)).await.is_ok()
        {
            return Finding::fail(
                "",
                format!("{} did not answer 200 on every connection", spec.path),
            );
        }
        streams.push(stream);
    }
    let signalled = service.signal(spec.signal);
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
        Finding::fail(measurement, "idle connections were reset instead of closed")
    } else if open > 0 || exit.is_none() {
        Finding::fail(measurement, "idle connections held the process open")
    } else {
        Finding::pass(measurement)
    }
}

/// 9. A Server-Sent Events client is ended cleanly.
async fn sse(spec: &Spec, service: &mut Service) -> Finding {
    let Ok(mut stream) = client::connect(service.addr).await else {
        return Finding::fail("", "could not connect");
    };
    if client::send(&mut stream, &spec.events_path).await.is_err() {
        return Finding::fail("", "could not send the request");
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
            format!("{} did not start an event stream", spec.events_path),
        );
    }
    let signalled = service.signal(spec.signal);
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
        Ok(rest) if rest.ends_with(b"0\r\n\r\n") => Finding::pass(format!("ended cleanly {} ms after the signal", ms(at))),
        Ok(_) => Finding::fail(
            format!("cut {} ms after the signal", ms(at)),
            "the stream was cut without its final chunk: the client cannot tell a shutdown from a crash",
        ),
        Err(outcome) => Finding::fail(outcome.describe(), format!("the stream ended with {}", outcome.describe())),
    }
}

/// 10. The exit status is 0 after a clean shutdown.
async fn exit_status(spec: &Spec, service: &mut Service) -> Finding {
    service.signal(spec.signal);
    match service.exit(patience(spec)).await {
        Some((status, _)) if status.success() => Finding::pass("exit 0"),
        Some((status, _)) => Finding::fail(status.to_string(), "a clean shutdown should exit 0"),
        None => Finding::fail("no exit", "the service did not exit"),
    }
}
