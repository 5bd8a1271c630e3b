//! The `load` scenario: a bounded stream of requests on new and reused connections from the
//! signal to the exit, each one a [`Sample`] (which `restart` records too).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ms, patience, Finding};
use crate::check::client::{self, Outcome};
use crate::check::service::Service;
use crate::check::Spec;

/// One request of the `load` scenario.
#[derive(Debug)]
pub(super) struct Sample {
    pub(super) sent: Instant,
    pub(super) reused: bool,
    pub(super) outcome: Outcome,
}

/// One paced load client: requests `path` every 5 ms, on one kept connection when `reuse` (a
/// new one when the server closes it) or a new connection each time, records each request in
/// `samples` and calls `sampled`, for as long as `more` allows.
pub(super) async fn paced_client(
    addr: std::net::SocketAddr,
    path: &str,
    reuse: bool,
    samples: &Mutex<Vec<Sample>>,
    mut more: impl FnMut() -> bool,
    mut sampled: impl FnMut(),
) {
    let mut kept: Option<TcpStream> = None;
    while more() {
        let sent = Instant::now();
        let (reused, outcome) = client::exchange(addr, path, &mut kept, reuse).await;
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sample {
                sent,
                reused,
                outcome,
            });
        sampled();
        // Paced requests, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// 11. A bounded stream of requests on new and reused connections, from the signal to the
///     exit: none fails while readiness still answers 200, and none is answered with a
///     server error (but 503) or, on a new connection, closed unanswered at any time.
pub(super) async fn load(spec: &Spec, service: &mut Service) -> Finding {
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
            let more = || {
                !stop.load(Ordering::Relaxed)
                    && count.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
            };
            paced_client(addr, &path, reuse, &samples, more, || {}).await;
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
