//! User code run on a task of its own, and how it ended: see [`Spawned`].

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::task::JoinHandle;

use crate::step::{BoxError, StepResult};

/// A user future (a shutdown step, a job's handler, a scheduled run) spawned on its own task,
/// so that a panic in it is caught as a `JoinError` instead of unwinding through lastcall's
/// own code; awaiting it says how it ended. Dropping it leaves the task running; [`abort`]
/// ends it.
///
/// [`abort`]: Spawned::abort
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Spawned {
    task: JoinHandle<Result<(), BoxError>>,
}

/// How a [`Spawned`] future ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ran {
    Ok,
    /// It returned an error: the error and its sources, joined with `: `.
    Failed(String),
    /// It panicked: the panic's message.
    Panicked(String),
    /// Its task was aborted or its runtime shut down.
    Cancelled,
}

impl Spawned {
    /// Spawns `future` on the current runtime; the future is first polled inside the task, so
    /// a panic while it is being built (in an `async` block) is caught too.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub(crate) fn spawn<Fut>(future: Fut) -> Spawned
    where
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        Spawned {
            task: tokio::spawn(async move { future.await.into_step_result() }),
        }
    }

    /// Ends the task at its next await point; awaiting it then gives [`Ran::Cancelled`]
    /// (or how it ended, if it ended first).
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

impl Future for Spawned {
    type Output = Ran;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ran> {
        Poll::Ready(match ready!(Pin::new(&mut self.task).poll(cx)) {
            Ok(Ok(())) => Ran::Ok,
            Ok(Err(error)) => Ran::Failed(error_chain(&*error)),
            Err(join) => match join.try_into_panic() {
                Ok(payload) => Ran::Panicked(panic_message(&*payload)),
                Err(_) => Ran::Cancelled,
            },
        })
    }
}

impl Ran {
    /// `Ok`, or the failure as one line: the error, `panicked: <message>`, or that the task
    /// of `what` (`job`, `step`) was cancelled.
    pub(crate) fn into_result(self, what: &str) -> Result<(), String> {
        match self {
            Ran::Ok => Ok(()),
            Ran::Failed(error) => Err(error),
            Ran::Panicked(message) => Err(format!("panicked: {message}")),
            Ran::Cancelled => Err(format!("the {what}'s task was cancelled")),
        }
    }
}

/// The error and its sources, joined with `: `.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
