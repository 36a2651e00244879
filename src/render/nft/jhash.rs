//! The bucket the kernel computes for `jhash <fields> mod N seed S`: Bob Jenkins' lookup3 as
//! the kernel has it (`include/linux/jhash.h`), scaled into `0..N` the way `nft_jhash_eval`
//! does (`reciprocal_scale`: the high 32 bits of `hash × N`, not `hash % N`).
//!
//! `portcullis explain` uses it to say which bucket — so which real server — a client lands
//! on; tests/explain.rs proves the prediction against real traffic through the kernel.

const JHASH_INITVAL: u32 = 0xdead_beef;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The kernel's `jhash(key, len, initval)`. Whole words are read in the CPU's byte order
/// (`__get_unaligned_cpu32`); the gateways this runs on are little-endian (x86-64, arm64).
pub fn jhash(key: &[u8], initval: u32) -> u32 {
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    // The kernel adds the length as a u32; keys here are at most a few dozen bytes.
    let len = key.len() as u32;
    let mut a = JHASH_INITVAL.wrapping_add(len).wrapping_add(initval);
    let (mut b, mut c) = (a, a);
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    // The tail: byte i goes into word i / 4 at bit 8 × (i % 4), as the kernel's switch adds
    // them (`a += k[0]; a += k[1] << 8; …; c += k[11] << 24`).
    let mut tail = [0u32; 3];
    for (i, &byte) in k.iter().enumerate() {
        tail[i / 4] = tail[i / 4].wrapping_add(u32::from(byte) << (8 * (i % 4)));
    }
    a = a.wrapping_add(tail[0]);
    b = b.wrapping_add(tail[1]);
    c = c.wrapping_add(tail[2]);
    finish(&mut a, &mut b, &mut c);
    c
}

/// `jhash … mod buckets seed seed` as the kernel evaluates it.
pub fn bucket(key: &[u8], seed: u32, buckets: u32) -> u32 {
    ((u64::from(jhash(key, seed)) * u64::from(buckets)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stay_in_range_and_spread() {
        let mut seen = vec![0u32; 29];
        for i in 0..29_000u32 {
            let b = bucket(&i.to_be_bytes(), 0x706f_7274, 29);
            seen[b as usize] += 1;
        }
        // Each bucket near 1000; a broken mixer (or `%` confused with scaling) skews this.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn the_length_and_the_seed_are_part_of_the_hash() {
        assert_ne!(jhash(&[1, 2, 3, 4], 0), jhash(&[1, 2, 3, 4], 1));
        assert_ne!(jhash(&[1, 2, 3, 4], 0), jhash(&[1, 2, 3, 4, 0], 0));
        // An empty key is the initial value itself (the kernel's `case 0`).
        assert_eq!(jhash(&[], 7), JHASH_INITVAL.wrapping_add(7));
    }
}
