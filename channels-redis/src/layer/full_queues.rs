//! Process queues found full: a group send checks that they still are before it writes a
//! payload into them.
//!
//! A payload names every member its queue holds, so a queue that stays full (its process died,
//! or fell far behind) would otherwise cost each message the whole payload written into Redis
//! and taken out again by [`stays`](super::send::stays): thousands of names for a process that
//! died with thousands of members. A queue that the last write found full is checked first,
//! one `ZCARD` per queue in one pipeline per shard; while it is still full the message is
//! dropped for its members (as the write would have done) without its payload being built.

use std::collections::{HashMap, HashSet};

use super::Inner;
use super::shards::query;

/// A process queue to check before writing to it: its key, shard and capacity.
pub(super) struct Suspect {
    pub(super) queue: String,
    pub(super) shard: usize,
    pub(super) capacity: usize,
}

impl Inner {
    fn full_queues(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.full_queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last write to `queue` found it full.
    pub(super) fn was_full(&self, queue: &str) -> bool {
        let full = self.full_queues();
        !full.is_empty() && full.contains(queue)
    }

    /// Records what a write found: `queue` was full, or had room.
    pub(super) fn note_full(&self, queue: &str, full: bool) {
        if full {
            self.full_queues().insert(queue.to_owned());
        } else if self.was_full(queue) {
            self.full_queues().remove(queue);
        }
    }

    /// Forgets the queues of processes no longer alive: nothing is sent to them again.
    pub(super) fn forget_full_queues(&self, of_process: impl Fn(&str) -> bool) {
        self.full_queues().retain(|queue| !of_process(queue));
    }

    /// Of `suspects`, the queues that are still full (trimmed of expired messages as a write
    /// would, then counted). A shard that fails to answer has its queues written as usual.
    pub(super) async fn still_full(&self, suspects: &[Suspect], now: f64) -> HashSet<String> {
        let mut by_shard: HashMap<usize, Vec<&Suspect>> = HashMap::new();
        for suspect in suspects {
            by_shard.entry(suspect.shard).or_default().push(suspect);
        }
        let trim_before = now.floor() as i64 - self.expiry_secs() as i64;
        let mut full = HashSet::new();
        for (shard, suspects) in by_shard {
            let mut pipe = redis::pipe();
            for suspect in &suspects {
                pipe.cmd("ZREMRANGEBYSCORE").arg(&suspect.queue).arg(0).arg(trim_before).ignore();
                pipe.cmd("ZCARD").arg(&suspect.queue);
            }
            let Ok(lengths) = query::<Vec<usize>>(self, shard, &pipe).await else { continue };
            for (suspect, length) in suspects.iter().zip(lengths) {
                let is_full = length >= suspect.capacity;
                self.note_full(&suspect.queue, is_full);
                if is_full {
                    full.insert(suspect.queue.clone());
                }
            }
        }
        full
    }
}
