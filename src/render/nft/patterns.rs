//! Bucket patterns: the two-level lookup that keeps the nft backend's element count near one
//! per export row.
//!
//! A service's servers are numbered by **slot**, in key order (address, then port). Its
//! **pattern** is what the bucket table depends on once servers are slots: the hash selector,
//! the bucket count and the weight of each slot. Maglev over slot numbers
//! ([`super::maglev::assign`] with keys `0..n`) turns a pattern into "bucket → slot", and that
//! table is loaded **once per pattern**, not once per service: every service of two equal
//! servers shares one. Each service then needs one element naming its pattern and one per
//! server naming the real server of each slot. At 100k rows of two-server services that is
//! 150k elements instead of 1.45M with a bucket table per service.
//!
//! The packet carries the pattern, then the slot, in its mark between the static rules of
//! `prerouting_dnat` (nft has no scratch register that outlives a rule):
//!
//! 1. `frontend → mark = PATTERN_TAG | group | id`            (`lb_pattern_v4`, one per frontend)
//! 2. `mark . jhash(...) mod buckets → mark = SLOT_TAG | slot` (`lb_slot_*`, shared; one rule
//!    per group, which the mark's group bits select, so a packet does one such lookup)
//! 3. `frontend . mark → DNAT to the slot's server`           (`lb_real_v4`, one per server and
//!    frontend)
//!
//! and `prerouting_unmark` clears marks in [`RESERVED`] right after, so the scratch value never
//! reaches routing. A drain or a weight change changes the pattern: one element of step 1
//! (and the new pattern's table, when no other service uses it yet). Slots are positions, so
//! adding or removing a server renumbers the slots after it — for such a change the service
//! re-spreads like IPVS's `sh` scheduler, not like Maglev (docs/design.md).
//!
//! An fwmark service (port ranges on several addresses) is marked by `fwmarks_*` first, as
//! for IPVS, and keeps its fwmark in the mark: its steps carry the pattern and the slot in
//! `meta priority` instead — (1) `lb_fwpattern`: fwmark → priority = pattern, one element
//! per service; (2) `lb_fwslot_*`; (3) `lb_fwreal_*`: fwmark . slot → server, one per server,
//! exact-match (keyed by frontend it would need port ranges: interval maps, which cost about
//! four times as much to load). `prerouting_unmark` sets the priority of such a connection's
//! first packet back to 0 (IPv4 forwarding resets it anyway; IPv6 does not).
//!
//! A pattern's id is a hash of the pattern (23 bits within its group), so it does not depend
//! on which other patterns exist — unless two of them collide: then the ids of the colliding
//! ones are probed in pattern order, still a function of the state alone; when a new pattern
//! displaces a kept one, the incremental path hands over to a full regeneration.

use super::balance::{bucket_count, Selector, SIZE_CLASSES};
use super::maglev;
use super::transaction::Element;
use crate::model::{DesiredState, RealKey, RealServer, ServiceKey, VirtualService};
use std::collections::BTreeMap;

/// Marks the nft backend uses as scratch on a connection's first packet (cleared right after
/// DNAT). An fwmark service's mark in this range still works; an operator's mark in it, set
/// before `prerouting_dnat` on traffic to a frontend, is lost.
pub const RESERVED: (u32, u32) = (0x7000_0000, 0xf000_0000);
/// Step 1's values: `PATTERN_TAG | group << 23 | id`.
pub const PATTERN_TAG: u32 = 0x7000_0000;
/// Step 2's values: `SLOT_TAG | slot`.
pub const SLOT_TAG: u32 = 0x7800_0000;
/// Masks that select a pattern's group, and a slot value.
pub const GROUP_MASK: u32 = 0xff80_0000;
pub const SLOT_MASK: u32 = 0xf800_0000;
const ID_BITS: u32 = 23;

/// What a service's bucket table depends on when its servers are numbered by slot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern {
    /// The table of an fwmark service's pattern carries pattern and slot in `meta priority`
    /// (the mark holds the fwmark), so it lives in other maps than a frontend service's.
    pub fwmark: bool,
    pub selector: Selector,
    pub buckets: u32,
    /// Per slot (servers in key order): the weight, 0 for drained servers and for servers of
    /// the other address family (DNAT cannot change the family).
    pub weights: Vec<u32>,
}

