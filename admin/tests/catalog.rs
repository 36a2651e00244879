//! The catalog against files: golden export and configs of the example catalog, merge order and
//! variables, and one test per kind of catalog error asserting where it is reported.

use portcullis_admin::{config, export, Catalog, CatalogErrors, ErrorKind, Sources, Value};
use std::path::{Path, PathBuf};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog")
}

fn example() -> Sources {
    Sources::read(&example_dir()).expect("example catalog readable")
}

fn with_meta(mut s: Sources, stem: &str, text: &str) -> Sources {
    s.metas.retain(|(n, _)| n != stem);
    s.metas.push((stem.to_owned(), text.to_owned()));
    s
}

fn edit_meta(s: Sources, stem: &str, from: &str, to: &str) -> Sources {
    let text = s
        .metas
        .iter()
        .find(|(n, _)| n == stem)
        .expect("meta")
        .1
        .clone();
    assert!(text.contains(from), "{stem}: {from:?} not found");
    with_meta(s, stem, &text.replacen(from, to, 1))
}

fn edit_inventory(mut s: Sources, from: &str, to: &str) -> Sources {
    assert!(s.inventory.contains(from), "inventory: {from:?} not found");
    s.inventory = s.inventory.replacen(from, to, 1);
    s
}

fn errors(s: &Sources) -> CatalogErrors {
    match Catalog::from_sources(s) {
        Ok(_) => panic!("catalog accepted but should be rejected"),
        Err(e) => e,
    }
}

/// Asserts exactly one error of `kind`, at `file`:`line`, whose key path is `key`.
#[track_caller]
fn assert_one(e: &CatalogErrors, kind: ErrorKind, file: &str, line: u32, key: &str) {
    let found: Vec<_> = e.0.iter().filter(|x| x.kind == kind).collect();
    assert_eq!(found.len(), 1, "want one {kind:?}, got:\n{e}");
    let x = found[0];
    assert_eq!(
        (x.file.as_str(), x.line, x.key.as_str()),
        (file, line, key),
        "{x}"
    );
    assert!(x.column >= 1, "{x}");
}

fn line_of(text: &str, needle: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        want,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn example_export_is_golden_and_passes_the_gateway_validator() {
    let c = Catalog::load(&example_dir()).unwrap_or_else(|e| panic!("{e}"));
    let csv = export::csv(&c).unwrap();
    golden("export.csv", &csv);
    let parsed = portcullis_export::parse(csv.as_bytes()).expect("the gateway accepts it");
    assert_eq!(parsed.rows(), export::rows(&c));
}

#[test]
fn example_configs_are_golden() {
    let c = Catalog::load(&example_dir()).unwrap();
    assert_eq!(c.inventory.instances.len(), 8);
    for (i, inst) in c.inventory.instances.iter().enumerate() {
        let v = config::combined(&c, i).unwrap_or_else(|e| panic!("{e:?}"));
        golden(&format!("config/{}.yaml", inst.id), &v.to_yaml());
    }
}

#[test]
fn generated_catalogs_export_what_the_gateway_accepts() {
    for (n, seed) in [(1, 1), (39, 2), (200, 3), (1000, 4), (2500, 5)] {
        let s = portcullis_admin::synth::sources(n, seed);
        let c = Catalog::from_sources(&s).unwrap_or_else(|e| panic!("n={n}: {e}"));
        let csv = export::csv(&c).unwrap_or_else(|e| panic!("n={n}: {e}"));
        let parsed = portcullis_export::parse(csv.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let exported = c
            .inventory
            .instances
            .iter()
            .filter(|i| {
                i.state != portcullis_admin::State::Maintenance && i.type_name.starts_with('t')
            })
            .count();
        let mut ids: Vec<_> = parsed
            .records
            .iter()
            .map(|r| r.row.instance.to_string())
            .collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            exported,
            "n={n}: one instance per exported instance"
        );
    }
}

// ---- states ----

#[test]
fn drained_exports_weight_zero_and_maintenance_is_left_out() {
    let s = edit_inventory(
        example(),
        "server: app1, index: 1, state: production",
        "server: app1, index: 1, state: drained",
    );
    let s = edit_inventory(
        s,
        "type: tg, server: app2, state: production",
        "type: tg, server: app2, state: maintenance",
    );
    let c = Catalog::from_sources(&s).unwrap();
    let rows = export::rows(&c);
    assert!(rows
        .iter()
        .filter(|r| r.instance.as_str() == "pgw.app1.1")
        .all(|r| r.weight == 0));
    assert!(rows
        .iter()
        .filter(|r| r.instance.as_str() == "pgw.app2.1")
        .all(|r| r.weight == 1));
    assert!(!rows.iter().any(|r| r.instance.as_str() == "tg.app2.1"));
    assert_eq!(
        rows.iter()
            .filter(|r| r.instance.as_str() == "tg.app1.1")
            .count(),
        2
    );
}

// ---- merging ----

fn cfg(s: &Sources, id: &str) -> Value {
    let c = Catalog::from_sources(s).unwrap_or_else(|e| panic!("{e}"));
    let i = c
        .inventory
        .instances
        .iter()
        .position(|i| i.id == id)
        .unwrap();
    config::combined(&c, i).unwrap()
}

fn get<'v>(v: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(v, |v, k| match v {
        Value::Map(m) => m.get(k).unwrap_or_else(|| panic!("no {k} in {v:?}")),
        _ => panic!("{k}: not a map"),
    })
}

