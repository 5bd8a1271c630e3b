//! Before any grading: the paths the selected scenarios use behave as the options say, and how
//! the service exits after a clean, idle shutdown (what `deadline` compares a cut with).

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::bail;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::client::{self, Outcome};
use super::service::Service;
use super::Spec;

/// How long the preflight asks the slow path to take.
const ASKED_MS: u64 = 400;

/// Checks the paths of the `graded` scenarios on one start of the service, then stops it idle.
///
/// # Errors
///
/// When the service does not start, or a path does not behave as its option says: grading it
/// would produce verdicts about the wrong thing.
pub(crate) async fn run(spec: &Spec, graded: &[&str]) -> anyhow::Result<Option<ExitStatus>> {
    let mut service = Service::start(spec).await?;
    let uses = |names: &[&str]| graded.iter().any(|g| names.contains(g));
    let limit = spec.tolerance + Duration::from_secs(2);
    if uses(&["keep_alive", "idle_connections", "load", "restart"]) || !spec.pre_stop.is_zero() {
        let got = client::get(service.addr, &spec.path, limit).await;
        if !matches!(&got, Outcome::Complete { status: 200, .. }) {
            bail!(
                "preflight: --path {} answered {}, not 200: pass a quick path that answers 200 \
                 (--path /health), or --skip keep_alive,idle_connections,load,restart",
                spec.path,
                got.describe()
            );
        }
    }
    if uses(&[
        "in_flight",
        "drain_completion",
        "second_signal",
        "deadline",
        "restart",
    ]) {
        let path = spec.slow(ASKED_MS);
        let sent = Instant::now();
        let got = client::get(service.addr, &path, limit + Duration::from_millis(ASKED_MS)).await;
        let took = sent.elapsed();
        let problem = match &got {
            Outcome::Complete {
                status: 200, body, ..
            } => {
                if took < Duration::from_millis(ASKED_MS * 9 / 10) {
                    Some(format!(
                        "answered 200 after {} ms, not after {ASKED_MS} ms",
                        took.as_millis()
                    ))
                } else if body.is_empty() {
                    Some("answered 200 with an empty body".to_owned())
                } else {
                    None
                }
            }
            other => Some(format!(
                "answered {} after {} ms",
                other.describe(),
                took.as_millis()
            )),
        };
        if let Some(problem) = problem {
            bail!(
                "preflight: the slow path {path} (--slow-path {}) {problem}: the scenarios that \
                 hold a request in flight need a path that answers 200 with a body after {{ms}} \
                 milliseconds (--slow-path '/sleep?ms={{ms}}'), or --skip \
                 in_flight,drain_completion,second_signal,deadline,restart",
                spec.slow_path
            );
        }
    }
    if uses(&["sse"]) {
        let started = match client::connect(service.addr).await {
            Ok(mut stream) => match client::send(&mut stream, &spec.events_path).await {
                Ok(()) => {
                    let mut head = [0u8; 2048];
                    match tokio::time::timeout(limit, stream.read(&mut head)).await {
                        Ok(Ok(n)) => {
                            let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                            if text.starts_with("http/1.1 200")
                                && text.contains("text/event-stream")
                            {
                                Ok(())
                            } else {
                                Err(text.lines().next().unwrap_or("nothing").to_owned())
                            }
                        }
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(_) => Err("no answer in time".to_owned()),
                    }
                }
                Err(outcome) => Err(outcome.describe()),
            },
            Err(outcome) => Err(outcome.describe()),
        };
        if let Err(got) = started {
            bail!(
                "preflight: --events-path {} answered {got:?}, not a 200 text/event-stream: pass \
                 the path of a Server-Sent Events stream, or --skip sse",
                spec.events_path
            );
        }
    }
    // Nothing is left open: this is the clean shutdown the other scenarios are compared with.
    service.signal(spec.signal);
    Ok(service
        .exit(spec.budget + spec.tolerance)
        .await
        .map(|(status, _)| status))
}