impl Pattern {
    /// The pattern of a service; `None` when no server has weight (packets are then not
    /// translated).
    pub fn of(key: &ServiceKey, svc: &VirtualService) -> Option<Pattern> {
        translated(svc).then(|| {
            let weights: Vec<u32> = svc.reals.iter().map(|r| usable_weight(svc, r)).collect();
            Pattern {
                fwmark: matches!(key, ServiceKey::Fwmark { .. }),
                selector: super::balance::selector(svc),
                buckets: bucket_count(weights.len()),
                weights,
            }
        })
    }

    /// Bucket → slot, by Maglev over the slot numbers.
    pub fn owners(&self) -> Vec<Option<usize>> {
        let slots: Vec<(u32, u32)> = (0u32..).zip(self.weights.iter().copied()).collect();
        maglev::assign(&slots, self.buckets)
    }

    /// Which `lb_slot_*` map and rule the pattern's table is in: the size class and selector.
    pub fn group(&self) -> u32 {
        group(self.selector, self.buckets)
    }

    fn hash(&self) -> u32 {
        let mut bytes = Vec::with_capacity(9 + 4 * self.weights.len());
        bytes.push(self.selector as u8 | u8::from(self.fwmark) << 1);
        bytes.extend_from_slice(&self.buckets.to_be_bytes());
        for w in &self.weights {
            bytes.extend_from_slice(&w.to_be_bytes());
        }
        (maglev::stable_hash(&bytes, 0x7061_7474) & ((1 << ID_BITS) - 1)) as u32
    }
}

/// A server's weight as the balancing sees it: 0 for a server of the other address family
/// than the frontends (DNAT cannot change the family).
fn usable_weight(svc: &VirtualService, (key, server): (&RealKey, &RealServer)) -> u32 {
    if key.addr.is_ipv6() == svc.is_ipv6() {
        u32::from(server.weight)
    } else {
        0
    }
}

/// Whether the balancing translates any of the service's traffic: some server has weight.
/// Without, it has no pattern, and its frontends are the gateway's own to refuse.
pub fn translated(svc: &VirtualService) -> bool {
    svc.reals.iter().any(|r| usable_weight(svc, r) > 0)
}

/// The group of (selector, bucket count): its index among [`SIZE_CLASSES`], times two.
pub fn group(selector: Selector, buckets: u32) -> u32 {
    let class = SIZE_CLASSES
        .iter()
        .position(|&(_, b)| b == buckets)
        .unwrap_or(SIZE_CLASSES.len() - 1) as u32;
    class * 2 + selector as u32
}

/// The mark a pattern's services get in step 1.
pub fn pattern_mark(group: u32, id: u32) -> u32 {
    PATTERN_TAG | group << ID_BITS | id
}

/// The mark of a slot, after step 2.
pub fn slot_mark(slot: usize) -> u32 {
    SLOT_TAG | slot as u32
}

/// `lb_slot_{src|flow}_{buckets}` (`lb_fwslot_…` for fwmark services): the map of the
/// patterns of one group.
pub fn slot_map_name(fwmark: bool, selector: Selector, buckets: u32) -> String {
    let s = match selector {
        Selector::Source => "src",
        Selector::Flow => "flow",
    };
    let kind = if fwmark { "fwslot" } else { "slot" };
    format!("lb_{kind}_{s}_{buckets}")
}

/// A mark value as the fwmark path holds it in `meta priority`, spelled as nft writes a
/// tc class id (`major:minor` in hex), so the read-back compares equal.
pub fn classid(value: u32) -> String {
    format!("{:x}:{:x}", value >> 16, value & 0xffff)
}

/// How a pattern or slot value is written in the pattern's maps.
pub fn value_text(fwmark: bool, value: u32) -> String {
    if fwmark {
        classid(value)
    } else {
        value.to_string()
    }
}

/// The shared table of one pattern: one element per bucket that has an owner.
pub fn pattern_elements(pattern: &Pattern, mark: u32) -> Vec<Element> {
    let set = slot_map_name(pattern.fwmark, pattern.selector, pattern.buckets);
    let mark = value_text(pattern.fwmark, mark);
    pattern
        .owners()
        .into_iter()
        .enumerate()
        .filter_map(|(bucket, owner)| {
            owner.map(|slot| Element {
                set: set.clone(),
                key: format!("{mark} . {bucket}"),
                value: Some(value_text(pattern.fwmark, slot_mark(slot))),
            })
        })
        .collect()
}

/// How many services of a state use each pattern. The syncer keeps the index of what is
/// applied, so that a sync knows — without reading every service — when a pattern's table
/// must be loaded (its first service) or deleted (its last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternIndex {
    users: BTreeMap<Pattern, usize>,
}

