//! Generated catalogs of any size, for tests ("every generated catalog's export passes the
//! gateway's validator") and benches (export derivation for 10k instances). Deterministic for
//! a given (instances, seed).

use crate::catalog::Sources;
use std::fmt::Write as _;

/// A catalog with about `instances` instances: types `t00`… (each on its own port of www-ip,
/// every fourth a port range on both fwm addresses), 40 instances per type on distinct
/// servers, states varied by `seed`, plus a fake defaults file and a unique logger.
pub fn sources(instances: usize, seed: u64) -> Sources {
    const PER_TYPE: usize = 40;
    let types = instances.div_ceil(PER_TYPE).max(1);
    let servers = PER_TYPE;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    let mut inv = String::from("locations:\n  dc1:\n    ip-labels: { www-ip: [198.51.100.10, 2001:db8::10], dev-ip: [198.51.100.20, 198.51.100.21] }\n");
    inv.push_str("servers:\n");
    for s in 0..servers {
        let _ = writeln!(
            inv,
            "  s{s:04}: {{ kind: app, location: dc1, address: 10.{}.{}.{} }}",
            1 + s / 65536,
            (s / 256) % 256,
            s % 256
        );
    }
    let _ = writeln!(
        inv,
        "  arch1: {{ kind: archive, location: dc1, address: 10.255.0.1 }}"
    );
    inv.push_str("instances:\n");
    let mut metas = Vec::new();
    let mut made = 0;
    for t in 0..types {
        let name = format!("t{t:02}");
        let mut meta = format!(
            "type: {name}\nsort-order: {}\nrequire-index: true\nworkers: 2\n",
            10 + t % 7
        );
        let _ = write!(
            meta,
            "vars:\n  port: {}\nconfig:\n  listen: \"${{host-ip}}:${{port}}\"\n  name: \"${{id}}\"\n",
            20000 + t
        );
        if t % 4 == 3 {
            let first = 30000 + t * 100;
            let _ = write!(
                meta,
                "gateway:\n  - {{ name: range, ip: dev-ip, proto: udp, ports: \"{first}-{}\", fwm: {}, scheduler: sh }}\n",
                first + 99,
                t + 1
            );
        } else {
            // IPv6 frontends need IPv6 real servers unless tunnelled: export IPv4 only here.
            let _ = write!(
                meta,
                "gateway:\n  - {{ name: web, ip: www-ip, ports: [{}], to: {}, method: tun, persistence: 60 }}\n",
                1000 + t,
                1000 + t
            );
        }
        metas.push((name.clone(), meta));
        for s in 0..servers {
            if made >= instances {
                break;
            }
            let state = match next() % 10 {
                0 => "drained",
                1 => "maintenance",
                _ => "production",
            };
            let _ = writeln!(
                inv,
                "  - {{ type: {name}, server: s{s:04}, index: 1, state: {state}, version: {name}-1.{} }}",
                next() % 5
            );
            made += 1;
        }
    }
    let _ = writeln!(
        inv,
        "  - {{ type: logger, server: arch1, state: production }}"
    );
    metas.push((
        "default".into(),
        "type: default\nfake: true\nsort-order: 0\nconfig:\n  \"*\":\n    log: { level: info, file: \"log/${type}.log\" }\n".into(),
    ));
    metas.push((
        "logger".into(),
        "type: logger\nunique: true\nsort-order: 90\ninstall:\n  link: { data: archive }\nconfig:\n  \"*\":\n    log: { remote: \"${logger:host-ip}:5140\" }\n  log: { remote: null }\n".into(),
    ));
    metas.sort();
    Sources {
        inventory: inv,
        metas,
    }
}
