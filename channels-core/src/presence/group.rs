//! One group's presence in this process: the entries its watchers were told about, the changes
//! since, its watchers, and what this process still has to write to the shared store.
//!
//! Kept small, because most groups of an idle server hold one connection (a room each): one
//! list of members (a map past eight, see [`Members`]), keyed by channel name, and the changes
//! of the current interval in a box that exists only while there are some.

use std::collections::HashSet;
use std::sync::Arc;

use super::types::{PresenceDiff, Presences};
use super::{MAX_META_BYTES, PresenceError, PresenceEvents};
use crate::layer::{Members, Message};

/// An entry's reference: the name of the channel that tracks it, unique across processes.
pub(super) type Ref = Arc<str>;

/// What one connection tracks: its key and meta (boxed, and absent when null: most connections
/// track none, and every entry would carry a JSON value's size).
#[derive(Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: Arc<str>,
    meta: Option<Box<serde_json::Value>>,
}

impl Entry {
    pub(super) fn new(key: Arc<str>, meta: serde_json::Value) -> Result<Self, PresenceError> {
        let bytes = serde_json::to_vec(&meta).map(|json| json.len()).unwrap_or(usize::MAX);
        if bytes > MAX_META_BYTES {
            return Err(PresenceError::MetaTooLarge { bytes });
        }
        Ok(Self::with(key, meta))
    }

    fn with(key: Arc<str>, meta: serde_json::Value) -> Self {
        Self { key, meta: (!meta.is_null()).then(|| Box::new(meta)) }
    }

    pub(crate) fn meta(&self) -> &serde_json::Value {
        static NULL: serde_json::Value = serde_json::Value::Null;
        self.meta.as_deref().unwrap_or(&NULL)
    }

    /// The entry as the store and other processes see it: `{"key": ..., "meta": ...}`.
    pub(super) fn encode(&self) -> String {
        serde_json::json!({ "key": &*self.key, "meta": self.meta() }).to_string()
    }

