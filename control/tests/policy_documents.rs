//! Policy documents: presets, operator units, TOML and JSON round trips, format
//! detection.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use qos_control::policy::{
    EXAMPLE_TOML, Format, LatencyBudgets, Number, OptionalMs, PolicyDocument, PolicyRejection,
    Preset,
};
use qos_dataplane::sched::{AqmSpec, LinkRate, PolicySpec, TierSpec};

fn spec_of(toml: &str) -> PolicySpec {
    PolicyDocument::from_toml(toml)
        .unwrap()
        .validate()
        .unwrap()
        .spec()
        .clone()
}

#[test]
fn the_default_preset_is_the_reference_policy() {
    assert_eq!(spec_of("version = 1"), PolicySpec::default());
    assert_eq!(
        spec_of("version = 1\npreset = \"default\""),
        PolicySpec::default()
    );
    let expected = PolicySpec {
        version: 42,
        ..PolicySpec::default()
    };
    assert_eq!(spec_of("version = 42"), expected);
    // Spelled out, against the figures of DESIGN S1 rather than the dataplane's code.
    let spec = spec_of("version = 1");
    let tiers: Vec<_> = spec
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.priorities.clone(), t.share_percent))
        .collect();
    assert_eq!(
        tiers,
        [
            ("High", vec![6, 7], 25),
            ("Medium", vec![2, 3, 4, 5], 60),
            ("Low", vec![0, 1], 15)
        ]
    );
}

#[test]
fn the_classes5_preset_is_the_dataplanes() {
    let expected = PolicySpec {
        version: 3,
        ..PolicySpec::classes5()
    };
    assert_eq!(spec_of("version = 3\npreset = \"classes5\""), expected);
    let shares: Vec<u8> = expected.tiers.iter().map(|t| t.share_percent).collect();
    assert_eq!(shares, [30, 25, 25, 15, 5]);
    // Fields given override the preset; the rest stays.
    let spec = spec_of("version = 3\npreset = \"classes5\"\nmax_queue_depth = 77");
    assert_eq!(spec.max_queue_depth, 77);
    assert_eq!(spec.tiers, PolicySpec::classes5().tiers);
}

#[test]
fn preset_documents_are_complete_templates() {
    for (name, spec) in [
        ("default", PolicySpec::default()),
        ("classes5", PolicySpec::classes5()),
    ] {
        let document = PolicyDocument::preset(name).unwrap();
        assert_eq!(document.preset, Some(Preset::from_name(name).unwrap()));
        assert!(document.tiers.is_some() && document.latency_budget_ms.is_some());
        assert_eq!(document.validate().unwrap().spec(), &spec);
        let toml = document.to_toml().unwrap();
        assert_eq!(spec_of(&toml), spec);
    }
    let error = PolicyDocument::preset("classes4").unwrap_err();
    assert_eq!(error.field(), Some("preset"));
    assert!(error.to_string().contains("\"classes4\""), "{error}");
}

