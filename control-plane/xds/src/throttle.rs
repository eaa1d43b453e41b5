//! How many proxies are being pushed to at once (Istio's
//! `PILOT_PUSH_THROTTLE`, gated on answers as Istio's flow control is).
//!
//! Without a bound, a change that concerns every proxy builds a response
//! for all of them at once: at 2,000 sidecars with a megabyte route table
//! each, gigabytes wait in send queues while the proxies read at their own
//! pace. With one, a stream takes a slot before it sends and gives it back
//! once the proxy has answered (ACK or NACK) every response it was sent:
//! then the bytes have left the server. Memory is bounded by the slots,
//! not by the mesh; throughput is not lost (two cores are busy with a few
//! dozen streams), and the semaphore is fair, so no proxy starves.
//!
//! A stream keeps its slot for everything it sends until the proxy is
//! answered up, so it never waits for a second slot: Envoy holds a CDS ACK
//! until the endpoints of the new clusters arrive, and those come on the
//! same slot. A proxy that does not answer loses its slot after a timeout,
//! so a stuck proxy cannot hold others back.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The slots of one server; `None` when unbounded.
#[derive(Clone, Debug)]
pub(crate) struct PushSlots {
    semaphore: Option<Arc<Semaphore>>,
    timeout: Duration,
}

impl PushSlots {
    /// `concurrency` 0 means unbounded.
    pub(crate) fn new(concurrency: usize, timeout: Duration) -> PushSlots {
        PushSlots {
            semaphore: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency))),
            timeout,
        }
    }

    /// The slot state of a new stream (holding none).
    pub(crate) fn stream(&self) -> PushSlot {
        PushSlot {
            slots: self.clone(),
            permit: None,
            deadline: None,
        }
    }
}

/// A stream's hold on a slot.
#[derive(Debug)]
pub(crate) struct PushSlot {
    slots: PushSlots,
    permit: Option<OwnedSemaphorePermit>,
    /// When a held slot is given up even without answers.
    deadline: Option<Instant>,
}

impl PushSlot {
    /// Takes a slot unless the stream holds one, waiting for it if all are
    /// taken, and (re)starts the answer timeout.
    pub(crate) async fn take(&mut self) {
        let Some(semaphore) = &self.slots.semaphore else {
            return;
        };
        if self.permit.is_none() {
            let waiting = Instant::now();
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("the push semaphore is never closed");
            let waited = waiting.elapsed();
            if waited > Duration::from_millis(100) {
                tracing::debug!(
                    waited_ms = waited.as_millis() as u64,
                    "waited for a push slot"
                );
            }
            self.permit = Some(permit);
        }
        self.deadline = Some(Instant::now() + self.slots.timeout);
    }

    /// Gives the slot back once the proxy has answered every response.
    pub(crate) fn settle(&mut self, all_answered: bool) {
        if all_answered {
            self.release();
        }
    }

    /// Gives the slot back (the proxy answered everything it was sent).
    pub(crate) fn release(&mut self) {
        self.permit = None;
        self.deadline = None;
    }

    /// When the held slot times out; `None` when none is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    #[cfg(test)]
    fn held(&self) -> bool {
        self.permit.is_some()
    }

    /// The proxy did not answer in time: give the slot to another.
    pub(crate) fn expire(&mut self) {
        if self.permit.is_some() {
            tracing::debug!(
                timeout_s = self.slots.timeout.as_secs_f64(),
                "proxy did not answer within the push timeout; giving up its push slot"
            );
        }
        self.release();
    }
}

/// Sleeps until `deadline`, or forever if there is none (for `select!`).
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_held_until_released_or_expired() {
        let slots = PushSlots::new(1, Duration::from_secs(5));
        let mut a = slots.stream();
        let mut b = slots.stream();
        a.take().await;
        assert!(a.held());
        // A second take by the holder does not wait for another slot.
        a.take().await;
        let waiting = tokio::time::timeout(Duration::from_secs(1), b.take()).await;
        assert!(waiting.is_err(), "the only slot is taken");
        a.release();
        b.take().await;
        assert!(b.held());
        // Expiry frees the slot for the next stream.
        until(b.deadline()).await;
        b.expire();
        assert!(!b.held() && b.deadline().is_none());
        a.take().await;
        assert!(a.held());
    }

    #[tokio::test]
    async fn zero_means_unbounded() {
        let slots = PushSlots::new(0, Duration::from_secs(5));
        let mut streams: Vec<PushSlot> = (0..100).map(|_| slots.stream()).collect();
        for s in &mut streams {
            s.take().await;
        }
        assert!(streams.iter().all(|s| !s.held() && s.deadline().is_none()));
    }
}
