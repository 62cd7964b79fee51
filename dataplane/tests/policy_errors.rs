//! C1: a policy is validated as a whole, and an invalid one is rejected with an error
//! that names the offending field and value. One test per `PolicyError` variant (and one
//! per scalar field of `PolicyError::Field`), plus the presets and the flat policy.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use qos_dataplane::sched::{
    AqmSpec, LinkRate, Next, Policy, PolicyError, PolicySpec, Priority, Scheduler, SchedulerConfig,
    StreamConfig, TierSpec,
};

/// Builds `spec`, which must be invalid, and returns the error with its message.
fn reject(spec: PolicySpec) -> (PolicyError, String) {
    let err = spec.build().expect_err("the policy is invalid");
    let msg = err.to_string();
    (err, msg)
}

/// The reference policy with `edit` applied.
fn spec_with(edit: impl FnOnce(&mut PolicySpec)) -> PolicySpec {
    let mut s = PolicySpec::default();
    edit(&mut s);
    s
}

/// Asserts that `msg` contains every one of `parts`.
fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not contain {p:?}");
    }
}

#[test]
fn c1_no_tiers_is_tier_count() {
    let (err, msg) = reject(spec_with(|s| s.tiers.clear()));
    assert_eq!(err, PolicyError::TierCount { count: 0 });
    assert_names(&msg, &["tiers", "0 tiers"]);
}

#[test]
fn c1_nine_tiers_is_tier_count() {
    let (err, msg) = reject(spec_with(|s| {
        s.tiers = (0..9u8)
            .map(|i| TierSpec::new(&format!("t{i}"), &[i % 8], 11))
            .collect();
    }));
    assert_eq!(err, PolicyError::TierCount { count: 9 });
    assert_names(&msg, &["tiers", "9 tiers"]);
}

#[test]
fn c1_empty_tier_name_is_tier_name() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].name.clear()));
    assert_eq!(
        err,
        PolicyError::TierName {
            index: 1,
            name: String::new()
        }
    );
    assert_names(&msg, &["tiers[1].name", "\"\""]);
}

#[test]
fn c1_duplicate_tier_name_is_tier_name() {
    let (err, msg) = reject(spec_with(|s| s.tiers[2].name = "High".into()));
    assert_eq!(
        err,
        PolicyError::TierName {
            index: 2,
            name: "High".into()
        }
    );
    assert_names(&msg, &["tiers[2].name", "\"High\""]);
}

#[test]
fn c1_zero_share_is_share() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].share_percent = 0));
    assert_eq!(err, PolicyError::Share { index: 1, value: 0 });
    assert_names(&msg, &["tiers[1].share_percent", ": 0"]);
}

#[test]
fn c1_share_above_100_is_share() {
    let (err, msg) = reject(spec_with(|s| s.tiers[2].share_percent = 101));
    assert_eq!(
        err,
        PolicyError::Share {
            index: 2,
            value: 101
        }
    );
    assert_names(&msg, &["tiers[2].share_percent", "101"]);
}

#[test]
fn c1_shares_not_summing_to_100_is_share_sum() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].share_percent = 55));
    assert_eq!(err, PolicyError::ShareSum { sum: 95 });
    assert_names(&msg, &["share_percent", "95", "100"]);
}

#[test]
fn c1_tier_without_priorities_is_empty_tier() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].priorities.clear()));
    assert_eq!(err, PolicyError::EmptyTier { index: 1 });
    assert_names(&msg, &["tiers[1].priorities", "empty"]);
}

#[test]
fn c1_priority_out_of_range_is_priority() {
    let (err, msg) = reject(spec_with(|s| s.tiers[0].priorities.push(9)));
    assert_eq!(err, PolicyError::Priority { index: 0, value: 9 });
    assert_names(&msg, &["tiers[0].priorities", "9", "0..=7"]);
}

#[test]
fn c1_priority_in_two_tiers_is_priority_twice() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].priorities.push(7)));
    assert_eq!(err, PolicyError::PriorityTwice { index: 1, value: 7 });
    assert_names(&msg, &["tiers[1].priorities", "7"]);
}

