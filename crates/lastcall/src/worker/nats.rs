//! The NATS JetStream queue: a work-queue stream and a durable pull consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{check_lease, check_name, millis, now_ms, Delivery, Job, NewJob, Queue, QueueError};

/// The longest a single pull request waits, so a claim under way when the shutdown stops
/// accepting ends within this bound (the pull cannot be withdrawn; it is drained instead).
const PULL_CHUNK: Duration = Duration::from_secs(1);

const HEADER_KEY: &str = "Lastcall-Key";
const HEADER_NOT_BEFORE: &str = "Lastcall-Not-Before";
const HEADER_ERROR: &str = "Lastcall-Error";
const HEADER_QUEUE: &str = "Lastcall-Queue";
const HEADER_JOB: &str = "Lastcall-Job";
const HEADER_ATTEMPTS: &str = "Lastcall-Attempts";

/// A job queue on NATS JetStream (feature `nats`).
///
/// Needs the `nats` feature.
///
/// [`NatsQueue::open`] creates (or reuses) three things named after the queue:
///
/// - the stream `LASTCALL_<name>` on the subject `lastcall.jobs.<name>`, with work-queue
///   retention: a message lives until it is acked;
/// - the durable pull consumer `lastcall-<name>` with explicit acks and an `AckWait` equal to
///   the lease, so a job whose worker died (SIGKILL) is delivered again when it passes;
/// - the stream `LASTCALL_DEAD_<name>` on `lastcall.dead.<name>` for dead letters, each with
///   the last error in the `Lastcall-Error` header.
///
/// A claim is a pull request of one message that waits on the server (JetStream's long poll)
/// for at most a second at a time. Renewing sends an in-progress ack (`+WPI`), a retry or a
/// release is a NAK with a delay, an ack is a double ack (confirmed by the server).
///
/// Limits, compared with the SQL queues: the server does not tell a worker that its lease
/// was lost, so [`Queue::renew`] never returns [`QueueError::LeaseLost`]; a job's attempt is
/// JetStream's delivery count, so a release at shutdown and an early delivery of a delayed
/// job count as attempts too.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lastcall::worker::{NatsQueue, NewJob, Queue};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let queue = NatsQueue::open(client, "emails", Duration::from_secs(30)).await?;
/// let id = queue.enqueue(NewJob::new(b"hello".to_vec())).await?;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsQueue {
    context: jetstream::Context,
    consumer: consumer::PullConsumer,
    name: Arc<str>,
    stream: String,
    dead_stream: String,
    subject: String,
    dead_subject: String,
    lease: Duration,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue")
            .field("name", &self.name)
            .field("stream", &self.stream)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// The proof of a JetStream claim: the delivered message, whose reply subject acks it.
///
/// Needs the `nats` feature.
pub struct NatsReceipt {
    message: jetstream::Message,
    sequence: u64,
}

impl std::fmt::Debug for NatsReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsReceipt")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl NatsQueue {
    /// Opens the queue `name` on `client`'s JetStream, creating its streams and consumer when
    /// they are missing and setting the consumer's `AckWait` to `lease`.
    ///
    /// # Errors
    ///
    /// [`QueueError::Invalid`] for a bad name or a lease under 100 ms;
    /// [`QueueError::Backend`] when JetStream is unreachable or refuses the configuration
    /// (for example a stream of that name that exists with other subjects).
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        lease: Duration,
    ) -> Result<NatsQueue, QueueError> {
        check_name(name)?;
        check_lease(name, lease)?;
        let context = jetstream::new(client);
        let stream_name = format!("LASTCALL_{name}");
        let dead_stream = format!("LASTCALL_DEAD_{name}");
        let subject = format!("lastcall.jobs.{name}");
        let dead_subject = format!("lastcall.dead.{name}");
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| QueueError::backend(name, "open", e);
        let jobs = context
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.into()))?;
        context
            .get_or_create_stream(stream::Config {
                name: dead_stream.clone(),
                subjects: vec![dead_subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.into()))?;
        // Create-or-update, so a changed lease takes effect on an existing consumer.
        let consumer = jobs
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("lastcall-{name}")),
                filter_subject: subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: lease,
                max_deliver: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.into()))?;
        Ok(NatsQueue {
            context,
            consumer,
            name: name.into(),
            stream: stream_name,
            dead_stream,
            subject,
            dead_subject,
            lease,
        })
    }

    /// Deletes the queue's streams and consumer, with every job and dead letter in them.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if JetStream refuses.
    pub async fn delete(self) -> Result<(), QueueError> {
        for stream in [&self.stream, &self.dead_stream] {
            self.context
                .delete_stream(stream)
                .await
                .map_err(|e| self.err("delete", e))?;
        }
        Ok(())
    }

    async fn messages(&self, stream: &str, op: &'static str) -> Result<u64, QueueError> {
        let mut stream = self
            .context
            .get_stream(stream)
            .await
            .map_err(|e| self.err(op, e))?;
        let info = stream.info().await.map_err(|e| self.err(op, e))?;
        Ok(info.state.messages)
    }

    fn err(
        &self,
        op: &'static str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> QueueError {
        QueueError::backend(&self.name, op, e.into())
    }

    /// One pull request of at most one message, waiting up to `expires` on the server. Once it
    /// is sent it is drained to its end even if `stop` fires: a message the server hands out
    /// for it must reach the caller, not be dropped on the floor until its lease expires.
    async fn pull(
        &self,
        expires: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<jetstream::Message>, QueueError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(expires)
            .messages()
            .await
            .map_err(|e| self.err("claim", e))?;
        let next = tokio::select! {
            next = batch.next() => next,
            () = stop.cancelled() => batch.next().await,
        };
        match next {
            None => Ok(None),
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(e)) => Err(self.err("claim", e)),
        }
    }

    fn delivery(&self, message: jetstream::Message) -> Result<Delivery<NatsReceipt>, QueueError> {
        let info = message.info().map_err(|e| self.err("claim", e))?;
        let sequence = info.stream_sequence;
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let key = header(&message, HEADER_KEY).map(str::to_owned);
        let job = Job::new(
            self.name.clone(),
            sequence.to_string(),
            message.payload.to_vec(),
            attempt,
            key,
        );
        Ok(Delivery {
            job,
            receipt: NatsReceipt { message, sequence },
        })
    }

    async fn nak(
        &self,
        op: &'static str,
        receipt: &NatsReceipt,
        delay: Duration,
    ) -> Result<(), QueueError> {
        receipt
            .message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| self.err(op, e))
    }
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str())
}