/// Each pattern's mark.
pub type PatternIds = BTreeMap<Pattern, u32>;

impl PatternIndex {
    pub fn of(state: &DesiredState) -> PatternIndex {
        let mut index = PatternIndex::default();
        for (key, svc) in &state.services {
            index.add(key, svc);
        }
        index
    }

    /// Counts `svc` in.
    pub fn add(&mut self, key: &ServiceKey, svc: &VirtualService) {
        if let Some(p) = Pattern::of(key, svc) {
            *self.users.entry(p).or_default() += 1;
        }
    }

    /// Counts `svc` out.
    pub fn remove(&mut self, key: &ServiceKey, svc: &VirtualService) {
        if let Some(p) = Pattern::of(key, svc) {
            if let Some(n) = self.users.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&p);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.users.keys()
    }

    /// How many services use `pattern`.
    pub fn users(&self, pattern: &Pattern) -> usize {
        self.users.get(pattern).copied().unwrap_or(0)
    }

    /// Each pattern's mark: its hash, or — when patterns of one group collide — the next free
    /// id after it, taken in pattern order. A function of the set of patterns alone.
    pub fn ids(&self) -> PatternIds {
        self.ids_by(Pattern::hash)
    }

    fn ids_by(&self, hash: impl Fn(&Pattern) -> u32) -> PatternIds {
        let mut taken = std::collections::HashSet::new();
        let mut out = BTreeMap::new();
        for p in self.users.keys() {
            let g = p.group();
            let mut id = hash(p) & ((1 << ID_BITS) - 1);
            while !taken.insert((g, id)) {
                id = (id + 1) & ((1 << ID_BITS) - 1);
            }
            out.insert(p.clone(), pattern_mark(g, id));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(weights: &[u32]) -> Pattern {
        Pattern {
            fwmark: false,
            selector: Selector::Source,
            buckets: bucket_count(weights.len()),
            weights: weights.to_vec(),
        }
    }

    #[test]
    fn marks_of_patterns_and_slots_are_tagged_apart() {
        let p = pattern(&[1, 1]);
        let mark = pattern_mark(p.group(), p.hash());
        assert_eq!(mark & 0xf000_0000, RESERVED.0);
        assert_eq!(mark & SLOT_MASK, PATTERN_TAG);
        assert_eq!(slot_mark(5) & SLOT_MASK, SLOT_TAG);
        let last = group(Selector::Flow, SIZE_CLASSES[SIZE_CLASSES.len() - 1].1);
        assert_eq!(
            pattern_mark(last, (1 << ID_BITS) - 1) & SLOT_MASK,
            PATTERN_TAG
        );
        assert_eq!(pattern_mark(3, 0) & GROUP_MASK, PATTERN_TAG | 3 << ID_BITS);
    }

    #[test]
    fn a_pattern_table_gives_each_slot_its_weight_share() {
        let e = pattern_elements(&pattern(&[1, 0, 2]), 9);
        assert_eq!(e.len(), 61);
        let to = |slot: usize| {
            e.iter()
                .filter(|e| e.value == Some(slot_mark(slot).to_string()))
                .count()
        };
        assert_eq!((to(0), to(1), to(2)), (20, 0, 41));
        assert!(e
            .iter()
            .all(|e| e.set == "lb_slot_src_61" && e.key.starts_with("9 . ")));
        let mut fw = pattern(&[1, 1]);
        fw.fwmark = true;
        let e = pattern_elements(&fw, pattern_mark(0, 1));
        assert_eq!(e[0].set, "lb_fwslot_src_29");
        assert_eq!(e[0].key, "7000:1 . 0");
        assert!(matches!(e[0].value.as_deref(), Some("7800:0" | "7800:1")));
    }

    #[test]
    fn colliding_patterns_are_probed_in_pattern_order() {
        let mut index = PatternIndex::default();
        for w in [[1, 1], [1, 0], [0, 1]] {
            index.users.insert(pattern(&w), 1);
        }
        let ids = index.ids_by(|_| 7);
        let marks: Vec<u32> = index.users.keys().map(|p| ids[p] & 0x7f_ffff).collect();
        assert_eq!(marks, vec![7, 8, 9]);
        // Without the collision each pattern's mark is its own hash.
        assert!(index
            .ids()
            .iter()
            .all(|(p, &mark)| mark == pattern_mark(p.group(), p.hash())));
    }
}
