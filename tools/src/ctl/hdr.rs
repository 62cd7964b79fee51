//! `hdr print`: the percentile table of an `.hlog`, one row per tag, in ms; and the
//! per-tag sums `hdr plot` draws.
//!
//! Reading, tag filtering and the percentiles are `qos_control::hlog`'s
//! ([`summarize_hlog`], which sums each tag as it reads, in bounded memory; [`TagSum::row`]);
//! this module only selects several filters at once and formats. Values in our logs are
//! nanoseconds (`docs/OPERATIONS.md`).

use std::fmt::Write as _;
use std::path::Path;

pub use qos_control::hlog::TagSum;
use qos_control::hlog::{HlogSummary, Row, summarize_hlog, tag_matches};

use super::CtlError;

/// Nanoseconds per millisecond: the tables and plots are in ms.
pub const NS_PER_MS: f64 = 1e6;

/// The label of a row or curve: its tag, or `(untagged)`.
pub fn tag_label(tag: Option<&str>) -> &str {
    tag.unwrap_or("(untagged)")
}

/// What `hdr print` shows.
#[derive(Debug)]
pub struct Table {
    /// One row per selected tag, in tag order.
    pub rows: Vec<Row>,
    /// The line number of an incomplete last line that was skipped (a write cut short).
    pub torn_tail: Option<usize>,
}

/// `hdr print FILE [--tag TAG]...`: reads the log and returns its rows (values in the
/// log's unit: ns for ours), one per tag matching one of `filters` (all when empty). A
/// filter selects a tag equal to it or starting with it and a dot (`p7` selects
/// `p7.sojourn`), as `hlog::percentile_table` does.
///
/// # Errors
/// [`CtlError::Hlog`] naming the file and line; [`CtlError::NoData`] when no interval
/// matches the filters.
pub fn table(path: &Path, filters: &[String]) -> Result<Table, CtlError> {
    let summary = summarize(path, filters)?;
    if summary.sums.is_empty() {
        return Err(CtlError::NoData {
            path: path.to_owned(),
            tags: filters.to_vec(),
        });
    }
    Ok(Table {
        rows: summary.sums.into_iter().map(TagSum::row).collect(),
        torn_tail: summary.torn_tail,
    })
}

/// The table `hdr print` prints: tag, intervals, count, p50, p90, p99, p99.9 and max in
/// ms. Values are printed with 3 decimals (µs resolution), or 6 (ns) when a non-zero
/// value of the table is under 0.1 ms, one precision for the whole table.
pub fn format_table(rows: &[Row]) -> String {
    let fine = rows
        .iter()
        .flat_map(|r| [r.p50, r.p90, r.p99, r.p999, r.max])
        .any(|ns| ns > 0 && (ns as f64) < 0.1 * NS_PER_MS);
    let decimals = if fine { 6 } else { 3 };
    let width = rows
        .iter()
        .map(|r| tag_label(r.tag.as_deref()).len())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$} {:>9} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "tag", "intervals", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for r in rows {
        let _ = write!(
            out,
            "{:<width$} {:>9} {:>10}",
            tag_label(r.tag.as_deref()),
            r.intervals,
            r.count
        );
        for ns in [r.p50, r.p90, r.p99, r.p999, r.max] {
            let _ = write!(out, " {:>12.decimals$}", ns as f64 / NS_PER_MS);
        }
        out.push('\n');
    }
    out
}

/// Reads the log and sums the intervals of each tag selected by `filters` (see
/// [`table`]), in tag order.
///
/// # Errors
/// [`CtlError::Hlog`] naming the file and line.
pub fn summarize(path: &Path, filters: &[String]) -> Result<HlogSummary, CtlError> {
    Ok(summarize_hlog(path, |tag| {
        filters.is_empty() || filters.iter().any(|f| tag_matches(tag, Some(f)))
    })?)
}

/// The warning `hdr print` and `hdr plot` give for a skipped incomplete last line.
pub fn torn_tail_warning(path: &Path, line: usize) -> String {
    format!(
        "{}:{line}: the last line is incomplete (a write cut short) and was skipped; \
         every line before it was read",
        path.display()
    )
}