#[test]
fn c1_priority_listed_twice_in_one_tier_is_priority_twice() {
    let (err, msg) = reject(spec_with(|s| s.tiers[2].priorities = vec![0, 1, 0]));
    assert_eq!(err, PolicyError::PriorityTwice { index: 2, value: 0 });
    assert_names(&msg, &["tiers[2].priorities", "0"]);
}

#[test]
fn c1_priority_in_no_tier_is_priority_missing() {
    let (err, msg) = reject(spec_with(|s| s.tiers[1].priorities = vec![2, 4, 5]));
    assert_eq!(err, PolicyError::PriorityMissing { value: 3 });
    assert_names(&msg, &["tiers[*].priorities", "priority 3"]);
}

#[test]
fn c1_low_tier_below_5_percent_is_low_share() {
    let (err, msg) = reject(spec_with(|s| {
        s.tiers[0].share_percent = 36;
        s.tiers[2].share_percent = 4;
    }));
    assert_eq!(err, PolicyError::LowShare { index: 2, value: 4 });
    assert_names(
        &msg,
        &["tiers[2].share_percent", ": 4", "priority 0", ">= 5"],
    );
}

#[test]
fn c1_low_share_follows_priority_0_not_the_last_tier() {
    // Priority 0 in the first tier: that tier is the one held to 5%.
    let (err, _) = reject(spec_with(|s| {
        s.tiers = vec![
            TierSpec::new("Bulk", &[0, 1], 3),
            TierSpec::new("Rest", &[2, 3, 4, 5, 6, 7], 97),
        ];
    }));
    assert_eq!(err, PolicyError::LowShare { index: 0, value: 3 });
    // The last tier at 3% is fine when it does not hold priority 0.
    spec_with(|s| {
        s.tiers = vec![
            TierSpec::new("Bulk", &[0, 1], 97),
            TierSpec::new("Rest", &[2, 3, 4, 5, 6, 7], 3),
        ];
    })
    .build()
    .unwrap();
}

#[test]
fn c1_aqm_target_not_below_interval_is_aqm() {
    let aqm = AqmSpec {
        target_ns: 5_000_000,
        interval_ns: 5_000_000,
    };
    let (err, msg) = reject(spec_with(|s| s.tiers[0].aqm = Some(aqm)));
    assert_eq!(
        err,
        PolicyError::Aqm {
            index: 0,
            target_ns: 5_000_000,
            interval_ns: 5_000_000
        }
    );
    assert_names(
        &msg,
        &["tiers[0].aqm", "target 5000000 ns", "interval 5000000 ns"],
    );
}

#[test]
fn c1_aqm_zero_target_is_aqm() {
    let aqm = AqmSpec {
        target_ns: 0,
        interval_ns: 1_000,
    };
    let (err, msg) = reject(spec_with(|s| s.tiers[2].aqm = Some(aqm)));
    assert!(
        matches!(
            err,
            PolicyError::Aqm {
                index: 2,
                target_ns: 0,
                interval_ns: 1_000
            }
        ),
        "{err:?}"
    );
    assert_names(&msg, &["tiers[2].aqm", "target 0 ns", "interval 1000 ns"]);
}

#[test]
fn c1_aqm_interval_above_2_pow_36_is_aqm() {
    let interval = (1u64 << 36) + 1;
    let aqm = AqmSpec {
        target_ns: 1_000,
        interval_ns: interval,
    };
    let (err, msg) = reject(spec_with(|s| s.tiers[1].aqm = Some(aqm)));
    assert!(
        matches!(err, PolicyError::Aqm { index: 1, interval_ns, .. } if interval_ns == interval),
        "{err:?}"
    );
    assert_names(&msg, &["tiers[1].aqm", &format!("interval {interval} ns")]);
    // The boundary itself is accepted.
    spec_with(|s| {
        s.tiers[1].aqm = Some(AqmSpec {
            target_ns: 1_000,
            interval_ns: 1 << 36,
        })
    })
    .build()
    .unwrap();
}

/// An edit of a policy spec.
type Edit = Box<dyn FnOnce(&mut PolicySpec)>;

