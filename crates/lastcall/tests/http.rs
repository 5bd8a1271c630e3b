//! The HTTP drain on real sockets: a raw HTTP/1.1 client against `serve` + `DrainLayer`.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query};
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use lastcall::http::ws::recv_until_shutdown;
use lastcall::http::{serve, sse::until_shutdown, DrainLayer, DrainPolicy, ServeConfig};
use lastcall::report::Report;
use lastcall::{Controller, Exit, Phase, Shutdown, WorkKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};

/// Bounds a hang; not a measurement.
pub(super) const PATIENCE: Duration = Duration::from_secs(20);

/// A served controller under test; the gRPC tests use it too.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) shutdown: Shutdown,
    pub(super) trigger: lastcall::Trigger,
    pub(super) run: JoinHandle<Report>,
    pub(super) served: JoinHandle<std::io::Result<()>>,
}

fn app(shutdown: Shutdown) -> Router {
    let events = shutdown.clone();
    let sockets = shutdown.clone();
    Router::new()
        .route(
            "/ws",
            get(move |upgrade: WebSocketUpgrade| {
                let shutdown = sockets.clone();
                async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        let _session = shutdown.tracker().stream("ws /ws");
                        while let Some(Ok(message)) =
                            recv_until_shutdown(&mut socket, &shutdown).await
                        {
                            if socket.send(message).await.is_err() {
                                break;
                            }
                        }
                    })
                }
            }),
        )
        .route(
            "/orders/{id}",
            get(|Path(id): Path<u32>| async move { format!("{{\"id\":{id}}}") }),
        )
        .route("/reports/slow", get(slow).post(slow))
        .route(
            "/events",
            get(move || {
                let shutdown = events.clone();
                async move {
                    let ticks = futures_util::stream::unfold(0u64, |n| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((
                            Ok::<_, Infallible>(Event::default().data(format!("tick {n}"))),
                            n + 1,
                        ))
                    });
                    Sse::new(until_shutdown(&shutdown, ticks))
                }
            }),
        )
}

/// Answers after `?ms=` milliseconds; never reads a request body.
async fn slow(Query(q): Query<std::collections::HashMap<String, u64>>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    "report ready"
}

async fn start(builder: lastcall::Builder) -> Server {
    start_with(builder, ServeConfig::default()).await
}

async fn start_with(builder: lastcall::Builder, config: ServeConfig) -> Server {
    start_serving(builder, |listener, shutdown| {
        let service = DrainLayer::new(shutdown.clone()).layer(app(shutdown.clone()));
        tokio::spawn(serve(listener, service, shutdown, config))
    })
    .await
}

/// A controller built from `builder` (its environment ignored), running, with what `serving`
/// spawns on a fresh loopback listener.
async fn start_serving(
    builder: lastcall::Builder,
    serving: impl FnOnce(TcpListener, Shutdown) -> JoinHandle<std::io::Result<()>>,
) -> Server {
    let controller = builder.ignore_env().build().unwrap();
    let shutdown = controller.shutdown();
    let trigger = controller.trigger();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = serving(listener, shutdown.clone());
    let run = tokio::spawn(controller.run_with_report());
    Server {
        addr,
        shutdown,
        trigger,
        run,
        served,
    }
}

impl Server {
    /// Waits for the shutdown's report and for `serve` to return.
    pub(super) async fn finish(self) -> Report {
        let report = tokio::time::timeout(PATIENCE, self.run)
            .await
            .expect("shutdown finished")
            .unwrap();
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("serve returned")
            .unwrap()
            .unwrap();
        report
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    }
}

