//! One group's presence in this process: the entries its watchers were told about, the changes
//! since, its watchers, and what this process still has to write to the shared store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::types::{PresenceDiff, Presences};
use super::{MAX_META_BYTES, PresenceError, PresenceEvents};
use crate::layer::Message;

/// An entry's reference: `<process id>.<number>`, unique across processes.
pub(super) type Ref = Arc<str>;

/// What one connection tracks: its key and meta.
#[derive(Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: Box<str>,
    pub(crate) meta: serde_json::Value,
}

impl Entry {
    pub(super) fn new(key: &str, meta: serde_json::Value) -> Result<Self, PresenceError> {
        let bytes = serde_json::to_vec(&meta).map(|json| json.len()).unwrap_or(usize::MAX);
        if bytes > MAX_META_BYTES {
            return Err(PresenceError::MetaTooLarge { bytes });
        }
        Ok(Self { key: key.into(), meta })
    }

    /// The entry as the store and other processes see it: `{"key": ..., "meta": ...}`.
    pub(super) fn encode(&self) -> String {
        serde_json::json!({ "key": &*self.key, "meta": self.meta }).to_string()
    }

    /// An entry written by [`encode`](Self::encode), here or in another process; `None` for
    /// anything else (logged: a store holding foreign values under our keys is misconfigured).
    pub(super) fn decode(value: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Encoded {
            key: String,
            #[serde(default)]
            meta: serde_json::Value,
        }
        match serde_json::from_str::<Encoded>(value) {
            Ok(e) if !e.key.is_empty() => Some(Self { key: e.key.into(), meta: e.meta }),
            _ => {
                tracing::debug!(value, "presence entry that is not ours; ignored");
                None
            }
        }
    }
}

/// What a round takes out of a group: messages for watchers, and entries for the store.
#[derive(Default)]
pub(super) struct Taken {
    pub(super) sends: Vec<(Arc<str>, Message)>,
    /// Entries of this process to write (`None` when there is nothing to write).
    pub(super) write: Option<Write>,
}

/// Entries of this process to add and remove in the store, then to tell the other processes.
#[derive(Default)]
pub(super) struct Write {
    pub(super) tracked: Vec<(Ref, Arc<Entry>)>,
    pub(super) untracked: Vec<Ref>,
    /// A refresh of every entry: written, not told (the others have them already).
    pub(super) refresh: bool,
}

#[derive(Default)]
pub(super) struct Group {
    /// What the watchers have been told.
    published: HashMap<Ref, Arc<Entry>>,
    /// Changes since: entries to add (or replace) and entries to take out of `published`.
    joins: HashMap<Ref, Arc<Entry>>,
    leaves: HashMap<Ref, Arc<Entry>>,
    /// Channels that get diffs, and channels that get the state at the next round first.
    watchers: HashSet<Arc<str>>,
    newcomers: Vec<Arc<str>>,
    /// This process's entries, by channel.
    local: HashMap<Arc<str>, Ref>,
    /// This process's entries not yet written to the store, and the ones to remove from it.
    to_write: HashMap<Ref, Arc<Entry>>,
    to_remove: Vec<Ref>,
    /// The listener of this process is a member of the group's sync group, and has read the
    /// store once since.
    pub(super) joined: bool,
    /// While a read of the store is under way, the references other processes' diffs changed
    /// meanwhile: the read may predate them, so they are left as the diffs made them.
    pub(super) touched: Option<HashSet<Ref>>,
    /// Listed in the state's dirty list.
    pub(super) dirty: bool,
}

impl Group {
    /// Whether `reference` is in the view now (pending changes included), with which entry.
    fn current_entry(&self, reference: &str) -> Option<&Arc<Entry>> {
        self.joins
            .get(reference)
            .or_else(|| self.published.get(reference).filter(|_| !self.leaves.contains_key(reference)))
    }

    /// The view now, pending changes included.
    pub(super) fn current(&self) -> Presences {
        let published =
            self.published.iter().filter(|(r, _)| !self.leaves.contains_key(*r) && !self.joins.contains_key(*r));
        Presences::from_refs(published.chain(&self.joins))
    }

    /// Adds (or replaces) `reference` in the view, for the next diff. Back to what the
    /// watchers were told, it cancels the pending changes instead.
    fn join(&mut self, reference: Ref, entry: Arc<Entry>) {
        if let Some(old) = self.published.get(&reference) {
            if **old == *entry {
                self.leaves.remove(&reference);
                self.joins.remove(&reference);
                return;
            }
            if !self.leaves.contains_key(&reference) {
                self.leaves.insert(reference.clone(), old.clone());
            }
        }
        self.joins.insert(reference, entry);
    }

    /// Takes `reference` out of the view, for the next diff.
    fn leave(&mut self, reference: &str) {
        self.joins.remove(reference);
        if let Some((r, old)) = self.published.get_key_value(reference) {
            self.leaves.entry(r.clone()).or_insert_with(|| old.clone());
        }
    }

    /// `channel` of this process tracks `entry` under `reference` (replacing what it tracked).
    pub(super) fn track_local(&mut self, channel: &Arc<str>, reference: Ref, entry: Arc<Entry>) {
        self.untrack_local(channel);
        self.local.insert(channel.clone(), reference.clone());
        self.to_write.insert(reference.clone(), entry.clone());
        self.join(reference, entry);
    }

    /// `channel` of this process no longer tracks anything here.
    pub(super) fn untrack_local(&mut self, channel: &str) {
        let Some(reference) = self.local.remove(channel) else { return };
        self.leave(&reference);
        if self.to_write.remove(&reference).is_none() {
            self.to_remove.push(reference);
        }
    }

