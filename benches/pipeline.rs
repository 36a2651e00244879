//! Control-plane cost of one sync, without the kernel: parse+validate, build the model, diff,
//! and render (full table and one-change incremental), at 1k, 10k and 100k export rows.
//!
//! `cargo bench --bench pipeline`. The headline number is `sync/parse+validate+diff`: what
//! the daemon spends on a changed export before talking to the kernel (target: ≤ 50 ms at
//! 100k rows). `parse/serde_baseline` is the same CSV deserialized by csv+serde into plain
//! strings with no validation: the floor our checking adds to.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use portcullis::diff::StateDiff;
use portcullis::model::DesiredState;
use portcullis::render::{ipvsadm, nft};
use std::hint::black_box;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn export_text(n: usize) -> Vec<u8> {
    portcullis_export::to_string(&portcullis::synth::rows(n))
        .expect("synthetic export is valid")
        .into_bytes()
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct RawRow<'a> {
    service: &'a str,
    instance: &'a str,
    proto: &'a str,
    vip: &'a str,
    vport: &'a str,
    fwmark: &'a str,
    rip: &'a str,
    rport: &'a str,
    weight: &'a str,
    scheduler: &'a str,
    method: &'a str,
    persistence: &'a str,
}

fn serde_baseline(bytes: &[u8]) -> usize {
    let mut r = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(bytes);
    let headers = r.byte_headers().expect("header").clone();
    let mut rec = csv::ByteRecord::new();
    let mut n = 0;
    while r.read_byte_record(&mut rec).expect("record") {
        let row: RawRow = rec.deserialize(Some(&headers)).expect("row");
        n += row.service.len();
    }
    n
}

fn bench(c: &mut Criterion) {
    let policy = nft::BasePolicy::parse(nft::DEFAULT_POLICY).expect("policy");
    let opts = nft::RenderOptions {
        backend: nft::Backend::Nft,
        external_interfaces: vec![],
        internal_interfaces: vec![],
        policy,
    };
    for n in SIZES {
        let old_bytes = export_text(n);
        let new_rows = portcullis::synth::with_one_change(&portcullis::synth::rows(n));
        let new_bytes = portcullis_export::to_string(&new_rows)
            .expect("valid")
            .into_bytes();
        let old = DesiredState::from_export(&portcullis_export::parse(&old_bytes).expect("valid"));
        let new = DesiredState::from_export(&portcullis_export::parse(&new_bytes).expect("valid"));
        // The incremental render has work only when frontends change: withdraw one service.
        let mut fewer = new.clone();
        fewer.services.pop_first();
        let diff = StateDiff::between(&new, &fewer);

        let mut g = c.benchmark_group("parse");
        g.sample_size(if n >= 100_000 { 10 } else { 30 });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("serde_baseline", n), &new_bytes, |b, t| {
            b.iter(|| serde_baseline(black_box(t)))
        });
        g.bench_with_input(BenchmarkId::new("parse+validate", n), &new_bytes, |b, t| {
            b.iter(|| portcullis_export::parse(black_box(t)).expect("valid"))
        });
        g.finish();

        let mut g = c.benchmark_group("sync");
        g.sample_size(if n >= 100_000 { 10 } else { 30 });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("parse+validate+diff", n),
            &new_bytes,
            |b, t| {
                b.iter(|| {
                    let export = portcullis_export::parse(black_box(t)).expect("valid");
                    let state = DesiredState::from_export(&export);
                    StateDiff::between(&old, &state)
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("diff", n), &new, |b, s| {
            b.iter(|| StateDiff::between(black_box(&old), black_box(s)))
        });
        g.finish();

        let mut g = c.benchmark_group("render");
        g.sample_size(if n >= 100_000 { 10 } else { 30 });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("nft_full", n), &new, |b, s| {
            b.iter(|| nft::full_ruleset(black_box(s), &opts).to_nft())
        });
        g.bench_with_input(
            BenchmarkId::new("nft_incremental_1_service", n),
            &diff,
            |b, d| {
                let patterns = nft::PatternIndex::of(&new);
                b.iter(|| {
                    nft::incremental(black_box(d), &new, &fewer, nft::Backend::Nft, &patterns)
                        .map(|inc| inc.tx.to_nft())
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("ipvsadm", n), &new, |b, s| {
            b.iter(|| ipvsadm::ipvsadm_save(black_box(s)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
