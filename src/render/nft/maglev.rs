//! Weighted Maglev (Eisenbud et al., NSDI 2016, §3.4): which real server owns each of a
//! service's hash buckets. Pure and deterministic: the table is a function of the servers'
//! stable keys and weights only — never of the export's row order, of the previous table, or
//! of anything in the process — so a regenerated table, a restarted gateway and the other
//! gateway of the pair all send a flow to the same server.
//!
//! Lives with the nft renderer because only the nft data plane balances with it (IPVS
//! schedules by itself) and its table size is tied to the lookup rules the renderer writes;
//! it is generic over the key so it can be tested, and read by tools, without a model.
//!
//! How it works (details at [`assign`]): Maglev's table with every server taking equal turns
//! (each has a preference list, a permutation of the buckets from an offset and a skip hashed
//! from its key; the table size is prime, so every skip walks all buckets; on its turn a server
//! claims its most preferred bucket still free) depends only on which servers exist; weights
//! then move the fewest buckets that make each server's count its weight quota (its share
//! apportioned by largest remainder: within one bucket of exact, half a bucket with two
//! servers). A weight-0 server owns nothing.

/// A server key that can be hashed the same way on every build and machine.
pub trait StableKey: Ord {
    /// The bytes that identify the server (e.g. its address octets and port).
    fn stable_bytes(&self) -> Vec<u8>;
}

impl StableKey for u32 {
    fn stable_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
}

/// FNV-1a 64 finished with splitmix64's mixer: fixed by this code, not by `std`'s hasher
/// (whose output may change between Rust releases).
pub(super) fn stable_hash(bytes: &[u8], salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Each server's number of buckets: its weight share of `size`, apportioned by largest
/// remainder (ties to the earlier server in key order). Sums to `size` unless every weight is 0.
pub fn quotas(weights: &[u32], size: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let exact = |w: u32| u64::from(w) * u64::from(size);
    let mut quota: Vec<u32> = weights.iter().map(|&w| (exact(w) / total) as u32).collect();
    let given: u32 = quota.iter().sum();
    let mut by_remainder: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    // Largest remainder first; a stable sort keeps key order among equals.
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(exact(weights[i]) % total));
    for &i in by_remainder.iter().take((size - given) as usize) {
        quota[i] += 1;
    }
    quota
}

/// One server's preference list and scores, from its key alone.
struct Prefs {
    /// Hash of the key: seeds the bucket scores.
    id: u64,
    offset: u64,
    skip: u64,
}

impl Prefs {
    fn new(bytes: &[u8], size: u32) -> Prefs {
        let m = u64::from(size);
        Prefs {
            id: stable_hash(bytes, 0x6964),
            offset: stable_hash(bytes, 0x6f66_6673_6574) % m,
            // A prime size makes every skip in 1..size coprime with it: a full permutation.
            skip: stable_hash(bytes, 0x736b_6970) % (m - 1).max(1) + 1,
        }
    }
    /// How much this server wants `bucket`: fixed per (server, bucket), so the buckets a
    /// server gives up first, and takes first, are always the same ones.
    fn score(&self, bucket: usize) -> u64 {
        stable_hash(&(bucket as u64).to_be_bytes(), self.id)
    }
}