#[test]
fn a_flat_single_tier_policy_is_accepted() {
    let policy = PolicyDocument::from_toml(
        "version = 5\n[[tiers]]\nname = \"All\"\npriorities = [7, 6, 5, 4, 3, 2, 1, 0]\nshare_percent = 100\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(policy.tiers().len(), 1);
    assert!((0..8).all(|p| policy.tier_of(p) == 0));
    assert_eq!(policy.low_tier(), 0);
    assert_eq!(policy.version(), 5);
}

#[test]
fn operator_units_convert_exactly() {
    let spec = spec_of(
        r#"
version = 4
budget_window_ms = 250
aging_timeout_ms = 1.5
latency_budget_ms = { p7 = 0.25, p6 = 3, p0 = 40 }
[link]
rate_mbps = 2.5
burst_bytes = 20000
[[tiers]]
name = "All"
priorities = [0, 1, 2, 3, 4, 5, 6, 7]
share_percent = 100
aqm = { target_ms = 0.5, interval_ms = 7 }
"#,
    );
    assert_eq!(spec.budget_window_ns, 250_000_000);
    assert_eq!(spec.aging_timeout_ns, Some(1_500_000));
    assert_eq!(spec.latency_budget_ns[7], Some(250_000));
    assert_eq!(spec.latency_budget_ns[6], Some(3_000_000));
    assert_eq!(spec.latency_budget_ns[0], Some(40_000_000));
    // Left out: the preset's.
    assert_eq!(spec.latency_budget_ns[1], None);
    assert_eq!(spec.latency_budget_ns[5], Some(50_000_000));
    assert_eq!(
        spec.link,
        Some(LinkRate {
            rate_bps: 2_500_000,
            burst_bytes: 20_000
        })
    );
    assert_eq!(
        spec.tiers[0].aqm,
        Some(AqmSpec {
            target_ns: 500_000,
            interval_ns: 7_000_000
        })
    );
    let spec = spec_of("version = 4\n[link]\nrate_bps = 1234567\nburst_bytes = 9216");
    assert_eq!(spec.link.unwrap().rate_bps, 1_234_567);
}

#[test]
fn budgets_as_an_array_equal_budgets_as_a_table() {
    let array = PolicyDocument::from_toml(
        "version = 1\nlatency_budget_ms = [\"none\", \"off\", 100, 100, 50, 50, 20, 10]",
    )
    .unwrap();
    let table = PolicyDocument::from_toml(
        "version = 1\n[latency_budget_ms]\np7 = 10\np6 = 20\np5 = 50\np4 = 50\np3 = 100\np2 = 100\np1 = \"none\"\np0 = \"none\"",
    )
    .unwrap();
    assert_eq!(array, table);
    assert_eq!(array.validate().unwrap().spec(), &PolicySpec::default());
    let nine =
        PolicyDocument::from_toml("version = 1\nlatency_budget_ms = [1, 1, 1, 1, 1, 1, 1, 1, 1]");
    assert!(nine.unwrap_err().to_string().contains("invalid length 9"));
    let twice =
        PolicyDocument::from_json(r#"{"version": 1, "latency_budget_ms": {"p7": 1, "p7": 2}}"#);
    assert!(
        twice
            .unwrap_err()
            .to_string()
            .contains("duplicate field `p7`")
    );
}

fn assert_round_trips(document: &PolicyDocument) {
    let toml = document.to_toml().unwrap();
    assert_eq!(
        &PolicyDocument::from_toml(&toml).unwrap(),
        document,
        "{toml}"
    );
    let json = document.to_json().unwrap();
    assert_eq!(
        &PolicyDocument::from_json(&json).unwrap(),
        document,
        "{json}"
    );
    assert_eq!(Format::detect(json.as_bytes()), Format::Json);
    assert_eq!(Format::detect(toml.as_bytes()), Format::Toml);
    assert_eq!(
        &PolicyDocument::from_bytes(json.as_bytes()).unwrap(),
        document
    );
    assert_eq!(
        &PolicyDocument::from_bytes(toml.as_bytes()).unwrap(),
        document
    );
}

#[test]
fn toml_and_json_round_trip_to_equal_documents() {
    let example = PolicyDocument::from_toml(EXAMPLE_TOML).unwrap();
    assert_round_trips(&example);
    assert_round_trips(&PolicyDocument::from_toml("version = 9").unwrap());
    let mut odd = example.clone();
    odd.aging_timeout_ms = Some(OptionalMs::Off);
    odd.budget_window_ms = Some(Number::Float(0.125));
    odd.latency_budget_ms = Some(LatencyBudgets([
        None,
        Some(OptionalMs::Off),
        None,
        None,
        Some(OptionalMs::Ms(Number::Float(1.75))),
        None,
        None,
        Some(OptionalMs::Ms(Number::Int(3))),
    ]));
    odd.link = None;
    odd.preset = Some(Preset::Classes5);
    assert_round_trips(&odd);
    // The same document through JSON and TOML is the same policy.
    let from_json = PolicyDocument::from_json(&example.to_json().unwrap()).unwrap();
    assert_eq!(from_json.validate().unwrap(), example.validate().unwrap());
}

#[test]
fn a_spec_written_out_validates_back_to_itself() {
    let mut spec = PolicySpec::classes5();
    spec.version = 11;
    spec.latency_budget_ns = [
        None,
        Some(1),
        Some(123_456),
        None,
        Some(7_000_000),
        None,
        None,
        Some(999_999_999),
    ];
    spec.budget_window_ns = 1_000_000_001;
    spec.aging_timeout_ns = None;
    spec.link = Some(LinkRate {
        rate_bps: 2_500_000_001,
        burst_bytes: 1 << 30,
    });
    spec.tiers[0].aqm = Some(AqmSpec {
        target_ns: 1_500_001,
        interval_ns: 1 << 36,
    });
    spec.tiers[4] = TierSpec::new("Logs and metrics", &[1, 0], 5);
    spec.cap_burst_multiplier = 12.5;
    spec.disconnect = false;
    spec.aqm = false;
    let document = PolicyDocument::from_spec(&spec);
    assert_eq!(document.validate().unwrap().spec(), &spec);
    let toml = document.to_toml().unwrap();
    assert_eq!(spec_of(&toml), spec, "{toml}");
    let json = document.to_json().unwrap();
    let back = PolicyDocument::from_json(&json)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(back.spec(), &spec);
}

#[test]
fn the_format_is_detected_by_a_leading_brace() {
    assert_eq!(Format::detect(b"  \n\t{\"version\": 1}"), Format::Json);
    assert_eq!(
        Format::detect(b"\xEF\xBB\xBF{\"version\": 1}"),
        Format::Json
    );
    assert_eq!(Format::detect(b"# {comment}\nversion = 1"), Format::Toml);
    assert_eq!(Format::detect(b""), Format::Toml);
    let doc = PolicyDocument::from_bytes(b"\xEF\xBB\xBF  {\"version\": 6}").unwrap();
    assert_eq!(doc.version, 6);
    let doc = PolicyDocument::parse(b"\xEF\xBB\xBFversion = 6", Format::Toml).unwrap();
    assert_eq!(doc.version, 6);
    // Parsing with the wrong format fails with that format named.
    let error = PolicyDocument::parse(b"version = 6", Format::Json).unwrap_err();
    assert!(
        matches!(
            error,
            PolicyRejection::Parse {
                format: Format::Json,
                ..
            }
        ),
        "{error}"
    );
    let error = PolicyDocument::from_bytes(b"").unwrap_err();
    assert!(
        error.to_string().contains("missing field `version`"),
        "{error}"
    );
}

#[test]
fn versions_use_the_whole_u64_range_in_both_formats() {
    let mut document = PolicyDocument::from_toml("version = 1").unwrap();
    document.version = u64::MAX;
    assert_round_trips(&document);
    assert_eq!(document.validate().unwrap().version(), u64::MAX);
}
