//! The background work of a presence service: rounds that send diffs and states to watchers and
//! write this process's entries to the store; over a shared store, telling other processes
//! this process's diffs through the layer, hearing theirs, and reading the store to catch up.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::group::{Entry, Ref, Write};
use super::{Shared, State};
use crate::layer::{Message, SendError, validate_group_name};

/// The message type of a diff one process tells the others.
const SYNC_TYPE: &str = "presence.sync";
/// How long the listener waits after a failed receive before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// At most one warning about the store per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A new service's id: 12 random letters and digits.
pub(super) fn process_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
}

/// The layer group through which processes tell each other `group`'s diffs:
/// `presence.<group>`, or a digest of the name when that would be too long.
pub(super) fn sync_group(group: &str) -> String {
    let name = format!("presence.{group}");
    if validate_group_name(&name).is_ok() {
        return name;
    }
    let digest = Sha256::digest(group.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("presence.h{hex}")
}

/// The background task: a round when something changed (after the interval, so changes
/// coalesce), and over a shared store a refresh every third of the time to live: this
/// process's entries written again (they expire two thirds of it after a write) and the
/// store read, so that the entries of a process that died leave the views within it.
pub(super) async fn run(shared: Weak<Shared>) {
    let Some((wake, cancel, interval, ttl, refreshes)) = shared
        .upgrade()
        .map(|s| (s.wake.clone(), s.cancel.clone(), s.config.interval, s.config.ttl, s.store.is_some()))
    else {
        return;
    };
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + ttl / 3, ttl / 3);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let refreshing = tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => false,
            _ = refresh.tick(), if refreshes => true,
        };
        if !refreshing && !interval.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
        let Some(shared) = shared.upgrade() else { return };
        shared.round(refreshing).await;
    }
}

/// What a round found to do, taken under the lock.
#[derive(Default)]
struct Work {
    sends: Vec<(Arc<str>, Arc<str>, Message)>,
    writes: Vec<(Arc<str>, Write)>,
    /// Groups whose sync group the listener joins, then reads.
    joins: Vec<Arc<str>>,
    /// Sync groups the listener leaves: no connection here watches them any more.
    leaves: Vec<Arc<str>>,
}

impl Shared {
    /// One round: the diffs and states to send, the entries to write (all of them when
    /// `refreshing`), the groups to join, read and leave.
    pub(super) async fn round(self: &Arc<Self>, refreshing: bool) {
        let _round = self.round.lock().await;
        let work = self.take_work(refreshing);
        for (group, channel, message) in work.sends {
            match self.layer.send(&channel, message).await {
                Ok(()) => {}
                Err(SendError::ChannelFull { .. }) => {
                    let mut state = self.lock();
                    if let Some(g) = state.groups.get_mut(&group)
                        && g.resend_state(&channel)
                    {
                        state.mark(&group);
                        self.wake.notify_one();
                    }
                }
                Err(e) => tracing::debug!(%channel, error = %e, "presence message not delivered"),
            }
        }
        let Some(store) = self.store.clone() else { return };
        for (group, write) in work.writes {
            let tracked: Vec<(&str, String)> = write.tracked.iter().map(|(r, e)| (&**r, e.encode())).collect();
            let pairs: Vec<(&str, &str)> = tracked.iter().map(|(r, v)| (*r, v.as_str())).collect();
            let untracked: Vec<&str> = write.untracked.iter().map(|r| &**r).collect();
            match store.write(&group, &pairs, &untracked, self.config.entry_ttl()).await {
                Ok(()) if !write.refresh => self.tell_others(&group, &tracked, &untracked).await,
                Ok(()) => {}
                Err(e) => {
                    self.warn(&format!("could not write presence of group {group}: {e}"));
                    if let Some(g) = self.lock().groups.get_mut(&group) {
                        g.write_failed(write);
                    }
                }
            }
        }
        let listener = if work.joins.is_empty() && work.leaves.is_empty() { None } else { self.listener().await };
        for group in work.leaves {
            if let Some(listener) = &listener {
                let _ = self.layer.group_discard(&sync_group(&group), listener).await;
            }
        }
        let mut reads = Vec::with_capacity(work.joins.len());
        for group in work.joins {
            let Some(listener) = &listener else { break };
            match self.layer.group_add(&sync_group(&group), listener).await {
                Ok(()) => {
                    if let Some(g) = self.lock().groups.get_mut(&group) {
                        g.joined = true;
                    }
                    reads.push(group);
                }
                Err(e) => self.warn(&format!("could not watch presence of group {group}: {e}")),
            }
        }
        for group in reads {
            if let Some(g) = self.lock().groups.get_mut(&group) {
                g.reading();
            }
            let read = store.read(&group).await;
            let mut state = self.lock();
            let Some(g) = state.groups.get_mut(&group) else { continue };
            match read {
                Ok(live) => {
                    if g.reconcile(live) {
                        state.mark(&group);
                        self.wake.notify_one();
                    }
                }
                Err(e) => {
                    g.read_failed();
                    drop(state);
                    self.warn(&format!("could not read presence of group {group}: {e}"));
                }
            }
        }
    }

