//! gRPC through a shutdown, with a real tonic client on loopback: health says NOT_SERVING from
//! the first moment, a unary RPC in flight completes, a server stream ends with a status.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use lastcall::grpc::{health_reporter, serve, stream_response, GrpcHealth, SHUTDOWN_MESSAGE};
use lastcall::http::ServeConfig;
use lastcall::{Controller, Exit, Shutdown};

use super::http::{Server, PATIENCE};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_prost::ProstCodec;

/// `test.Drain/Slow` answers after `ms`; `test.Drain/Ticks` sends a tick every `ms`.
#[derive(Clone, PartialEq, prost::Message)]
struct Wait {
    #[prost(uint64, tag = "1")]
    ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tick {
    #[prost(uint64, tag = "1")]
    n: u64,
}

/// A hand-written gRPC service, as tonic's code generator would write it.
#[derive(Clone)]
struct DrainTest {
    shutdown: Shutdown,
}

impl NamedService for DrainTest {
    const NAME: &'static str = "test.Drain";
}

impl tower::Service<http::Request<Body>> for DrainTest {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/test.Drain/Slow" => {
                    let slow = tower::service_fn(|r: Request<Wait>| async move {
                        let ms = r.into_inner().ms;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, Status>(Response::new(Wait { ms }))
                    });
                    tonic::server::Grpc::new(ProstCodec::<Wait, Wait>::default())
                        .unary(slow, req)
                        .await
                }
                "/test.Drain/Ticks" => {
                    let ticks = tower::service_fn(move |r: Request<Wait>| {
                        let shutdown = shutdown.clone();
                        async move {
                            let every = Duration::from_millis(r.into_inner().ms);
                            let ticks = futures_util::stream::unfold(0u64, move |n| async move {
                                tokio::time::sleep(every).await;
                                Some((Ok(Tick { n }), n + 1))
                            });
                            Ok::<_, Status>(stream_response(&shutdown, Box::pin(ticks)))
                        }
                    });
                    tonic::server::Grpc::new(ProstCodec::<Tick, Wait>::default())
                        .server_streaming(ticks, req)
                        .await
                }
                _ => {
                    let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
                    http::Response::from_parts(parts, Body::empty())
                }
            })
        })
    }
}

async fn start(builder: lastcall::Builder) -> (Server, GrpcHealth) {
    let controller = builder.ignore_env().build().unwrap();
    let shutdown = controller.shutdown();
    let (health, health_service) = health_reporter(&shutdown);
    health.set_serving::<DrainTest>().await;
    let routes = Routes::new(health_service).add_service(DrainTest {
        shutdown: shutdown.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(serve(
        listener,
        routes,
        shutdown.clone(),
        ServeConfig::default(),
    ));
    let trigger = controller.trigger();
    let run = tokio::spawn(controller.run_with_report());
    let server = Server {
        addr,
        shutdown,
        trigger,
        run,
        served,
    };
    (server, health)
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn slow(channel: Channel, ms: u64) -> Result<Response<Wait>, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    client
        .unary(
            Request::new(Wait { ms }),
            PathAndQuery::from_static("/test.Drain/Slow"),
            ProstCodec::<Wait, Wait>::default(),
        )
        .await
}

async fn status_of(channel: Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    response.into_inner().status()
}

#[tokio::test]
async fn health_says_not_serving_from_the_trigger_while_rpcs_are_still_served() {
    let (server, health) = start(
        Controller::builder()
            .continue_after_run()
            .drain_delay(Duration::from_millis(600)),
    )
    .await;
    let channel = channel(server.addr).await;
    // Ready: the overall status and the service set serving say SERVING.
    assert_eq!(status_of(channel.clone(), "").await, ServingStatus::Serving);
    assert_eq!(
        status_of(channel.clone(), "test.Drain").await,
        ServingStatus::Serving
    );
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "test.Drain".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    server.trigger.trigger("test");
    // The watcher hears of it first, during the drain delay.
    let changed = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the watch stream is told")
        .unwrap()
        .unwrap();
    assert_eq!(changed.status(), ServingStatus::NotServing);
    assert!(
        server.shutdown.phase() < lastcall::Phase::StopAccepting,
        "NOT_SERVING came during the drain delay"
    );
    assert_eq!(
        status_of(channel.clone(), "").await,
        ServingStatus::NotServing
    );
    // The application cannot turn a service back on once the shutdown began.
    health.set_serving::<DrainTest>().await;
    assert_eq!(
        status_of(channel.clone(), "test.Drain").await,
        ServingStatus::NotServing
    );
    // RPCs sent during the drain delay are still served.
    let answer = slow(channel.clone(), 10)
        .await
        .expect("served in the drain delay");
    assert_eq!(answer.into_inner().ms, 10);
    // At stop-accepting the watch stream ends with a status instead of holding the process.
    let ended = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the watch stream ends")
        .expect_err("a status, not a clean end");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");

    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
}

#[tokio::test]
async fn a_unary_rpc_in_flight_completes_and_a_server_stream_ends_with_a_status() {
    let (server, _health) = start(Controller::builder().continue_after_run()).await;
    let channel = channel(server.addr).await;

    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let mut ticks = client
        .server_streaming(
            Request::new(Wait { ms: 20 }),
            PathAndQuery::from_static("/test.Drain/Ticks"),
            ProstCodec::<Wait, Tick>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 0);
    let in_flight = tokio::spawn(slow(channel.clone(), 500));
    // Both RPCs tracked: the stream as a stream, the unary call as a request.
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.shutdown.tracker().active().by_kind.stream, 1);

    server.trigger.trigger("test");

    // The stream ends with UNAVAILABLE and the shutdown's message: a status, not a reset.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ticks.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(ended.message(), SHUTDOWN_MESSAGE);

    // The unary RPC that was in flight completes with its answer.
    let answer = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the unary RPC finishes")
        .unwrap()
        .expect("the in-flight RPC completes, not cut");
    assert_eq!(answer.into_inner().ms, 500);

    let report = server.finish().await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    // GOAWAY then close: a new call on the same channel cannot reach this server any more.
    let after = tokio::time::timeout(PATIENCE, slow(channel, 1))
        .await
        .expect("a call after exit fails fast");
    assert!(after.is_err(), "the listener is closed: {after:?}");
}

#[tokio::test]
async fn a_unary_rpc_that_never_completes_is_cut_at_the_deadline_and_named() {
    let (server, _health) = start(
        Controller::builder()
            .continue_after_run()
            .budget(Duration::from_millis(1500))
            .drain_delay(Duration::ZERO)
            .stop_timeout(Duration::from_millis(100))
            .flush_timeout(Duration::from_millis(100))
            .close_timeout(Duration::from_millis(100)),
    )
    .await;
    let channel = channel(server.addr).await;
    let stuck = tokio::spawn(slow(channel, 600_000));
    while server.shutdown.tracker().active().by_kind.request == 0 {
        tokio::task::yield_now().await;
    }
    server.trigger.trigger("test");

    let report = server.finish().await;
    assert_eq!(report.exit, Exit::WorkCut, "{report}");
    let cut = report.work_at_deadline.as_ref().expect("work was cut");
    assert!(
        cut.items
            .iter()
            .any(|item| item.label == "POST /test.Drain/Slow"),
        "the RPC is named: {cut}"
    );
    // The client is not left hanging: its call fails when the connection is closed.
    let result = tokio::time::timeout(PATIENCE, stuck)
        .await
        .expect("the client's call ends")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}