#[test]
fn sort_order_decides_who_wins_and_ties_go_by_type_name() {
    let s = with_meta(
        example(),
        "zz",
        "type: zz\nfake: true\nsort-order: 5\nconfig: { \"*\": { probe: zz, tie: zz } }\n",
    );
    let s = with_meta(
        s,
        "aa",
        "type: aa\nfake: true\nsort-order: 5\nconfig: { \"*\": { tie: aa } }\n",
    );
    let s = with_meta(
        s,
        "early",
        "type: early\nfake: true\nsort-order: -1\nconfig: { \"*\": { probe: early } }\n",
    );
    let v = cfg(&s, "pgw.app1.1");
    // early (-1) < aa (5) < zz (5, after aa by name): zz is applied last of the three.
    assert_eq!(get(&v, "probe"), &Value::Str("zz".into()));
    assert_eq!(get(&v, "tie"), &Value::Str("zz".into()));
    let s = edit_meta(s, "zz", "sort-order: 5", "sort-order: -5");
    let v = cfg(&s, "pgw.app1.1");
    assert_eq!(get(&v, "probe"), &Value::Str("early".into()));
    assert_eq!(get(&v, "tie"), &Value::Str("aa".into()));
}

#[test]
fn files_without_instances_apply_only_when_fake() {
    let s = with_meta(
        example(),
        "absent",
        "type: absent\nsort-order: 1\nconfig: { \"*\": { from-absent: 1 } }\n",
    );
    let v = cfg(&s, "pgw.app1.1");
    assert!(matches!(&v, Value::Map(m) if !m.contains_key("from-absent")));
    let s = edit_meta(s, "absent", "sort-order: 1", "sort-order: 1\nfake: true");
    assert_eq!(get(&cfg(&s, "pgw.app1.1"), "from-absent"), &Value::Int(1));
}

#[test]
fn logger_adds_remote_target_to_others_and_rewrites_its_own_logging() {
    let c = Catalog::load(&example_dir()).unwrap();
    let pgw = config::combined(&c, 0).unwrap();
    let Value::List(targets) = get(&pgw, "log.targets") else {
        panic!()
    };
    assert_eq!(
        targets.len(),
        2,
        "file + remote (the list replaced default's)"
    );
    assert_eq!(
        get(&targets[1], "address"),
        &Value::Str("10.0.3.11:5140".into())
    );
    let logger_idx = c
        .inventory
        .instances
        .iter()
        .position(|i| i.type_name == "logger")
        .unwrap();
    let logger = config::combined(&c, logger_idx).unwrap();
    let Value::List(own) = get(&logger, "log.targets") else {
        panic!()
    };
    assert_eq!(own.len(), 1, "no remote target to itself: {own:?}");
    // Without a logger instance its file is inactive: services keep default's local file only.
    let s = edit_inventory(
        example(),
        "  - { type: logger, server: archive1, state: production, version: logger-1.0.3 }\n",
        "",
    );
    let Value::List(t) = get(&cfg(&s, "pgw.app1.1"), "log.targets").clone() else {
        panic!()
    };
    assert_eq!(t.len(), 1);
}

