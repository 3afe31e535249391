//! The public shapes of presence: a set of entries by key, one meta, a diff.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::group::Entry;

/// Who is in a group: keys in order, each with the metas of its connections (in no particular
/// order). Serializes as `{KEY: {"metas": [META, ...]}}`, Phoenix's shape.
#[derive(Debug, Clone, Default)]
pub struct Presences {
    keys: BTreeMap<Arc<str>, Vec<PresenceMeta>>,
}

/// One connection's entry: the meta it tracked and the entry's reference.
#[derive(Debug, Clone)]
pub struct PresenceMeta {
    reference: Arc<str>,
    entry: Arc<Entry>,
}

/// What changed in a group over one interval: the metas that joined and the ones that left. A
/// meta that changed is in both (the old one leaves, the new one joins).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceDiff {
    /// Metas that joined, by key.
    pub joins: Presences,
    /// Metas that left, by key.
    pub leaves: Presences,
}

impl Presences {
    pub(super) fn from_refs<'a>(entries: impl IntoIterator<Item = (&'a Arc<str>, &'a Arc<Entry>)>) -> Self {
        let mut keys: BTreeMap<Arc<str>, Vec<PresenceMeta>> = BTreeMap::new();
        for (reference, entry) in entries {
            let meta = PresenceMeta { reference: reference.clone(), entry: entry.clone() };
            match keys.get_mut(&*entry.key) {
                Some(metas) => metas.push(meta),
                None => {
                    keys.insert(entry.key.clone(), vec![meta]);
                }
            }
        }
        Self { keys }
    }

    pub(super) fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, Entry)>) -> Self {
        let entries: Vec<(Arc<str>, Arc<Entry>)> =
            entries.into_iter().map(|(r, entry)| (Arc::from(r), Arc::new(entry))).collect();
        Self::from_refs(entries.iter().map(|(r, e)| (r, e)))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The metas of `key` (empty when absent).
    pub fn get(&self, key: &str) -> &[PresenceMeta] {
        self.keys.get(key).map_or(&[], Vec::as_slice)
    }

    /// The keys in order, each with its metas.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[PresenceMeta])> {
        self.keys.iter().map(|(key, metas)| (&**key, metas.as_slice()))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|key| &**key)
    }
}

impl PresenceMeta {
    /// The key the meta was tracked under.
    pub fn key(&self) -> &str {
        &self.entry.key
    }

    /// The meta, as tracked.
    pub fn meta(&self) -> &serde_json::Value {
        self.entry.meta()
    }

    /// The entry's reference, unique across processes and tracks: a connection tracked again
    /// gets a new one.
    pub fn presence_ref(&self) -> &str {
        &self.reference
    }
}

impl Serialize for Presences {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Metas<'a> {
            metas: &'a [PresenceMeta],
        }
        let mut map = serializer.serialize_map(Some(self.keys.len()))?;
        for (key, metas) in &self.keys {
            map.serialize_entry(&**key, &Metas { metas })?;
        }
        map.end()
    }
}

/// The tracked object with `"presence_ref"` added; a tracked value that is not an object goes
/// under `"meta"`.
impl Serialize for PresenceMeta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.entry.meta() {
            serde_json::Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len() + 1))?;
                for (name, value) in fields.iter().filter(|(name, _)| *name != "presence_ref") {
                    map.serialize_entry(name, value)?;
                }
                map.serialize_entry("presence_ref", &*self.reference)?;
                map.end()
            }
            serde_json::Value::Null => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("presence_ref", &*self.reference)?;
                map.end()
            }
            other => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("meta", other)?;
                map.serialize_entry("presence_ref", &*self.reference)?;
                map.end()
            }
        }
    }
}
