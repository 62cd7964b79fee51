//! C1: every validation rule rejects its document with the field named (in the
//! message and by `field()`), the value and what was expected, and a gate's running
//! policy stays as it was.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use qos_control::policy::{PolicyDocument, PolicyGate, PolicyRejection};
use qos_dataplane::sched::Policy;

/// The reference policy written out, version 2: valid, so each test's single change is
/// the only problem.
const TIERS: &str = r#"
[[tiers]]
name = "High"
priorities = [6, 7]
share_percent = 25

[[tiers]]
name = "Medium"
priorities = [2, 3, 4, 5]
share_percent = 60

[[tiers]]
name = "Low"
priorities = [0, 1]
share_percent = 15
"#;

fn document(scalars: &str, tiers: &str) -> String {
    format!("version = 2\n{scalars}\n{tiers}")
}

/// Admits `doc` through a fresh gate and through `validate`, expects both to reject it
/// naming `field`, with `value` in the message; checks the gate did not move.
fn rejected(doc: &str, field: &str, value: &str) -> PolicyRejection {
    let gate = PolicyGate::new(&Policy::default(), None);
    let running = Arc::clone(gate.running());
    let error = gate.admit(doc.as_bytes(), None).unwrap_err();
    let message = error.to_string();
    assert_eq!(error.field(), Some(field), "{message}");
    assert!(message.starts_with(&format!("{field}: ")), "{message}");
    assert!(message.contains(value), "{value:?} not in {message}");
    if let PolicyRejection::Invalid { expected, .. } = &error {
        assert!(
            message.ends_with(&format!(", expected {expected}")),
            "{message}"
        );
    }
    assert_eq!(gate.running_version(), 1);
    assert!(Arc::ptr_eq(gate.running(), &running));
    assert_eq!(gate.running_sha256_hex(), None);
    let direct = PolicyDocument::from_toml(doc).and_then(|d| d.validate().map(drop));
    assert_eq!(direct.unwrap_err(), error);
    error
}

fn tiers_with(replace: &str, with: &str) -> String {
    assert!(TIERS.contains(replace), "{replace}");
    TIERS.replacen(replace, with, 1)
}

#[test]
fn the_base_document_is_valid() {
    let gate = PolicyGate::new(&Policy::default(), None);
    let admitted = gate.admit(document("", TIERS).as_bytes(), None).unwrap();
    assert_eq!(admitted.version(), 2);
    let policy = PolicyDocument::from_toml(&document("", TIERS))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(policy.tiers(), Policy::default().tiers());
}

#[test]
fn shares_must_sum_to_100() {
    let doc = document("", &tiers_with("share_percent = 15", "share_percent = 10"));
    let error = rejected(&doc, "tiers[*].share_percent", "sum to 95");
    assert!(error.to_string().contains("expected shares summing to 100"));
    let doc = document("", &tiers_with("share_percent = 15", "share_percent = 16"));
    rejected(&doc, "tiers[*].share_percent", "sum to 101");
}

#[test]
fn a_share_of_zero_is_rejected() {
    let doc = document("", &tiers_with("share_percent = 60", "share_percent = 0"));
    let error = rejected(&doc, "tiers[1].share_percent", ": 0,");
    assert!(error.to_string().ends_with("expected 1..=100"), "{error}");
}

#[test]
fn a_share_above_100_is_rejected() {
    let doc = document("", &tiers_with("share_percent = 25", "share_percent = 101"));
    rejected(&doc, "tiers[0].share_percent", "101");
    // Too large for the dataplane's u8: still the field, not a type error.
    let doc = document("", &tiers_with("share_percent = 25", "share_percent = 300"));
    rejected(&doc, "tiers[0].share_percent", "300");
    let huge = "share_percent = 9223372036854775807";
    let doc = document("", &tiers_with("share_percent = 25", huge));
    rejected(&doc, "tiers[0].share_percent", "9223372036854775807");
}