impl Queue for NatsQueue {
    type Receipt = NatsReceipt;

    fn name(&self) -> &str {
        &self.name
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn enqueue(&self, job: NewJob) -> Result<String, QueueError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = job.key_ref() {
            headers.insert(HEADER_KEY, key);
        }
        if !job.delay_ref().is_zero() {
            let delay = millis(job.delay_ref());
            headers.insert(
                HEADER_NOT_BEFORE,
                now_ms().saturating_add(delay).to_string().as_str(),
            );
        }
        let ack = self
            .context
            .publish_with_headers(self.subject.clone(), headers, job.payload().to_vec().into())
            .await
            .map_err(|e| self.err("enqueue", e))?
            .await
            .map_err(|e| self.err("enqueue", e))?;
        Ok(ack.sequence.to_string())
    }

    async fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery<NatsReceipt>>, QueueError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || stop.is_cancelled() {
                return Ok(None);
            }
            let expires = left.clamp(Duration::from_millis(100), PULL_CHUNK);
            let Some(message) = self.pull(expires, stop).await? else {
                continue;
            };
            // A delayed job delivered early goes back until it is due. After the stop the
            // message is returned as it is: the worker releases it, which keeps its delay.
            let due = header(&message, HEADER_NOT_BEFORE).and_then(|v| v.parse::<i64>().ok());
            if let Some(due) = due {
                let now = now_ms();
                if due > now && !stop.is_cancelled() {
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(
                            u64::try_from(due - now).unwrap_or(0),
                        ))))
                        .await
                        .map_err(|e| self.err("claim", e))?;
                    continue;
                }
            }
            return self.delivery(message).map(Some);
        }
    }

    async fn renew(&self, receipt: &NatsReceipt) -> Result<(), QueueError> {
        receipt
            .message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| self.err("renew", e))
    }

    async fn ack(&self, receipt: NatsReceipt) -> Result<(), QueueError> {
        receipt
            .message
            .double_ack()
            .await
            .map_err(|e| self.err("ack", e))
    }

    async fn retry(
        &self,
        receipt: NatsReceipt,
        delay: Duration,
        _error: &str,
    ) -> Result<(), QueueError> {
        self.nak("retry", &receipt, delay).await
    }

    async fn release(&self, receipt: NatsReceipt, delay: Duration) -> Result<(), QueueError> {
        self.nak("release", &receipt, delay).await
    }

    async fn dead_letter(&self, receipt: NatsReceipt, error: &str) -> Result<(), QueueError> {
        let mut headers = receipt.message.headers.clone().unwrap_or_default();
        // Header values are single lines.
        let error: String = error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect();
        headers.insert(HEADER_ERROR, error.as_str());
        headers.insert(HEADER_QUEUE, &*self.name);
        headers.insert(HEADER_JOB, receipt.sequence.to_string().as_str());
        let attempts = receipt
            .message
            .info()
            .map(|info| info.delivered)
            .unwrap_or_default();
        headers.insert(HEADER_ATTEMPTS, attempts.to_string().as_str());
        // Stored first, then acked: a crash in between leaves the job to be delivered again
        // (a duplicate dead letter at worst), never a job in neither place.
        self.context
            .publish_with_headers(
                self.dead_subject.clone(),
                headers,
                receipt.message.payload.clone(),
            )
            .await
            .map_err(|e| self.err("dead_letter", e))?
            .await
            .map_err(|e| self.err("dead_letter", e))?;
        receipt
            .message
            .double_ack()
            .await
            .map_err(|e| self.err("dead_letter", e))
    }

    async fn pending(&self) -> Result<u64, QueueError> {
        self.messages(&self.stream, "pending").await
    }

    async fn dead(&self) -> Result<u64, QueueError> {
        self.messages(&self.dead_stream, "dead").await
    }
}
