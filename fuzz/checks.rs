//! What the fuzz targets check, one function per target. Shared, by `#[path]`, by the
//! targets in `fuzz/fuzz_targets/` and by the stable replay of the committed corpus
//! (`tools/tests/fuzz_corpus.rs`), so both hold every input to the same rules.
//!
//! DESIGN 9: a parser of untrusted bytes never panics; bad input is an error that
//! says what is wrong. Each function panics (a fuzz crash, a test failure) when a
//! parser panics, when it accepts input that breaks an invariant of its output, or
//! when what it writes does not read back as what it read.

use std::net::SocketAddr;

use qos_control::policy::PolicyDocument;
use qos_tools::config::{GatewayConfig, Route};
use qos_tools::gateway::classify::{Classifier, Dest, FlowKey, Kind, inspect};
use qos_tools::gateway::counters::GatewayDrop;
use qos_tools::header::{self, Header};

/// `gateway.max_datagram`'s default, the size `inspect` is fuzzed with.
pub const MAX_DATAGRAM: usize = 9216;

/// The datagram header parser and the gateway's first look at a datagram.
pub fn header(data: &[u8]) {
    match Header::parse(data) {
        Ok(h) => {
            assert!(h.priority <= 7, "accepted priority {}", h.priority);
            let encoded = h.encode();
            assert_eq!(Header::parse(&encoded), Ok(h), "round trip");
            // Every field of the 32 bytes is either checked or kept: encoding what was
            // read gives the bytes back.
            assert_eq!(&encoded[..], &data[..header::LEN], "encode(parse(b)) != b");
            assert!(Header::has_magic(data));
        }
        Err(e) => {
            // Every rejection has a name and a message.
            assert!(!e.reason().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
    match inspect(data, MAX_DATAGRAM) {
        Ok(Kind::Loadgen(h)) => assert_eq!(Header::parse(data), Ok(h)),
        Ok(Kind::Plain) => assert!(
            !Header::has_magic(data),
            "a datagram with the loadgen magic passed as plain"
        ),
        Err(drop) => assert!(
            matches!(
                drop,
                GatewayDrop::Empty
                    | GatewayDrop::Oversize
                    | GatewayDrop::Truncated
                    | GatewayDrop::BadVersion
                    | GatewayDrop::BadPriority
            ),
            "inspect dropped a datagram as {drop:?}"
        ),
    }
}

/// `qosd`'s configuration parser: UTF-8 input is accepted or rejected, never a panic;
/// what is accepted holds the invariants the gateway relies on.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match GatewayConfig::from_toml(text) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let g = &cfg.gateway;
    assert!(!g.listen.is_empty());
    assert!((1..=64).contains(&g.workers), "workers {}", g.workers);
    assert!((1..=65_507).contains(&g.max_datagram));
    assert!((1..=1 << 24).contains(&g.flow_table));
    assert!((1..=1024).contains(&g.batch));
    assert!(g.ring_capacity.is_power_of_two() && (64..=1 << 20).contains(&g.ring_capacity));
    assert!(cfg.control.hlog_period_ms > 0 && cfg.control.metrics_db_period_ms > 0);

    let n = cfg.upstreams.len();
    for (i, u) in cfg.upstreams.iter().enumerate() {
        assert!(!u.name.is_empty());
        assert!(
            cfg.upstreams[..i].iter().all(|v| v.name != u.name),
            "upstream name {:?} twice",
            u.name
        );
    }
    assert!(!cfg.rules.is_empty(), "accepted with no rule");
    for r in &cfg.rules {
        assert!(r.priority <= r.max_priority && r.max_priority <= 7, "{r:?}");
        assert_eq!(r.trust_header, r.loadgen == Some(true));
        match &r.route {
            Route::To(u) => assert!(*u < n, "{r:?}"),
            Route::Balance(v) | Route::Broadcast(v) => {
                assert!(!v.is_empty(), "{r:?}");
                assert!(v.iter().all(|&u| u < n), "{r:?}");
            }
            Route::PerClass(by_priority) => assert!(by_priority.iter().all(|&u| u < n), "{r:?}"),
        }
    }

    // The policy text handed to the control plane is the policy that was validated.
    let document = PolicyDocument::from_toml(&cfg.policy_text)
        .unwrap_or_else(|e| panic!("policy_text does not read back: {e}\n{}", cfg.policy_text));
    assert_eq!(document, cfg.policy_document);
    assert_eq!(document.validate().as_ref(), Ok(&cfg.policy));

    // Classification of an accepted config never panics (route indices, per-class
    // tables) and sends to configured upstreams only.
    let classifier = Classifier::new(&cfg, 1);
    let upstreams: Vec<SocketAddr> = cfg.upstreams.iter().map(|u| u.addr).collect();
    let sources = [
        "127.0.0.1:4000",
        "10.1.2.3:5000",
        "[::1]:6000",
        "[fe80::1]:1",
    ];
    let ports = [0, 7000, 7010, 65_535];
    for src in sources {
        for port in ports {
            for (kind, id) in [
                (Kind::Plain, None),
                (Kind::Loadgen(Header::new(9, 0, 0, 0)), Some(9)),
                (
                    Kind::Loadgen(Header::new(u64::MAX, 7, 1, 2)),
                    Some(u64::MAX),
                ),
            ] {
                let flow = FlowKey {
                    src: src.parse().unwrap_or_else(|e| panic!("{src}: {e}")),
                    local_port: port,
                    header_stream: id,
                };
                match classifier.classify(&flow, &kind) {
                    Ok(class) => {
                        assert!(class.rule < cfg.rules.len());
                        assert!(class.priority <= cfg.rules[class.rule].max_priority);
                        match class.dest {
                            Dest::One(a) => assert!(upstreams.contains(&a)),
                            Dest::All(v) => {
                                assert!(!v.is_empty());
                                assert!(v.iter().all(|a| upstreams.contains(a)));
                            }
                        }
                    }
                    Err(drop) => assert_eq!(drop, GatewayDrop::Unclassified),
                }
            }
        }
    }
}

/// The policy document parser (TOML or JSON, detected): a document that validates
/// writes out (TOML and JSON) as one that reads back equal and validates to an equal
/// policy.
pub fn policy(data: &[u8]) {
    let document = match PolicyDocument::from_bytes(data) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let policy = match document.validate() {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let toml = document
        .to_toml()
        .unwrap_or_else(|e| panic!("a valid document does not write as TOML: {e}\n{document:?}"));
    let again = PolicyDocument::from_toml(&toml)
        .unwrap_or_else(|e| panic!("to_toml does not read back: {e}\n{toml}"));
    assert_eq!(
        again.validate().as_ref(),
        Ok(&policy),
        "TOML round trip changed the policy\n{toml}"
    );
    assert_eq!(
        again, document,
        "TOML round trip changed the document\n{toml}"
    );

    let json = document
        .to_json()
        .unwrap_or_else(|e| panic!("a valid document does not write as JSON: {e}\n{document:?}"));
    let again = PolicyDocument::from_bytes(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json does not read back: {e}\n{json}"));
    assert_eq!(
        again.validate().as_ref(),
        Ok(&policy),
        "JSON round trip changed the policy\n{json}"
    );
    assert_eq!(
        again, document,
        "JSON round trip changed the document\n{json}"
    );
}

/// The `.hlog` interval log reader (`qos-ctl hdr print` and `plot` read files anyone can
/// hand them): `parse_hlog` never panics; an error is a parse error naming this file and
/// a line of the input; what it accepts keeps to the reader's bounds (counters, total
/// count) and sums per tag without panicking, with ordered percentiles.
pub fn hlog(data: &[u8]) {
    use qos_control::hlog::{
        HlogError, MAX_COUNTERS, MAX_TOTAL_COUNT, TagSum, parse_hlog, tag_sums,
    };
    let path = std::path::Path::new("fuzz.hlog");
    let lines = data.split(|&b| b == b'\n').count();
    let intervals = match parse_hlog(path, data) {
        Ok(intervals) => intervals,
        Err(HlogError::Parse {
            path: named, line, ..
        }) => {
            assert_eq!(named, path, "the error names the file");
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            return;
        }
        Err(other) => panic!("parse_hlog: unexpected error kind: {other:?}"),
    };
    for i in &intervals {
        assert!((1..=lines).contains(&i.line), "line {} of {lines}", i.line);
        assert!(i.hist.len() <= MAX_TOTAL_COUNT, "count {}", i.hist.len());
        assert!(
            i.hist.distinct_values() as u64 <= MAX_COUNTERS,
            "{} counters",
            i.hist.distinct_values()
        );
    }
    match tag_sums(&intervals, |_| true) {
        Ok(sums) => {
            for row in sums.into_iter().map(TagSum::row) {
                assert!(
                    row.p50 <= row.p90 && row.p90 <= row.p99 && row.p99 <= row.p999,
                    "{row:?}"
                );
            }
        }
        Err(HlogError::Merge { line, .. }) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
        }
        Err(other) => panic!("tag_sums: unexpected error kind: {other:?}"),
    }
}