/// Every scalar field out of range: `PolicyError::Field` naming it and its value.
#[test]
fn c1_scalar_fields_out_of_range_are_field_errors_naming_field_and_value() {
    let link = |rate_bps, burst_bytes| {
        Some(LinkRate {
            rate_bps,
            burst_bytes,
        })
    };
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "latency_budget_ns",
            "priority 3: 0",
            Box::new(|s| s.latency_budget_ns[3] = Some(0)),
        ),
        (
            "budget_window_ns",
            "0",
            Box::new(|s| s.budget_window_ns = 0),
        ),
        ("max_queue_depth", "0", Box::new(|s| s.max_queue_depth = 0)),
        ("warning_percent", "0", Box::new(|s| s.warning_percent = 0)),
        (
            "warning_percent",
            "101",
            Box::new(|s| s.warning_percent = 101),
        ),
        ("clear_percent", "90", Box::new(|s| s.clear_percent = 90)),
        (
            "critical_strikes",
            "0",
            Box::new(|s| s.critical_strikes = 0),
        ),
        (
            "critical_strikes",
            "16",
            Box::new(|s| s.critical_strikes = 16),
        ),
        (
            "aging_timeout_ns",
            "0",
            Box::new(|s| s.aging_timeout_ns = Some(0)),
        ),
        (
            "max_packet_bytes",
            "0",
            Box::new(|s| s.max_packet_bytes = 0),
        ),
        (
            "max_packet_bytes",
            "65536",
            Box::new(|s| s.max_packet_bytes = 65_536),
        ),
        ("quantum_bytes", "63", Box::new(|s| s.quantum_bytes = 63)),
        (
            "quantum_bytes",
            "1048577",
            Box::new(|s| s.quantum_bytes = (1 << 20) + 1),
        ),
        (
            "cap_burst_multiplier",
            "0.5",
            Box::new(|s| s.cap_burst_multiplier = 0.5),
        ),
        (
            "cap_burst_multiplier",
            "NaN",
            Box::new(|s| s.cap_burst_multiplier = f64::NAN),
        ),
        (
            "cap_burst_multiplier",
            "1000.5",
            Box::new(|s| s.cap_burst_multiplier = 1000.5),
        ),
        (
            "link.rate_bps",
            "0",
            Box::new(move |s| s.link = link(0, 10_000)),
        ),
        (
            "link.burst_bytes",
            "9215",
            Box::new(move |s| s.link = link(1_000_000, 9_215)),
        ),
        (
            "link.burst_bytes",
            "1073741825",
            Box::new(move |s| s.link = link(1_000_000, (1 << 30) + 1)),
        ),
    ];
    for (field, value, edit) in cases {
        let (err, msg) = reject(spec_with(edit));
        match &err {
            PolicyError::Field {
                field: f, value: v, ..
            } => {
                assert_eq!((*f, v.as_str()), (field, value), "{msg}");
            }
            other => panic!("{field}={value}: expected a Field error, got {other:?}"),
        }
        assert!(
            msg.starts_with(&format!("{field}: {value}")),
            "message {msg:?} names {field} and {value} first"
        );
        assert!(
            msg.contains("expected"),
            "message {msg:?} says what is expected"
        );
    }
}

#[test]
fn c1_boundary_values_of_scalar_fields_are_accepted() {
    let edits: Vec<Edit> = vec![
        Box::new(|s| s.critical_strikes = 1),
        Box::new(|s| s.critical_strikes = 15),
        Box::new(|s| s.quantum_bytes = 64),
        Box::new(|s| s.quantum_bytes = 1 << 20),
        Box::new(|s| s.max_packet_bytes = 65_535),
        Box::new(|s| {
            s.warning_percent = 1;
            s.clear_percent = 0;
        }),
        Box::new(|s| s.cap_burst_multiplier = 1.0),
        Box::new(|s| s.cap_burst_multiplier = 1000.0),
        Box::new(|s| s.latency_budget_ns[7] = None),
        Box::new(|s| {
            s.link = Some(LinkRate {
                rate_bps: 1,
                burst_bytes: 9_216,
            })
        }),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let spec = spec_with(edit);
        assert!(spec.clone().build().is_ok(), "case {i}: {spec:?}");
    }
}

