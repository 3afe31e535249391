//! The members of one group, as a backend keeps them in memory.

use std::sync::Arc;

/// Members kept in a list; a larger group switches to a hash map.
const FEW: usize = 8;

/// The members of one group in a backend's memory, with what it keeps for each (`V`): a short
/// list while there are few, a hash map (foldhash) past eight.
///
/// Most groups of an idle server hold one connection (a room each, a user's own group), and a
/// hash map holding one entry allocates room for four: this is what keeps a membership small.
/// The names are `Arc<str>`, so a backend can share each with its channel's queue.
///
/// ```
/// use std::sync::Arc;
/// use channels_core::layer::Members;
///
/// let mut room: Members<u64> = Members::default();
/// room.insert(Arc::from("specific.a!1"), 1);
/// room.insert(Arc::from("specific.a!2"), 2);
/// room.insert(Arc::from("specific.a!1"), 3); // replaces
/// assert_eq!(room.len(), 2);
/// assert_eq!(room.get("specific.a!1"), Some(&3));
/// room.retain(|_, joined| *joined > 2);
/// assert_eq!(room.remove("specific.a!1"), Some(3));
/// assert!(room.is_empty());
/// ```
#[derive(Debug)]
pub struct Members<V>(Repr<V>);

#[derive(Debug)]
enum Repr<V> {
    Few(Vec<(Arc<str>, V)>),
    /// Boxed: the map is twice a list's size, and every group's entry would carry the
    /// difference.
    Many(Box<foldhash::HashMap<Arc<str>, V>>),
}

impl<V> Default for Members<V> {
    fn default() -> Self {
        Self(Repr::Few(Vec::new()))
    }
}

impl<V> Members<V> {
    /// What is kept for `channel`, if it is a member.
    pub fn get(&self, channel: &str) -> Option<&V> {
        match &self.0 {
            Repr::Few(list) => list.iter().find(|(c, _)| &**c == channel).map(|(_, v)| v),
            Repr::Many(map) => map.get(channel),
        }
    }

    /// [`get`](Self::get), to change it.
    pub fn get_mut(&mut self, channel: &str) -> Option<&mut V> {
        match &mut self.0 {
            Repr::Few(list) => list.iter_mut().find(|(c, _)| &**c == channel).map(|(_, v)| v),
            Repr::Many(map) => map.get_mut(channel),
        }
    }

    /// Adds `channel` with `value`, or replaces its value if it is a member already (keeping
    /// the name it was added with).
    pub fn insert(&mut self, channel: Arc<str>, value: V) {
        match &mut self.0 {
            Repr::Few(list) => match list.iter().position(|(c, _)| *c == channel) {
                Some(at) => list[at].1 = value,
                None if list.len() < FEW => {
                    // Room for one at first (a plain `push` would make room for four).
                    if list.capacity() == 0 {
                        list.reserve_exact(1);
                    }
                    list.push((channel, value));
                }
                None => {
                    let mut map: Box<foldhash::HashMap<Arc<str>, V>> =
                        Box::new(std::mem::take(list).into_iter().collect());
                    map.insert(channel, value);
                    self.0 = Repr::Many(map);
                }
            },
            Repr::Many(map) => {
                map.insert(channel, value);
            }
        }
    }

    /// Removes `channel`, returning what was kept for it.
    pub fn remove(&mut self, channel: &str) -> Option<V> {
        match &mut self.0 {
            Repr::Few(list) => {
                let at = list.iter().position(|(c, _)| &**c == channel)?;
                Some(list.remove(at).1)
            }
            Repr::Many(map) => map.remove(channel),
        }
    }

    /// Keeps the members for which `keep` returns true, in one pass (which may change them).
    pub fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &mut V) -> bool) {
        match &mut self.0 {
            Repr::Few(list) => list.retain_mut(|(channel, value)| keep(channel, value)),
            Repr::Many(map) => map.retain(|channel, value| keep(channel, value)),
        }
    }

    /// Each member with what is kept for it, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        let (list, map) = match &self.0 {
            Repr::Few(list) => (Some(list.iter().map(|(c, v)| (c, v))), None),
            Repr::Many(map) => (None, Some(map.iter())),
        };
        list.into_iter().flatten().chain(map.into_iter().flatten())
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(list) => list.len(),
            Repr::Many(map) => map.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_while_few_then_a_map_and_the_same_answers_either_way() {
        let mut members: Members<usize> = Members::default();
        for n in 0..20 {
            members.insert(Arc::from(format!("c{n}")), n);
            assert_eq!(matches!(members.0, Repr::Few(_)), n < FEW, "after {} members", n + 1);
            assert_eq!(members.len(), n + 1);
            assert!((0..=n).all(|k| members.get(&format!("c{k}")) == Some(&k)));
            assert_eq!(members.iter().count(), n + 1);
        }
        members.insert(Arc::from("c3"), 30);
        assert_eq!((members.len(), members.get("c3")), (20, Some(&30)), "a second insert replaces");
        *members.get_mut("c4").expect("member") = 40;
        members.retain(|_, n| *n % 10 == 0);
        let mut kept: Vec<usize> = members.iter().map(|(_, &n)| n).collect();
        kept.sort_unstable();
        assert_eq!(kept, [0, 10, 30, 40]);
        assert_eq!(members.remove("c0"), Some(0));
        assert_eq!(members.remove("c0"), None);
        assert!(members.get("c1").is_none());
    }

    #[test]
    fn a_group_entry_is_no_larger_than_a_list() {
        assert_eq!(std::mem::size_of::<Members<u64>>(), std::mem::size_of::<Vec<(Arc<str>, u64)>>());
    }

    #[test]
    fn one_member_takes_room_for_one() {
        let mut members: Members<u8> = Members::default();
        members.insert(Arc::from("only"), 1);
        let Repr::Few(list) = &members.0 else { panic!("one member is a list") };
        assert_eq!(list.capacity(), 1);
    }
}
