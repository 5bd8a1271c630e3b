//! The scenarios of long-lived streams at the signal: a Server-Sent Events stream ends with its
//! final chunk (`sse`), a WebSocket session with a close frame 1001 (`websocket`), an HTTP/2
//! connection with GOAWAY after its stream in flight completes (`http2`).

use std::time::Duration;

use tokio::time::Instant;

use super::slow::{into_request, SlowView, IN_FLIGHT_OFFSET};
use super::{cut_fix, ms, patience, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::{h2, ws, Spec};

/// 9. A Server-Sent Events client is ended cleanly.
pub(super) async fn sse(spec: &Spec, service: &mut Service) -> Finding {
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

/// 13. A WebSocket client receives a close frame 1001 "going away" before the TCP close.
pub(super) async fn websocket(spec: &Spec, service: &mut Service) -> Finding {
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
pub(super) async fn http2(spec: &Spec, service: &mut Service) -> Finding {
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
