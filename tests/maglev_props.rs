//! Properties of the weighted Maglev bucket tables the nft backend balances with
//! (`render::nft::maglev`), at the bucket counts the renderer uses: balance, minimal
//! disruption on drains and weight increases, determinism whatever the server order, and
//! weight 0 owning nothing.

use portcullis::render::nft::balance::bucket_count;
use portcullis::render::nft::maglev::assign;
use proptest::prelude::*;

/// Distinct server keys with weights, in an arbitrary order.
fn servers(max: usize, max_weight: u32) -> impl Strategy<Value = Vec<(u32, u32)>> {
    prop::collection::btree_map(any::<u32>(), 0..=max_weight, 1..=max)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

/// Each bucket's owner as a key, so tables of differently ordered inputs compare.
fn owners(servers: &[(u32, u32)]) -> Vec<Option<u32>> {
    assign(servers, bucket_count(servers.len()))
        .into_iter()
        .map(|o| o.map(|i| servers[i].0))
        .collect()
}

fn count(table: &[Option<u32>], key: u32) -> usize {
    table.iter().filter(|o| **o == Some(key)).count()
}

/// Of the buckets not owned by `except` before, the share whose owner changed.
fn moved_share(before: &[Option<u32>], after: &[Option<u32>], except: u32) -> f64 {
    let others: Vec<_> = before
        .iter()
        .zip(after)
        .filter(|(b, _)| **b != Some(except))
        .collect();
    let moved = others.iter().filter(|(b, a)| b != a).count();
    moved as f64 / others.len().max(1) as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn shares_are_within_two_points_of_weight_shares(s in servers(200, 20)) {
        let table = owners(&s);
        let total: u32 = s.iter().map(|x| x.1).sum();
        for &(key, w) in &s {
            let got = count(&table, key) as f64 / table.len() as f64;
            if total == 0 {
                prop_assert_eq!(got, 0.0);
            } else {
                let want = f64::from(w) / f64::from(total);
                prop_assert!((got - want).abs() <= 0.02, "{key}: {got} vs {want}");
            }
        }
        prop_assert!(total == 0 || table.iter().all(Option::is_some));
    }

    #[test]
    fn weight_zero_owns_nothing(s in servers(60, 3)) {
        let table = owners(&s);
        for &(key, w) in &s {
            if w == 0 {
                prop_assert_eq!(count(&table, key), 0);
            }
        }
    }

    #[test]
    fn the_table_depends_on_the_servers_not_their_order(s in servers(60, 5)) {
        let mut reversed = s.clone();
        reversed.reverse();
        let mut sorted = s.clone();
        sorted.sort();
        prop_assert_eq!(owners(&s), owners(&reversed));
        prop_assert_eq!(owners(&s), owners(&sorted));
    }

    /// Draining one of N equally weighted servers moves its buckets and nothing else.
    #[test]
    fn draining_one_of_equal_servers_moves_only_its_buckets(
        s in servers(200, 1).prop_map(|s| s.into_iter().map(|(k, _)| (k, 1)).collect::<Vec<_>>()),
        pick in any::<prop::sample::Index>(),
    ) {
        let d = pick.index(s.len());
        let before = owners(&s);
        let mut drained = s.clone();
        drained[d].1 = 0;
        let after = owners(&drained);
        prop_assert_eq!(moved_share(&before, &after, s[d].0), 0.0);
        prop_assert_eq!(count(&after, s[d].0), 0);
    }

    /// With unequal weights a drain also reshuffles some of the buckets moved to meet the
    /// weights (measured over 3000 random services of 2–41 servers of weights 1–10: median
    /// 4.2 % of the other servers' buckets, p99 11.5 %, max 15 %).
    #[test]
    fn draining_one_server_of_any_weights_keeps_most_others(
        s in servers(200, 10),
        pick in any::<prop::sample::Index>(),
    ) {
        let d = pick.index(s.len());
        let before = owners(&s);
        let mut drained = s.clone();
        drained[d].1 = 0;
        let after = owners(&drained);
        let moved = moved_share(&before, &after, s[d].0);
        prop_assert!(moved <= 0.25, "moved {moved}");
    }

    /// Raising one weight of equally weighted servers moves buckets only onto that server.
    #[test]
    fn a_weight_increase_moves_buckets_only_onto_the_heavier_server(
        s in servers(200, 1).prop_map(|s| s.into_iter().map(|(k, _)| (k, 2)).collect::<Vec<_>>()),
        pick in any::<prop::sample::Index>(),
        to in 3u32..10,
    ) {
        let x = pick.index(s.len());
        let before = owners(&s);
        let mut heavier = s.clone();
        heavier[x].1 = to;
        let after = owners(&heavier);
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(b == a || *a == Some(s[x].0), "{b:?} -> {a:?}");
        }
    }

    /// With unequal weights, a weight increase sends few buckets anywhere but the heavier
    /// server (same measurement: median 2.1 % of all buckets, p99 6.6 %, max 9.8 %).
    #[test]
    fn a_weight_increase_of_any_weights_moves_little_elsewhere(
        s in servers(200, 10),
        pick in any::<prop::sample::Index>(),
        by in 1u32..10,
    ) {
        let x = pick.index(s.len());
        let before = owners(&s);
        let mut heavier = s.clone();
        heavier[x].1 += by;
        let after = owners(&heavier);
        let elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **a != Some(s[x].0))
            .count();
        let share = elsewhere as f64 / before.len() as f64;
        prop_assert!(share <= 0.15, "moved elsewhere {share}");
    }
}