#[test]
fn within_a_file_star_then_type_target_then_own_and_null_deletes() {
    let s = with_meta(
        example(),
        "order",
        "type: order\nfake: true\nsort-order: 95\nconfig:\n  \"*\": { k: star, gone: 1, keep: 1 }\n  \"@pgw\": { k: at-pgw, gone: null }\n",
    );
    let v = cfg(&s, "pgw.app1.1");
    assert_eq!(get(&v, "k"), &Value::Str("at-pgw".into()));
    assert!(matches!(&v, Value::Map(m) if !m.contains_key("gone") && m.contains_key("keep")));
    assert_eq!(get(&cfg(&s, "tg.app1.1"), "k"), &Value::Str("star".into()));
}

#[test]
fn variables_substitute_with_types_escapes_and_drives() {
    let s = edit_meta(example(), "mdb", "cache-mb: 4096", "cache-mb: 4096\n    index: \"${app-index}\"\n    literal: \"$${not-a-var}\"\n    where: \"${location}/${server}\"");
    let v = cfg(&s, "mdb.db1.3");
    assert_eq!(
        get(&v, "db.index"),
        &Value::Int(3),
        "a lone variable keeps its type"
    );
    assert_eq!(get(&v, "db.literal"), &Value::Str("${not-a-var}".into()));
    assert_eq!(get(&v, "db.where"), &Value::Str("tcn/db1".into()));
    assert_eq!(get(&v, "db.data"), &Value::Str("/mnt/drive3/mdb-3".into()));
    assert_eq!(get(&v, "http.listen"), &Value::Str("10.0.2.11:7030".into()));
    assert_eq!(get(&v, "workers"), &Value::Int(0));
}

// ---- every error kind, located ----

#[test]
fn syntax_error() {
    let s = with_meta(example(), "bad", "type: bad\nconfig: { a: [1, 2 }\n");
    let e = errors(&s);
    let x =
        e.0.iter()
            .find(|x| x.kind == ErrorKind::Syntax)
            .expect("syntax error");
    assert_eq!((x.file.as_str(), x.line), ("meta/bad.yaml", 2), "{x}");
}

#[test]
fn duplicate_key() {
    let s = edit_inventory(
        example(),
        "  app2: {",
        "  app1: { kind: app, location: tcn, address: 10.0.1.99 }\n  app2: {",
    );
    let e = errors(&s);
    let line = line_of(&s.inventory, "10.0.1.99");
    assert_one(&e, ErrorKind::DuplicateKey, "inventory.yaml", line, "");
}

#[test]
fn unknown_key() {
    let s = edit_meta(example(), "pgw", "sort-order: 50", "sort_order: 50");
    let e = errors(&s);
    let line = line_of(
        &s.metas.iter().find(|m| m.0 == "pgw").unwrap().1,
        "sort_order",
    );
    assert_one(
        &e,
        ErrorKind::UnknownKey,
        "meta/pgw.yaml",
        line,
        "sort_order",
    );
    let s = edit_meta(example(), "tg", "scheduler: sh", "schedular: sh");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownKey,
        "meta/tg.yaml",
        13,
        "gateway[0].schedular",
    );
}