#[test]
fn the_tier_holding_priority_0_gets_at_least_5_percent() {
    let tiers = tiers_with("share_percent = 25", "share_percent = 26")
        .replacen("share_percent = 60", "share_percent = 70", 1)
        .replacen("share_percent = 15", "share_percent = 4", 1);
    let error = rejected(&document("", &tiers), "tiers[2].share_percent", ": 4,");
    assert!(error.to_string().contains("priority 0"), "{error}");
    // Exactly 5% is allowed.
    let tiers = tiers.replacen("share_percent = 70", "share_percent = 69", 1);
    let tiers = tiers.replacen("share_percent = 4", "share_percent = 5", 1);
    PolicyDocument::from_toml(&document("", &tiers))
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn a_priority_out_of_range_is_rejected() {
    let doc = document("", &tiers_with("[6, 7]", "[6, 7, 8]"));
    rejected(&doc, "tiers[0].priorities", "8 is out of range");
    let doc = document("", &tiers_with("[6, 7]", "[6, 7, 256]"));
    rejected(&doc, "tiers[0].priorities", "256 is out of range");
    // A negative priority is a type error, reported by the parser at the same field.
    let doc = document("", &tiers_with("[6, 7]", "[6, -7]"));
    let error = rejected(&doc, "tiers[0].priorities[1]", "-7");
    assert!(matches!(error, PolicyRejection::Parse { .. }));
}

#[test]
fn a_priority_in_two_tiers_is_rejected() {
    let doc = document("", &tiers_with("[2, 3, 4, 5]", "[2, 3, 4, 5, 6]"));
    rejected(&doc, "tiers[1].priorities", "6 already belongs to a tier");
    let doc = document("", &tiers_with("[0, 1]", "[0, 1, 1]"));
    rejected(&doc, "tiers[2].priorities", "1 already belongs to a tier");
}

#[test]
fn a_priority_in_no_tier_is_rejected() {
    let doc = document("", &tiers_with("[2, 3, 4, 5]", "[2, 3, 4]"));
    rejected(&doc, "tiers[*].priorities", "priority 5 is in no tier");
}

#[test]
fn an_empty_tier_is_rejected() {
    let doc = document("", &tiers_with("[2, 3, 4, 5]", "[]"));
    rejected(&doc, "tiers[1].priorities", "empty");
}

#[test]
fn a_duplicate_or_empty_tier_name_is_rejected() {
    let doc = document("", &tiers_with("name = \"Low\"", "name = \"High\""));
    rejected(&doc, "tiers[2].name", "\"High\"");
    let doc = document("", &tiers_with("name = \"Medium\"", "name = \"\""));
    rejected(&doc, "tiers[1].name", "\"\"");
}

#[test]
fn more_than_eight_tiers_or_none_are_rejected() {
    let mut tiers = String::new();
    for p in 0..8 {
        let share = if p == 0 { 16 } else { 12 };
        tiers +=
            &format!("[[tiers]]\nname = \"t{p}\"\npriorities = [{p}]\nshare_percent = {share}\n");
    }
    // Eight tiers, one priority each: valid.
    PolicyDocument::from_toml(&document("", &tiers))
        .unwrap()
        .validate()
        .unwrap();
    tiers += "[[tiers]]\nname = \"t8\"\npriorities = [7]\nshare_percent = 1\n";
    rejected(&document("", &tiers), "tiers", "9 tiers");
    rejected(&document("tiers = []", ""), "tiers", "0 tiers");
}

#[test]
fn a_zero_latency_budget_is_rejected() {
    let error = rejected(
        &document("latency_budget_ms = { p4 = 0 }", TIERS),
        "latency_budget_ms.p4",
        ": 0,",
    );
    assert!(error.to_string().contains("\"none\""), "{error}");
    let doc = document("latency_budget_ms = [\"none\", 0, 1, 1, 1, 1, 1, 1]", TIERS);
    rejected(&doc, "latency_budget_ms.p1", ": 0,");
    // Positive, but below one ns: rounds to 0, rejected rather than silently 0.
    let doc = document("latency_budget_ms = { p7 = 0.0000001 }", TIERS);
    rejected(&doc, "latency_budget_ms.p7", "0.0000001");
}

#[test]
fn a_zero_budget_window_is_rejected() {
    rejected(
        &document("budget_window_ms = 0", TIERS),
        "budget_window_ms",
        ": 0,",
    );
}

#[test]
fn a_queue_depth_of_zero_is_rejected() {
    rejected(
        &document("max_queue_depth = 0", TIERS),
        "max_queue_depth",
        ": 0,",
    );
    rejected(
        &document("max_queue_depth = 4294967296", TIERS),
        "max_queue_depth",
        "4294967296",
    );
    PolicyDocument::from_toml(&document("max_queue_depth = 4294967295", TIERS))
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn warning_percent_outside_1_to_100_is_rejected() {
    rejected(
        &document("warning_percent = 0\nclear_percent = 0", TIERS),
        "warning_percent",
        ": 0,",
    );
    rejected(
        &document("warning_percent = 101", TIERS),
        "warning_percent",
        "101",
    );
    rejected(
        &document("warning_percent = 256", TIERS),
        "warning_percent",
        "256",
    );
}

#[test]
fn clear_percent_at_or_above_warning_is_rejected() {
    let error = rejected(
        &document("warning_percent = 80\nclear_percent = 80", TIERS),
        "clear_percent",
        "80",
    );
    assert!(error.to_string().contains("< warning_percent"), "{error}");
    rejected(
        &document("clear_percent = 1000", TIERS),
        "clear_percent",
        "1000",
    );
}

#[test]
fn critical_strikes_outside_1_to_15_are_rejected() {
    rejected(
        &document("critical_strikes = 0", TIERS),
        "critical_strikes",
        ": 0,",
    );
    rejected(
        &document("critical_strikes = 16", TIERS),
        "critical_strikes",
        "16",
    );
    PolicyDocument::from_toml(&document("critical_strikes = 15", TIERS))
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn a_zero_aging_timeout_is_rejected() {
    let error = rejected(
        &document("aging_timeout_ms = 0", TIERS),
        "aging_timeout_ms",
        ": 0,",
    );
    assert!(error.to_string().contains("\"none\""), "{error}");
    // "none" (or "off") switches aging off instead.
    for off in ["none", "off"] {
        let doc = document(&format!("aging_timeout_ms = \"{off}\""), TIERS);
        let policy = PolicyDocument::from_toml(&doc).unwrap().validate().unwrap();
        assert_eq!(policy.spec().aging_timeout_ns, None);
    }
    let doc = document("aging_timeout_ms = \"never\"", TIERS);
    rejected(&doc, "aging_timeout_ms", "never");
}

#[test]
fn an_aqm_target_at_or_above_its_interval_is_rejected() {
    let aqm = |a: &str| {
        document(
            "",
            &tiers_with(
                "share_percent = 60",
                &format!("share_percent = 60\naqm = {{ {a} }}"),
            ),
        )
    };
    let error = rejected(
        &aqm("target_ms = 5, interval_ms = 5"),
        "tiers[1].aqm",
        "target_ms = 5, interval_ms = 5",
    );
    assert!(
        error.to_string().contains("target_ms < interval_ms"),
        "{error}"
    );
    rejected(
        &aqm("target_ms = 0, interval_ms = 5"),
        "tiers[1].aqm",
        "target_ms = 0",
    );
    // 2^36 ns is the longest interval: 68719.476736 ms passes, one ns more does not.
    let ok = aqm("target_ms = 5, interval_ms = 68719.476736");
    let policy = PolicyDocument::from_toml(&ok).unwrap().validate().unwrap();
    assert_eq!(policy.tiers()[1].aqm.unwrap().interval_ns, 1 << 36);
    rejected(
        &aqm("target_ms = 5, interval_ms = 68719.476737"),
        "tiers[1].aqm",
        "68719.476737",
    );
    rejected(&aqm("target_ms = 5"), "tiers[1].aqm", "interval_ms");
}

#[test]
fn max_packet_bytes_outside_1_to_65535_is_rejected() {
    rejected(
        &document("max_packet_bytes = 0", TIERS),
        "max_packet_bytes",
        ": 0,",
    );
    rejected(
        &document("max_packet_bytes = 65536", TIERS),
        "max_packet_bytes",
        "65536",
    );
    rejected(
        &document("max_packet_bytes = 4294967296", TIERS),
        "max_packet_bytes",
        "4294967296",
    );
}

#[test]
fn a_quantum_outside_64_to_2_pow_20_is_rejected() {
    rejected(
        &document("quantum_bytes = 63", TIERS),
        "quantum_bytes",
        "63",
    );
    rejected(
        &document("quantum_bytes = 1048577", TIERS),
        "quantum_bytes",
        "1048577",
    );
    for ok in [64, 1_048_576] {
        let doc = document(&format!("quantum_bytes = {ok}"), TIERS);
        let policy = PolicyDocument::from_toml(&doc).unwrap().validate().unwrap();
        assert_eq!(policy.spec().quantum_bytes, ok);
    }
}

#[test]
fn a_cap_burst_multiplier_outside_1_to_1000_is_rejected() {
    rejected(
        &document("cap_burst_multiplier = 0.5", TIERS),
        "cap_burst_multiplier",
        "0.5",
    );
    rejected(
        &document("cap_burst_multiplier = 1000.5", TIERS),
        "cap_burst_multiplier",
        "1000.5",
    );
    rejected(
        &document("cap_burst_multiplier = nan", TIERS),
        "cap_burst_multiplier",
        "NaN",
    );
    rejected(
        &document("cap_burst_multiplier = inf", TIERS),
        "cap_burst_multiplier",
        "inf",
    );
    // An integer is a fine multiplier.
    let doc = document("cap_burst_multiplier = 3", TIERS);
    let policy = PolicyDocument::from_toml(&doc).unwrap().validate().unwrap();
    assert_eq!(policy.spec().cap_burst_multiplier, 3.0);
}

#[test]
fn a_link_rate_of_zero_is_rejected() {
    let doc = document("[link]\nrate_mbps = 0\nburst_bytes = 65536", TIERS);
    rejected(&doc, "link.rate_mbps", ": 0,");
    let doc = document("[link]\nrate_bps = 0\nburst_bytes = 65536", TIERS);
    rejected(&doc, "link.rate_bps", ": 0,");
}

#[test]
fn a_link_needs_exactly_one_rate() {
    let doc = document(
        "[link]\nrate_mbps = 1\nrate_bps = 1000000\nburst_bytes = 65536",
        TIERS,
    );
    rejected(&doc, "link", "both");
    let doc = document("[link]\nburst_bytes = 65536", TIERS);
    rejected(&doc, "link.rate_mbps", "missing");
}

#[test]
fn a_link_burst_below_the_largest_packet_is_rejected() {
    let doc = document(
        "max_packet_bytes = 1500\n[link]\nrate_mbps = 10\nburst_bytes = 1499",
        TIERS,
    );
    rejected(&doc, "link.burst_bytes", "1499");
    let doc = document(
        "max_packet_bytes = 1500\n[link]\nrate_mbps = 10\nburst_bytes = 1500",
        TIERS,
    );
    let policy = PolicyDocument::from_toml(&doc).unwrap().validate().unwrap();
    assert_eq!(policy.spec().link.unwrap().burst_bytes, 1500);
    let doc = document("[link]\nrate_mbps = 10\nburst_bytes = 1073741825", TIERS);
    rejected(&doc, "link.burst_bytes", "1073741825");
}

#[test]
fn unit_overflow_is_rejected_naming_the_field() {
    // u64::MAX ns is 18446744073709.551615 ms: one ms more does not fit.
    let doc = document("latency_budget_ms = { p7 = 18446744073710 }", TIERS);
    let error = rejected(&doc, "latency_budget_ms.p7", "18446744073710");
    assert!(
        error.to_string().contains("at most 18446744073709 ms"),
        "{error}"
    );
    let doc = document("budget_window_ms = 9223372036854775807", TIERS);
    rejected(&doc, "budget_window_ms", "9223372036854775807");
    rejected(
        &document("aging_timeout_ms = 1e300", TIERS),
        "aging_timeout_ms",
        "1000000000000",
    );
    let doc = document(
        "[link]\nrate_mbps = 18446744073710\nburst_bytes = 65536",
        TIERS,
    );
    rejected(&doc, "link.rate_mbps", "at most 18446744073709 Mbit/s");
    let aqm = "share_percent = 25\naqm = { target_ms = 1, interval_ms = 18446744073710 }";
    rejected(
        &document("", &tiers_with("share_percent = 25", aqm)),
        "tiers[0].aqm.interval_ms",
        "18446744073710",
    );
}

#[test]
fn an_unknown_field_is_rejected_by_name() {
    let error = rejected(
        &document("max_queue_dept = 5", TIERS),
        "max_queue_dept",
        "unknown field `max_queue_dept`",
    );
    assert!(matches!(error, PolicyRejection::Parse { .. }));
    let tiers = tiers_with("share_percent = 15", "share_percent = 15\nweight = 3");
    rejected(
        &document("", &tiers),
        "tiers[2].weight",
        "unknown field `weight`",
    );
    let doc = document(
        "[link]\nrate_mbps = 1\nburst_bytes = 65536\nburst_ms = 1",
        TIERS,
    );
    rejected(&doc, "link.burst_ms", "unknown field `burst_ms`");
    rejected(
        &document("latency_budget_ms = { p8 = 1 }", TIERS),
        "latency_budget_ms",
        "unknown field `p8`",
    );
    let gate = PolicyGate::new(&Policy::default(), None);
    let error = gate
        .admit(br#"{"version": 2, "aqm": true, "tier": []}"#, None)
        .unwrap_err();
    assert_eq!(error.field(), Some("tier"));
    assert!(
        error.to_string().contains("unknown field `tier`"),
        "{error}"
    );
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn a_value_of_the_wrong_type_is_rejected_by_name() {
    rejected(
        &document("max_queue_depth = \"10\"", TIERS),
        "max_queue_depth",
        "invalid type: string",
    );
    rejected(
        &document("disconnect = 1", TIERS),
        "disconnect",
        "invalid type: integer",
    );
    rejected(
        &document("", &tiers_with("name = \"Low\"", "name = 3")),
        "tiers[2].name",
        "invalid type",
    );
    rejected(
        &document("latency_budget_ms = { p7 = true }", TIERS),
        "latency_budget_ms.p7",
        "invalid type",
    );
    rejected(
        &document("latency_budget_ms = [1, 2]", TIERS),
        "latency_budget_ms",
        "invalid length 2",
    );
    rejected(
        &document("version = -3", TIERS).replacen("version = 2\n", "", 1),
        "version",
        "-3",
    );
    rejected(
        &document("preset = \"classes6\"", TIERS),
        "preset",
        "classes6",
    );
    let gate = PolicyGate::new(&Policy::default(), None);
    let json =
        br#"{"version": 2, "tiers": [{"name": "a", "priorities": [0], "share_percent": "100"}]}"#;
    let error = gate.admit(json, None).unwrap_err();
    assert_eq!(error.field(), Some("tiers[0].share_percent"));
    assert!(
        error.to_string().contains("invalid type: string \"100\""),
        "{error}"
    );
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn syntax_errors_are_rejected_with_the_position() {
    let gate = PolicyGate::new(&Policy::default(), None);
    let error = gate
        .admit(b"version = 2\nmax_queue_depth = = 3\n", None)
        .unwrap_err();
    assert!(matches!(error, PolicyRejection::Parse { .. }));
    assert!(error.to_string().contains("line 2"), "{error}");
    let error = gate.admit(b"{\"version\": 2,}", None).unwrap_err();
    assert!(
        error.to_string().starts_with("JSON document rejected"),
        "{error}"
    );
    assert_eq!(error.field(), None);
    let error = gate.admit(b"{\"version\": 2} {}", None).unwrap_err();
    assert!(error.to_string().contains("trailing characters"), "{error}");
    let error = gate
        .admit(b"version = 2\nmax_queue_depth = 3\xff\n", None)
        .unwrap_err();
    assert!(error.to_string().contains("UTF-8"), "{error}");
    let error = gate.admit(b"preset = \"default\"\n", None).unwrap_err();
    assert!(
        error.to_string().contains("missing field `version`"),
        "{error}"
    );
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn hostile_documents_get_bounded_errors() {
    let gate = PolicyGate::new(&Policy::default(), None);
    // Just too large.
    let mut big = document("", TIERS);
    big += &"#".repeat(64 * 1024);
    let error = gate.admit(big.as_bytes(), None).unwrap_err();
    assert!(
        error.to_string().contains("expected at most 65536"),
        "{error}"
    );
    // Deep nesting and a 60 KiB line: a short error, no stack overflow.
    for nested in [
        "[".repeat(60_000),
        "{a=".repeat(20_000),
        format!("\"{}", "x".repeat(60_000)),
    ] {
        let doc = format!("version = 2\nx = {nested}");
        let error = gate.admit(doc.as_bytes(), None).unwrap_err();
        assert!(
            error.to_string().len() < 2_000,
            "{} bytes",
            error.to_string().len()
        );
    }
    let json = format!("{{\"version\": 2, \"tiers\": {}", "[".repeat(60_000));
    let error = gate.admit(json.as_bytes(), None).unwrap_err();
    assert!(error.to_string().len() < 2_000, "{error}");
    assert_eq!(gate.running_version(), 1);
}
