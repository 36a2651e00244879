//! Scripted measurement (prints a table; `cargo bench -p portcullis-admin --bench versions_db`):
//! DB patching of N migrations on a throwaway PostgreSQL cluster vs a SQLite file — from
//! scratch, the idempotent rerun, and the same schema through a `schema.sql` baseline — and
//! the version store: building M files cold, rebuilding the same tree (dedup), a one-file
//! change, and materialising an install. Ratios are against SQLite / the cold build measured
//! in the same run. Needs PostgreSQL installed (as the tests do); skips PostgreSQL otherwise.

#[allow(dead_code)]
#[path = "../tests/support/pg.rs"]
mod pg;

use portcullis_admin::db::{self, RunOptions, Target};
use portcullis_admin::versions::{Action, Deployer, Store};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const PATCHES: u32 = 200;
const FILES: usize = 2000;

fn write_patches(dir: &Path, baseline: bool) {
    let p = dir.join("patches/web");
    std::fs::create_dir_all(&p).unwrap();
    let mut schema = format!("-- portcullis-baseline: {PATCHES}\n");
    for i in 1..=PATCHES {
        let sql = format!(
            "CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v INTEGER);\n\
             CREATE INDEX t{i}_name ON t{i} (name);\n\
             INSERT INTO t{i} (id, name, v) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);\n"
        );
        schema.push_str(&sql);
        std::fs::write(p.join(format!("{i:04}_t{i}.sql")), sql).unwrap();
    }
    if baseline {
        std::fs::write(p.join("schema.sql"), schema).unwrap();
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let s = Instant::now();
    let v = f.await;
    (v, s.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn db_rows(engine: &str, url_for: &mut dyn FnMut(&str) -> String, out: &mut String) -> f64 {
    let plain = tempfile::tempdir().unwrap();
    write_patches(plain.path(), false);
    let base = tempfile::tempdir().unwrap();
    write_patches(base.path(), true);
    let t = Target::explicit(plain.path(), "web", &url_for("scratch")).unwrap();
    let (r, scratch) = timed(db::patch(&t, RunOptions::default())).await;
    assert_eq!(r.unwrap().applied.len(), PATCHES as usize);
    let (r, rerun) = timed(db::patch(&t, RunOptions::default())).await;
    assert_eq!(r.unwrap().outcome, "nothing");
    let t = Target::explicit(base.path(), "web", &url_for("baseline")).unwrap();
    let (r, baseline) = timed(db::patch(&t, RunOptions::default())).await;
    assert_eq!(r.unwrap().after.status.applied.len(), PATCHES as usize);
    let _ = writeln!(
        out,
        "| {engine:<8} | {:>9.1} | {:>9.2} | {:>9.1} | {:>9.1} |",
        ms(scratch),
        ms(scratch) / f64::from(PATCHES),
        ms(rerun),
        ms(baseline)
    );
    ms(scratch)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nDB patching: {PATCHES} patches (CREATE TABLE + INDEX + INSERT each)\n"
    );
    let _ = writeln!(
        out,
        "| engine   | scratch ms | ms/patch | rerun ms | baseline ms |"
    );
    let _ = writeln!(
        out,
        "|----------|-----------:|---------:|---------:|------------:|"
    );
    let dir = tempfile::tempdir().unwrap();
    let sqlite = db_rows(
        "sqlite",
        &mut |n| format!("sqlite://{}", dir.path().join(format!("{n}.db")).display()),
        &mut out,
    )
    .await;
    if let Some(cluster) = pg::Cluster::start() {
        // Note: the test cluster runs with fsync=off (set on its command line); SQLite
        // syncs every commit. The comparison is of engines, not of durable commit cost.
        let mut urls = Vec::new();
        for n in ["scratch", "baseline"] {
            urls.push((n, cluster.create_db(n).await));
        }
        let pg = db_rows(
            "postgres",
            &mut |n| urls.iter().find(|(k, _)| *k == n).unwrap().1.clone(),
            &mut out,
        )
        .await;
        let _ = writeln!(out, "\npostgres/sqlite from scratch: {:.1}x", pg / sqlite);
    }

    // Versions: FILES files of 4 KiB plus four of 1 MiB.
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for i in 0..FILES {
        let d = tree.join(format!("res/{:02}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        let body: Vec<u8> = (0..4096u32)
            .map(|b| (b.wrapping_mul(31) ^ i as u32) as u8)
            .collect();
        std::fs::write(d.join(format!("f{i}.dat")), body).unwrap();
    }
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    for i in 0..4u8 {
        std::fs::write(tree.join(format!("bin/b{i}")), vec![i; 1 << 20]).unwrap();
    }
    let state = tmp.path().join("state");
    let store = Store::new(&state);
    let time = |f: &dyn Fn() -> String| {
        let s = Instant::now();
        let id = f();
        (id, s.elapsed())
    };
    let (id, cold) = time(&|| store.build("web", &tree, Some("web-1")).unwrap().id);
    let (id2, same) = time(&|| store.build("web", &tree, Some("web-1")).unwrap().id);
    assert_eq!(id, id2);
    std::fs::write(tree.join("res/00/f0.dat"), b"changed").unwrap();
    let (_, one) = time(&|| store.build("web", &tree, Some("web-2")).unwrap().id);

    let cat = tmp.path().join("catalog");
    std::fs::create_dir_all(cat.join("meta")).unwrap();
    std::fs::write(
        cat.join("inventory.yaml"),
        "locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\nservers:\n  s1: { kind: app, location: l1, address: 127.0.0.1 }\ninstances:\n  - { type: web, server: s1 }\n",
    )
    .unwrap();
    std::fs::write(cat.join("meta/web.yaml"), "type: web\n").unwrap();
    let catalog = portcullis_admin::Catalog::load(&cat).unwrap();
    let d = Deployer::new(&state, &tmp.path().join("roots"));
    let (r, install) = timed(d.deploy(&catalog, "web.s1.1", Action::Install, Some(&id))).await;
    assert_eq!(r.unwrap().outcome, "ok");
    let _ = writeln!(
        out,
        "\nVersions: {FILES} files of 4 KiB + 4 of 1 MiB (12 MiB)\n"
    );
    let _ = writeln!(
        out,
        "| step                         | ms     | vs cold build |"
    );
    let _ = writeln!(
        out,
        "|------------------------------|-------:|--------------:|"
    );
    for (name, t) in [
        ("build, cold store", cold),
        ("build, same tree (dedup)", same),
        ("build, one file changed", one),
        ("install (materialise+verify)", install),
    ] {
        let _ = writeln!(
            out,
            "| {name:<28} | {:>6.1} | {:>12.2}x |",
            ms(t),
            ms(t) / ms(cold)
        );
    }
    println!("{out}");
}