#[test]
fn missing_key() {
    let s = edit_inventory(
        example(),
        "{ type: tg, server: app2, state",
        "{ type: tg, state",
    );
    let line = line_of(&s.inventory, "{ type: tg, state");
    assert_one(
        &errors(&s),
        ErrorKind::MissingKey,
        "inventory.yaml",
        line,
        "instances[3].server",
    );
    // require-index types must write their index.
    let s = edit_inventory(example(), "server: db1, index: 2, ", "server: db1, ");
    let line = line_of(&s.inventory, "{ type: mdb, server: db1, state");
    assert_one(
        &errors(&s),
        ErrorKind::MissingKey,
        "inventory.yaml",
        line,
        "instances[5].index",
    );
}

#[test]
fn bad_value() {
    let s = edit_meta(example(), "pgw", "proto: tcp", "proto: sctp");
    assert_one(
        &errors(&s),
        ErrorKind::BadValue,
        "meta/pgw.yaml",
        18,
        "gateway[0].proto",
    );
    let s = edit_inventory(example(), "address: 10.0.1.12", "address: 10.0.1.300");
    assert_one(
        &errors(&s),
        ErrorKind::BadValue,
        "inventory.yaml",
        9,
        "servers.app2.address",
    );
    let s = edit_meta(example(), "tg", "fwm: 100, ", "");
    assert_one(
        &errors(&s),
        ErrorKind::BadValue,
        "meta/tg.yaml",
        13,
        "gateway[0].ports[0]",
    );
}

#[test]
fn a_gateway_check_is_exported_in_the_check_column_and_checked() {
    let s = edit_meta(
        example(),
        "pgw",
        "to: { 80: 9080, 443: 9443 } }",
        "to: { 80: 9080, 443: 9443 }, check: \"http:/health:200\" }",
    );
    let c = Catalog::from_sources(&s).unwrap_or_else(|e| panic!("{e}"));
    let csv = export::csv(&c).expect("writable");
    assert!(csv.starts_with("# portcullis-export 1.1\n"), "{csv}");
    let parsed = portcullis_export::parse(csv.as_bytes()).expect("the gateway accepts it");
    for rec in &parsed.records {
        let check = rec.row.check.as_ref().map(ToString::to_string);
        let want = (rec.row.service.as_str() == "pgw").then(|| "http:/health:200".to_owned());
        assert_eq!(check, want, "line {}", rec.line);
    }
    // Without any check the export stays 1.0, as the golden file shows.
    let s = edit_meta(
        example(),
        "pgw",
        "443: 9443 } }",
        "443: 9443 }, check: ping }",
    );
    assert_one(
        &errors(&s),
        ErrorKind::BadValue,
        "meta/pgw.yaml",
        18,
        "gateway[0].check",
    );
}

#[test]
fn unknown_reference() {
    let s = edit_inventory(
        example(),
        "type: tg, server: app2",
        "type: tg, server: app9",
    );
    let line = line_of(&s.inventory, "app9");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownReference,
        "inventory.yaml",
        line,
        "instances[3].server",
    );
    let s = edit_meta(example(), "pgw", "depends: [mdb]", "depends: [mdbx]");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownReference,
        "meta/pgw.yaml",
        8,
        "depends[0]",
    );
}

#[test]
fn unique_type_with_two_instances() {
    let s = edit_inventory(
        example(),
        "  - { type: logger,",
        "  - { type: logger, server: app1, state: production }\n  - { type: logger,",
    );
    let line = line_of(&s.inventory, "type: logger, server: archive1");
    assert_one(
        &errors(&s),
        ErrorKind::Unique,
        "inventory.yaml",
        line,
        "instances[8]",
    );
}

#[test]
fn duplicate_index() {
    let s = edit_inventory(example(), "server: db1, index: 3", "server: db1, index: 2");
    let line = s
        .inventory
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("server: db1, index: 2"))
        .nth(1)
        .map(|(i, _)| i as u32 + 1)
        .unwrap();
    assert_one(
        &errors(&s),
        ErrorKind::DuplicateIndex,
        "inventory.yaml",
        line,
        "instances[6].index",
    );
}

