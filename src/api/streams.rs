//! Server-streaming responses that a slow reader cannot hold open for ever: a send the reader
//! has not made room for within the stall timeout ends the stream, and the reader, once it
//! catches up with what was already buffered, gets `RESOURCE_EXHAUSTED` instead of a clean end
//! it could mistake for the whole answer. The task producing the stream (often a blocking
//! thread holding a storage iterator) is freed at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tonic::Status;

static STALL_TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets the stall timeout of every stream of this process (once, at start).
pub fn set_stall_timeout(timeout: Duration) {
    let _ = STALL_TIMEOUT.set(timeout);
}

fn stall_timeout() -> Duration {
    *STALL_TIMEOUT.get().unwrap_or(&Duration::from_secs(30))
}

/// A bounded channel feeding one streaming response.
pub fn channel<T>(buffer: usize) -> (Sender<T>, Responses<T>) {
    let (tx, rx) = mpsc::channel(buffer);
    let stalled = Arc::new(AtomicBool::new(false));
    (Sender { tx, stalled: stalled.clone() }, Responses { rx, stalled })
}

/// The producing end. Every send answers whether the stream goes on.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { tx: self.tx.clone(), stalled: self.stalled.clone() }
    }
}

impl<T> Sender<T> {
    /// Sends `item`; false when the reader is gone or stalled past the timeout.
    pub async fn send(&self, item: Result<T, Status>) -> bool {
        let timeout = stall_timeout();
        match self.tx.send_timeout(item, timeout).await {
            Ok(()) => true,
            Err(SendTimeoutError::Closed(_)) => false,
            Err(SendTimeoutError::Timeout(_)) => {
                self.stalled.store(true, Ordering::Release);
                metrics::counter!("ledger_stream_stalls_total").increment(1);
                tracing::info!(stall_ms = timeout.as_millis() as u64, "ended a streaming response whose reader stopped reading");
                false
            }
        }
    }

    /// [`Sender::send`] from a blocking thread.
    pub fn blocking_send(&self, item: Result<T, Status>) -> bool {
        tokio::runtime::Handle::current().block_on(self.send(item))
    }

    /// Resolves when the reader has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The response stream.
pub struct Responses<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
}

impl<T> tokio_stream::Stream for Responses<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) if self.stalled.swap(false, Ordering::AcqRel) => Poll::Ready(Some(Err(ledger::ErrorCode::StreamStalled.status(format!(
                "the stream was ended: nothing was read from it for {} ms; read faster, or resume from the last position received",
                stall_timeout().as_millis()
            ))))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_reader_that_stops_reading_gets_resource_exhausted_after_what_was_buffered() {
        super::set_stall_timeout(std::time::Duration::from_millis(200));
        let (tx, mut rx) = super::channel::<u32>(2);
        assert!(tx.send(Ok(1)).await && tx.send(Ok(2)).await);
        // The buffer is full and nobody reads: the third send gives up after the timeout.
        assert!(!tx.send(Ok(3)).await);
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), 1);
        assert_eq!(rx.next().await.unwrap().unwrap(), 2);
        assert_eq!(rx.next().await.unwrap().unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_ends_cleanly() {
        let (tx, mut rx) = super::channel::<u32>(2);
        tokio::spawn(async move {
            for i in 0..10 {
                assert!(tx.send(Ok(i)).await);
            }
        });
        let got: Vec<u32> = (&mut rx).map(|r| r.unwrap()).collect().await;
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
