//! Rules that span rows: what makes a set of individually valid rows a coherent set of virtual
//! services that IPVS and nftables can both express. Each error points at the later of the
//! conflicting rows and names the earlier one's line.

use crate::error::{ErrorKind, ExportError, ExportErrors};
use crate::fields::{Method, PortRange, Proto};
use crate::row::{Col, ExportRow, Layout, Record, ServiceKey, SocketText};
use std::fmt::Display;
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

/// Groups rows by virtual service (one sort; exports are usually already grouped, which the
/// sort exploits) and checks each group with small local sorts. At 100k rows this runs in a
/// fraction of the time of hash maps over the whole file, whose random accesses miss the
/// cache on every row.
///
/// Returns the indices of `records` in (service key, line) order, which is what a consumer
/// grouping rows by service needs: `Export::by_service` hands it out so nobody sorts twice.
pub(crate) fn validate_records(
    records: &[Record],
    layout: &Layout,
    errors: &mut ExportErrors,
) -> Vec<u32> {
    let mut r = Reporter { layout, errors };
    let mut order: Vec<(PackedKey, u32)> = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        if check_row_alone(rec, &mut r) {
            order.push((pack(&rec.row.service_key()), i as u32));
        }
    }
    // Index breaks ties, so rows of a service stay in file order.
    order.sort_unstable();
    let mut scratch = Scratch::default();
    let mut frontends = Vec::new();
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        scratch.rows.clear();
        scratch
            .rows
            .extend(group.iter().map(|&(_, i)| &records[i as usize]));
        let key = scratch.rows[0].row.service_key();
        check_service(key, &mut scratch, &mut frontends, &mut r);
        if r.errors.is_full() {
            break;
        }
    }
    check_frontend_overlaps(frontends, &mut r);
    order.into_iter().map(|(_, i)| i).collect()
}

/// A [`ServiceKey`] as plain integers with the same order (variant, protocol, family,
/// address, port): comparing these is several times cheaper than the derived enum order, and
/// sorting 100k keys is a visible share of validation.
type PackedKey = (u64, u128, u16);

fn pack(key: &ServiceKey) -> PackedKey {
    match *key {
        ServiceKey::Fwmark { mark } => (mark as u64, 0, 0),
        ServiceKey::Addr { proto, vip, port } => {
            let (v6, bits) = match vip {
                IpAddr::V4(a) => (0, u32::from(a) as u128),
                IpAddr::V6(a) => (1, u128::from(a)),
            };
            (1 << 63 | (proto as u64) << 1 | v6, bits, port)
        }
    }
}

/// Buffers reused across services, to avoid allocating per service.
#[derive(Default)]
struct Scratch<'a> {
    rows: Vec<&'a Record>,
    members: Vec<&'a Record>,
    by_instance: Vec<&'a Record>,
    instances: Vec<&'a Record>,
    by_dest: Vec<&'a Record>,
    by_frontend: Vec<&'a Record>,
    listed: Vec<&'a Record>,
}

/// A frontend as the overlap check needs it: (proto, vip, ports, first line, service).
type FrontendAt = (Proto, IpAddr, PortRange, u64, ServiceKey);

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

