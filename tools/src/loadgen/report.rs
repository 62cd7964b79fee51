//! The per-stream report: rows built from the sink's counts (and the sender's, when it ran
//! in the same process), printed as an aligned table or serialized as JSON.
//!
//! Columns (see `docs/LOADGEN.md`):
//!
//! * `sent`: datagrams the sender's socket accepted (`-` when the sender ran elsewhere);
//! * `recv`: unique datagrams received;
//! * `Mbit/s`: received unique bytes x 8 over the stream's active time (the plan's, when
//!   the sender ran here; else the span from the first to the last datagram received,
//!   stretched by one mean gap);
//! * `share%`: the stream's part of all unique bytes received;
//! * `loss`, `loss%`: `sent - recv` when the sender's counts are known, else
//!   `highest seq + 1 - recv` (datagrams lost after the last one received are then not
//!   seen); `loss%` is of `sent` (or of `highest seq + 1`);
//! * `reord`, `dup`: reordered and duplicate datagrams (see the sink);
//! * `p50`..`max`: one-way latency, ms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::LoadgenError;
use super::sender::SendReport;
use super::sink::{MAX_STREAMS, STREAM_LIMIT, SinkReport, StreamReceived};

/// Latency percentiles of a histogram of ns, in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of `hist` (values in ns); all zero for an empty histogram.
    pub fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Self {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p95_ms: ms(hist.value_at_quantile(0.95)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
        }
    }
}

/// One stream's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRow {
    /// Stream id.
    pub id: u64,
    /// Priority.
    pub priority: u8,
    /// Datagrams sent, when the sender ran in this process.
    pub sent: Option<u64>,
    /// Datagrams the plan asked for (see [`StreamSent::planned`]), when the sender ran
    /// in this process.
    ///
    /// [`StreamSent::planned`]: super::sender::StreamSent::planned
    #[serde(default)]
    pub planned: Option<u64>,
    /// Datagrams the sender's socket refused (0 when unknown).
    pub send_errors: u64,
    /// Unique datagrams received.
    pub received: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Received throughput over the active time, Mbit/s (10^6 bit/s).
    pub throughput_mbps: f64,
    /// Share of all unique bytes received, %.
    pub share_pct: f64,
    /// Datagrams lost (see the module docs for how).
    pub loss: u64,
    /// `loss` as a % of the datagrams expected.
    pub loss_pct: f64,
    /// Reordered datagrams.
    pub reordered: u64,
    /// Duplicate datagrams.
    pub duplicates: u64,
    /// With the sender in this process: unique datagrams received beyond what it sent
    /// (all of them for a stream it did not send). Another sender reached the sink;
    /// they are not in `loss`, and may hide as many real losses.
    #[serde(default)]
    pub unexpected: u64,
    /// One-way latency.
    pub latency: LatencySummary,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// How long the sender ran (when it ran in this process), else how long the sink
    /// received, s.
    pub duration_s: f64,
    /// `"sender_counts"` when loss is `sent - received`, `"highest_seq"` when it is
    /// `highest seq + 1 - received` (the sender ran in another process).
    pub loss_basis: LossBasis,
    /// One row per stream sent or received, by id.
    pub streams: Vec<StreamRow>,
    /// Unique bytes received, all streams.
    pub total_bytes: u64,
    /// Received throughput of all streams over `duration_s`, Mbit/s.
    pub total_mbps: f64,
    /// Datagrams the sender's socket refused, by error kind (`ConnectionRefused`, ...),
    /// all streams (empty when the sender ran elsewhere).
    #[serde(default)]
    pub send_errors: BTreeMap<String, u64>,
    /// Datagrams that were not load-generator headers, by reason (and `stream_limit`:
    /// datagrams of streams past the [`MAX_STREAMS`] the sink tracks).
    pub malformed: BTreeMap<String, u64>,
    /// Latencies that came out negative and were counted as 0.
    pub negative_latency: u64,
    /// Why the `.hlog` stopped being written, if it did (the counts above are whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlog_error: Option<String>,
}

/// How loss was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossBasis {
    /// `sent - received`, from the sender's own counts.
    SenderCounts,
    /// `highest seq + 1 - received`, from the sequence numbers alone.
    HighestSeq,
}

