//! The scenarios of connections without a request in flight: reused keep-alive connections
//! through the drain (`keep_alive`), many idle ones closed with a FIN (`idle_connections`), and
//! half-sent request heads that must not hold the exit (`slow_clients`).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::slow::{finish_slow, slow_request};
use super::{cut_fix, ms, patience, unclean_exit, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::{describe_status, Spec};

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

/// 2. Keep-alive connections during and after the drain.
pub(super) async fn keep_alive(spec: &Spec, service: &mut Service) -> Finding {
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

/// 8. Many idle keep-alive connections are closed with FIN and do not hold the process.
pub(super) async fn idle_connections(spec: &Spec, service: &mut Service) -> Finding {
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

/// How long after the last real response connections with a half-sent head may hold the exit.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(1);

/// 12. Connections with a half-sent request head at the signal neither hold the exit past a
///     short grace after the last real response nor turn a clean exit into a failure.
pub(super) async fn slow_clients(spec: &Spec, service: &mut Service) -> Finding {
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
