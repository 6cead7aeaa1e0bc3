//! Retention: whole segments trimmed automatically by size and by age.
//!
//! # The rule
//!
//! Every `check_interval` the node that leads (a single node always does)
//! walks its segments from the oldest and deletes segment `S` (starting
//! at `s`, ending where the next one starts, at `e`) while all of these hold:
//!
//! 1. `S` is not the tail segment (the one being written);
//! 2. `e` is below the commit offset `C` (nothing at or above `C` is ever
//!    removed, and uncommitted bytes never are);
//! 3. `C - e >= min_bytes`: at least `min_bytes` of committed log remain
//!    after it (`retention.min_bytes`, default 0);
//! 4. the log from `s` to `C` holds more than `max_bytes`
//!    (`retention.max_bytes`), **or** `S` was last written more than
//!    `max_age` ago (`retention.max_age`; the file's mtime on the leader).
//!
//! The walk stops at the first segment that does not qualify. So with
//! `max_bytes` the committed log keeps at most `max_bytes` (down to whole
//! segments: between `max_bytes - segment_size` and `max_bytes`), unless
//! `min_bytes` or the tail segment keeps more.
//!
//! # How it trims
//!
//! Through [`Node::trim_prefix`], the one trim mechanism: on a single node
//! the segments go at once; on a cluster only the leader evaluates the
//! policy and proposes a replicated trim at its own segment boundary (a
//! kind-3 entry). Every node applies it when the entry commits *on that
//! node*, so a follower only ever trims below its own commit offset, every
//! node ends with (nearly) the same start offset, and a node that was down
//! trims when it catches up. See ARCHITECTURE.md, "Retention", for why the
//! leader decides rather than each node.

use std::time::{Duration, SystemTime};

use loglog_proto::wire::{Role, ServerError};
use loglog_storage::SegmentInfo;
use tokio::sync::watch;

use crate::node::Node;

/// Default interval between two evaluations of the retention policy.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The retention policy (`[retention]` in the config file). Off unless
/// `max_bytes` or `max_age` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Trim whole segments while the committed log is larger than this.
    pub max_bytes: Option<u64>,
    /// Trim whole segments last written longer ago than this.
    pub max_age: Option<Duration>,
    /// Never trim below the last `min_bytes` committed bytes, whatever the
    /// other two say.
    pub min_bytes: u64,
    /// How often the policy is evaluated.
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_bytes: None,
            max_age: None,
            min_bytes: 0,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl Retention {
    /// True when a policy is set (`max_bytes` or `max_age`).
    pub fn is_enabled(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.check_interval.is_zero() {
            return Err("retention.check_interval must not be zero".to_string());
        }
        if self.max_age.is_some_and(|age| age.is_zero()) {
            return Err("retention.max_age must not be zero".to_string());
        }
        Ok(())
    }

    /// Where to trim (a segment start above the first segment's start), if
    /// the rule in the module docs deletes anything. `segments` oldest first.
    pub fn plan_trim(&self, segments: &[SegmentInfo], commit: u64, now: SystemTime) -> Option<u64> {
        let mut trim_to = None;
        for pair in segments.windows(2) {
            let (segment, next_start) = (&pair[0], pair[1].start);
            if next_start >= commit || commit - next_start < self.min_bytes {
                break;
            }
            let too_large = self
                .max_bytes
                .is_some_and(|max| commit - segment.start > max);
            let too_old = self.max_age.is_some_and(|max_age| {
                segment.last_write.is_some_and(|written| {
                    now.duration_since(written)
                        .is_ok_and(|elapsed| elapsed > max_age)
                })
            });
            if !(too_large || too_old) {
                break;
            }
            trim_to = Some(next_start);
        }
        trim_to
    }
}

/// Evaluates the policy every `check_interval` until the node stops (or
/// every handle to it is dropped: the task does not keep it alive).
pub(crate) async fn run(
    node: std::sync::Weak<crate::node::NodeInner>,
    policy: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(?policy, "retention on");
    let mut ticks = tokio::time::interval(policy.check_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        let Some(node) = Node::upgrade(&node) else {
            return;
        };
        // On a cluster the leader decides for everyone (module docs).
        if node.status().role != Role::Leader || node.failure().is_some() {
            continue;
        }
        let commit = node.commit_offset();
        let segments = node.log_segments();
        let Some(offset) = policy.plan_trim(&segments, commit, SystemTime::now()) else {
            continue;
        };
        match node.trim_prefix(offset).await {
            Ok(start) => tracing::info!(offset, start, commit, "retention trimmed the log"),
            Err(ServerError::NotLeader { .. } | ServerError::ShuttingDown) => {}
            Err(error) => tracing::warn!(%error, offset, "retention trim failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(starts: &[u64], end: u64, ages_secs: &[u64], now: SystemTime) -> Vec<SegmentInfo> {
        starts
            .iter()
            .enumerate()
            .map(|(index, &start)| SegmentInfo {
                start,
                end: starts.get(index + 1).copied().unwrap_or(end),
                last_write: Some(now - Duration::from_secs(ages_secs[index])),
            })
            .collect()
    }

    #[test]
    fn bytes_keep_the_committed_log_within_the_bound_in_whole_segments() {
        let now = SystemTime::now();
        let log = segments(&[0, 100, 200, 300], 350, &[0; 4], now);
        let policy = Retention {
            max_bytes: Some(160),
            ..Retention::default()
        };
        // From 200 the committed log (to 340) is 140 <= 160.
        assert_eq!(policy.plan_trim(&log, 340, now), Some(200));
        // Never at or above the commit offset, never the tail.
        assert_eq!(policy.plan_trim(&log, 200, now), Some(100));
        assert_eq!(policy.plan_trim(&log, 100, now), None);
        assert_eq!(policy.plan_trim(&log[3..], 350, now), None);
        // Within the bound: nothing.
        let small = Retention {
            max_bytes: Some(1000),
            ..Retention::default()
        };
        assert_eq!(small.plan_trim(&log, 340, now), None);
    }

    #[test]
    fn min_bytes_wins_over_the_other_limits() {
        let now = SystemTime::now();
        let log = segments(&[0, 100, 200, 300], 350, &[50, 40, 30, 0], now);
        let policy = Retention {
            max_bytes: Some(10),
            max_age: Some(Duration::from_secs(1)),
            min_bytes: 150,
            ..Retention::default()
        };
        // Trimming at 200 would leave 140 < 150 committed bytes.
        assert_eq!(policy.plan_trim(&log, 340, now), Some(100));
    }

    #[test]
    fn age_trims_segments_last_written_long_ago() {
        let now = SystemTime::now();
        let log = segments(&[0, 100, 200, 300], 350, &[90, 70, 20, 0], now);
        let policy = Retention {
            max_age: Some(Duration::from_secs(60)),
            ..Retention::default()
        };
        assert_eq!(policy.plan_trim(&log, 350, now), Some(200));
        let older = Retention {
            max_age: Some(Duration::from_secs(80)),
            ..Retention::default()
        };
        assert_eq!(older.plan_trim(&log, 350, now), Some(100));
        // An unknown mtime never counts as old.
        let mut unknown = log.clone();
        unknown[0].last_write = None;
        assert_eq!(policy.plan_trim(&unknown, 350, now), None);
        assert!(!Retention::default().is_enabled());
        assert!(policy.is_enabled());
    }
}
