//! Export derivation at 1k and 10k instances (goal: ≤ 50 ms at 10k), against a baseline
//! measured in the same run: writing the same rows, already derived, through
//! `portcullis-export` (validation + CSV), which every derivation includes.
//!
//! `cargo bench -p portcullis-admin --bench export`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis_admin::{export, synth, Catalog};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("export");
    g.sample_size(20);
    for n in [1_000usize, 10_000] {
        let sources = synth::sources(n, 7);
        let catalog = Catalog::from_sources(&sources).expect("generated catalog is valid");
        let rows = export::rows(&catalog);
        eprintln!("{n} instances -> {} export rows", rows.len());
        g.bench_with_input(
            BenchmarkId::new("derive+write (export::csv)", n),
            &catalog,
            |b, c| b.iter(|| export::csv(c).expect("valid")),
        );
        g.bench_with_input(BenchmarkId::new("derive rows only", n), &catalog, |b, c| {
            b.iter(|| export::rows(c))
        });
        g.bench_with_input(
            BenchmarkId::new("baseline: write derived rows", n),
            &rows,
            |b, r| b.iter(|| portcullis_export::to_string(r).expect("valid")),
        );
        g.bench_with_input(
            BenchmarkId::new("load+validate catalog", n),
            &sources,
            |b, s| b.iter(|| Catalog::from_sources(s).expect("valid")),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