    /// An entry written by [`encode`](Self::encode), here or in another process; `None` for
    /// anything else (a store holding foreign values under our keys is misconfigured).
    pub(super) fn decode(value: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Encoded {
            key: String,
            #[serde(default)]
            meta: serde_json::Value,
        }
        match serde_json::from_str::<Encoded>(value) {
            Ok(e) if !e.key.is_empty() => Some(Self::with(e.key.into(), e.meta)),
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

/// Whether a channel of this process watches the group.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Watch {
    #[default]
    No,
    /// Gets the state at the next round, then diffs.
    New,
    Yes,
}

/// A channel in the group: one of this process (watching, tracking, or both), or another
/// process's entry.
#[derive(Debug, Default)]
struct Member {
    /// The entry the watchers were told about.
    published: Option<Arc<Entry>>,
    watch: Watch,
    /// A channel of this process tracks an entry here.
    local: bool,
}

impl Member {
    fn is_empty(&self) -> bool {
        self.published.is_none() && self.watch == Watch::No && !self.local
    }
}

/// A group's changes since the last round.
#[derive(Default)]
struct Pending {
    /// Entries to add (or replace) and entries to take out of the published ones.
    joins: foldhash::HashMap<Ref, Arc<Entry>>,
    leaves: foldhash::HashMap<Ref, Arc<Entry>>,
    /// Watchers that get the state first.
    newcomers: usize,
    /// This process's entries to write to the store, and to remove from it.
    to_write: Vec<Ref>,
    to_remove: Vec<Ref>,
    /// While a read of the store is under way, the references other processes' diffs changed
    /// meanwhile: the read may predate them, so they are left as the diffs made them.
    touched: Option<HashSet<Ref>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.joins.is_empty()
            && self.leaves.is_empty()
            && self.newcomers == 0
            && self.to_write.is_empty()
            && self.to_remove.is_empty()
            && self.touched.is_none()
    }
}

#[derive(Default)]
pub(super) struct Group {
    members: Members<Member>,
    pending: Option<Box<Pending>>,
    /// The listener of this process is a member of the group's sync group, and has read the
    /// store once since.
    pub(super) joined: bool,
    /// Listed in the state's dirty list.
    pub(super) dirty: bool,
}

impl Group {
    fn pending(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    /// Frees the pending changes once there are none.
    fn tidy(&mut self) {
        if self.pending.as_ref().is_some_and(|p| p.is_empty()) {
            self.pending = None;
        }
    }

    fn member(&mut self, channel: &Arc<str>) -> &mut Member {
        if self.members.get(channel).is_none() {
            self.members.insert(channel.clone(), Member::default());
        }
        self.members.get_mut(channel).expect("just added")
    }

    fn published(&self, reference: &str) -> Option<&Arc<Entry>> {
        self.members.get(reference).and_then(|m| m.published.as_ref())
    }

    /// Whether `reference` is in the view now (pending changes included), with which entry.
    fn current_entry(&self, reference: &str) -> Option<&Arc<Entry>> {
        let pending = self.pending.as_deref();
        if let Some(entry) = pending.and_then(|p| p.joins.get(reference)) {
            return Some(entry);
        }
        self.published(reference).filter(|_| !pending.is_some_and(|p| p.leaves.contains_key(reference)))
    }

    /// The view now, pending changes included.
    pub(super) fn current(&self) -> Presences {
        let pending = self.pending.as_deref();
        let changed = |r: &str| pending.is_some_and(|p| p.joins.contains_key(r) || p.leaves.contains_key(r));
        let published =
            self.members.iter().filter(|(r, _)| !changed(r)).filter_map(|(r, m)| Some((r, m.published.as_ref()?)));
        Presences::from_refs(published.chain(pending.into_iter().flat_map(|p| &p.joins)))
    }

    /// Adds (or replaces) `reference` in the view, for the next diff. Back to what the
    /// watchers were told, it cancels the pending changes instead.
    fn join(&mut self, reference: Ref, entry: Arc<Entry>) {
        let published = self.published(&reference).cloned();
        let pending = self.pending();
        if let Some(old) = published {
            if *old == *entry {
                pending.leaves.remove(&reference);
                pending.joins.remove(&reference);
                return;
            }
            pending.leaves.entry(reference.clone()).or_insert(old);
        }
        pending.joins.insert(reference, entry);
    }

    /// Takes `reference` out of the view, for the next diff.
    fn leave(&mut self, reference: &Ref) {
        let published = self.published(reference).cloned();
        let pending = self.pending();
        pending.joins.remove(reference);
        if let Some(old) = published {
            pending.leaves.entry(reference.clone()).or_insert(old);
        }
    }

    /// `channel` of this process tracks `entry` (replacing what it tracked) and watches.
    pub(super) fn track_local(&mut self, channel: &Arc<str>, entry: Arc<Entry>) {
        self.watch(channel);
        self.member(channel).local = true;
        self.join(channel.clone(), entry);
        let pending = self.pending();
        pending.to_remove.retain(|r| r != channel);
        if !pending.to_write.contains(channel) {
            pending.to_write.push(channel.clone());
        }
    }

    /// `channel` of this process neither tracks nor watches any more.
    pub(super) fn untrack_local(&mut self, channel: &Arc<str>) {
        let Some(member) = self.members.get_mut(channel) else { return };
        let (local, new) = (member.local, member.watch == Watch::New);
        member.local = false;
        member.watch = Watch::No;
        if new {
            self.pending().newcomers -= 1;
        }
        if local {
            self.leave(channel);
            let pending = self.pending();
            pending.to_write.retain(|r| r != channel);
            pending.to_remove.push(channel.clone());
        }
        if self.members.get(channel).is_some_and(Member::is_empty) {
            self.members.remove(channel);
        }
        self.tidy();
    }

    /// Makes `channel` a watcher; whether it was not one already.
    pub(super) fn watch(&mut self, channel: &Arc<str>) -> bool {
        let member = self.member(channel);
        if member.watch != Watch::No {
            return false;
        }
        member.watch = Watch::New;
        self.pending().newcomers += 1;
        true
    }

    /// A watcher missed a message (its queue was full): it gets the whole state again.
    pub(super) fn resend_state(&mut self, channel: &str) -> bool {
        match self.members.get_mut(channel) {
            Some(member) if member.watch == Watch::Yes => {
                member.watch = Watch::New;
                self.pending().newcomers += 1;
                true
            }
            _ => false,
        }
    }

    /// Nothing here for this process to keep: no watcher, no entry, nothing to write.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_none() && self.members.iter().all(|(_, m)| m.watch == Watch::No && !m.local)
    }

    /// What a round sends and writes: the diff for the watchers, then the state for the
    /// newcomers (who become watchers), and this process's changes for the store.
    pub(super) fn take(&mut self, group: &str, events: &dyn PresenceEvents, shared: bool) -> Taken {
        let mut taken = Taken::default();
        let Some(mut pending) = self.pending.take() else { return taken };
        if !pending.joins.is_empty() || !pending.leaves.is_empty() {
            let (joins, leaves) = (std::mem::take(&mut pending.joins), std::mem::take(&mut pending.leaves));
            let diff = PresenceDiff { joins: Presences::from_refs(&joins), leaves: Presences::from_refs(&leaves) };
            for reference in leaves.keys() {
                if let Some(member) = self.members.get_mut(reference) {
                    member.published = None;
                }
            }
            for (reference, entry) in joins {
                self.member(&reference).published = Some(entry);
            }
            if let Some(message) = events.diff(group, &diff) {
                let watching = self.members.iter().filter(|(_, m)| m.watch == Watch::Yes);
                taken.sends.extend(watching.map(|(channel, _)| (channel.clone(), message.clone())));
            }
        }
        if pending.newcomers > 0 {
            pending.newcomers = 0;
            let published = self.members.iter().filter_map(|(r, m)| Some((r, m.published.as_ref()?)));
            let message = events.state(group, &Presences::from_refs(published));
            self.members.retain(|channel, member| {
                if member.watch == Watch::New {
                    member.watch = Watch::Yes;
                    if let Some(message) = &message {
                        taken.sends.push((channel.clone(), message.clone()));
                    }
                }
                true
            });
        }
        self.members.retain(|_, member| !member.is_empty());
        if shared && (!pending.to_write.is_empty() || !pending.to_remove.is_empty()) {
            let tracked = std::mem::take(&mut pending.to_write)
                .into_iter()
                .filter_map(|r| {
                    let entry = self.members.get(&r).filter(|m| m.local)?.published.clone()?;
                    Some((r, entry))
                })
                .collect();
            taken.write = Some(Write { tracked, untracked: std::mem::take(&mut pending.to_remove), refresh: false });
        }
        pending.to_write.clear();
        pending.to_remove.clear();
        if !pending.is_empty() {
            self.pending = Some(pending);
        }
        taken
    }

