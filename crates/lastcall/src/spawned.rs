//! User code run on a task of its own, and how it ended: see [`Spawned`].

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::task::JoinHandle;

/// A boxed error, as a failed step returns it.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a shutdown step's future may return: `()` for a step that cannot fail, or
/// `Result<(), E>` for any error type `E`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// // A step that cannot fail returns ().
/// controller.flush("logs", Duration::from_millis(500), || async {});
/// // A step that can fail returns a Result with any error type.
/// controller.close("database", Duration::from_secs(3), || async {
///     Ok::<(), std::io::Error>(())
/// });
/// # }
/// ```
pub trait StepResult: Send + 'static {
    /// Converts to the result the controller records.
    ///
    /// # Errors
    ///
    /// The step's own error, boxed.
    fn into_step_result(self) -> Result<(), BoxError>;
}

impl StepResult for () {
    fn into_step_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E> StepResult for Result<(), E>
where
    E: Into<BoxError> + Send + 'static,
{
    fn into_step_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

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
