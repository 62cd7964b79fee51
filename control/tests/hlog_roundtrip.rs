//! O4: `.hlog` interval logs written by `HlogWriter` read back exactly, by the
//! `hdrhistogram` crate's own iterator and by `read_hlog`, and in the standard encoding.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use qos_control::hlog::{
    self, COST_TAG, HlogError, HlogWriter, Interval, percentile_table, read_hlog, sojourn_tag,
};

/// A fresh temp directory, unique to this process and call (removed by the test when it
/// passes).
fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("qos-hlog-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    for v in values {
        h.record(v).unwrap();
    }
    h
}

/// 1 us .. 1 ms in 1 us steps, plus one 40 ms outlier: 1001 values.
fn sojourn_a() -> Histogram<u64> {
    hist((1..=1000).map(|i| i * 1_000).chain([40_000_000]))
}

/// 5 us .. 5 ms in 5 us steps, plus ten 250 ms values.
fn sojourn_b() -> Histogram<u64> {
    hist((1..=1000).map(|i| i * 5_000).chain([250_000_000; 10]))
}

/// Scheduling cost: 20..=219 ns, twice each, plus a 3 us spike.
fn cost() -> Histogram<u64> {
    hist((20..220).flat_map(|v| [v, v]).chain([3_000]))
}

/// 1700000000.123456789 s: Tue Nov 14 22:13:20 UTC 2023.
fn start() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
}

/// Writes the three intervals: p7 at +0 s and +1 s, cost at +0 s, each 1 s long.
fn write_log(path: &std::path::Path) -> [(String, f64, Histogram<u64>); 3] {
    let base = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let written = [
        (sojourn_tag(7), 0.0, sojourn_a()),
        (COST_TAG.to_owned(), 0.0, cost()),
        (sojourn_tag(7), 1.0, sojourn_b()),
    ];
    let mut w = HlogWriter::create(path, start()).unwrap();
    assert_eq!(w.base_time(), base);
    for (tag, offset, h) in &written {
        let at = base + Duration::from_secs_f64(*offset);
        w.write_interval(tag, at, Duration::from_secs(1), h)
            .unwrap();
    }
    w.finish().unwrap();
    written
}

fn assert_same(decoded: &Histogram<u64>, original: &Histogram<u64>, what: &str) {
    assert_eq!(decoded.len(), original.len(), "{what}: count");
    assert_eq!(decoded.min(), original.min(), "{what}: min");
    assert_eq!(decoded.max(), original.max(), "{what}: max");
    for q in [0.5, 0.99, 0.999] {
        assert_eq!(
            decoded.value_at_quantile(q),
            original.value_at_quantile(q),
            "{what}: q{q}"
        );
    }
    // Every bucket, not only the quantiles above.
    let d: Vec<_> = decoded
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let o: Vec<_> = original
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    assert_eq!(d, o, "{what}: buckets");
}