    /// Every entry of this process, to write again before they expire.
    pub(super) fn refresh(&self) -> Option<Write> {
        let tracked: Vec<(Ref, Arc<Entry>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.local)
            .filter_map(|(r, _)| Some((r.clone(), self.current_entry(r)?.clone())))
            .collect();
        (!tracked.is_empty()).then_some(Write { tracked, untracked: Vec::new(), refresh: true })
    }

    /// A write that failed: its changes are written with the next one, unless overtaken.
    pub(super) fn write_failed(&mut self, write: Write) {
        let still: Vec<Ref> = write
            .tracked
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| self.members.get(r).is_some_and(|m| m.local))
            .collect();
        let pending = self.pending();
        for reference in still {
            if !pending.to_write.contains(&reference) {
                pending.to_write.push(reference);
            }
        }
        pending.to_remove.extend(write.untracked);
    }

    /// Marks the start of a read of the store (see [`reconcile`](Self::reconcile)).
    pub(super) fn reading(&mut self) {
        self.pending().touched = Some(HashSet::new());
    }

    /// A read of the store failed.
    pub(super) fn read_failed(&mut self) {
        if let Some(pending) = &mut self.pending {
            pending.touched = None;
        }
        self.tidy();
    }

    /// Another process's diff. Returns whether the view changed.
    pub(super) fn apply_remote(&mut self, joins: Vec<(Ref, Entry)>, leaves: Vec<Ref>) -> bool {
        let mut changed = false;
        for reference in leaves {
            if self.is_ours(&reference) {
                continue;
            }
            if self.current_entry(&reference).is_some() {
                self.leave(&reference);
                changed = true;
            }
            self.touch(reference);
        }
        for (reference, entry) in joins {
            if self.is_ours(&reference) {
                continue;
            }
            if self.current_entry(&reference).is_none_or(|old| **old != entry) {
                self.join(reference.clone(), Arc::new(entry));
                changed = true;
            }
            self.touch(reference);
        }
        self.tidy();
        changed
    }

    fn is_local(&self, reference: &str) -> bool {
        self.members.get(reference).is_some_and(|m| m.local)
    }

    /// Whether `reference` is an entry of this process: tracked here, or untracked and not yet
    /// removed from the store (a read may still find it there).
    fn is_ours(&self, reference: &str) -> bool {
        self.is_local(reference) || self.pending.as_ref().is_some_and(|p| p.to_remove.iter().any(|r| &**r == reference))
    }

    fn touch(&mut self, reference: Ref) {
        if let Some(touched) = self.pending.as_mut().and_then(|p| p.touched.as_mut()) {
            touched.insert(reference);
        }
    }

    /// The store's live entries, read: entries of other processes missing from the view join
    /// it, and ones the store no longer has (expired: their process died) leave it. This
    /// process's own entries are left alone: this process knows them better than the read.
    /// Returns whether the view changed.
    pub(super) fn reconcile(&mut self, live: Vec<(String, String)>) -> bool {
        let touched = self.pending.as_mut().and_then(|p| p.touched.take()).unwrap_or_default();
        let mut changed = false;
        let mut seen = HashSet::with_capacity(live.len());
        for (reference, value) in live {
            if self.is_ours(&reference) || touched.contains(reference.as_str()) {
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
        let pending_joins = self.pending.as_deref().into_iter().flat_map(|p| p.joins.keys());
        let gone: Vec<Ref> = self
            .members
            .iter()
            .filter(|(_, m)| m.published.is_some())
            .map(|(r, _)| r)
            .chain(pending_joins)
            .filter(|r| !self.is_ours(r) && !touched.contains(&***r) && !seen.contains(&***r))
            .filter(|r| self.current_entry(r).is_some())
            .cloned()
            .collect();
        for reference in gone {
            self.leave(&reference);
            changed = true;
        }
        self.tidy();
        changed
    }
}
