//! How a record's outcome reaches the application: a future or a callback, answered exactly
//! once (a record dropped unanswered is answered `Closed`).

use super::*;

/// Resolves when the record is acknowledged or has finally failed.
#[derive(Debug)]
pub struct DeliveryFuture {
    pub(super) rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

pub(super) struct Pending {
    pub(super) timestamp: i64,
    pub(super) key: Option<Bytes>,
    pub(super) value: Bytes,
    pub(super) headers: Vec<(String, Option<Bytes>)>,
    pub(super) enqueued: Instant,
    pub(super) delivery: Delivery,
    pub(super) _permit: OwnedSemaphorePermit,
}

/// A delivery callback: runs on the producer's partition task, so it must be quick.
pub(super) type Callback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// Who hears how a record ended. Dropped unanswered (the producer went away), it answers
/// `Error::Closed`, so a callback is never silently forgotten.
pub(super) struct Delivery(Option<Notify>);

pub(super) enum Notify {
    Future(oneshot::Sender<Result<RecordMetadata>>),
    /// In a mutex only to be `Sync` (the worker holds records across awaits); never
    /// contended.
    Callback(std::sync::Mutex<Callback>),
}

impl Delivery {
    pub(super) fn future(tx: oneshot::Sender<Result<RecordMetadata>>) -> Self {
        Delivery(Some(Notify::Future(tx)))
    }

    pub(super) fn callback(f: Callback) -> Self {
        Delivery(Some(Notify::Callback(std::sync::Mutex::new(f))))
    }

    pub(super) fn deliver(mut self, result: Result<RecordMetadata>) {
        self.answer(result);
    }

    pub(super) fn answer(&mut self, result: Result<RecordMetadata>) {
        match self.0.take() {
            Some(Notify::Future(tx)) => {
                let _ = tx.send(result);
            }
            Some(Notify::Callback(f)) => {
                // A poisoned lock still holds the callback, which never ran.
                let f = f
                    .into_inner()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                f(result)
            }
            None => {}
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.answer(Err(Error::Closed));
    }
}