async fn send(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads one whole response (Content-Length or chunked); panics on a reset or a truncation.
async fn read_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("a response")
            .expect("no reset");
        assert!(
            n > 0,
            "connection closed before a complete head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    let mut body = buf[head_end..].to_vec();
    if let Some(len) = answer.header("content-length") {
        let len: usize = len.parse().unwrap();
        while body.len() < len {
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
                .await
                .expect("body")
                .expect("no reset");
            assert!(n > 0, "truncated body");
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        assert_eq!(
            answer.header("transfer-encoding").as_deref(),
            Some("chunked")
        );
        while !body.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
                .await
                .expect("body")
                .expect("no reset");
            assert!(
                n > 0,
                "stream cut without the chunked terminator: {:?}",
                String::from_utf8_lossy(&body)
            );
            body.extend_from_slice(&chunk[..n]);
        }
    }
    answer.body = String::from_utf8_lossy(&body).into_owned();
    answer
}

async fn fetch(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    send(&mut stream, path).await;
    read_answer(&mut stream).await
}

/// Waits until `serve` has stopped accepting: the phase has been reached and a new connection
/// is refused, so the listener is closed and the connections it had were woken by the stop
/// before it (the same wake-up).
async fn until_stopped_accepting(server: &Server) {
    while server.shutdown.phase() < Phase::StopAccepting {
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(PATIENCE, async {
        loop {
            match TcpStream::connect(server.addr).await {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                // Queued as the listener closed (reset with it), or taken from the backlog
                // (closed without a request after its grace): not closed yet.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Ok(probe) => drop(probe),
                Err(e) => panic!("connect: {e}"),
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener closed");
}

/// Asserts the server closes the connection with FIN (a clean end of stream), not a reset.
async fn assert_closed_cleanly(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PATIENCE, stream.read(&mut byte))
        .await
        .expect("closed")
    {
        Ok(0) => {}
        Ok(_) => panic!("unexpected data"),
        Err(e) => panic!("connection reset instead of closed: {e}"),
    }
}

#[tokio::test]
async fn a_slow_request_in_flight_at_the_signal_completes_with_connection_close() {
    let server = start(
        Controller::builder()
            .continue_after_run()
            .budget(Duration::from_secs(10)),
    )
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    send(&mut client, "/reports/slow?ms=400").await;
    // Wait until the request is in flight.
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "report ready");
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut client).await;
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
}

#[tokio::test]
async fn a_request_body_left_unread_does_not_turn_the_close_into_a_reset() {
    let server = start(
        Controller::builder()
            .continue_after_run()
            .budget(Duration::from_secs(10)),
    )
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    // An upload the handler never reads: the server answers with `Connection: close` while
    // the body sits unread in its socket. Closing the socket then would make the kernel send
    // a reset, which can destroy the response on its way; the server must send FIN and
    // discard what the client still sends.
    client
        .write_all(
            b"POST /reports/slow?ms=400 HTTP/1.1\r\nhost: test\r\ncontent-length: 33554432\r\n\r\n",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = client.into_split();
    // More than the server's buffers take in, sent alongside, as an uploading client does.
    let upload = tokio::spawn(async move {
        let sent = writer.write_all(&vec![b'x'; 32 << 20]).await;
        (sent, writer)
    });
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");
    let answer = read_answer(&mut reader).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "report ready"));
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut reader).await;
    let (sent, writer) = upload.await.unwrap();
    sent.expect("the rest of the upload is taken in and discarded, not answered with a reset");
    drop(writer); // the client's FIN ends the server's wait
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
}

#[tokio::test]
async fn requests_during_the_drain_delay_are_served_while_readiness_says_503() {
    let server = start(
        Controller::builder()
            .continue_after_run()
            .drain_delay(Duration::from_millis(800)),
    )
    .await;
    assert_eq!(fetch(server.addr, "/health/ready").await.status, 200);
    let mut reused = TcpStream::connect(server.addr).await.unwrap();
    send(&mut reused, "/orders/1").await;
    assert_eq!(read_answer(&mut reused).await.status, 200);

    server.trigger.trigger("test");
    let ready = fetch(server.addr, "/health/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, r#"{"ready":false}"#)
    );
    assert_eq!(
        fetch(server.addr, "/health/live").await.status,
        200,
        "liveness stays up"
    );
    assert_eq!(server.shutdown.phase(), Phase::DrainDelay);

    send(&mut reused, "/orders/2").await;
    let answer = read_answer(&mut reused).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"id":2}"#),
        "reused connection served"
    );
    assert_eq!(
        answer.header("connection"),
        None,
        "and kept alive during the delay"
    );
    assert_eq!(
        fetch(server.addr, "/orders/3").await.status,
        200,
        "new connection served"
    );
    assert_eq!(
        server.shutdown.phase(),
        Phase::DrainDelay,
        "all of it before the delay ended"
    );

    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    assert_eq!(report.rejected_while_draining, 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_with_fin_and_new_ones_refused() {
    let server = start(Controller::builder().continue_after_run()).await;
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        send(&mut stream, &format!("/orders/{i}")).await;
        assert_eq!(read_answer(&mut stream).await.status, 200);
        idle.push(stream);
    }
    server.trigger.trigger("test");
    for stream in &mut idle {
        assert_closed_cleanly(stream).await;
    }
    let addr = server.addr;
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    let refused = TcpStream::connect(addr)
        .await
        .expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_request_that_never_completes_is_cut_at_the_deadline_and_named() {
    let server = start(
        Controller::builder()
            .continue_after_run()
            .budget(Duration::from_secs(2))
            .flush_timeout(Duration::from_millis(200))
            .close_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    send(&mut client, "/reports/slow?ms=600000").await;
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::WorkCut);
    let cut = report.work_at_deadline.expect("named");
    assert!(
        cut.items
            .iter()
            .any(|i| i.kind == WorkKind::Request && i.label == "GET /reports/slow?ms=600000"),
        "{cut}"
    );
    assert!(
        cut.items.iter().any(|i| i.kind == WorkKind::Connection),
        "{cut}"
    );
}

#[tokio::test]
async fn an_sse_client_gets_a_final_event_and_a_clean_end() {
    let server = start(Controller::builder().continue_after_run()).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    send(&mut client, "/events").await;
    // The head and the first ticks.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("tick 1") {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        server.shutdown.tracker().active().by_kind.stream,
        1,
        "tracked as a stream"
    );
    server.trigger.trigger("test");
    loop {
        let n = tokio::time::timeout(PATIENCE, client.read(&mut chunk))
            .await
            .unwrap()
            .expect("no reset");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("event: shutdown"), "{text}");
    assert!(text.contains("retry: 1000"), "{text}");
    assert!(
        text.ends_with("0\r\n\r\n"),
        "ends with the chunked terminator: {text:?}"
    );
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    assert!(report.phase(Phase::WaitForWork).unwrap().duration < Duration::from_secs(5));
}