/// A flat policy: one tier with all eight priorities at 100%.
fn flat(aging_timeout_ns: Option<u64>) -> PolicySpec {
    PolicySpec {
        version: 9,
        tiers: vec![TierSpec::new("All", &[0, 1, 2, 3, 4, 5, 6, 7], 100)],
        aging_timeout_ns,
        ..PolicySpec::default()
    }
}

/// Runs two backlogged streams, P0 and P7, under `policy` and returns the packets each
/// got in the first 129 decisions.
fn flat_service(policy: Policy) -> (usize, usize) {
    let mut s: Scheduler<u8> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(policy)).unwrap();
    let low = s.open(StreamConfig::with_priority(0)).unwrap();
    let high = s.open(StreamConfig::with_priority(7)).unwrap();
    for _ in 0..200 {
        s.enqueue(0, low, 0, 1_000).unwrap();
        s.enqueue(0, high, 7, 1_000).unwrap();
    }
    let mut got = [0usize; 8];
    for t in 0..129 {
        let Next::Packet(d) = s.dequeue(t) else {
            panic!("backlogged")
        };
        got[usize::from(d.packet)] += 1;
    }
    assert!(s.shard_stats().is_conserved());
    assert_eq!(s.tier_stats(0).unwrap().served.packets, 129);
    assert!(s.tier_stats(1).is_none(), "one tier only");
    (got[0], got[7])
}

#[test]
fn s9_c1_flat_single_tier_policy_is_valid_with_aging_on() {
    let policy = flat(Some(10_000_000_000)).build().unwrap();
    assert_eq!(policy.tiers().len(), 1);
    assert!((0..8).all(|p| policy.tier_of(p) == 0));
    assert_eq!(policy.low_tier(), 0);
    let (low, high) = flat_service(policy);
    // Inside the one tier, weights 2^p: P7 gets 128 packets for P0's 1 (S3).
    assert!(high >= 120 && low >= 1, "P0 {low}, P7 {high}");
}

#[test]
fn s9_c1_flat_single_tier_policy_is_valid_with_aging_off() {
    let policy = flat(None).build().unwrap();
    assert_eq!(policy.spec().aging_timeout_ns, None);
    let (low, high) = flat_service(policy);
    assert!(high >= 120 && low >= 1, "P0 {low}, P7 {high}");
}

#[test]
fn c1_presets_build_and_map_priorities_as_specified() {
    let default = Policy::default();
    assert_eq!(PolicySpec::default().build().unwrap(), default);
    let names: Vec<&str> = default.tiers().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["High", "Medium", "Low"]);
    let tier_of: Vec<usize> = (0..8).map(|p| default.tier_of(p)).collect();
    assert_eq!(tier_of, [2, 2, 1, 1, 1, 1, 0, 0]);
    let shares: Vec<u8> = default.tiers().iter().map(|t| t.share_percent).collect();
    assert_eq!(shares, [25, 60, 15]);
    assert_eq!(default.low_tier(), 2);

    let c5 = Policy::classes5();
    assert_eq!(PolicySpec::classes5().build().unwrap(), c5);
    let names: Vec<&str> = c5.tiers().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Critical",
            "System",
            "JobExecution",
            "DataTransfer",
            "LogsMetrics"
        ]
    );
    let tier_of: Vec<usize> = (0..8).map(|p| c5.tier_of(p)).collect();
    assert_eq!(tier_of, [4, 4, 3, 3, 2, 2, 1, 0]);
    let shares: Vec<u8> = c5.tiers().iter().map(|t| t.share_percent).collect();
    assert_eq!(shares, [30, 25, 25, 15, 5]);
    assert_eq!(c5.low_tier(), 4);
    // Both run: a scheduler adopts either.
    let mut s: Scheduler<u8> =
        Scheduler::new(SchedulerConfig::default(), Arc::new(default)).unwrap();
    s.set_policy(0, Arc::new(c5));
    assert!(s.tier_stats(4).is_some());
    let id = s
        .open(StreamConfig {
            priority: Priority::ALL[5],
            ..StreamConfig::default()
        })
        .unwrap();
    s.enqueue(0, id, 1, 100).unwrap();
    assert!(matches!(s.dequeue(1), Next::Packet(_)));
}
