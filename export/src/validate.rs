//! Rules that span rows: what makes a set of individually valid rows a coherent set of virtual
//! services that IPVS and nftables can both express. Each error points at the later of the
//! conflicting rows and names the earlier one's line.

use crate::error::{ErrorKind, ExportError, ExportErrors};
use crate::fields::{InstanceId, Method, PortRange, Proto};
use crate::row::{Col, ExportRow, Layout, Record, ServiceKey, SocketText};
use std::collections::HashMap;
use std::net::IpAddr;

struct Reporter<'a> {
    layout: &'a Layout,
    errors: &'a mut ExportErrors,
}

impl Reporter<'_> {
    fn at(&mut self, line: u64, col: Col, kind: ErrorKind, message: String) {
        self.errors.push(ExportError {
            line,
            column: Some(self.layout.column(col)),
            kind,
            message,
        });
    }
}

/// The first row seen of each instance in a service, and where every frontend starts.
struct ServiceAcc<'a> {
    first: &'a Record,
    instances: HashMap<&'a InstanceId, &'a Record>,
    dests: HashMap<(IpAddr, Option<u16>), &'a Record>,
    frontends: HashMap<(IpAddr, PortRange), FrontendAcc<'a>>,
}

struct FrontendAcc<'a> {
    line: u64,
    instances: HashMap<&'a InstanceId, u64>,
}

pub(crate) fn validate_records(records: &[Record], layout: &Layout, errors: &mut ExportErrors) {
    let mut r = Reporter { layout, errors };
    let mut services: HashMap<ServiceKey, ServiceAcc> = HashMap::new();
    for rec in records {
        if !check_row_alone(rec, &mut r) {
            continue;
        }
        let acc = services
            .entry(rec.row.service_key())
            .or_insert_with(|| ServiceAcc {
                first: rec,
                instances: HashMap::new(),
                dests: HashMap::new(),
                frontends: HashMap::new(),
            });
        check_against_service(rec, acc, &mut r);
    }
    check_fwmark_completeness(&services, &mut r);
    check_frontend_overlaps(&services, &mut r);
}

/// Checks rules a row must satisfy on its own. Returns false when the row cannot even be
/// grouped meaningfully (its service identity is unusable).
fn check_row_alone(rec: &Record, r: &mut Reporter) -> bool {
    let row = &rec.row;
    let line = rec.line;
    let mut groupable = true;
    if !row.vport.is_single() && row.fwmark.is_none() {
        r.at(
            line,
            Col::Fwmark,
            ErrorKind::RangeWithoutFwmark,
            format!(
                "expected a fwmark: port range {} can only be balanced as an fwmark service",
                row.vport
            ),
        );
        groupable = false;
    }
    if let Some(rport) = row.rport {
        if !row.vport.is_single() {
            r.at(
                line,
                Col::Rport,
                ErrorKind::RangeWithRport,
                format!(
                "expected empty rport for port range {}: each port is kept as it is, found {rport}",
                row.vport
            ),
            );
        } else if row.method != Method::Nat && rport != row.vport.first {
            r.at(line, Col::Rport, ErrorKind::PortRemapNeedsNat, format!(
                "expected rport empty or {}: method {} cannot change the port, only nat can (found {rport})",
                row.vport.first, row.method
            ));
        }
    }
    if row.vip.is_ipv4() != row.rip.is_ipv4() && row.method != Method::Tun {
        r.at(line, Col::Rip, ErrorKind::FamilyMismatch, format!(
            "expected an {} real server address like the vip {}: only method tun can mix IPv4 and IPv6",
            family(row.vip), row.vip
        ));
    }
    groupable
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn check_against_service<'a>(rec: &'a Record, acc: &mut ServiceAcc<'a>, r: &mut Reporter) {
    let row = &rec.row;
    let first = &acc.first.row;
    let key = row.service_key();
    let (line, first_line) = (rec.line, acc.first.line);
    if let ServiceKey::Fwmark { mark } = key {
        // A row that cannot join the fwmark service is reported once; merging it would only
        // add follow-on errors about the frontends it does not belong to.
        if row.proto != first.proto {
            r.at(
                line,
                Col::Proto,
                ErrorKind::FwmarkProtoMismatch,
                format!(
                    "expected {}: fwmark {mark} is {} on line {first_line}, found {}",
                    first.proto, first.proto, row.proto
                ),
            );
            return;
        }
        if row.vip.is_ipv4() != first.vip.is_ipv4() {
            r.at(line, Col::Vip, ErrorKind::FamilyMismatch, format!(
                "expected an {} vip: fwmark {mark} has {} frontends (line {first_line}) and IPVS keeps one fwmark service per address family; use another fwmark",
                family(first.vip), family(first.vip)
            ));
            return;
        }
    }
    let mut agree = |col: Col, same: bool, what: &str, ours: String, theirs: String| {
        if !same {
            r.at(line, col, ErrorKind::ServiceMismatch, format!(
                "expected {what} {theirs} as on line {first_line} of the same virtual service ({key}), found {ours}"
            ));
        }
    };
    agree(
        Col::Service,
        row.service == first.service,
        "service",
        row.service.to_string(),
        first.service.to_string(),
    );
    agree(
        Col::Scheduler,
        row.scheduler == first.scheduler,
        "scheduler",
        row.scheduler.to_string(),
        first.scheduler.to_string(),
    );
    agree(
        Col::Method,
        row.method == first.method,
        "method",
        row.method.to_string(),
        first.method.to_string(),
    );
    agree(
        Col::Persistence,
        row.persistence == first.persistence,
        "persistence",
        opt(row.persistence),
        opt(first.persistence),
    );

    // One instance is one real server: the same address, port and weight everywhere.
    match acc.instances.get(&row.instance) {
        Some(seen) => {
            let s = &seen.row;
            let mut agree = |col: Col, same: bool, what: &str, ours: String, theirs: String| {
                if !same {
                    r.at(line, col, ErrorKind::RealServerMismatch, format!(
                        "expected {what} {theirs} for instance {} as on line {} ({key}), found {ours}",
                        row.instance, seen.line
                    ));
                }
            };
            agree(
                Col::Rip,
                row.rip == s.rip,
                "rip",
                row.rip.to_string(),
                s.rip.to_string(),
            );
            agree(
                Col::Rport,
                row.rport == s.rport,
                "rport",
                opt(row.rport),
                opt(s.rport),
            );
            agree(
                Col::Weight,
                row.weight == s.weight,
                "weight",
                row.weight.to_string(),
                s.weight.to_string(),
            );
        }
        None => {
            acc.instances.insert(&row.instance, rec);
            let dest = (row.rip, row.effective_rport());
            if let Some(other) = acc.dests.get(&dest) {
                r.at(line, Col::Rip, ErrorKind::DuplicateRealServer, format!(
                    "real server {} is already instance {} on line {} of {key}; one address and port is one real server",
                    SocketText(row.rip, row.effective_rport()), other.row.instance, other.line
                ));
            } else {
                acc.dests.insert(dest, rec);
            }
        }
    }

    let frontend = acc
        .frontends
        .entry((row.vip, row.vport))
        .or_insert_with(|| FrontendAcc {
            line,
            instances: HashMap::new(),
        });
    if let Some(prev) = frontend.instances.insert(&row.instance, line) {
        r.at(
            line,
            Col::Instance,
            ErrorKind::DuplicateRealServer,
            format!(
                "instance {} is listed twice for frontend {} {} (also line {prev})",
                row.instance,
                row.proto,
                frontend_text(row.vip, row.vport)
            ),
        );
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "(empty)".to_owned(), |v| v.to_string())
}