#[tokio::test]
async fn the_reject_policy_answers_503_with_retry_after_and_counts_it() {
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .build()
        .unwrap();
    let shutdown = controller.shutdown();
    let service = DrainLayer::new(shutdown.clone())
        .policy(DrainPolicy::Reject {
            retry_after: Duration::from_millis(1500),
        })
        .layer(app(shutdown.clone()));
    let request = || {
        http::Request::get("/orders/1")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let served = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(served.status(), 200, "served before the shutdown");
    // The response body holds the request's guard until it is sent, or, here, dropped.
    assert_eq!(shutdown.tracker().len(), 1);
    drop(served);
    assert!(shutdown.tracker().is_empty());

    let trigger = controller.trigger();
    // Holds the shutdown in wait-for-work while the test looks at it.
    let job = shutdown.tracker().job("held by the test");
    let run = tokio::spawn(controller.run_with_report());
    trigger.trigger("test");
    shutdown.reached(Phase::StopAccepting).await;
    let rejected = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(rejected.status(), 503);
    assert_eq!(rejected.headers()["connection"], "close");
    assert_eq!(rejected.headers()["retry-after"], "2");
    let body = axum::body::to_bytes(axum::body::Body::new(rejected.into_body()), 1024)
        .await
        .unwrap();
    assert!(
        body.starts_with(br#"{"error":"server_draining""#),
        "{body:?}"
    );
    let health = http::Request::get("/health/live")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        service.oneshot(health).await.unwrap().status(),
        200,
        "health is never rejected"
    );
    drop(job);
    let report = run.await.unwrap();
    assert_eq!(report.rejected_while_draining, 1);
    assert_eq!(report.exit, Exit::Clean, "{report}");
}

#[tokio::test]
async fn an_http2_client_sees_goaway_and_its_in_flight_stream_completes() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = start(Controller::builder().continue_after_run()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = |path: &str| {
        http::Request::get(format!("http://{}{path}", server.addr))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let in_flight = sender.send_request(request("/reports/slow?ms=400"));
    let in_flight = tokio::spawn(in_flight);
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight stream completes");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"report ready");
    // GOAWAY: the server ends the connection once its last stream is done, without an error.
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the connection ends")
        .unwrap()
        .expect("a graceful end, not an error");
    assert!(
        sender.send_request(request("/orders/1")).await.is_err(),
        "no new stream on a connection that got GOAWAY"
    );
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
}

#[tokio::test]
async fn a_websocket_client_gets_close_1001_and_the_server_exits_clean() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let server = start(Controller::builder().continue_after_run()).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    assert_eq!(server.shutdown.tracker().active().by_kind.stream, 1);

    server.trigger.trigger("test");
    let close = tokio::time::timeout(PATIENCE, client.next())
        .await
        .expect("a close frame")
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "going away");
    // tungstenite answers the close; the stream then ends without an error.
    assert!(tokio::time::timeout(PATIENCE, client.next())
        .await
        .unwrap()
        .is_none());
    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    assert!(report.phase(Phase::WaitForWork).unwrap().duration < Duration::from_secs(5));
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_disconnected_by_the_header_read_timeout() {
    // Never quiet long enough for the idle timeout, never done with its head.
    let config = ServeConfig::default()
        .header_read_timeout(Duration::from_millis(400))
        .idle_timeout(Duration::from_secs(60));
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    // A keep-alive connection whose requests are prompt is not affected, however long it lives.
    let mut prompt = TcpStream::connect(server.addr).await.unwrap();
    let head = b"GET /orders/1 HTTP/1.1\r\nhost: test\r\nx-padding: ";
    let mut cut_after = None;
    for (i, byte) in head
        .iter()
        .chain(std::iter::repeat(&b'a'))
        .take(200)
        .enumerate()
    {
        if slow.write_all(&[*byte]).await.is_err() {
            cut_after = Some(i);
            break;
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(i);
                break;
            }
            Ok(Ok(_)) => panic!("no answer is due to an incomplete head"),
            Err(_) => {} // still open
        }
        if i % 10 == 0 {
            send(&mut prompt, "/orders/1").await;
            assert_eq!(read_answer(&mut prompt).await.status, 200);
        }
    }
    let cut_after = cut_after.expect("the server closed the trickling connection");
    assert!(cut_after < 150, "cut after {cut_after} bytes");
    send(&mut prompt, "/orders/1").await;
    assert_eq!(
        read_answer(&mut prompt).await.status,
        200,
        "the prompt client is still served"
    );
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn a_request_sent_on_a_connection_opened_just_before_stop_accepting_is_served() {
    let server = start(
        Controller::builder()
            .continue_after_run()
            .drain_delay(Duration::ZERO),
    )
    .await;
    // Connected and accepted, request not sent yet: a balancer's fresh upstream connection.
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    while server.shutdown.tracker().active().by_kind.connection == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");
    until_stopped_accepting(&server).await;
    // The request goes out after stop-accepting began: it is answered, not cut.
    fresh
        .write_all(b"POST /orders/1 HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut fresh).await;
    assert_eq!(answer.status, 405, "answered by the app: {}", answer.head);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut fresh).await;
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn with_an_idle_close_delay_the_next_request_on_an_idle_connection_is_answered() {
    let config = ServeConfig::default().idle_close_delay(Duration::from_secs(2));
    let server = start_with(
        Controller::builder()
            .continue_after_run()
            .drain_delay(Duration::ZERO),
        config,
    )
    .await;
    // A balancer's pooled connection: one request served, then idle at the stop.
    let mut pooled = TcpStream::connect(server.addr).await.unwrap();
    send(&mut pooled, "/orders/1").await;
    assert_eq!(read_answer(&mut pooled).await.status, 200);
    server.trigger.trigger("test");
    until_stopped_accepting(&server).await;
    // Its next request, a POST a balancer could not retry, is answered, then the connection
    // closes cleanly; without the delay it would have been closed under the request.
    pooled
        .write_all(b"POST /orders/1 HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut pooled).await;
    assert_eq!(answer.status, 405, "answered by the app: {}", answer.head);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut pooled).await;
    // Idle connections that get no request close when the delay ends.
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn silent_and_idle_clients_are_disconnected_by_the_idle_timeout() {
    let config = ServeConfig::default().idle_timeout(Duration::from_millis(300));
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    // Connected, never says a word.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // One request, then an idle keep-alive connection.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    send(&mut idle, "/orders/1").await;
    assert_eq!(read_answer(&mut idle).await.status, 200);
    // Both are closed by the server long before the shutdown: nothing else happens here.
    for stream in [&mut silent, &mut idle] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(read.expect("closed by the server").is_ok());
    }
    assert_eq!(server.shutdown.phase(), Phase::Running);
    assert_eq!(server.shutdown.tracker().active().by_kind.connection, 0);
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn connections_waiting_in_the_accept_backlog_are_served_not_reset() {
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .build()
        .unwrap();
    let shutdown = controller.shutdown();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Connected, request sent, but not yet accepted by the server: they sit in the kernel's
    // accept queue when the listener closes.
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        send(&mut stream, &format!("/orders/{i}")).await;
        clients.push(stream);
    }
    // Holds the shutdown in wait-for-work while the server handles them.
    let job = shutdown.tracker().job("held by the test");
    let trigger = controller.trigger();
    let run = tokio::spawn(controller.run_with_report());
    trigger.trigger("test");
    shutdown.reached(Phase::StopAccepting).await;

    let service = DrainLayer::new(shutdown.clone()).layer(app(shutdown.clone()));
    let served = tokio::spawn(lastcall::http::serve_std(
        listener,
        service,
        shutdown.clone(),
        ServeConfig::default(),
    ));
    for (i, client) in clients.iter_mut().enumerate() {
        let answer = read_answer(client).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("{{\"id\":{i}}}"));
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
        assert_closed_cleanly(client).await;
    }
    drop(job);
    assert_eq!(run.await.unwrap().exit, Exit::Clean);
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_axum_handler_gets_the_peer_address_from_connect_info_unless_it_is_turned_off() {
    use axum::extract::ConnectInfo;
    for connect_info in [true, false] {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let config = ServeConfig::default().connect_info(connect_info);
        let server = start_serving(
            Controller::builder().continue_after_run(),
            |listener, shutdown| {
                let service = DrainLayer::new(shutdown.clone()).layer(app);
                tokio::spawn(serve(listener, service, shutdown, config))
            },
        )
        .await;
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        send(&mut client, "/peer").await;
        let answer = read_answer(&mut client).await;
        if connect_info {
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.body, client.local_addr().unwrap().to_string());
        } else {
            // axum's own answer to a handler whose extension is missing.
            assert_eq!(answer.status, 500, "{}", answer.body);
            assert!(answer.body.contains("ConnectInfo"), "{}", answer.body);
        }
        server.trigger.trigger("test");
        assert_eq!(server.finish().await.exit, Exit::Clean);
    }
}

/// `serve` gives each connection its own copy of an axum router, bare or in a `DrainLayer`,
/// with its routes converted (as `axum::serve` does): routes added before and after
/// `with_state`, the state and the fallback all still answer, on several connections.
#[tokio::test]
async fn an_axum_router_keeps_its_routes_state_and_fallback_on_every_connection() {
    use axum::extract::State;
    for layered in [false, true] {
        let app = Router::new()
            .route(
                "/state",
                get(|State(n): State<u32>| async move { format!("state {n}") }),
            )
            .with_state(7)
            .route("/after", get(|| async { "after" }))
            .fallback(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "fallback") });
        let server = start_serving(
            Controller::builder().continue_after_run(),
            |listener, shutdown| {
                let config = ServeConfig::default();
                if layered {
                    let service = DrainLayer::new(shutdown.clone()).layer(app);
                    tokio::spawn(serve(listener, service, shutdown, config))
                } else {
                    tokio::spawn(serve(listener, app, shutdown, config))
                }
            },
        )
        .await;
        for _connection in 0..2 {
            let mut client = TcpStream::connect(server.addr).await.unwrap();
            for (path, status, body) in [
                ("/state", 200, "state 7"),
                ("/after", 200, "after"),
                ("/nowhere", 418, "fallback"),
                ("/after", 200, "after"),
            ] {
                send(&mut client, path).await;
                let answer = read_answer(&mut client).await;
                assert_eq!(
                    (answer.status, answer.body.as_str()),
                    (status, body),
                    "{path}, layered: {layered}"
                );
            }
        }
        server.trigger.trigger("test");
        assert_eq!(server.finish().await.exit, Exit::Clean);
    }
}