impl Report {
    /// Builds the report from the sink's counts and, if the sender ran in this process,
    /// its counts.
    pub fn new(sink: &SinkReport, sent: Option<&SendReport>) -> Self {
        let received: BTreeMap<u64, &StreamReceived> =
            sink.streams.iter().map(|s| (s.id, s)).collect();
        let total_bytes: u64 = sink.streams.iter().map(|s| s.bytes).sum();
        let mut ids: Vec<u64> = received.keys().copied().collect();
        if let Some(sent) = sent {
            ids.extend(sent.streams.iter().map(|s| s.id));
        }
        ids.sort_unstable();
        ids.dedup();
        let streams = ids
            .into_iter()
            .map(|id| {
                let tx = sent.and_then(|r| r.streams.iter().find(|s| s.id == id));
                let rx = received.get(&id).copied();
                row(id, sent.is_some(), tx, rx, total_bytes)
            })
            .collect();
        // The sender's run when known (the plan's duration unless stopped early): the
        // sink's drain after it carries no offered load.
        let duration_s = sent.map_or(sink.elapsed_ns, |s| s.elapsed_ns) as f64 / 1e9;
        let mut send_errors = BTreeMap::<String, u64>::new();
        for (kind, n) in sent.iter().flat_map(|s| &s.streams).flat_map(|s| &s.errors) {
            *send_errors.entry(kind.clone()).or_default() += n;
        }
        Self {
            duration_s,
            loss_basis: if sent.is_some() {
                LossBasis::SenderCounts
            } else {
                LossBasis::HighestSeq
            },
            streams,
            total_bytes,
            total_mbps: mbps(total_bytes, duration_s),
            send_errors,
            malformed: sink.malformed.clone(),
            negative_latency: sink.negative_latency,
            hlog_error: sink.hlog_error.clone(),
        }
    }