    fn take_work(&self, refreshing: bool) -> Work {
        let shared = self.store.is_some();
        let mut work = Work::default();
        let mut state = self.lock();
        let State { groups, dirty, .. } = &mut *state;
        for name in std::mem::take(dirty) {
            let Some(g) = groups.get_mut(&name) else { continue };
            g.dirty = false;
            let taken = g.take(&name, &*self.config.events, shared);
            work.sends.extend(taken.sends.into_iter().map(|(channel, message)| (name.clone(), channel, message)));
            if let Some(write) = taken.write {
                work.writes.push((name.clone(), write));
            }
            if g.is_idle() {
                if g.joined {
                    work.leaves.push(name.clone());
                }
                groups.remove(&name);
            } else if shared && !g.joined {
                work.joins.push(name.clone());
            }
        }
        if refreshing {
            // Every entry of this process written again, and every group joined again (a
            // membership expires, and the backend may have lost it) and read to catch up.
            for (name, g) in groups.iter() {
                if let Some(write) = g.refresh() {
                    work.writes.push((name.clone(), write));
                }
                if !work.joins.contains(name) {
                    work.joins.push(name.clone());
                }
            }
        }
        work
    }

    /// Tells the other processes on the layer this process's changes in `group`.
    async fn tell_others(&self, group: &str, tracked: &[(&str, String)], untracked: &[&str]) {
        let event = serde_json::json!({
            "type": SYNC_TYPE,
            "group": group,
            "process": &*self.process,
            "joins": tracked,
            "leaves": untracked,
        });
        let sent = match Message::new(&event) {
            Ok(message) => {
                self.layer.group_send(&sync_group(group), message).await.map(drop).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            self.warn(&format!("could not tell other processes the presence of group {group}: {e}"));
        }
    }

    /// The channel other processes' diffs arrive on, made (with the task that reads it) on
    /// first use.
    async fn listener(self: &Arc<Self>) -> Option<Arc<str>> {
        if let Some(listener) = self.listener.get() {
            return Some(listener.clone());
        }
        let channel: Arc<str> = match self.layer.new_channel("presence").await {
            Ok(channel) => channel.into(),
            Err(e) => {
                self.warn(&format!("could not make the presence listener's channel: {e}"));
                return None;
            }
        };
        let channel = self.listener.get_or_init(|| channel).clone();
        tokio::spawn(listen(Arc::downgrade(self), self.layer.clone(), channel.clone(), self.cancel.clone()));
        Some(channel)
    }

    /// Another process's diff, as [`tell_others`](Self::tell_others) sent it.
    fn heard(&self, message: &Message) {
        #[derive(serde::Deserialize)]
        struct Sync {
            group: String,
            process: String,
            joins: Vec<(String, String)>,
            leaves: Vec<String>,
        }
        if message.message_type() != SYNC_TYPE {
            return;
        }
        let sync: Sync = match message.decode() {
            Ok(sync) => sync,
            Err(e) => {
                tracing::debug!(error = %e, "presence diff from another process that does not decode; ignored");
                return;
            }
        };
        if *sync.process == *self.process {
            return;
        }
        let joins: Vec<(Ref, Entry)> =
            sync.joins.iter().filter_map(|(r, value)| Some((r.as_str().into(), Entry::decode(value)?))).collect();
        let leaves = sync.leaves.iter().map(|r| r.as_str().into()).collect();
        let mut state = self.lock();
        let Some(name) = state.groups.get_key_value(sync.group.as_str()).map(|(name, _)| name.clone()) else { return };
        let g = state.groups.get_mut(&name).expect("just found");
        if g.apply_remote(joins, leaves) {
            state.mark(&name);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Logs `message` as a warning, at most once per [`WARN_EVERY`]; the rest at debug.
    fn warn(&self, message: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!("{message} (presence views may be stale until it recovers)");
        } else {
            tracing::debug!("{message}");
        }
    }
}

/// Reads other processes' diffs from `channel` until the service is gone.
async fn listen(
    shared: Weak<Shared>,
    layer: Arc<dyn crate::layer::ChannelLayer>,
    channel: Arc<str>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            received = layer.receive(&channel) => received,
        };
        let Some(shared) = shared.upgrade() else { return };
        match received {
            Ok(message) => shared.heard(&message),
            Err(e) => {
                drop(shared);
                tracing::debug!(error = %e, "presence listener could not receive");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