#[tokio::test]
async fn a_unix_socket_is_served_and_drained_like_tcp() {
    use tokio::net::{UnixListener, UnixStream};
    let dir = std::env::temp_dir().join(format!("lastcall-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.sock");
    let _ = std::fs::remove_file(&path);
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .drain_delay(Duration::ZERO)
        .build()
        .unwrap();
    let shutdown = controller.shutdown();
    let service = DrainLayer::new(shutdown.clone()).layer(app(shutdown.clone()));
    let listener = UnixListener::bind(&path).unwrap();
    let served = tokio::spawn(serve(
        listener,
        service,
        shutdown.clone(),
        ServeConfig::default(),
    ));
    // An idle keep-alive connection and a request in flight at the signal.
    let mut idle = UnixStream::connect(&path).await.unwrap();
    idle.write_all(b"GET /orders/3 HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut idle).await.body, "{\"id\":3}");
    let mut busy = UnixStream::connect(&path).await.unwrap();
    busy.write_all(b"GET /reports/slow?ms=300 HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    while shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    let trigger = controller.trigger();
    let run = tokio::spawn(controller.run_with_report());
    trigger.trigger("test");
    assert_closed_cleanly(&mut idle).await;
    let answer = read_answer(&mut busy).await;
    assert_eq!(answer.body, "report ready");
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut busy).await;
    assert_eq!(run.await.unwrap().exit, Exit::Clean);
    served.await.unwrap().unwrap();
    // New connections are refused once the listener has closed.
    assert!(UnixStream::connect(&path).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn http1_keep_alive_off_closes_every_connection_after_its_response() {
    let config = ServeConfig::default().http1_keep_alive(false);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    send(&mut client, "/orders/1").await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed_cleanly(&mut client).await;
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn a_request_with_more_headers_than_http1_max_headers_is_refused() {
    let config = ServeConfig::default().http1_max_headers(8);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let headers: String = (0..12).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /orders/1 HTTP/1.1\r\nhost: test\r\n{headers}\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, client.read_to_end(&mut answer))
        .await
        .expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Within the limit, the same request is served.
    let headers: String = (0..4).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /orders/1 HTTP/1.1\r\nhost: test\r\n{headers}\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut client).await.status, 200);
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

/// The server's HTTP/2 `SETTINGS` (identifier, value) and the window increment of its first
/// connection-level `WINDOW_UPDATE`, if it sends one, read from raw frames.
async fn http2_server_settings(addr: SocketAddr) -> (Vec<(u16, u32)>, Option<u32>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The client preface and an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut settings = None;
    let mut window = None;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout_at(deadline, stream.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else { break };
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        match kind {
            // SETTINGS, not an acknowledgement.
            0x4 if flags & 0x1 == 0 => {
                settings = Some(
                    payload
                        .chunks(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect(),
                );
            }
            0x8 if stream_id == 0 => {
                window = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            _ => {}
        }
        if settings.is_some() && window.is_some() {
            break;
        }
    }
    (settings.expect("the server sent its SETTINGS"), window)
}

#[tokio::test]
async fn http2_settings_are_sent_to_the_client_as_configured() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
    let config = ServeConfig::default()
        .http2_max_concurrent_streams(7)
        .http2_initial_stream_window_size(100_000)
        .http2_initial_connection_window_size(3_000_000)
        .http2_max_frame_size(32_768)
        .http2_max_header_list_size(9_000);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let (settings, window) = http2_server_settings(server.addr).await;
    let value = |id| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(value(MAX_CONCURRENT_STREAMS), Some(7), "{settings:?}");
    assert_eq!(value(INITIAL_WINDOW_SIZE), Some(100_000), "{settings:?}");
    assert_eq!(value(MAX_FRAME_SIZE), Some(32_768), "{settings:?}");
    assert_eq!(value(MAX_HEADER_LIST_SIZE), Some(9_000), "{settings:?}");
    // On by default, as under axum::serve, for WebSockets over HTTP/2.
    assert_eq!(value(ENABLE_CONNECT_PROTOCOL), Some(1), "{settings:?}");
    // The connection window starts at 65,535 and is raised to the configured size.
    assert_eq!(window, Some(3_000_000 - 65_535));
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);

    let config = ServeConfig::default().http2_connect_protocol(false);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let (settings, _) = http2_server_settings(server.addr).await;
    assert!(
        !settings.contains(&(ENABLE_CONNECT_PROTOCOL, 1)),
        "{settings:?}"
    );
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn a_burst_of_connections_waits_in_the_backlog_of_listen() {
    let listener = lastcall::http::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Nobody accepts: 1,000 handshakes must all complete in the kernel's queue, where a
    // backlog of 128 would drop most of them.
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let connected = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
            .await
            .expect("the handshake completes at once")
            .unwrap();
        clients.push(connected);
    }
    drop(listener);
}

#[tokio::test]
async fn a_half_sent_head_waiting_in_the_backlog_does_not_hold_the_shutdown() {
    // The header-read timeout (default 10 s) is longer than the budget's wait for work.
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .budget(Duration::from_secs(5))
        .drain_delay(Duration::ZERO)
        .build()
        .unwrap();
    let shutdown = controller.shutdown();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Connected and half a head sent, not yet accepted when the listener closes.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /orders/1 HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    // Holds the shutdown until the server has taken the connection.
    let job = shutdown.tracker().job("held by the test");
    let trigger = controller.trigger();
    let run = tokio::spawn(controller.run_with_report());
    trigger.trigger("test");
    shutdown.reached(Phase::StopAccepting).await;
    let service = DrainLayer::new(shutdown.clone()).layer(app(shutdown.clone()));
    let served = tokio::spawn(lastcall::http::serve_std(
        listener,
        service,
        shutdown.clone(),
        ServeConfig::default(),
    ));
    while shutdown.tracker().active().by_kind.connection == 0 {
        tokio::task::yield_now().await;
    }
    drop(job);
    assert_closed_cleanly(&mut half).await;
    let report = run.await.unwrap();
    assert_eq!(report.exit, Exit::Clean, "{report}");
    assert!(report.phase(Phase::WaitForWork).unwrap().duration < Duration::from_secs(3));
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn http2_keep_alive_pings_an_idle_connection() {
    let config = ServeConfig::default().http2_keep_alive(Duration::from_millis(100), PATIENCE);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let pinged = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.unwrap();
            // PING, not an acknowledgement.
            if head[3] == 0x6 && head[4] & 0x1 == 0 {
                return;
            }
        }
    })
    .await;
    assert!(pinged.is_ok(), "the server pinged the idle connection");
    drop(stream);
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

#[tokio::test]
async fn a_request_head_longer_than_http1_max_buf_size_is_refused() {
    let config = ServeConfig::default().http1_max_buf_size(8192);
    let server = start_with(Controller::builder().continue_after_run(), config).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let padding = "a".repeat(20_000);
    let request = format!("GET /orders/1 HTTP/1.1\r\nhost: test\r\nx-pad: {padding}\r\n\r\n");
    // The server may close before reading it all.
    let _ = client.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, client.read_to_end(&mut answer))
        .await
        .expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    server.trigger.trigger("test");
    assert_eq!(server.finish().await.exit, Exit::Clean);
}

/// Connections the kernel queued before the stop, each with its request already sent, while
/// nothing else was tracked: `serve` takes them from the backlog after stop-accepting, and the
/// wait for work must wait for them. Before the fix it saw an idle tracker (a connection was
/// tracked only from its task's first poll, the backlog not at all), ran the close steps
/// under their requests (500 here, as from a closed database pool) and closed connections
/// polled in flush-telemetry without an answer.
#[tokio::test]
async fn requests_queued_in_the_backlog_at_the_stop_are_answered_before_the_close_steps() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let controller = Controller::builder()
        .ignore_env()
        .drain_delay(Duration::ZERO)
        // In-process: the test binary goes on after `run`.
        .continue_after_run()
        .build()
        .unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    controller.close("database", Duration::from_secs(1), move || async move {
        flag.store(true, Ordering::SeqCst);
    });
    let shutdown = controller.shutdown();
    let trigger = controller.trigger();
    let app = Router::new().route(
        "/orders/{id}",
        get(move || {
            let closed = closed.clone();
            async move {
                if closed.load(Ordering::SeqCst) {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "database closed",
                    )
                } else {
                    (axum::http::StatusCode::OK, "order")
                }
            }
        }),
    );
    let service = DrainLayer::new(shutdown.clone()).layer(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(serve(
        listener,
        service,
        shutdown.clone(),
        ServeConfig::default(),
    ));
    let run = tokio::spawn(controller.run_with_report());
    // `serve` is accepting: a request answered, its connection closed.
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe
        .write_all(b"GET /orders/1 HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut probe).await.status, 200);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, probe.read_to_end(&mut rest)).await;
    while shutdown.tracker().active().by_kind.connection > 0 {
        tokio::task::yield_now().await;
    }
    // On this current-thread runtime nothing else runs until the next await: the kernel
    // completes these connections and queues their requests, and `serve` has accepted none.
    let queued: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .write_all(b"GET /orders/1 HTTP/1.1\r\nhost: test\r\n\r\n")
                .unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    trigger.trigger("test");
    for stream in queued {
        let mut stream = TcpStream::from_std(stream).unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let report = tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap();
    assert_eq!(report.exit, Exit::Clean);
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