fn frontend_text(vip: IpAddr, ports: PortRange) -> String {
    match vip {
        IpAddr::V6(a) => format!("[{a}]:{ports}"),
        IpAddr::V4(a) => format!("{a}:{ports}"),
    }
}

/// An fwmark service sends every frontend to every real server, so each real server must be
/// listed behind each frontend: a row set that says otherwise cannot be expressed.
fn check_fwmark_completeness(services: &HashMap<ServiceKey, ServiceAcc>, r: &mut Reporter) {
    for (key, acc) in services {
        if acc.frontends.len() < 2 {
            continue;
        }
        let mut missing = Vec::new();
        for ((vip, ports), frontend) in &acc.frontends {
            for (instance, rec) in &acc.instances {
                if !frontend.instances.contains_key(instance) {
                    missing.push((frontend.line, rec.line, instance.as_str(), *vip, *ports));
                }
            }
        }
        missing.sort();
        for (frontend_line, instance_line, instance, vip, ports) in missing {
            r.at(frontend_line, Col::Instance, ErrorKind::MissingRealServer, format!(
                "expected a row for instance {instance} (line {instance_line}) behind frontend {} {}: {key} sends every frontend to every real server, so list each real server once per frontend",
                acc.first.row.proto, frontend_text(vip, ports)
            ));
        }
    }
}

/// A (proto, vip, port) belongs to at most one frontend of one virtual service.
fn check_frontend_overlaps(services: &HashMap<ServiceKey, ServiceAcc>, r: &mut Reporter) {
    let mut all: Vec<(Proto, IpAddr, PortRange, u64, ServiceKey)> = services
        .iter()
        .flat_map(|(key, acc)| {
            acc.frontends
                .iter()
                .map(move |((vip, ports), f)| (acc.first.row.proto, *vip, *ports, f.line, *key))
        })
        .collect();
    all.sort_unstable_by_key(|&(proto, vip, ports, line, _)| {
        (proto, vip, ports.first, ports.last, line)
    });
    // The frontend reaching furthest so far on the current (proto, vip): any later frontend
    // starting at or before its end overlaps it.
    let mut cover: Option<(Proto, IpAddr, PortRange, u64, ServiceKey)> = None;
    for cur in all {
        if let Some(prev) = cover.filter(|p| p.0 == cur.0 && p.1 == cur.1 && p.2.overlaps(cur.2)) {
            let (later, earlier) = if cur.3 >= prev.3 {
                (cur, prev)
            } else {
                (prev, cur)
            };
            r.at(later.3, Col::Vport, ErrorKind::FrontendOverlap, format!(
                "expected ports not already exported: {} {} overlaps {} on line {} ({}); a port belongs to one virtual service",
                later.0, frontend_text(later.1, later.2), frontend_text(earlier.1, earlier.2), earlier.3, earlier.4
            ));
            if cur.2.last <= prev.2.last {
                continue;
            }
        }
        cover = Some(cur);
    }
}

/// Validates rows built in memory (by ADMIN) as if they were written by [`crate::write`]:
/// errors carry the line each row would have in the written file.
pub fn validate_rows(rows: &[ExportRow]) -> Result<(), ExportErrors> {
    let records: Vec<Record> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| Record {
            line: i as u64 + crate::write::FIRST_ROW_LINE,
            row: row.clone(),
        })
        .collect();
    let mut errors = ExportErrors::default();
    validate_records(&records, &Layout::canonical(), &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.sorted())
    }
}
