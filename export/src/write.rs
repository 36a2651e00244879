//! Writing an export: the only producer of export text. Rows are validated first, so ADMIN can
//! never publish a file a gateway would reject.

use crate::error::ExportErrors;
use crate::row::{Col, ExportRow, COLUMNS};
use crate::validate::validate_rows;
use crate::version::FormatVersion;
use std::io::Write;

/// Line number of the first data row in written output (directive, then header).
pub(crate) const FIRST_ROW_LINE: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to write an invalid export:\n{0}")]
    Invalid(ExportErrors),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Validates `rows` and writes them in the canonical form: version directive, header in
/// canonical column order, one line per row in the given order.
///
/// The file declares the oldest version that can say what the rows say: optional columns
/// nobody uses are left out (no `check` column when every row takes the gateway's default),
/// so a gateway that predates them reads such a file without a warning.
pub fn write(rows: &[ExportRow], out: impl Write) -> Result<(), WriteError> {
    validate_rows(rows).map_err(WriteError::Invalid)?;
    let columns: Vec<Col> = Col::ALL
        .into_iter()
        .filter(|&c| c.is_required() || rows.iter().any(|r| has_value(r, c)))
        .collect();
    let version = columns
        .iter()
        .map(|c| c.since())
        .max()
        .unwrap_or(FormatVersion::FIRST);
    let mut out = std::io::BufWriter::new(out);
    writeln!(out, "{}", version.directive())?;
    let mut w = csv::WriterBuilder::new().from_writer(out);
    let io = |e: csv::Error| WriteError::Io(e.into());
    w.write_record(columns.iter().map(|c| c.name()))
        .map_err(io)?;
    let mut buf = String::new();
    for row in rows {
        w.write_record(fields(row, &mut buf).take(columns.len()))
            .map_err(io)?;
    }
    w.flush()?;
    Ok(())
}

/// Convenience for callers that want the text.
pub fn to_string(rows: &[ExportRow]) -> Result<String, WriteError> {
    let mut out = Vec::new();
    write(rows, &mut out)?;
    // Every field is ASCII by construction (validated names, numbers, addresses).
    String::from_utf8(out).map_err(|e| WriteError::Io(std::io::Error::other(e)))
}

/// Whether an optional column has something to say for `row`.
fn has_value(row: &ExportRow, col: Col) -> bool {
    match col {
        Col::Check => row.check.is_some(),
        _ => true,
    }
}

/// The fields of `row` in canonical column order (optional columns last, so a writer that
/// leaves them out takes a prefix).
fn fields<'a>(row: &ExportRow, buf: &'a mut String) -> impl Iterator<Item = &'a str> {
    use std::fmt::Write as _;
    buf.clear();
    let mut ends = [0usize; COLUMNS];
    for (i, col) in Col::ALL.into_iter().enumerate() {
        let _ = match col {
            Col::Service => write!(buf, "{}", row.service),
            Col::Instance => write!(buf, "{}", row.instance),
            Col::Proto => write!(buf, "{}", row.proto),
            Col::Vip => write!(buf, "{}", row.vip),
            Col::Vport => write!(buf, "{}", row.vport),
            Col::Fwmark => row.fwmark.map_or(Ok(()), |m| write!(buf, "{m}")),
            Col::Rip => write!(buf, "{}", row.rip),
            Col::Rport => row.rport.map_or(Ok(()), |p| write!(buf, "{p}")),
            Col::Weight => write!(buf, "{}", row.weight),
            Col::Scheduler => write!(buf, "{}", row.scheduler),
            Col::Method => write!(buf, "{}", row.method),
            Col::Persistence => row.persistence.map_or(Ok(()), |p| write!(buf, "{p}")),
            Col::Check => row.check.as_ref().map_or(Ok(()), |c| write!(buf, "{c}")),
        };
        ends[i] = buf.len();
    }
    let buf: &'a str = buf;
    (0..COLUMNS).map(move |i| &buf[if i == 0 { 0 } else { ends[i - 1] }..ends[i]])
}
