//! A producer's sequence numbers, handed out so that the nodes' dedup
//! window always covers a retry.
//!
//! The nodes remember each producer's last [`DEDUP_WINDOW`] entries. A
//! bound on requests in flight is not enough to stay inside it: an append
//! whose connection broke holds no request while it waits to retry, and the
//! client's other appends may meanwhile push more than a window of new
//! entries past it at the new leader; its retry would then be answered
//! `SequenceUnknown`. So a new sequence is issued only while it lies within
//! [`MAX_SEQUENCE_SPAN`] of the oldest unfinished one; past that, new
//! appends wait for the oldest to finish (answered, failed, or dropped).
//!
//! [`DEDUP_WINDOW`]: loglog_proto::producer::DEDUP_WINDOW

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use loglog_proto::producer::MAX_SEQUENCE_SPAN;
use tokio::sync::Notify;

/// The sequences of one producer.
pub(crate) struct Sequences {
    state: Mutex<State>,
    /// Signalled when the oldest unfinished sequence moves up.
    advanced: Notify,
}

struct State {
    /// The oldest unfinished sequence (or the next one, if none is).
    oldest: u64,
    /// Whether each sequence from `oldest` on has finished; its length is
    /// the span in use, at most `MAX_SEQUENCE_SPAN`.
    finished: VecDeque<bool>,
}

/// One issued sequence; dropping it finishes it.
pub(crate) struct Sequence {
    sequences: Arc<Sequences>,
    number: u64,
}

impl Sequences {
    pub(crate) fn new() -> Arc<Sequences> {
        Arc::new(Sequences {
            state: Mutex::new(State {
                oldest: 0,
                finished: VecDeque::with_capacity(MAX_SEQUENCE_SPAN as usize),
            }),
            advanced: Notify::new(),
        })
    }

    /// The next sequence, once it lies within the span of the oldest
    /// unfinished one.
    pub(crate) async fn issue(self: &Arc<Sequences>) -> Sequence {
        loop {
            // Registered before the check, so a finish in between is seen.
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let mut state = self.lock();
                if (state.finished.len() as u64) < MAX_SEQUENCE_SPAN {
                    let number = state.oldest + state.finished.len() as u64;
                    state.finished.push_back(false);
                    return Sequence {
                        sequences: Arc::clone(self),
                        number,
                    };
                }
            }
            advanced.await;
        }
    }

    fn finish(&self, number: u64) {
        let mut state = self.lock();
        let index = usize::try_from(number - state.oldest).expect("within the span");
        assert!(!state.finished[index], "sequence {number} finished twice");
        state.finished[index] = true;
        let mut moved = false;
        while state.finished.front() == Some(&true) {
            state.finished.pop_front();
            state.oldest += 1;
            moved = true;
        }
        drop(state);
        if moved {
            self.advanced.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every step leaves the state consistent, so a panic elsewhere does
        // not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sequence {
    pub(crate) fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.sequences.finish(self.number);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn issued_soon(sequences: &Arc<Sequences>) -> Option<Sequence> {
        tokio::time::timeout(Duration::from_millis(50), sequences.issue())
            .await
            .ok()
    }

    #[tokio::test]
    async fn new_sequences_wait_while_the_oldest_unfinished_is_a_span_behind() {
        let sequences = Sequences::new();
        let mut issued: VecDeque<Sequence> = VecDeque::new();
        for expected in 0..MAX_SEQUENCE_SPAN {
            let sequence = sequences.issue().await;
            assert_eq!(sequence.number(), expected);
            issued.push_back(sequence);
        }
        assert!(issued_soon(&sequences).await.is_none(), "span full");
        // Finishing a later one frees nothing: the oldest still holds it.
        drop(issued.remove(7));
        assert!(issued_soon(&sequences).await.is_none(), "oldest unfinished");
        // The oldest one finishing lets exactly one more through.
        drop(issued.pop_front());
        let next = issued_soon(&sequences)
            .await
            .expect("the span moved by one");
        assert_eq!(next.number(), MAX_SEQUENCE_SPAN);
        assert!(issued_soon(&sequences).await.is_none());
        // A waiter is woken by the finish, not only found by a later poll.
        let waiter = tokio::spawn({
            let sequences = Arc::clone(&sequences);
            async move { sequences.issue().await.number() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(issued.pop_front());
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(woken, MAX_SEQUENCE_SPAN + 1);
    }

    #[tokio::test]
    async fn the_span_frees_up_past_every_finished_sequence_at_once() {
        let sequences = Sequences::new();
        let mut issued = Vec::new();
        for _ in 0..MAX_SEQUENCE_SPAN {
            issued.push(sequences.issue().await);
        }
        let oldest = issued.remove(0);
        issued.truncate(9); // sequences 1..=9 stay unfinished
        drop(oldest); // 0 finishes; 10.. had finished already
        drop(issued); // and now 1..=9
        let mut fresh = Vec::new();
        for expected in MAX_SEQUENCE_SPAN..2 * MAX_SEQUENCE_SPAN {
            let sequence = issued_soon(&sequences).await.expect("whole span free");
            assert_eq!(sequence.number(), expected);
            fresh.push(sequence);
        }
        assert!(issued_soon(&sequences).await.is_none());
    }
}