#[test]
fn gateway_port_collision() {
    let s = edit_meta(
        example(),
        "tg",
        "  - { name: devices",
        "  - { name: web, ip: www-ip, ports: [8443, 443] }\n  - { name: devices",
    );
    let e = errors(&s);
    // pgw sorts before tg, so tg's entry is the one reported, at its ports.
    assert_one(
        &e,
        ErrorKind::PortCollision,
        "meta/tg.yaml",
        13,
        "gateway[0].ports",
    );
    assert!(e.0[0].message.contains("meta/pgw.yaml:18"), "{e}");
}

#[test]
fn unknown_ip_label() {
    let s = edit_meta(example(), "pgw", "ip: www-ip", "ip: web-ip");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownIpLabel,
        "meta/pgw.yaml",
        18,
        "gateway[0].ip",
    );
}

#[test]
fn fwmark_reused() {
    let s = edit_meta(example(), "pgw", "  - { name: https", "  - { name: dev2, ip: tg-ip, proto: udp, ports: \"30000-30010\", fwm: 100 }\n  - { name: https");
    // pgw < tg by name: tg's mark is the second use.
    assert_one(
        &errors(&s),
        ErrorKind::FwmarkReused,
        "meta/tg.yaml",
        13,
        "gateway[0].fwm",
    );
}