fn check_service<'a>(
    key: ServiceKey,
    s: &mut Scratch<'a>,
    frontends: &mut Vec<FrontendAt>,
    r: &mut Reporter,
) {
    let first = s.rows[0];
    let (head, first_line) = (&first.row, first.line);
    s.members.clear();
    for &rec in &s.rows {
        let row = &rec.row;
        let line = rec.line;
        if let ServiceKey::Fwmark { mark } = key {
            // A row that cannot join the fwmark service is reported once; merging it would
            // only add follow-on errors about the frontends it does not belong to.
            if row.proto != head.proto {
                r.at(
                    line,
                    Col::Proto,
                    ErrorKind::FwmarkProtoMismatch,
                    format!(
                        "expected {}: fwmark {mark} is {} on line {first_line}, found {}",
                        head.proto, head.proto, row.proto
                    ),
                );
                continue;
            }
            if row.vip.is_ipv4() != head.vip.is_ipv4() {
                r.at(line, Col::Vip, ErrorKind::FamilyMismatch, format!(
                    "expected an {} vip: fwmark {mark} has {} frontends (line {first_line}) and IPVS keeps one fwmark service per address family; use another fwmark",
                    family(head.vip), family(head.vip)
                ));
                continue;
            }
        }
        let mut agree = |col: Col,
                         same: bool,
                         what: &str,
                         ours: &dyn Display,
                         theirs: &dyn Display| {
            if !same {
                r.at(line, col, ErrorKind::ServiceMismatch, format!(
                    "expected {what} {theirs} as on line {first_line} of the same virtual service ({key}), found {ours}"
                ));
            }
        };
        agree(
            Col::Service,
            row.service == head.service,
            "service",
            &row.service,
            &head.service,
        );
        agree(
            Col::Scheduler,
            row.scheduler == head.scheduler,
            "scheduler",
            &row.scheduler,
            &head.scheduler,
        );
        agree(
            Col::Method,
            row.method == head.method,
            "method",
            &row.method,
            &head.method,
        );
        agree(
            Col::Persistence,
            row.persistence == head.persistence,
            "persistence",
            &Opt(row.persistence),
            &Opt(head.persistence),
        );
        s.members.push(rec);
    }

    // One instance is one real server: the same address, port and weight in every row.
    s.by_instance.clear();
    s.by_instance.extend_from_slice(&s.members);
    s.by_instance
        .sort_by(|a, b| (&a.row.instance, a.line).cmp(&(&b.row.instance, b.line)));
    s.instances.clear();
    for run in s
        .by_instance
        .chunk_by(|a, b| a.row.instance == b.row.instance)
    {
        let seen = run[0];
        for rec in &run[1..] {
            let (row, sr) = (&rec.row, &seen.row);
            let mut agree = |col: Col,
                             same: bool,
                             what: &str,
                             ours: &dyn Display,
                             theirs: &dyn Display| {
                if !same {
                    r.at(rec.line, col, ErrorKind::RealServerMismatch, format!(
                        "expected {what} {theirs} for instance {} as on line {} ({key}), found {ours}",
                        row.instance, seen.line
                    ));
                }
            };
            agree(Col::Rip, row.rip == sr.rip, "rip", &row.rip, &sr.rip);
            agree(
                Col::Rport,
                row.rport == sr.rport,
                "rport",
                &Opt(row.rport),
                &Opt(sr.rport),
            );
            agree(
                Col::Weight,
                row.weight == sr.weight,
                "weight",
                &row.weight,
                &sr.weight,
            );
            agree(
                Col::Check,
                row.check == sr.check,
                "check",
                &Opt(row.check.as_ref()),
                &Opt(sr.check.as_ref()),
            );
        }
        s.instances.push(seen);
    }

    // One address and port is one real server, whichever instance claims it first.
    s.by_dest.clear();
    s.by_dest.extend_from_slice(&s.instances);
    s.by_dest
        .sort_by_key(|rec| (rec.row.rip, rec.row.effective_rport(), rec.line));
    for run in s.by_dest.chunk_by(|a, b| {
        (a.row.rip, a.row.effective_rport()) == (b.row.rip, b.row.effective_rport())
    }) {
        for rec in &run[1..] {
            r.at(rec.line, Col::Rip, ErrorKind::DuplicateRealServer, format!(
                "real server {} is already instance {} on line {} of {key}; one address and port is one real server",
                SocketText(rec.row.rip, rec.row.effective_rport()), run[0].row.instance, run[0].line
            ));
        }
    }

    // Frontends, and who is listed behind each.
    s.by_frontend.clear();
    if matches!(key, ServiceKey::Fwmark { .. }) {
        s.by_frontend.extend_from_slice(&s.members);
        s.by_frontend.sort_by(|a, b| {
            (a.row.vip, a.row.vport, &a.row.instance, a.line).cmp(&(
                b.row.vip,
                b.row.vport,
                &b.row.instance,
                b.line,
            ))
        });
    } else {
        // An address service has one frontend (its key), so instance order is already
        // (frontend, instance, line) order.
        s.by_frontend.extend_from_slice(&s.by_instance);
    }
    let frontend_runs = s
        .by_frontend
        .chunk_by(|a, b| (a.row.vip, a.row.vport) == (b.row.vip, b.row.vport));
    let several = frontend_runs.clone().nth(1).is_some();
    for run in frontend_runs {
        let row = &run[0].row;
        let frontend_line = run.iter().map(|rec| rec.line).min().unwrap_or(run[0].line);
        frontends.push((row.proto, row.vip, row.vport, frontend_line, key));
        s.listed.clear();
        for listing in run.chunk_by(|a, b| a.row.instance == b.row.instance) {
            for rec in &listing[1..] {
                r.at(
                    rec.line,
                    Col::Instance,
                    ErrorKind::DuplicateRealServer,
                    format!(
                        "instance {} is listed twice for frontend {} {} (also line {})",
                        rec.row.instance,
                        rec.row.proto,
                        frontend_text(rec.row.vip, rec.row.vport),
                        listing[0].line
                    ),
                );
            }
            s.listed.push(listing[0]);
        }
        // An fwmark service sends every frontend to every real server, so each real server
        // must be listed behind each frontend: anything else cannot be expressed. Both lists
        // are in instance order, so the missing ones fall out of a merge.
        if several && s.listed.len() != s.instances.len() {
            let mut listed = s.listed.iter().peekable();
            for inst in &s.instances {
                if listed
                    .peek()
                    .is_some_and(|l| l.row.instance == inst.row.instance)
                {
                    listed.next();
                    continue;
                }
                r.at(frontend_line, Col::Instance, ErrorKind::MissingRealServer, format!(
                    "expected a row for instance {} (line {}) behind frontend {} {}: {key} sends every frontend to every real server, so list each real server once per frontend",
                    inst.row.instance, inst.line, row.proto, frontend_text(row.vip, row.vport)
                ));
            }
        }
    }
}

/// An optional column value as an operator reads it.
struct Opt<T>(Option<T>);

impl<T: Display> Display for Opt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("(empty)"),
        }
    }
}

fn frontend_text(vip: IpAddr, ports: PortRange) -> String {
    match vip {
        IpAddr::V6(a) => format!("[{a}]:{ports}"),
        IpAddr::V4(a) => format!("{a}:{ports}"),
    }
}

/// A (proto, vip, port) belongs to at most one frontend of one virtual service.
fn check_frontend_overlaps(mut all: Vec<FrontendAt>, r: &mut Reporter) {
    all.sort_unstable_by_key(|&(proto, vip, ports, line, _)| {
        (proto, vip, ports.first, ports.last, line)
    });
    // The frontend reaching furthest so far on the current (proto, vip): any later frontend
    // starting at or before its end overlaps it.
    let mut cover: Option<FrontendAt> = None;
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
