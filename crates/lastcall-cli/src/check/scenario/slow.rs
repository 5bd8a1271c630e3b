//! The slow request that several scenarios hold in flight across the signal: sent, aged into
//! the server ([`IN_FLIGHT_OFFSET`]), read with its span on the timeline, and told apart from
//! an answer that is not the slow path's ([`SlowView::not_slow`]).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ms, patience, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::Spec;

/// Starts a slow request that lasts `length` after the signal (the preStop comes first).
pub(super) async fn slow_request(
    spec: &Spec,
    service: &Service,
    length: Duration,
) -> Result<Slow, Finding> {
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
pub(super) const IN_FLIGHT_OFFSET: Duration = Duration::from_millis(100);

/// Waits until the request sent at `sent` is [`IN_FLIGHT_OFFSET`] old: a fixed offset into
/// the scenario, not a synchronisation.
pub(super) async fn into_request(sent: Instant) {
    tokio::time::sleep_until(sent + IN_FLIGHT_OFFSET).await;
}

/// A slow request on its way.
pub(super) struct Slow {
    pub(super) stream: TcpStream,
    pub(super) sent: Instant,
    pub(super) asked: Duration,
}

impl Slow {
    /// Why a 200 to this request is not the slow path's answer, if it is not: a slow answer
    /// takes its time and carries a body.
    pub(super) fn not_slow(&self, outcome: &Outcome, answered: Instant) -> Option<String> {
        SlowView {
            sent: self.sent,
            asked: self.asked,
        }
        .not_slow(outcome, answered)
    }
}

/// Reads the slow request's answer and puts its span on the timeline; returns it and when it
/// ended.
pub(super) async fn finish_slow(
    spec: &Spec,
    service: &mut Service,
    slow: &mut Slow,
) -> (Outcome, Instant) {
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

/// A slow request's timing, apart from its stream.
pub(super) struct SlowView {
    pub(super) sent: Instant,
    pub(super) asked: Duration,
}

impl SlowView {
    /// Why a 200 to this request is not the slow path's answer, if it is not: a slow answer
    /// takes its time and carries a body.
    pub(super) fn not_slow(&self, outcome: &Outcome, answered: Instant) -> Option<String> {
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