#[test]
fn dependency_missing() {
    let mut s = example();
    s.inventory = s
        .inventory
        .lines()
        .filter(|l| !l.contains("type: mdb"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = errors(&s);
    assert_eq!(
        e.0.iter()
            .filter(|x| x.kind == ErrorKind::DependencyMissing)
            .count(),
        2,
        "{e}"
    );
    assert!(
        e.0.iter().any(|x| x.kind == ErrorKind::DependencyMissing
            && x.file == "meta/pgw.yaml"
            && x.line == 8
            && x.key == "depends[0]"),
        "{e}"
    );
}

#[test]
fn dependency_cycle() {
    let s = edit_meta(
        example(),
        "mdb",
        "workers: 0",
        "workers: 0\ndepends: [logger]",
    );
    let s = edit_meta(s, "logger", "workers: 1", "workers: 1\ndepends: [pgw]");
    let e = errors(&s);
    let cycles: Vec<_> =
        e.0.iter()
            .filter(|x| x.kind == ErrorKind::DependencyCycle)
            .collect();
    assert_eq!(cycles.len(), 3, "each type on the cycle is told: {e}");
    let mdb = cycles.iter().find(|x| x.file == "meta/mdb.yaml").unwrap();
    assert_eq!((mdb.line, mdb.key.as_str()), (8, "depends[0]"), "{mdb}");
    assert!(mdb.message.contains("mdb → logger → pgw → mdb"), "{mdb}");
}

#[test]
fn unknown_variable() {
    let s = edit_meta(example(), "pgw", "0.0.0.0:${port}", "0.0.0.0:${prot}");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownVariable,
        "meta/pgw.yaml",
        13,
        "config.http.listen",
    );
    // A "*" section reaches every type: type variables are not available there.
    let s = edit_meta(example(), "default", "log/${type}.log", "log/${port}.log");
    assert_one(
        &errors(&s),
        ErrorKind::UnknownVariable,
        "meta/default.yaml",
        12,
        "config.\"*\".log.targets[0].path",
    );
    // Referencing a non-unique type's variable is ambiguous.
    let s = edit_meta(
        example(),
        "pgw",
        "http://10.0.2.11:7010",
        "http://${mdb:host-ip}:7010",
    );
    assert_one(
        &errors(&s),
        ErrorKind::UnknownVariable,
        "meta/pgw.yaml",
        16,
        "config.upstream.mdb",
    );
}

#[test]
fn real_server_collision() {
    let s = edit_inventory(example(), "  - { type: pgw, server: app2, index: 1", "  - { type: pgw, server: app1, index: 2, state: production }\n  - { type: pgw, server: app2, index: 1");
    let line = line_of(&s.inventory, "server: app1, index: 2");
    assert_one(
        &errors(&s),
        ErrorKind::RealServerCollision,
        "inventory.yaml",
        line,
        "instances[1]",
    );
}

#[test]
fn placement_of_db_links() {
    let s = edit_inventory(
        example(),
        "type: mdb, server: db1, index: 1",
        "type: mdb, server: app1, index: 1",
    );
    let line = line_of(&s.inventory, "type: mdb, server: app1");
    assert_one(
        &errors(&s),
        ErrorKind::Placement,
        "inventory.yaml",
        line,
        "instances[4].server",
    );
}

#[test]
fn export_rejected_is_the_last_safety_net() {
    // An IPv6 frontend to IPv4 real servers needs `tun`; no catalog rule catches it first.
    let s = edit_inventory(
        example(),
        "www-ip: [203.0.113.10]",
        "www-ip: [\"2001:db8::10\"]",
    );
    let e = errors(&s);
    assert!(
        e.0.iter().all(|x| x.kind == ErrorKind::ExportRejected),
        "{e}"
    );
    assert!(!e.0.is_empty());
}

#[test]
fn io_error_names_the_file() {
    let e = Catalog::load(Path::new("/nonexistent/catalog")).unwrap_err();
    assert_eq!(
        (e.0[0].kind, e.0[0].file.as_str()),
        (ErrorKind::Io, "inventory.yaml")
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let s = edit_meta(example(), "pgw", "proto: tcp", "proto: sctp");
    let s = edit_meta(s, "tg", "sort-order: 60", "sort-order: sixty");
    let s = edit_inventory(s, "address: 10.0.1.12", "address: nowhere");
    let e = errors(&s);
    assert_eq!(e.0.len(), 3, "{e}");
    let shown = e.to_string();
    assert!(shown.contains("meta/pgw.yaml:18:"), "{shown}");
    assert!(shown.contains("inventory.yaml:9:"), "{shown}");
}

// ---- inventory edits ----

#[test]
fn state_edits_are_one_word_in_place_or_a_canonical_rewrite() {
    use portcullis_admin::inventory::with_state;
    use portcullis_admin::State;
    let s = example();
    let c = Catalog::from_sources(&s).unwrap();
    let t = with_state(&s.inventory, &c.inventory, "tg.app1.1", State::Drained).unwrap();
    assert_eq!(
        t,
        s.inventory.replacen(
            "type: tg, server: app1, state: production",
            "type: tg, server: app1, state: drained",
            1
        )
    );
    assert!(with_state(&s.inventory, &c.inventory, "tg.app9.1", State::Drained).is_none());

    // No `state:` written: the inventory is rewritten canonically; the catalog is the same
    // but for that one state.
    let s = edit_inventory(
        example(),
        "type: tg, server: app1, state: production, ",
        "type: tg, server: app1, ",
    );
    let before = Catalog::from_sources(&s).unwrap();
    let t = with_state(
        &s.inventory,
        &before.inventory,
        "tg.app1.1",
        State::Maintenance,
    )
    .unwrap();
    let after = Catalog::from_sources(&Sources {
        inventory: t,
        metas: s.metas.clone(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    for (a, b) in before
        .inventory
        .instances
        .iter()
        .zip(&after.inventory.instances)
    {
        assert_eq!((&a.id, &a.version), (&b.id, &b.version));
        let want = if a.id == "tg.app1.1" {
            State::Maintenance
        } else {
            a.state
        };
        assert_eq!(b.state, want, "{}", a.id);
    }
    assert_eq!(
        before.inventory.servers.len(),
        after.inventory.servers.len()
    );
    let rows: Vec<_> = export::rows(&before)
        .into_iter()
        .filter(|r| r.instance.as_str() != "tg.app1.1")
        .collect();
    assert_eq!(rows, export::rows(&after));
}

#[test]
fn variables_that_refer_to_themselves_are_an_error_not_a_stack_overflow() {
    let s = edit_meta(
        example(),
        "logger",
        "  port: 5140",
        "  port: \"${logger:port}\"",
    );
    let e = errors(&s);
    assert!(
        e.0.iter()
            .any(|x| x.kind == ErrorKind::UnknownVariable && x.message.contains("loop")),
        "{e}"
    );
}