    /// The report as an aligned text table, a totals line and the malformed counts.
    pub fn table(&self) -> String {
        let mut rows = vec![
            [
                "id", "prio", "sent", "recv", "Mbit/s", "share%", "loss", "loss%", "reord", "dup",
                "p50ms", "p95ms", "p99ms", "maxms",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &self.streams {
            rows.push(vec![
                r.id.to_string(),
                r.priority.to_string(),
                r.sent.map_or_else(|| "-".into(), |s| s.to_string()),
                r.received.to_string(),
                format!("{:.3}", r.throughput_mbps),
                format!("{:.2}", r.share_pct),
                r.loss.to_string(),
                format!("{:.2}", r.loss_pct),
                r.reordered.to_string(),
                r.duplicates.to_string(),
                format!("{:.3}", r.latency.p50_ms),
                format!("{:.3}", r.latency.p95_ms),
                format!("{:.3}", r.latency.p99_ms),
                format!("{:.3}", r.latency.max_ms),
            ]);
        }
        let mut out = align(&rows);
        let _ = writeln!(
            out,
            "total: {} bytes in {:.3} s, {:.3} Mbit/s; loss from {}",
            self.total_bytes,
            self.duration_s,
            self.total_mbps,
            match self.loss_basis {
                LossBasis::SenderCounts => "the sender's counts",
                LossBasis::HighestSeq => "sequence numbers (highest + 1 - received)",
            }
        );
        let (planned, handed) = self
            .streams
            .iter()
            .filter_map(|r| Some((r.planned?, r.sent? + r.send_errors)))
            .fold((0, 0), |(p, h), (rp, rh)| (p + rp, h + rh));
        if handed < planned {
            let _ = writeln!(out, "{}", fell_short(handed, planned));
        }
        let unexpected: u64 = self.streams.iter().map(|r| r.unexpected).sum();
        if unexpected > 0 {
            let ids: Vec<String> = self
                .streams
                .iter()
                .filter(|r| r.unexpected > 0)
                .map(|r| r.id.to_string())
                .collect();
            let _ = writeln!(
                out,
                "unexpected: {unexpected} datagrams more than the sender sent (streams {}): \
                 another sender reached the sink; not in loss, they may hide as many losses",
                ids.join(" ")
            );
        }
        if !self.send_errors.is_empty() {
            let _ = writeln!(
                out,
                "refused by the sender's socket (not in sent): {}",
                list(&self.send_errors)
            );
        }
        let (limited, malformed): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .malformed
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .partition(|(k, _)| k == STREAM_LIMIT);
        if !malformed.is_empty() {
            let _ = writeln!(out, "not load-generator datagrams: {}", list(&malformed));
        }
        if let Some(n) = limited.get(STREAM_LIMIT) {
            let _ = writeln!(
                out,
                "datagrams of streams past the sink's limit of {MAX_STREAMS} streams (not counted): {n}"
            );
        }
        if self.negative_latency > 0 {
            let _ = writeln!(
                out,
                "negative latencies counted as 0: {} (sender and sink clocks disagree)",
                self.negative_latency
            );
        }
        out
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and maps with string keys always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// `kind=n kind=n ...`.
fn list(counts: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    items.join(" ")
}

/// The line saying the sender handed fewer datagrams to its socket than planned.
fn fell_short(handed: u64, planned: u64) -> String {
    format!(
        "sender fell short: {handed} of {planned} planned datagrams (the host could not keep up)"
    )
}

/// One stream's row; `sender_here` when the sender ran in this process (loss from its
/// counts, and what it did not send is unexpected).
fn row(
    id: u64,
    sender_here: bool,
    tx: Option<&super::sender::StreamSent>,
    rx: Option<&StreamReceived>,
    total_bytes: u64,
) -> StreamRow {
    let received = rx.map_or(0, |r| r.packets);
    let bytes = rx.map_or(0, |r| r.bytes);
    let expected = match (tx, rx) {
        (Some(t), _) => t.packets,
        (None, _) if sender_here => 0,
        (None, Some(r)) => r.highest_seq.saturating_add(1),
        (None, None) => 0,
    };
    let loss = expected.saturating_sub(received);
    let unexpected = if sender_here {
        received.saturating_sub(expected)
    } else {
        0
    };
    let active_s = match (tx, rx) {
        // The sender's active time already ends at its stop.
        (Some(t), _) => t.active_ns as f64 / 1e9,
        (None, Some(r)) => received_span_s(r),
        (None, None) => 0.0,
    };
    StreamRow {
        id,
        priority: tx.map_or_else(|| rx.map_or(0, |r| r.priority), |t| t.priority),
        sent: tx.map(|t| t.packets),
        planned: tx.map(|t| t.planned),
        send_errors: tx.map_or(0, super::sender::StreamSent::error_count),
        received,
        bytes,
        throughput_mbps: mbps(bytes, active_s),
        share_pct: percent(bytes, total_bytes),
        loss,
        loss_pct: percent(loss, expected),
        reordered: rx.map_or(0, |r| r.reordered),
        duplicates: rx.map_or(0, |r| r.duplicates),
        unexpected,
        latency: rx
            .map(|r| LatencySummary::of(&r.latency))
            .unwrap_or_default(),
    }
}

/// First to last arrival, plus one mean gap (n datagrams span n - 1 gaps).
fn received_span_s(r: &StreamReceived) -> f64 {
    let span = (r.last_recv_ns - r.first_recv_ns) as f64 / 1e9;
    if r.packets < 2 || span <= 0.0 {
        return 0.0;
    }
    span * r.packets as f64 / (r.packets - 1) as f64
}

fn mbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e6
    } else {
        0.0
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Right-aligns every column to its widest cell.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:>w$}"))
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// The sender's counts as a table (for `qos-loadgen send`).
pub fn send_table(report: &SendReport) -> String {
    let mut rows = vec![
        ["id", "prio", "planned", "sent", "bytes", "Mbit/s", "errors"]
            .map(String::from)
            .to_vec(),
    ];
    for s in &report.streams {
        let active_s = s.active_ns as f64 / 1e9;
        let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(vec![
            s.id.to_string(),
            s.priority.to_string(),
            s.planned.to_string(),
            s.packets.to_string(),
            s.bytes.to_string(),
            format!("{:.3}", mbps(s.bytes, active_s)),
            if errors.is_empty() {
                "0".into()
            } else {
                errors.join(" ")
            },
        ]);
    }
    let mut out = align(&rows);
    let _ = writeln!(
        out,
        "sent for {:.3} s{}",
        report.elapsed_ns as f64 / 1e9,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    let planned: u64 = report.streams.iter().map(|s| s.planned).sum();
    let missed: u64 = report.streams.iter().map(|s| s.missed()).sum();
    if missed > 0 {
        let _ = writeln!(out, "{}", fell_short(planned - missed, planned));
    }
    out
}

/// Writes `text` to `path`.
///
/// # Errors
/// [`LoadgenError::Write`] naming the file.
pub fn write_file(path: &Path, text: &str) -> Result<(), LoadgenError> {
    qos_control::files::create_write(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|source| LoadgenError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_report(malformed: &[(&str, u64)]) -> SinkReport {
        SinkReport {
            start_ns: 0,
            elapsed_ns: 1_000_000_000,
            streams: Vec::new(),
            per_priority: Vec::new(),
            malformed: malformed.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
            negative_latency: 0,
            hlog_error: None,
        }
    }

    fn received(id: u64, packets: u64, highest_seq: u64) -> StreamReceived {
        StreamReceived {
            id,
            priority: 7,
            packets,
            bytes: packets * 100,
            highest_seq,
            duplicates: 0,
            reordered: 0,
            first_recv_ns: 0,
            last_recv_ns: 1_000_000,
            latency: Histogram::new(3).expect("histogram"),
        }
    }

    fn sent(id: u64, packets: u64) -> super::super::sender::StreamSent {
        super::super::sender::StreamSent {
            id,
            priority: 7,
            packets,
            bytes: packets * 100,
            active_ns: 1_000_000_000,
            planned: packets,
            errors: BTreeMap::new(),
        }
    }

    /// Control-API red team: in `run`, datagrams another sender put on the sink's port
    /// showed as `sent 200 recv 210 loss 0` without a word, and a stream this run never
    /// sent got a loss from its sequence numbers under "loss from the sender's counts".
    /// They are counted `unexpected`, named in the table, and kept out of loss.
    #[test]
    fn datagrams_the_sender_did_not_send_are_unexpected_not_loss() {
        let mut sink = sink_report(&[]);
        sink.streams = vec![
            received(1, 210, 1009),
            received(2, 190, 199),
            received(4242, 1, 5),
        ];
        let send = SendReport {
            start_ns: 0,
            elapsed_ns: 1_000_000_000,
            stopped_early: false,
            streams: vec![sent(1, 200), sent(2, 200)],
        };
        let report = Report::new(&sink, Some(&send));
        let by_id = |id| report.streams.iter().find(|r| r.id == id).expect("row");
        assert_eq!((by_id(1).loss, by_id(1).unexpected), (0, 10));
        assert_eq!((by_id(2).loss, by_id(2).unexpected), (10, 0));
        assert_eq!((by_id(4242).loss, by_id(4242).unexpected), (0, 1));
        for r in &report.streams {
            assert_eq!(
                r.sent.unwrap_or(0) + r.unexpected,
                r.received + r.loss,
                "{r:?}"
            );
        }
        let table = report.table();
        assert!(
            table.contains("unexpected: 11 datagrams more than the sender sent (streams 1 4242)"),
            "{table}"
        );
        // Without the sender here, loss comes from sequence numbers; nothing is unexpected.
        let report = Report::new(&sink, None);
        assert_eq!(report.streams.iter().map(|r| r.unexpected).sum::<u64>(), 0);
        assert_eq!(
            report
                .streams
                .iter()
                .find(|r| r.id == 4242)
                .expect("row")
                .loss,
            5
        );
    }

    #[test]
    fn datagrams_past_the_stream_limit_are_not_called_foreign() {
        let table = Report::new(&sink_report(&[(STREAM_LIMIT, 3), ("truncated", 1)]), None).table();
        assert!(
            table.contains("\nnot load-generator datagrams: truncated=1\n"),
            "{table}"
        );
        assert!(
            table.contains(
                "\ndatagrams of streams past the sink's limit of 10000 streams (not counted): 3\n"
            ),
            "{table}"
        );
        let table = Report::new(&sink_report(&[(STREAM_LIMIT, 2)]), None).table();
        assert!(!table.contains("not load-generator"), "{table}");
    }
}
