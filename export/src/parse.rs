//! Reading an export: bytes → version directive → header → typed rows, collecting every field
//! error with its location. Cross-row rules live in `validate`.

use crate::check::parse_check;
use crate::error::{ErrorKind, ExportError, ExportErrors, Quoted};
use crate::fields::{
    parse_fwmark, parse_ip, parse_persistence, parse_rport, parse_weight, InstanceId, Method,
    PortRange, Proto, Scheduler, ServiceType,
};
use crate::row::{Col, ExportRow, Layout, Record, COLUMNS};
use crate::version::FormatVersion;
use crate::Export;

/// Parses and fully validates an export. On any error nothing is returned but the errors:
/// a partially valid export must never reach a renderer.
pub fn parse(input: &[u8]) -> Result<Export, ExportErrors> {
    let text = std::str::from_utf8(input).map_err(|e| utf8_error(input, e))?;
    // Spreadsheets like to prepend a byte-order mark; it carries no meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let version = FormatVersion::from_directive(text)?;
    // csv reads a final comment line without a line break as an empty record; with the break
    // it is skipped like any other comment. Line numbers do not change.
    let terminated;
    let text = if text.is_empty() || text.ends_with('\n') {
        text
    } else {
        terminated = format!("{text}\n");
        terminated.as_str()
    };

    let mut reader = csv_reader(text);
    let mut errors = ExportErrors::default();
    let mut record = csv::StringRecord::new();

    let header = match reader.read_record(&mut record) {
        Ok(true) => Header::read(&record, line_of(text, &record), version, &mut errors),
        Ok(false) => {
            errors.push(ExportError {
                line: text.lines().count().max(1) as u64,
                column: None,
                kind: ErrorKind::MissingHeader,
                message: format!(
                    "expected a header row naming the columns ({})",
                    Col::required_names()
                ),
            });
            return Err(errors);
        }
        Err(e) => return Err(csv_error(e)),
    };
    let Some(header) = header else {
        return Err(errors.sorted());
    };

    let body_start = reader.position().byte() as usize;
    let chunks = split_body(text, body_start);
    // Parse the chunks side by side; the first on this thread.
    let parsed: Vec<(Vec<Record>, ExportErrors)> = std::thread::scope(|scope| {
        let header = &header;
        let others: Vec<_> = chunks[1..]
            .iter()
            .map(|&(chunk, line)| scope.spawn(move || parse_rows(header, chunk, line)))
            .collect();
        let mut parsed = vec![parse_rows(header, chunks[0].0, chunks[0].1)];
        for handle in others {
            parsed.push(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        parsed
    });
    let mut records = Vec::with_capacity(parsed.iter().map(|(r, _)| r.len()).sum());
    for (rows, chunk_errors) in parsed {
        records.extend(rows);
        errors.truncated |= chunk_errors.truncated;
        for e in chunk_errors.errors {
            errors.push(e);
        }
    }
    // Cross-row rules run on the rows that parsed, so one pass reports both kinds of error.
    let service_order = crate::validate::validate_records(&records, &header.layout, &mut errors);
    if !errors.is_empty() {
        return Err(errors.sorted());
    }
    Ok(Export {
        version,
        records,
        warnings: header.warnings,
        service_order,
    })
}

/// Below this many bytes one thread parses everything: splitting would cost more than it saves.
const PARALLEL_MIN_BYTES: usize = 512 * 1024;

/// Splits the data rows at line boundaries into one chunk per core (at most 4), each with the
/// line number it starts on. Quoted fields may contain newlines, so a body with any quote is
/// left whole rather than risk splitting inside one.
fn split_body(text: &str, start: usize) -> Vec<(&str, u64)> {
    let body = &text[start..];
    let first_line = 1 + text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    let parts = if body.len() < PARALLEL_MIN_BYTES || body.contains('"') {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let mut chunks = Vec::with_capacity(parts);
    let (mut from, mut line) = (0, first_line);
    for i in 1..parts {
        let target = (body.len() * i / parts).max(from);
        let Some(nl) = body.as_bytes()[target..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let to = target + nl + 1;
        chunks.push((&body[from..to], line));
        line += body.as_bytes()[from..to]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        from = to;
    }
    chunks.push((&body[from..], line));
    chunks
}

/// Records of `text`, header included, comment lines skipped; the field count is checked by
/// us (against the header), so the reader is flexible.
fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .from_reader(text.as_bytes())
}

/// Parses data rows of one chunk whose first byte is on line `first_line`.
fn parse_rows(header: &Header, chunk: &str, first_line: u64) -> (Vec<Record>, ExportErrors) {
    let mut reader = csv_reader(chunk);
    let mut errors = ExportErrors::default();
    let mut record = csv::StringRecord::new();
    // One row per line, roughly: sizing up front saves regrowing a 10 MB vector at 100k rows.
    let mut records = Vec::with_capacity(chunk.bytes().filter(|&b| b == b'\n').count() + 1);
    let mut service_types = ServiceTypes::default();
    let offset = first_line - 1;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {
                let line = offset + line_of(chunk, &record);
                if let Some(row) = header.row(&record, line, &mut service_types, &mut errors) {
                    records.push(Record { line, row });
                }
                if errors.is_full() {
                    errors.truncated = true;
                    break;
                }
            }
            Ok(false) => break,
            Err(e) => {
                let mut located = csv_error(e);
                for err in &mut located.errors {
                    err.line += offset;
                }
                errors.errors.append(&mut located.errors);
                break;
            }
        }
    }
    (records, errors)
}

/// The line a record really starts on. csv reports where its read began, before it skipped
/// comment and blank lines, so those are stepped over here the same way csv does.
fn line_of(text: &str, record: &csv::StringRecord) -> u64 {
    let Some(pos) = record.position() else {
        return 0;
    };
    let bytes = text.as_bytes();
    let (mut at, mut line) = (pos.byte() as usize, pos.line());
    while at < bytes.len() && matches!(bytes[at], b'#' | b'\n' | b'\r') {
        // csv takes a bare `\r` as a record terminator, but lines are counted as editors,
        // sed and grep count them: by `\n` only, so a bare `\r` skips without a new line.
        let (skip, lines) = match bytes[at] {
            b'\r' if bytes.get(at + 1) == Some(&b'\n') => (2, 1),
            b'\r' => (1, 0),
            b'\n' => (1, 1),
            _ => bytes[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or((bytes.len() - at, 1), |i| (i + 1, 1)),
        };
        at += skip;
        line += lines;
    }
    line
}

fn utf8_error(input: &[u8], e: std::str::Utf8Error) -> ExportErrors {
    let before = &input[..e.valid_up_to()];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Characters, not bytes, before the bad byte: what an editor shows as the column.
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    let mut errors = ExportErrors::default();
    errors.push(ExportError {
        line,
        column: None,
        kind: ErrorKind::InvalidUtf8,
        message: format!(
            "character {col}: expected UTF-8 text, found byte 0x{:02x}",
            input[e.valid_up_to()]
        ),
    });
    errors
}

fn csv_error(e: csv::Error) -> ExportErrors {
    let line = e.position().map_or(0, |p| p.line());
    let mut errors = ExportErrors::default();
    errors.push(ExportError {
        line,
        column: None,
        kind: ErrorKind::Csv,
        message: format!("malformed CSV: {e}"),
    });
    errors
}

/// The header row: which field holds which column.
struct Header {
    layout: Layout,
    width: usize,
    warnings: Vec<ExportError>,
}

impl Header {
    fn read(
        record: &csv::StringRecord,
        line: u64,
        version: FormatVersion,
        errors: &mut ExportErrors,
    ) -> Option<Header> {
        let mut positions = [0usize; COLUMNS];
        let mut warnings = Vec::new();
        let before = errors.len();
        for (i, name) in record.iter().enumerate() {
            let column = Some(crate::error::Column {
                index: i + 1,
                name: name.to_owned(),
            });
            match Col::from_name(name) {
                Some(col) if positions[col as usize] != 0 => errors.push(ExportError {
                    line,
                    column,
                    kind: ErrorKind::DuplicateColumn,
                    message: format!(
                        "column {name:?} appears twice (first as column {})",
                        positions[col as usize]
                    ),
                }),
                // A column newer than the file's declared version is read all the same:
                // this reader knows what it means.
                Some(col) => positions[col as usize] = i + 1,
                None => {
                    let e = ExportError {
                        line,
                        column,
                        kind: ErrorKind::UnknownColumn,
                        message: format!(
                            "unknown column {name:?}; version {} has {}",
                            FormatVersion::CURRENT,
                            Col::known_names()
                        ),
                    };
                    if version.ignores_unknown_columns() {
                        warnings.push(ExportError {
                            message: format!(
                                "ignoring column {name:?}: the file declares version {version}, newer than this reader's {}",
                                FormatVersion::CURRENT
                            ),
                            ..e
                        });
                    } else {
                        errors.push(e);
                    }
                }
            }
        }
        for col in Col::ALL {
            if col.is_required() && positions[col as usize] == 0 {
                errors.push(ExportError {
                    line,
                    column: None,
                    kind: ErrorKind::MissingColumn,
                    message: format!("header lacks the required column {:?}", col.name()),
                });
            }
        }
        (errors.len() == before).then(|| Header {
            layout: Layout::from_positions(positions),
            width: record.len(),
            warnings,
        })
    }

    /// Parses one data record; every bad field is reported, not just the first.
    fn row(
        &self,
        record: &csv::StringRecord,
        line: u64,
        service_types: &mut ServiceTypes,
        errors: &mut ExportErrors,
    ) -> Option<ExportRow> {
        if record.len() != self.width {
            errors.push(ExportError {
                line,
                column: None,
                kind: ErrorKind::FieldCount,
                message: format!(
                    "expected {} fields as in the header, found {}",
                    self.width,
                    record.len()
                ),
            });
            return None;
        }
        let before = errors.len();
        // Each field is parsed even after an earlier one failed, so one pass reports them all.
        let service = self.field(
            record,
            line,
            Col::Service,
            |s| service_types.intern(s),
            errors,
        );
        let instance = self.field(record, line, Col::Instance, InstanceId::parse, errors);
        let proto = self.field(record, line, Col::Proto, Proto::parse, errors);
        let vip = self.field(
            record,
            line,
            Col::Vip,
            |s| parse_ip(s, "the virtual (external) IP"),
            errors,
        );
        let vport = self.field(record, line, Col::Vport, PortRange::parse, errors);
        let fwmark = self.field(record, line, Col::Fwmark, parse_fwmark, errors);
        let rip = self.field(
            record,
            line,
            Col::Rip,
            |s| parse_ip(s, "the real server's IP"),
            errors,
        );
        let rport = self.field(record, line, Col::Rport, parse_rport, errors);
        let weight = self.field(record, line, Col::Weight, parse_weight, errors);
        let scheduler = self.field(record, line, Col::Scheduler, Scheduler::parse, errors);
        let method = self.field(record, line, Col::Method, Method::parse, errors);
        let persistence = self.field(record, line, Col::Persistence, parse_persistence, errors);
        let check = match self.layout.index(Col::Check) {
            Some(_) => self.field(record, line, Col::Check, parse_check, errors),
            None => Some(None),
        };
        if errors.len() != before {
            return None;
        }
        Some(ExportRow {
            service: service?,
            instance: instance?,
            proto: proto?,
            vip: vip?,
            vport: vport?,
            fwmark: fwmark?,
            rip: rip?,
            rport: rport?,
            weight: weight?,
            scheduler: scheduler?,
            method: method?,
            persistence: persistence?,
            check: check?,
        })
    }

    /// Parses the field of `col`, reporting stray whitespace or a bad value at its location.
    fn field<T>(
        &self,
        record: &csv::StringRecord,
        line: u64,
        col: Col,
        parse: impl FnOnce(&str) -> Result<T, String>,
        errors: &mut ExportErrors,
    ) -> Option<T> {
        let text = self
            .layout
            .index(col)
            .and_then(|i| record.get(i))
            .unwrap_or("");
        let (kind, message) =
            if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
                (
                    ErrorKind::Whitespace,
                    format!(
                        "expected no leading or trailing spaces, found {}",
                        Quoted(text)
                    ),
                )
            } else {
                match parse(text) {
                    Ok(value) => return Some(value),
                    Err(expected) => (
                        ErrorKind::BadValue,
                        format!("expected {expected}, found {}", Quoted(text)),
                    ),
                }
            };
        errors.push(ExportError {
            line,
            column: Some(self.layout.column(col)),
            kind,
            message,
        });
        None
    }
}

/// The few distinct service types of an export, shared by all their rows. Rows come grouped
/// by service, so the previous row's type is checked before the set.
#[derive(Default)]
struct ServiceTypes {
    last: Option<ServiceType>,
    all: std::collections::HashSet<ServiceType>,
}

impl ServiceTypes {
    fn intern(&mut self, s: &str) -> Result<ServiceType, String> {
        if let Some(t) = self.last.as_ref().filter(|t| t.as_str() == s) {
            return Ok(t.clone());
        }
        let t = match self.all.get(s) {
            Some(t) => t.clone(),
            None => {
                let t = ServiceType::parse(s)?;
                self.all.insert(t.clone());
                t
            }
        };
        self.last = Some(t.clone());
        Ok(t)
    }
}
