//! Debouncing: many config changes in a burst make one push.
//!
//! As Istio does it: a batch starts with its first event and ends once no
//! event came for the quiet period, or once the maximum delay has passed
//! since the first event, whichever comes first (so a steady stream of
//! changes still pushes at least every `max_delay`).
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_stream::{Stream, StreamExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// How long the events must pause before a batch ends.
    pub quiet: Duration,
    /// The longest a batch waits after its first event.
    pub max_delay: Duration,
}

impl Default for Debounce {
    /// Istio's defaults (`PILOT_DEBOUNCE_AFTER`, `PILOT_DEBOUNCE_MAX`).
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// The events of one batch.
#[derive(Debug)]
pub struct Batch<E> {
    pub events: Vec<E>,
    /// When the first event arrived: the start of the convergence clock.
    pub first_at: Instant,
}

impl Debounce {
    /// Waits for the next batch. `None` once the stream has ended with no
    /// pending event; a stream that ends mid-batch flushes the batch first.
    pub async fn next_batch<E, S>(&self, events: &mut S) -> Option<Batch<E>>
    where
        S: Stream<Item = E> + Unpin,
    {
        let first = events.next().await?;
        let first_at = Instant::now();
        let hard_deadline = first_at + self.max_delay;
        let mut batch = Batch {
            events: vec![first],
            first_at,
        };
        let mut last_at = first_at;
        loop {
            let deadline = (last_at + self.quiet).min(hard_deadline);
            if Instant::now() >= deadline {
                return Some(batch);
            }
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => {
                        batch.events.push(event);
                        last_at = Instant::now();
                    }
                    None => return Some(batch),
                },
                _ = sleep_until(deadline) => return Some(batch),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn setup() -> (
        Debounce,
        mpsc::UnboundedSender<u32>,
        UnboundedReceiverStream<u32>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Debounce {
            quiet: ms(100),
            max_delay: ms(1000),
        };
        (d, tx, UnboundedReceiverStream::new(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_makes_one_batch_after_the_quiet_period() {
        let (d, tx, mut rx) = setup();
        let start = Instant::now();
        tokio::spawn(async move {
            for i in 0..5 {
                tx.send(i).unwrap();
                tokio::time::sleep(ms(50)).await;
            }
            std::future::pending::<()>().await;
        });
        let batch = d.next_batch(&mut rx).await.unwrap();
        assert_eq!(batch.events, vec![0, 1, 2, 3, 4]);
        assert_eq!(batch.first_at, start);
        // Last event at 200ms, quiet period 100ms.
        assert_eq!(Instant::now() - start, ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_is_cut_at_the_maximum_delay() {
        let (d, tx, mut rx) = setup();
        let start = Instant::now();
        tokio::spawn(async move {
            for i in 0.. {
                if tx.send(i).is_err() {
                    break;
                }
                tokio::time::sleep(ms(60)).await;
            }
        });
        let batch = d.next_batch(&mut rx).await.unwrap();
        assert_eq!(Instant::now() - start, ms(1000));
        assert_eq!(batch.events.len(), 17, "events at 0, 60, ..., 960ms");
        // The next batch starts with the next event, not with a stale clock.
        let next = d.next_batch(&mut rx).await.unwrap();
        assert!(next.first_at >= start + ms(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn separate_changes_make_separate_batches() {
        let (d, tx, mut rx) = setup();
        tx.send(1).unwrap();
        let first = d.next_batch(&mut rx).await.unwrap();
        assert_eq!(first.events, vec![1]);
        tokio::time::sleep(ms(500)).await;
        tx.send(2).unwrap();
        let t = Instant::now();
        let second = d.next_batch(&mut rx).await.unwrap();
        assert_eq!(second.events, vec![2]);
        assert_eq!(second.first_at, t);
        assert_eq!(Instant::now() - t, ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_flushes_then_ends() {
        let (d, tx, mut rx) = setup();
        tx.send(7).unwrap();
        drop(tx);
        let start = Instant::now();
        assert_eq!(d.next_batch(&mut rx).await.unwrap().events, vec![7]);
        assert_eq!(Instant::now(), start, "no wait once the stream has ended");
        assert!(d.next_batch(&mut rx).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_quiet_period_pushes_at_once() {
        let (mut d, tx, mut rx) = setup();
        d.quiet = Duration::ZERO;
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let start = Instant::now();
        let batch = d.next_batch(&mut rx).await.unwrap();
        assert_eq!(Instant::now(), start);
        assert!(!batch.events.is_empty());
    }
}