#[test]
fn header_is_the_java_writers() {
    let dir = temp_dir("header");
    let path = dir.join("sojourn.hlog");
    write_log(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6 + 3, "{text}");
    assert_eq!(
        lines[0],
        format!("#[Logged with qos-control {}]", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(lines[1], "#[Histogram log format version 1.3]");
    assert_eq!(
        lines[2],
        "#[StartTime: 1700000000.123 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]"
    );
    assert_eq!(
        lines[3],
        "#[BaseTime: 1700000000.123 (seconds since epoch)]"
    );
    assert_eq!(lines[4], "#[MaxValueDivisor: 1000000.000]");
    assert_eq!(
        lines[5],
        r#""StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram""#
    );
    assert_eq!(lines[5], hlog::LEGEND);
    // Interval lines: Tag=<tag>,<offset>,<length>,<max in ms>,<base64>.
    let fields: Vec<Vec<&str>> = lines[6..].iter().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        fields[0][..4],
        ["Tag=p7.sojourn", "0.000", "1.000", "40.010"]
    );
    assert_eq!(fields[1][..4], ["Tag=cost", "0.000", "1.000", "0.003"]);
    assert_eq!(
        fields[2][..4],
        ["Tag=p7.sojourn", "1.000", "1.000", "250.085"]
    );
    for f in &fields {
        assert_eq!(f.len(), 5);
        assert!(
            f[4].starts_with("HISTF"),
            "V2 compressed payloads start with HISTF: {}",
            f[4]
        );
    }
    // 40_000_000 ns is recorded in a bucket whose highest equivalent is 40_009_727 ns.
    assert_eq!(sojourn_a().max(), 40_009_727);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_crates_iterator_reads_it_back_exactly() {
    let dir = temp_dir("crate-iter");
    let path = dir.join("sojourn.hlog");
    let written = write_log(&path);
    let bytes = std::fs::read(&path).unwrap();
    let mut deser = Deserializer::new();
    let mut times = Vec::new();
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.unwrap() {
            LogEntry::StartTime(d) => times.push(("start", d)),
            LogEntry::BaseTime(d) => times.push(("base", d)),
            LogEntry::Interval(h) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .unwrap();
                let decoded: Histogram<u64> = deser.deserialize(&mut raw.as_slice()).unwrap();
                intervals.push((
                    h.tag().unwrap().as_str().to_owned(),
                    h.start_timestamp(),
                    h.duration(),
                    h.max(),
                    decoded,
                ));
            }
        }
    }
    let at = Duration::from_millis(1_700_000_000_123);
    assert_eq!(times, [("start", at), ("base", at)]);
    assert_eq!(intervals.len(), 3);
    for ((tag, offset, original), (rtag, rstart, rlen, rmax, decoded)) in
        written.iter().zip(&intervals)
    {
        assert_eq!(tag, rtag);
        assert_eq!(*rstart, Duration::from_secs_f64(*offset));
        assert_eq!(*rlen, Duration::from_secs(1));
        assert_eq!(
            *rmax,
            (original.max() as f64 / 1e6 * 1000.0).round() / 1000.0
        );
        assert_same(decoded, original, tag);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn read_hlog_reads_it_back_exactly() {
    let dir = temp_dir("reader");
    let path = dir.join("sojourn.hlog");
    let written = write_log(&path);
    let read = read_hlog(&path).unwrap();
    assert_eq!(read.len(), 3);
    for ((tag, offset, original), r) in written.iter().zip(&read) {
        assert_eq!(r.tag.as_deref(), Some(tag.as_str()));
        assert_eq!(r.offset_secs, *offset);
        assert!((r.start_secs - (1_700_000_000.123 + offset)).abs() < 1e-6);
        assert_eq!(r.duration_secs, 1.0);
        assert_same(&r.hist, original, tag);
    }
    assert_eq!(read.iter().map(|i| i.line).collect::<Vec<_>>(), [7, 8, 9]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn percentile_table_sums_each_tag() {
    let dir = temp_dir("table");
    let path = dir.join("sojourn.hlog");
    write_log(&path);
    let read = read_hlog(&path).unwrap();
    let mut p7 = sojourn_a();
    p7.add(sojourn_b()).unwrap();
    let c = cost();
    let row = |tag: &str, n: usize, h: &Histogram<u64>| hlog::Row {
        tag: Some(tag.to_owned()),
        intervals: n,
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    };
    let all = percentile_table(&read, None).unwrap();
    assert_eq!(all, [row("cost", 1, &c), row("p7.sojourn", 2, &p7)]);
    assert_eq!(all[1].count, 1001 + 1010);
    assert_eq!(all[0].count, 401);
    // Independent figures: 2011 values; the median is the 1006th smallest: 2.5 ms is the
    // 500th of the 5 us series, and 1006 - 1000 (all of sojourn_a but the outlier) ...
    // computed from the sorted union instead of reasoning:
    let mut union: Vec<u64> = (1..=1000).map(|i| i * 1_000).collect();
    union.push(40_000_000);
    union.extend((1..=1000).map(|i| i * 5_000));
    union.extend([250_000_000; 10]);
    union.sort_unstable();
    let exact_p50 = union[(union.len() as f64 * 0.5).ceil() as usize - 1];
    assert!(
        p7.equivalent(all[1].p50, exact_p50),
        "{} vs {exact_p50}",
        all[1].p50
    );
    assert_eq!(all[1].p999, p7.highest_equivalent(250_000_000));

    let only_p7 = percentile_table(&read, Some("p7")).unwrap();
    assert_eq!(only_p7, [row("p7.sojourn", 2, &p7)]);
    assert_eq!(
        percentile_table(&read, Some("p7.sojourn")).unwrap(),
        only_p7
    );
    assert!(percentile_table(&read, Some("p")).unwrap().is_empty());
    assert!(percentile_table(&[], None).unwrap().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The payload is the standard V2 compressed encoding: decoded independently of the
/// reader, it starts with cookie 0x1c849314 (Java's `V2CompressedEncodingCookieBase`
/// 0x1c849304 plus the word-size bits 0x10), a big-endian length of the zlib stream that
/// follows, and inflates to a V2 encoding with cookie 0x1c849313.
#[test]
fn payload_is_the_standard_v2_compressed_encoding() {
    let dir = temp_dir("payload");
    let path = dir.join("sojourn.hlog");
    write_log(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().find(|l| l.starts_with("Tag=cost,")).unwrap();
    let b64 = line.rsplit(',').next().unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let cookie = u32::from_be_bytes(raw[0..4].try_into().unwrap());
    assert_eq!(cookie, 0x1c84_9314);
    assert_eq!(cookie & !0xf0, 0x1c84_9304, "Java's getCookieBase");
    let zlib_len = u32::from_be_bytes(raw[4..8].try_into().unwrap()) as usize;
    assert_eq!(zlib_len, raw.len() - 8);
    assert_eq!(raw[8] & 0x0f, 8, "zlib CM = deflate");
    let mut inflated = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[8..])
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(inflated[0..4].try_into().unwrap()),
        0x1c84_9313
    );
    // V2 header: payload length, normalizing offset 0, 3 digits, low 1, high 1e11, ratio 1.0.
    let word = |at: usize| u32::from_be_bytes(inflated[at..at + 4].try_into().unwrap());
    let long = |at: usize| u64::from_be_bytes(inflated[at..at + 8].try_into().unwrap());
    assert_eq!(word(4) as usize, inflated.len() - 40);
    assert_eq!((word(8), word(12)), (0, 3));
    assert_eq!((long(16), long(24)), (1, 100_000_000_000));
    assert_eq!(
        f64::from_be_bytes(inflated[32..40].try_into().unwrap()),
        1.0
    );
    // Both the compressed and the inflated bytes decode to the histogram written.
    let mut d = Deserializer::new();
    let from_compressed: Histogram<u64> = d.deserialize(&mut raw.as_slice()).unwrap();
    let from_inflated: Histogram<u64> = d.deserialize(&mut inflated.as_slice()).unwrap();
    assert_same(&from_compressed, &cost(), "compressed");
    assert_same(&from_inflated, &cost(), "inflated");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Lines of a log written by the Java jHiccup (shipped as test data of the `hdrhistogram`
/// crate, `tests/data/tagged-Log.logV2.hlog`): ns values, `Interval_Max` in ms, StartTime
/// but no BaseTime.
const JAVA_LOG: &str = "\
#[Logged with jHiccup version 2.0.7-SNAPSHOT, manually edited to duplicate contents with Tag=A]
#[Histogram log format version 1.2]
#[StartTime: 1441812279.474 (seconds since epoch), Wed Sep 09 08:24:39 PDT 2015]
\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"
0.127,1.007,2.769,HISTFAAAAEV42pNpmSzMwMCgyAABTBDKT4GBgdnNYMcCBvsPEBEJISEuATEZMQ4uASkhIR4nrxg9v2lMaxhvMekILGZkKmcCAEf2CsI=
Tag=A,0.127,1.007,2.769,HISTFAAAAEV42pNpmSzMwMCgyAABTBDKT4GBgdnNYMcCBvsPEBEJISEuATEZMQ4uASkhIR4nrxg9v2lMaxhvMekILGZkKmcCAEf2CsI=
1.134,0.999,0.442,HISTFAAAAEJ42pNpmSzMwMAgxwABTBDKT4GBgdnNYMcCBvsPEBEWLj45FTExAT4pBSEBKa6UkAgBi1uM7xjfMMlwMDABAC0CCjM=
";

#[test]
fn reads_a_log_written_by_java() {
    let read = hlog::parse_hlog(std::path::Path::new("java.hlog"), JAVA_LOG.as_bytes()).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(
        read.iter().map(|i| i.tag.as_deref()).collect::<Vec<_>>(),
        [None, Some("A"), None]
    );
    // The Java reader's rule: small timestamps are offsets from StartTime.
    assert!((read[0].start_secs - (1_441_812_279.474 + 0.127)).abs() < 1e-6);
    assert_eq!(read[0].duration_secs, 1.007);
    for i in &read {
        // The Java writer's Interval_Max is the ns max divided by 1e6, as ours.
        let ms = i.hist.max() as f64 / hlog::MAX_VALUE_UNIT_RATIO;
        assert_eq!((ms * 1000.0).round() / 1000.0, i.max, "line {}", i.line);
    }
    assert_eq!(read[0].hist, read[1].hist);
    assert!(!read[0].hist.is_empty());
}

fn interval_line(text: &str, n: usize) -> &str {
    text.lines()
        .filter(|l| l.starts_with("Tag="))
        .nth(n)
        .unwrap()
}

/// Replaces line `line` (from 1) of the log with `with` and parses it.
fn parse_with_line(text: &str, line: usize, with: &str) -> Result<Vec<Interval>, HlogError> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[line - 1] = with;
    let edited = lines.join("\n") + "\n";
    hlog::parse_hlog(std::path::Path::new("edited.hlog"), edited.as_bytes())
}

fn parse_line_of(err: HlogError) -> (usize, String) {
    let shown = err.to_string();
    match err {
        HlogError::Parse {
            path,
            line,
            message,
        } => {
            assert_eq!(path, PathBuf::from("edited.hlog"));
            assert!(
                shown.starts_with(&format!("edited.hlog:{line}: ")),
                "{shown}"
            );
            (line, message)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn corrupt_lines_are_errors_naming_the_line() {
    let dir = temp_dir("corrupt");
    let path = dir.join("sojourn.hlog");
    write_log(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let second = interval_line(&text, 1).to_owned(); // line 8

    // The file cut in the middle of its last line (a writer killed mid-write).
    let cut = &text[..text.len() - 30];
    let err = hlog::parse_hlog(std::path::Path::new("edited.hlog"), cut.as_bytes()).unwrap_err();
    let (line, message) = parse_line_of(err);
    assert_eq!(line, 9, "{message}");

    // A base64 payload cut short (still valid base64 length-wise or not).
    for keep in [12, 40, second.len() - 8, second.len() - 1] {
        let (line, message) =
            parse_line_of(parse_with_line(&text, 8, &second[..keep]).unwrap_err());
        assert_eq!(line, 8, "kept {keep}: {message}");
    }
    // A flipped character in the payload.
    let mut flipped = second.clone().into_bytes();
    let at = flipped.len() - 20;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let (line, _) = parse_line_of(parse_with_line(&text, 8, &flipped).unwrap_err());
    assert_eq!(line, 8);
    // Not base64 at all.
    let (line, message) =
        parse_line_of(parse_with_line(&text, 7, "Tag=x,0.000,1.000,1.0,@@@@").unwrap_err());
    assert_eq!(line, 7);
    assert!(message.contains("base64"), "{message}");
    // Not an interval line.
    let (line, message) = parse_line_of(parse_with_line(&text, 9, "hello, world").unwrap_err());
    assert_eq!(line, 9);
    assert!(message.contains("hello, world"), "{message}");
    let (line, _) = parse_line_of(
        parse_with_line(&text, 7, "Tag=p7.sojourn,zero,1.0,1.0,HISTFAAA").unwrap_err(),
    );
    assert_eq!(line, 7);
    // A payload of another format (the V1 compressed cookie 0x1c849302).
    let v1 = base64::engine::general_purpose::STANDARD.encode([0x1c, 0x84, 0x93, 0x02, 0, 0, 0, 0]);
    let (line, message) = parse_line_of(
        parse_with_line(&text, 8, &format!("Tag=x,0.000,1.000,1.0,{v1}")).unwrap_err(),
    );
    assert_eq!(line, 8);
    assert!(message.contains("0x1c849302"), "{message}");

    // A file that does not exist names itself.
    let missing = dir.join("missing.hlog");
    let err = read_hlog(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.hlog"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Length fields are not trusted: a payload claiming 4 GiB, and a zlib bomb, are refused
/// before anything that size is allocated.
#[test]
fn hostile_payloads_are_refused() {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let parse = |payload: String| {
        let log = format!("Tag=x,0.000,1.000,1.0,{payload}\n");
        hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes())
    };
    // Uncompressed V2 header claiming u32::MAX counter bytes.
    let mut v2 = vec![0x1c, 0x84, 0x93, 0x13, 0xff, 0xff, 0xff, 0xff];
    v2.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
    v2.extend_from_slice(&1u64.to_be_bytes());
    v2.extend_from_slice(&1_000_000u64.to_be_bytes());
    v2.extend_from_slice(&1.0f64.to_be_bytes());
    v2.extend_from_slice(&[2, 2]);
    let (line, message) = parse_line_of(parse(b64(&v2)).unwrap_err());
    assert_eq!(line, 1);
    assert!(message.contains("4294967295"), "{message}");
    // The same inside a valid zlib stream.
    let compressed = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&v2).unwrap();
        z.finish().unwrap()
    };
    let mut outer = vec![0x1c, 0x84, 0x93, 0x14];
    outer.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    outer.extend_from_slice(&compressed);
    let (_, message) = parse_line_of(parse(b64(&outer)).unwrap_err());
    assert!(message.contains("4294967295"), "{message}");
    // A compressed length longer than the line.
    let mut long = outer.clone();
    long[4..8].copy_from_slice(&(compressed.len() as u32 + 1).to_be_bytes());
    let (_, message) = parse_line_of(parse(b64(&long)).unwrap_err());
    assert!(message.contains("truncated"), "{message}");
    // A zlib bomb: 65 MiB of zeros after a V2 cookie, about 65 KB compressed.
    let bomb = {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&[0x1c, 0x84, 0x93, 0x13]).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..65 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap()
    };
    let mut outer = vec![0x1c, 0x84, 0x93, 0x14];
    outer.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
    outer.extend_from_slice(&bomb);
    let (_, message) = parse_line_of(parse(b64(&outer)).unwrap_err());
    assert!(message.contains("inflates beyond"), "{message}");
}

#[test]
fn bad_arguments_are_errors() {
    let dir = temp_dir("args");
    let path = dir.join("a.hlog");
    let mut w = HlogWriter::create(&path, start()).unwrap();
    let h = cost();
    for bad in ["", "a,b", "a b", "a\nb", "a\rb"] {
        match w.write_interval(bad, start(), Duration::from_secs(1), &h) {
            Err(HlogError::BadTag { tag, .. }) => assert_eq!(tag, bad),
            other => panic!("tag {bad:?}: {other:?}"),
        }
    }
    let early = start() - Duration::from_secs(2);
    let err = w
        .write_interval("cost", early, Duration::from_secs(1), &h)
        .unwrap_err();
    assert!(
        matches!(err, HlogError::IntervalBeforeStart { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("a.hlog"), "{err}");
    // An empty histogram is a valid interval (max 0).
    let empty = hist([]);
    w.write_interval_at(
        "cost",
        Duration::from_millis(2500),
        Duration::from_secs(1),
        &empty,
    )
    .unwrap();
    w.finish().unwrap();
    let read = read_hlog(&path).unwrap();
    assert_eq!(read.len(), 1, "the refused intervals wrote nothing");
    assert_eq!(
        (read[0].offset_secs, read[0].max, read[0].hist.len()),
        (2.5, 0.0, 0)
    );

    let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
    let err = HlogWriter::create(dir.join("b.hlog"), before_epoch).unwrap_err();
    assert!(err.to_string().contains("start_time"), "{err}");
    let err = HlogWriter::create(dir.join("no-such-dir").join("c.hlog"), start()).unwrap_err();
    assert!(err.to_string().contains("c.hlog"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An uncompressed V2 payload: header, then `numbers` (counts, or negative zero runs)
/// zig-zag LEB128 encoded, as the format has them.
fn v2_payload(low: u64, high: u64, digits: u32, numbers: &[i64]) -> Vec<u8> {
    let mut body = Vec::new();
    for &n in numbers {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        for _ in 0..8 {
            if z < 0x80 {
                break;
            }
            body.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        body.push(z as u8);
    }
    let mut out = vec![0x1c, 0x84, 0x93, 0x13];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&digits.to_be_bytes());
    out.extend_from_slice(&low.to_be_bytes());
    out.extend_from_slice(&high.to_be_bytes());
    out.extend_from_slice(&1.0f64.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn payload_line(tag: &str, start_secs: u32, payload: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
    format!("Tag={tag},{start_secs}.000,1.000,0.000,{b64}\n")
}

/// O4, hostile input: a 110-byte line whose header declares 1..=u64::MAX at 5
/// significant digits (6.3 million counters, 50 MB once built) is refused before the
/// decoder builds it. Forty such lines made `qos-ctl hdr print` take 3.9 GB.
#[test]
fn o4_a_header_declaring_a_huge_histogram_is_refused_before_it_is_built() {
    let bomb = payload_line("t", 0, &v2_payload(1, u64::MAX, 5, &[1]));
    let log = format!("{bomb}{bomb}");
    let err = hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes()).unwrap_err();
    let (line, message) = parse_line_of(err);
    assert_eq!(line, 1);
    assert!(
        message.contains("6291456 counters") && message.contains("1048576"),
        "{message}"
    );
    // The widest range at 3 digits (55,296 counters) is still read.
    let mut wide = Histogram::<u64>::new_with_bounds(1, u64::MAX, 3).unwrap();
    wide.record(u64::MAX / 2).unwrap();
    let dir = temp_dir("wide");
    let path = dir.join("wide.hlog");
    let mut w = HlogWriter::create(&path, start()).unwrap();
    w.write_interval("t", start(), Duration::from_secs(1), &wide)
        .unwrap();
    w.finish().unwrap();
    assert_eq!(read_hlog(&path).unwrap()[0].hist, wide);
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4, hostile input: counts whose sum passes `i64::MAX`, in one interval or across a
/// tag's intervals, are refused with the line (they panicked in a debug build and
/// printed a saturated count and a wrong p50 in release).
#[test]
fn o4_counts_that_overflow_are_refused() {
    let big = i64::MAX;
    let one = payload_line("a", 0, &v2_payload(1, 1000, 3, &[big]));
    let three = payload_line("a", 1, &v2_payload(1, 1000, 3, &[big, big, big]));
    let err = hlog::parse_hlog(
        std::path::Path::new("edited.hlog"),
        format!("{one}{three}").as_bytes(),
    )
    .unwrap_err();
    let (line, message) = parse_line_of(err);
    assert_eq!(line, 2);
    assert!(message.contains("overflow"), "{message}");

    // Each interval alone is fine; their sum is not.
    let log = format!(
        "{one}{}",
        payload_line("a", 1, &v2_payload(1, 1000, 3, &[big]))
    );
    let intervals = hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes()).unwrap();
    match hlog::tag_sums(&intervals, |_| true).unwrap_err() {
        HlogError::Merge { line, message, .. } => {
            assert_eq!(line, 2);
            assert!(message.contains("more than"), "{message}");
        }
        other => panic!("expected a merge error, got {other:?}"),
    }
    let dir = temp_dir("overflow");
    let path = dir.join("big.hlog");
    std::fs::write(&path, &log).unwrap();
    let err = hlog::summarize_hlog(&path, |_| true).unwrap_err();
    assert!(
        matches!(err, HlogError::Parse { line: 2, .. }),
        "expected line 2: {err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4: a tag's sum does not depend on the order of its intervals. One coarse interval
/// (1 significant digit from 1 ms: 10 values of 10..100 ms) and one fine (90 values of
/// 1..90 us): the median is 50 us either way (it read 524 us with the coarse one first).
#[test]
fn o4_a_tags_sum_does_not_depend_on_the_order_of_its_intervals() {
    let mut coarse = Histogram::<u64>::new_with_bounds(1_000_000, 100_000_000_000, 1).unwrap();
    for v in 1..=10u64 {
        coarse.record(v * 10_000_000).unwrap();
    }
    let fine = hist((1..=90u64).map(|v| v * 1_000));
    let dir = temp_dir("order");
    let mut rows = Vec::new();
    for (name, first, second) in [("coarse", &coarse, &fine), ("fine", &fine, &coarse)] {
        let path = dir.join(format!("{name}-first.hlog"));
        let mut w = HlogWriter::create(&path, start()).unwrap();
        w.write_interval("a", start(), Duration::from_secs(1), first)
            .unwrap();
        w.write_interval("a", start(), Duration::from_secs(1), second)
            .unwrap();
        w.finish().unwrap();
        let summary = hlog::summarize_hlog(&path, |_| true).unwrap();
        let row = summary.sums.into_iter().next().unwrap().row();
        assert_eq!(row.count, 100, "{name} first");
        assert!(
            row.p50.abs_diff(50_000) <= 50,
            "{name} first: p50 {} ns",
            row.p50
        );
        assert!(
            row.p90.abs_diff(90_000) <= 90,
            "{name} first: p90 {} ns",
            row.p90
        );
        rows.push(row);
    }
    assert_eq!(rows[0], rows[1]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4: a writer that died mid-line leaves an incomplete last line. `summarize_hlog`
/// reads everything before it and names it; `read_hlog` (every interval, exactly)
/// refuses it; a torn line in the middle is an error in both.
#[test]
fn o4_an_incomplete_last_line_is_skipped_and_named() {
    let dir = temp_dir("torn");
    let path = dir.join("sojourn.hlog");
    write_log(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    let whole = hlog::summarize_hlog(&path, |_| true).unwrap();
    assert_eq!((whole.intervals, whole.torn_tail), (3, None));

    let torn = &text[..text.len() - 30];
    std::fs::write(&path, torn).unwrap();
    let summary = hlog::summarize_hlog(&path, |_| true).unwrap();
    assert_eq!((summary.intervals, summary.torn_tail), (2, Some(9)));
    let p7 = summary
        .sums
        .iter()
        .find(|s| s.tag.as_deref() == Some("p7.sojourn"))
        .unwrap();
    assert_eq!(
        p7.hist.len(),
        sojourn_a().len(),
        "the first p7 interval only"
    );
    assert!(matches!(
        read_hlog(&path).unwrap_err(),
        HlogError::Parse { line: 9, .. }
    ));

    // Torn in the middle (the line cut, then a whole line after it).
    let lines: Vec<&str> = text.lines().collect();
    let mid = format!(
        "{}\n{}\n{}\n",
        lines[..7].join("\n"),
        &lines[7][..lines[7].len() / 2],
        lines[8]
    );
    std::fs::write(&path, mid).unwrap();
    let err = hlog::summarize_hlog(&path, |_| true).unwrap_err();
    assert!(matches!(err, HlogError::Parse { line: 8, .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4, hostile input: what is not a regular file is refused at once (`/dev/zero` has no
/// end: reading it used all the memory it was allowed).
#[test]
fn o4_only_regular_files_are_read() {
    let dir = temp_dir("notfile");
    for path in [
        PathBuf::from("/dev/zero"),
        PathBuf::from("/dev/urandom"),
        dir.clone(),
    ] {
        for err in [
            read_hlog(&path).unwrap_err(),
            hlog::summarize_hlog(&path, |_| true).unwrap_err(),
        ] {
            let shown = err.to_string();
            assert!(
                matches!(err, HlogError::Io { .. }) && shown.contains("not a regular file"),
                "{}: {shown}",
                path.display()
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4, hostile input (review): a compressed payload of 4 to 7 bytes (`HISTFA==`: the
/// cookie alone) and a V2 body holding the number `i64::MIN`, which the crate's decoder
/// negates as a zero run, are refused with the line; both panicked before.
#[test]
fn o4_a_bare_cookie_and_a_zero_run_of_i64_min_are_refused() {
    for payload in ["HISTFA==", "HISTFAAA"] {
        let log = format!("Tag=t,0.000,1.000,0.000,{payload}\n");
        let (line, message) = parse_line_of(
            hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes()).unwrap_err(),
        );
        assert_eq!(line, 1);
        assert!(
            message.contains("expected at least 8"),
            "{payload}: {message}"
        );
    }
    let log = payload_line("t", 0, &v2_payload(1, 1000, 3, &[5, i64::MIN, 1]));
    let (line, message) = parse_line_of(
        hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes()).unwrap_err(),
    );
    assert_eq!(line, 1);
    assert!(message.contains("zero run of 2^63 at byte 1"), "{message}");
    // Zero runs that fit are still read: 5 at 0, then 3 zeros, then 2 at index 4.
    let log = payload_line("t", 0, &v2_payload(1, 1000, 3, &[5, -3, 2]));
    let read = hlog::parse_hlog(std::path::Path::new("edited.hlog"), log.as_bytes()).unwrap();
    assert_eq!(read[0].hist.len(), 7);
    assert_eq!(read[0].hist.count_at(4), 2);
}