    /// Makes `channel` a watcher; whether it was not one already.
    pub(super) fn watch(&mut self, channel: &Arc<str>) -> bool {
        if self.watchers.contains(channel) || self.newcomers.contains(channel) {
            return false;
        }
        self.newcomers.push(channel.clone());
        true
    }

    pub(super) fn unwatch(&mut self, channel: &str) {
        if !self.watchers.remove(channel)
            && let Some(i) = self.newcomers.iter().position(|c| &**c == channel)
        {
            self.newcomers.swap_remove(i);
        }
    }

    /// A watcher missed a message (its queue was full): it gets the whole state again.
    pub(super) fn resend_state(&mut self, channel: &str) -> bool {
        match self.watchers.take(channel) {
            Some(channel) => {
                self.newcomers.push(channel);
                true
            }
            None => false,
        }
    }

    /// Nothing here for this process to keep: no watcher, no entry, nothing to write.
    pub(super) fn is_idle(&self) -> bool {
        self.watchers.is_empty()
            && self.newcomers.is_empty()
            && self.local.is_empty()
            && self.to_write.is_empty()
            && self.to_remove.is_empty()
    }

    /// What a round sends and writes: the diff for the watchers, then the state for the
    /// newcomers (who become watchers), and this process's changes for the store.
    pub(super) fn take(&mut self, group: &str, events: &dyn PresenceEvents, shared: bool) -> Taken {
        let mut taken = Taken::default();
        if !self.joins.is_empty() || !self.leaves.is_empty() {
            let joins = std::mem::take(&mut self.joins);
            let leaves = std::mem::take(&mut self.leaves);
            let diff = PresenceDiff { joins: Presences::from_refs(&joins), leaves: Presences::from_refs(&leaves) };
            for reference in leaves.keys() {
                self.published.remove(reference);
            }
            self.published.extend(joins);
            if !self.watchers.is_empty()
                && let Some(message) = events.diff(group, &diff)
            {
                taken.sends.extend(self.watchers.iter().map(|c| (c.clone(), message.clone())));
            }
        }
        if !self.newcomers.is_empty() {
            let message = events.state(group, &Presences::from_refs(&self.published));
            for channel in self.newcomers.drain(..) {
                if let Some(message) = &message {
                    taken.sends.push((channel.clone(), message.clone()));
                }
                self.watchers.insert(channel);
            }
        }
        if !shared {
            self.to_write.clear();
            self.to_remove.clear();
        } else if !self.to_write.is_empty() || !self.to_remove.is_empty() {
            taken.write = Some(Write {
                tracked: self.to_write.drain().collect(),
                untracked: std::mem::take(&mut self.to_remove),
                refresh: false,
            });
        }
        taken
    }

    /// Every entry of this process, to write again before they expire.
    pub(super) fn refresh(&self) -> Option<Write> {
        if self.local.is_empty() {
            return None;
        }
        let tracked = self.local.values().filter_map(|r| Some((r.clone(), self.current_entry(r)?.clone()))).collect();
        Some(Write { tracked, untracked: Vec::new(), refresh: true })
    }

    /// A write that failed: its changes are written with the next one, unless overtaken.
    pub(super) fn write_failed(&mut self, write: Write) {
        for (reference, entry) in write.tracked {
            if self.local.values().any(|r| *r == reference) {
                self.to_write.entry(reference).or_insert(entry);
            }
        }
        self.to_remove.extend(write.untracked);
    }

    /// Another process's diff. Returns whether the view changed.
    pub(super) fn apply_remote(&mut self, joins: Vec<(Ref, Entry)>, leaves: Vec<Ref>) -> bool {
        let mut changed = false;
        for reference in leaves {
            if self.current_entry(&reference).is_some() {
                self.leave(&reference);
                changed = true;
            }
            if let Some(touched) = &mut self.touched {
                touched.insert(reference);
            }
        }
        for (reference, entry) in joins {
            if self.current_entry(&reference).is_none_or(|old| **old != entry) {
                self.join(reference.clone(), Arc::new(entry));
                changed = true;
            }
            if let Some(touched) = &mut self.touched {
                touched.insert(reference);
            }
        }
        changed
    }

    /// The store's live entries, read: entries of other processes missing from the view join
    /// it, and ones the store no longer has (expired: their process died) leave it. This
    /// process's own entries are left alone: this process knows them better than the read.
    /// Returns whether the view changed.
    pub(super) fn reconcile(&mut self, live: Vec<(String, String)>, own_prefix: &str) -> bool {
        let touched = self.touched.take().unwrap_or_default();
        let foreign = |r: &str| !r.starts_with(own_prefix) && !touched.contains(r);
        let mut changed = false;
        let mut seen = HashSet::with_capacity(live.len());
        for (reference, value) in live {
            if !foreign(&reference) {
                continue;
            }
            if self.current_entry(&reference).is_none()
                && let Some(entry) = Entry::decode(&value)
            {
                self.join(reference.as_str().into(), Arc::new(entry));
                changed = true;
            }
            seen.insert(reference);
        }
        let gone: Vec<Ref> = self
            .published
            .keys()
            .chain(self.joins.keys())
            .filter(|r| foreign(r) && !seen.contains(&***r) && self.current_entry(r).is_some())
            .cloned()
            .collect();
        for reference in gone {
            self.leave(&reference);
            changed = true;
        }
        changed
    }
}
