//! `portcullis explain VIP:PORT --source EXPORT [--from CLIENT_IP [--from-port P]]`: the
//! service behind an address and port, its bucket shares, and where a client lands
//! ([`crate::render::nft::explain`] computes; this prints).

use super::error::{CliError, Exit, FAILED, OK};
use super::input::load_state;
use super::pipeline::print_json;
use crate::render::nft::explain::{explain as compute, Explanation, Query};
use portcullis_export::Proto;
use std::net::SocketAddr;
use std::path::Path;

pub struct Args<'a> {
    pub target: SocketAddr,
    pub source: &'a Path,
    pub from: Option<std::net::IpAddr>,
    pub from_port: Option<u16>,
    pub proto: Option<&'a str>,
    pub json: bool,
}

pub fn explain(args: &Args) -> Result<Exit, CliError> {
    let state = load_state(args.source)?;
    let query = Query {
        vip: args.target.ip(),
        port: args.target.port(),
        proto: match args.proto {
            Some("udp") => Some(Proto::Udp),
            Some(_) => Some(Proto::Tcp),
            None => None,
        },
        client: args.from,
        source_port: args.from_port,
    };
    let found = compute(&state, &query);
    if args.json {
        print_json(&found)?;
    } else if found.is_empty() {
        eprintln!("no service answers at {}", args.target);
    }
    if !args.json {
        for e in &found {
            print!("{}", human(e));
        }
    }
    Ok(if found.is_empty() { FAILED } else { OK })
}

fn human(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): frontend {}, {}\n  {} buckets, hash of {} (nft backend)",
        e.key, e.service, e.frontend, e.params, e.buckets, e.hash
    );
    if let Some(p) = &e.pattern {
        let _ = writeln!(
            out,
            "  bucket table: pattern {} in {}, shared by {} service{}",
            p.mark,
            p.map,
            p.services,
            if p.services == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(
        out,
        "  {:<28} {:<24} {:>6} {:>8} {:>8} {:>9}",
        "real server", "instance", "weight", "weight%", "buckets", "buckets%"
    );
    for s in &e.servers {
        let _ = writeln!(
            out,
            "  {:<28} {:<24} {:>6} {:>7.1}% {:>8} {:>8.1}%",
            s.server, s.instance, s.weight, s.weight_percent, s.buckets, s.bucket_percent
        );
    }
    if let Some(c) = &e.client {
        let from = match c.source_port {
            Some(p) => format!("{}:{p}", c.client),
            None => c.client.to_string(),
        };
        let _ = match (c.bucket, &c.server, &c.instance) {
            (Some(b), Some(server), Some(instance)) => writeln!(
                out,
                "  client {from}: bucket {b} -> {server} (instance {instance})"
            ),
            (Some(b), _, _) => writeln!(
                out,
                "  client {from}: bucket {b}, which no server owns (every server drained)"
            ),
            (None, _, _) => writeln!(
                out,
                "  client {from}: each connection hashes its source port too; give --from-port"
            ),
        };
    }
    out
}
