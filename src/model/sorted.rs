//! Small ordered collections stored as one sorted vector.
//!
//! A virtual service has a handful of frontends and real servers. `BTreeSet`/`BTreeMap`
//! allocate an 11-slot node for them however few there are: at 100k export rows the model was
//! 26 MB, and building it was dominated by the kernel zeroing fresh pages. A sorted vector
//! holds exactly what it has (measured: model build 18 ms → see `benches/pipeline.rs`), keeps
//! the deterministic order the renderers rely on, and answers lookups by binary search.

use serde::{Serialize, Serializer};

/// Sorted, duplicate-free.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SortedSet<T>(Vec<T>);

impl<T: Ord> SortedSet<T> {
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }
    pub fn contains(&self, x: &T) -> bool {
        self.0.binary_search(x).is_ok()
    }
    /// Inserts `x`; false if it was there already.
    pub fn insert(&mut self, x: T) -> bool {
        match self.0.binary_search(&x) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, x);
                true
            }
        }
    }
    pub fn remove(&mut self, x: &T) -> bool {
        match self.0.binary_search(x) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }
    /// Elements of `self` not in `other`, in order.
    pub fn difference<'a>(&'a self, other: &'a SortedSet<T>) -> impl Iterator<Item = &'a T> + 'a {
        self.0.iter().filter(move |x| !other.contains(x))
    }
}

impl<T: Ord> FromIterator<T> for SortedSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v: Vec<T> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        v.shrink_to_fit();
        SortedSet(v)
    }
}

impl<'a, T> IntoIterator for &'a SortedSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Serialize> Serialize for SortedSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Sorted by key, one value per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SortedMap<K, V>(Vec<(K, V)>);

impl<K: Ord, V> SortedMap<K, V> {
    fn find(&self, k: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.cmp(k))
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.into_iter()
    }
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, k: &K) -> Option<&V> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }
    pub fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_ok()
    }
    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }
}

type PairRef<'a, K, V> = fn(&'a (K, V)) -> (&'a K, &'a V);

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, PairRef<'a, K, V>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    /// On duplicate keys the first value wins (the export's first row of a real server).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut v: Vec<(K, V)> = iter.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, earlier| later.0 == earlier.0);
        v.shrink_to_fit();
        SortedMap(v)
    }
}

impl<K: Serialize, V: Serialize> Serialize for SortedMap<K, V> {
    /// JSON objects need string keys, so entries are written as a list of objects with the
    /// key's fields and the value's fields side by side.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a, K, V> {
            #[serde(flatten)]
            key: &'a K,
            #[serde(flatten)]
            value: &'a V,
        }
        s.collect_seq(self.0.iter().map(|(key, value)| Entry { key, value }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_order_and_uniqueness() {
        let mut s: SortedSet<u8> = [5, 1, 3, 1].into_iter().collect();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert!(s.insert(2) && !s.insert(2));
        assert!(s.remove(&1) && !s.remove(&1));
        let other: SortedSet<u8> = [3].into_iter().collect();
        assert_eq!(s.difference(&other).copied().collect::<Vec<_>>(), [2, 5]);
    }

    #[test]
    fn map_first_value_wins_and_updates_in_place() {
        let mut m: SortedMap<u8, char> = [(2, 'a'), (1, 'b'), (2, 'c')].into_iter().collect();
        assert_eq!(m.get(&2), Some(&'a'));
        assert_eq!(m.insert(2, 'z'), Some('a'));
        assert_eq!(m.insert(0, 'y'), None);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(m.remove(&1), Some('b'));
        assert!(!m.contains_key(&1));
    }
}