/// The bucket table for `servers` (key, weight) of `size` buckets (`size` must be prime):
/// for each bucket, the index into `servers` of its owner, or `None` for every bucket when no
/// server has weight. The servers may come in any order and must have distinct keys.
///
/// Two steps, so that drains and weight changes move as little as possible:
/// 1. the **reference table**: Maglev's fill with every server taking equal turns, weight-0
///    servers included. It depends only on the set of server keys, so a drain or a weight
///    change leaves it as it is;
/// 2. **weights by quota**: a server owning more reference buckets than its weight quota gives
///    up its lowest-scored ones; those go to the servers below quota, highest score first.
///
/// Draining one of N equal servers thus moves only its buckets, and doubling a weight only
/// moves buckets onto the heavier server (the others give up buckets, nobody else takes any).
/// With unequal weights a change reshuffles only the small pool of reassigned buckets.
/// (Maglev's own weighting, by turn frequency as Cilium and Envoy do, was measured first:
/// with the small tables an nft element budget allows — 2 to 10 buckets per server — a
/// drain moved 6–22 % of the *other* servers' buckets and a doubled weight moved 6–17 % of
/// all buckets to servers other than the heavier one; see `tests/maglev_props.rs`.)
pub fn assign<K: StableKey>(servers: &[(K, u32)], size: u32) -> Vec<Option<usize>> {
    let m = size as usize;
    // Key order, so the result does not depend on the caller's order.
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by(|&a, &b| servers[a].0.cmp(&servers[b].0));
    let n = order.len();
    let mut table: Vec<Option<usize>> = vec![None; m];
    let weights: Vec<u32> = order.iter().map(|&i| servers[i].1).collect();
    if n == 0 || weights.iter().all(|&w| w == 0) {
        return table;
    }
    let prefs: Vec<Prefs> = order
        .iter()
        .map(|&i| Prefs::new(&servers[i].0.stable_bytes(), size))
        .collect();

    // 1. Reference: equal turns, round robin in key order, each server claiming its most
    //    preferred free bucket (the paper's population loop).
    let mut next = vec![0u64; n];
    let mut filled = 0;
    'fill: loop {
        for s in 0..n {
            let p = &prefs[s];
            loop {
                let bucket = ((p.offset + next[s] * p.skip) % u64::from(size)) as usize;
                next[s] += 1;
                if table[bucket].is_none() {
                    table[bucket] = Some(s);
                    break;
                }
            }
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }

    // 2. Quotas: over-quota servers free their lowest-scored buckets...
    let quota = quotas(&weights, size);
    let mut owned = vec![0u32; n];
    for s in table.iter().flatten() {
        owned[*s] += 1;
    }
    let mut freed = Vec::new();
    for s in 0..n {
        if owned[s] > quota[s] {
            let mut mine: Vec<usize> = (0..m).filter(|&b| table[b] == Some(s)).collect();
            mine.sort_by_key(|&b| (prefs[s].score(b), b));
            for &b in &mine[..(owned[s] - quota[s]) as usize] {
                table[b] = None;
                freed.push(b);
            }
        }
    }
    // ... and under-quota servers take them, best (score, server, bucket) first.
    let mut wanted: Vec<u32> = (0..n).map(|s| quota[s].saturating_sub(owned[s])).collect();
    let mut offers: Vec<(u64, usize, usize)> = Vec::new();
    for s in (0..n).filter(|&s| wanted[s] > 0) {
        offers.extend(freed.iter().map(|&b| (prefs[s].score(b), s, b)));
    }
    offers.sort_unstable_by(|a, b| b.cmp(a));
    for (_, s, b) in offers {
        if table[b].is_none() && wanted[s] > 0 {
            table[b] = Some(s);
            wanted[s] -= 1;
        }
    }
    // Back to the caller's indices.
    for owner in table.iter_mut().flatten() {
        *owner = order[*owner];
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_apportion_by_largest_remainder() {
        assert_eq!(quotas(&[1, 1], 29), vec![15, 14]);
        assert_eq!(quotas(&[1, 2], 29), vec![10, 19]);
        assert_eq!(quotas(&[0, 5, 0], 29), vec![0, 29, 0]);
        assert_eq!(quotas(&[0, 0], 29), vec![0, 0]);
    }

    #[test]
    fn every_bucket_is_owned_and_counts_match_quotas() {
        let servers: Vec<(u32, u32)> = (0..7).map(|i| (i, 1 + i % 3)).collect();
        let table = assign(&servers, 127);
        let weights: Vec<u32> = servers.iter().map(|s| s.1).collect();
        let q = quotas(&weights, 127);
        for (i, &want) in q.iter().enumerate() {
            let got = table.iter().filter(|o| **o == Some(i)).count() as u32;
            assert_eq!(got, want, "server {i}");
        }
    }

    #[test]
    fn no_weight_means_no_owner() {
        assert!(assign(&[(1u32, 0), (2, 0)], 29).iter().all(Option::is_none));
        assert!(assign::<u32>(&[], 29).iter().all(Option::is_none));
    }
}
