//! O5: the degrade state machine, driven hazard by hazard and back, on a virtual clock.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use qos_control::health::{
    Hazard, HealthConfig, HealthConfigError, HealthMachine, HealthState, Observation, TierOrder,
    Transition, WorkerObservation,
};
use qos_dataplane::sched::{Policy, PolicySpec, TierSpec};

use HealthState::{Degraded, Normal, Safe, Unknown};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// A fresh worker with a 100-descriptor pool holding `pool_pct` descriptors.
fn w(pool_pct: u64) -> WorkerObservation {
    WorkerObservation {
        heartbeat_age_ns: 10 * MS,
        stalled: false,
        pool_queued: pool_pct,
        pool_capacity: 100,
        ring_full_events: 0,
    }
}

fn full_rings(mut o: WorkerObservation) -> WorkerObservation {
    o.ring_full_events = 7;
    o
}

fn stale(mut o: WorkerObservation) -> WorkerObservation {
    o.heartbeat_age_ns = S;
    o
}

fn machine(tiers: TierOrder) -> HealthMachine {
    HealthMachine::new(HealthConfig::default(), tiers).unwrap()
}

fn tick(m: &mut HealthMachine, now_ns: u64, workers: &[WorkerObservation]) -> Vec<Transition> {
    m.tick(&Observation { now_ns, workers })
}

/// The machine after a first healthy tick at t = 0 (it starts UNKNOWN).
fn normal(tiers: TierOrder) -> HealthMachine {
    let mut m = machine(tiers);
    assert_eq!(m.state(), Unknown);
    let t = tick(&mut m, 0, &[w(10), w(10)]);
    assert_eq!(t, [tr(Unknown, Normal, Hazard::Recovered, None, &[], 0)]);
    m
}

fn tr(
    from: HealthState,
    to: HealthState,
    hazard: Hazard,
    worker: Option<usize>,
    shed: &[usize],
    at_ns: u64,
) -> Transition {
    Transition {
        from,
        to,
        hazard,
        worker,
        shed_tiers: shed.to_vec(),
        at_ns,
    }
}

/// Runs ticks every 100 ms from `from_k` to `to_k` (inclusive) with `workers(k)`,
/// collecting every transition.
fn run(
    m: &mut HealthMachine,
    ks: std::ops::RangeInclusive<u64>,
    workers: impl Fn(u64) -> Vec<WorkerObservation>,
) -> Vec<Transition> {
    ks.flat_map(|k| tick(m, k * 100 * MS, &workers(k)))
        .collect()
}

#[test]
fn pool_hazards_escalate_at_once_and_recover_one_level_per_hold() {
    let mut m = normal(TierOrder::highest_first(3));
    // 85% on worker 1: DEGRADED, the lowest tier (index 2 of High, Medium, Low) shed.
    let t = tick(&mut m, 100 * MS, &[w(10), w(85)]);
    assert_eq!(
        t,
        [tr(
            Normal,
            Degraded,
            Hazard::PoolNearFull,
            Some(1),
            &[2],
            100 * MS
        )]
    );
    assert!(m.state().is_healthy());
    // 97%: SAFE, all but the highest shed.
    let t = tick(&mut m, 200 * MS, &[w(97), w(85)]);
    assert_eq!(
        t,
        [tr(
            Degraded,
            Safe,
            Hazard::PoolNearFull,
            Some(0),
            &[2, 1],
            200 * MS
        )]
    );
    assert!(!m.state().is_healthy());
    assert_eq!(m.shed_tiers(), [2, 1]);
    // Back to 10% from t = 0.3 s: SAFE holds 5 s, then DEGRADED, 5 s more, then NORMAL;
    // each reported once over 30 s of ticks.
    let all = run(&mut m, 3..=300, |_| vec![w(10), w(10)]);
    assert_eq!(
        all,
        [
            tr(Safe, Degraded, Hazard::Recovered, None, &[2], 5_300 * MS),
            tr(Degraded, Normal, Hazard::Recovered, None, &[], 10_300 * MS),
        ]
    );
    assert_eq!(m.state(), Normal);
    assert!(m.shed_tiers().is_empty());
}

#[test]
fn normal_to_safe_is_one_transition() {
    let mut m = normal(TierOrder::highest_first(3));
    let t = tick(&mut m, S, &[w(99)]);
    assert_eq!(
        t,
        [tr(Normal, Safe, Hazard::PoolNearFull, Some(0), &[2, 1], S)]
    );
}

#[test]
fn thresholds_are_inclusive() {
    let mut m = normal(TierOrder::highest_first(3));
    assert!(tick(&mut m, S, &[w(79)]).is_empty());
    assert_eq!(tick(&mut m, 2 * S, &[w(80)])[0].to, Degraded);
    assert!(tick(&mut m, 3 * S, &[w(94)]).is_empty());
    assert_eq!(tick(&mut m, 4 * S, &[w(95)])[0].to, Safe);
    // Over capacity is as full as can be; no pool (capacity 0) is no hazard.
    let mut m = normal(TierOrder::highest_first(3));
    let over = WorkerObservation {
        pool_queued: 150,
        ..w(0)
    };
    assert_eq!(tick(&mut m, S, &[over])[0].to, Safe);
    let mut m = normal(TierOrder::highest_first(3));
    let none = WorkerObservation {
        pool_queued: 5,
        pool_capacity: 0,
        ..w(0)
    };
    assert!(tick(&mut m, S, &[none]).is_empty());
    // Odd capacities: 800 of 1000 and 4 of 5 are exactly 80%.
    let mut m = normal(TierOrder::highest_first(3));
    let at = WorkerObservation {
        pool_queued: 4,
        pool_capacity: 5,
        ..w(0)
    };
    assert_eq!(tick(&mut m, S, &[at])[0].to, Degraded);
}

#[test]
fn the_hazard_during_the_hold_restarts_it() {
    let mut m = normal(TierOrder::highest_first(3));
    tick(&mut m, 0, &[w(97)]);
    assert_eq!(m.state(), Safe);
    // 3 s calm (10%, then 85%: still below SAFE's hazard), then 97% again at 4 s.
    let t = run(&mut m, 1..=40, |k| vec![w(if k < 30 { 10 } else { 85 })]);
    assert!(t.is_empty());
    assert!(tick(&mut m, 4_100 * MS, &[w(97)]).is_empty());
    // The 5 s start again from the first calm tick after it (4.2 s): not at 8.2 s ...
    let t = run(&mut m, 42..=91, |_| vec![w(10)]);
    assert!(t.is_empty(), "{t:?}");
    // ... but at 9.2 s.
    let t = run(&mut m, 92..=92, |_| vec![w(10)]);
    assert_eq!(
        t,
        [tr(
            Safe,
            Degraded,
            Hazard::Recovered,
            None,
            &[2],
            9_200 * MS
        )]
    );
    // DEGRADED's own hazard (85%) at 12 s restarts its hold; NORMAL 5 s after it.
    let t = run(&mut m, 93..=300, |k| {
        vec![w(if k == 120 { 85 } else { 10 })]
    });
    assert_eq!(
        t,
        [tr(
            Degraded,
            Normal,
            Hazard::Recovered,
            None,
            &[],
            17_100 * MS
        )]
    );
}

#[test]
fn a_long_gap_steps_back_only_one_level() {
    let mut m = normal(TierOrder::highest_first(3));
    tick(&mut m, S, &[w(97)]);
    assert!(tick(&mut m, 2 * S, &[w(0)]).is_empty()); // the calm starts
    let t = tick(&mut m, 100 * S, &[w(0)]);
    assert_eq!(
        t,
        [tr(Safe, Degraded, Hazard::Recovered, None, &[2], 100 * S)]
    );
    assert!(tick(&mut m, 100 * S + 1, &[w(0)]).is_empty());
    assert!(tick(&mut m, 105 * S - 1, &[w(0)]).is_empty());
    assert_eq!(tick(&mut m, 105 * S, &[w(0)])[0].to, Normal);
}

#[test]
fn rings_full_in_n_consecutive_ticks_degrade() {
    let mut m = normal(TierOrder::highest_first(3));
    let n = HealthConfig::default().ring_full_ticks;
    assert_eq!(n, 3);
    // One tick, then two, then a gap: never three in a row.
    let pattern = [true, false, true, true, false, false, true, true, false];
    let t = run(&mut m, 1..=9, |k| {
        let full = pattern[k as usize - 1];
        vec![if full { full_rings(w(10)) } else { w(10) }]
    });
    assert!(t.is_empty(), "{t:?}");
    // Three in a row, on different workers (producers are pushed back either way).
    let t = run(&mut m, 10..=12, |k| {
        if k % 2 == 0 {
            vec![full_rings(w(10)), w(10)]
        } else {
            vec![w(10), full_rings(w(10))]
        }
    });
    assert_eq!(
        t,
        [tr(
            Normal,
            Degraded,
            Hazard::IngressRingsFull,
            None,
            &[2],
            1_200 * MS
        )]
    );
    // Still full: no new transition; then calm: NORMAL 5 s after the first calm tick.
    let t = run(&mut m, 13..=20, |_| vec![full_rings(w(10))]);
    assert!(t.is_empty());
    let t = run(&mut m, 21..=200, |_| vec![w(10)]);
    assert_eq!(
        t,
        [tr(
            Degraded,
            Normal,
            Hazard::Recovered,
            None,
            &[],
            7_100 * MS
        )]
    );
}

#[test]
fn a_stall_degrades() {
    let mut m = normal(TierOrder::highest_first(3));
    let stalled = WorkerObservation {
        stalled: true,
        ..w(10)
    };
    let t = tick(&mut m, S, &[w(10), stalled]);
    assert_eq!(
        t,
        [tr(
            Normal,
            Degraded,
            Hazard::WorkerStalled,
            Some(1),
            &[2],
            S
        )]
    );
    // A stall on the next tick is the current level's hazard: it holds recovery back.
    assert!(tick(&mut m, 4 * S, &[stalled]).is_empty());
    assert!(tick(&mut m, 5 * S, &[w(10)]).is_empty());
    assert!(tick(&mut m, 10 * S - 1, &[w(10)]).is_empty());
    assert_eq!(tick(&mut m, 10 * S, &[w(10)])[0].to, Normal);
}

#[test]
fn the_most_severe_hazard_is_named() {
    let mut m = normal(TierOrder::highest_first(3));
    let stalled = WorkerObservation {
        stalled: true,
        ..w(85)
    };
    let t = tick(&mut m, S, &[w(10), stalled]);
    assert_eq!((t[0].hazard, t[0].worker), (Hazard::PoolNearFull, Some(1)));
    let stalled = WorkerObservation {
        stalled: true,
        ..w(10)
    };
    let t = tick(&mut m, 2 * S, &[stalled, w(96)]);
    assert_eq!(
        (t[0].to, t[0].hazard, t[0].worker),
        (Safe, Hazard::PoolNearFull, Some(1))
    );
}

#[test]
fn a_stale_heartbeat_is_unknown_from_any_state() {
    for (pool, level) in [(10, Normal), (85, Degraded), (97, Safe)] {
        let mut m = normal(TierOrder::highest_first(3));
        tick(&mut m, S, &[w(pool), w(pool)]);
        assert_eq!(m.state(), level);
        let shed = m.shed_tiers();
        let t = tick(&mut m, 2 * S, &[w(pool), stale(w(pool))]);
        assert_eq!(
            t,
            [tr(
                level,
                Unknown,
                Hazard::HeartbeatStale,
                Some(1),
                &shed,
                2 * S
            )]
        );
        assert!(!m.state().is_healthy());
        assert_eq!(m.state().http_status(), 503);
        // Stale for a while, whatever the pool does: reported once, shedding unchanged.
        let t = run(&mut m, 21..=200, |k| vec![stale(w(k % 100)), w(10)]);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(m.shed_tiers(), shed);
        // Fresh again with the same pool: back to the level the hazards give.
        let t = tick(&mut m, 30 * S, &[w(pool), w(pool)]);
        assert_eq!(
            t,
            [tr(Unknown, level, Hazard::Recovered, None, &shed, 30 * S)]
        );
    }
}

#[test]
fn leaving_unknown_goes_to_the_state_the_hazards_give() {
    // DEGRADED, stale, then fresh with the pool at 97%: straight to SAFE.
    let mut m = normal(TierOrder::highest_first(3));
    tick(&mut m, S, &[w(85)]);
    tick(&mut m, 2 * S, &[stale(w(85))]);
    let t = tick(&mut m, 3 * S, &[w(97)]);
    assert_eq!(
        t,
        [tr(
            Unknown,
            Safe,
            Hazard::PoolNearFull,
            Some(0),
            &[2, 1],
            3 * S
        )]
    );
    // SAFE, stale, then fresh and calm: SAFE first (the hold was not observed), then one
    // level per hold from the first fresh tick.
    let mut m = normal(TierOrder::highest_first(3));
    tick(&mut m, S, &[w(97)]);
    tick(&mut m, 2 * S, &[stale(w(97))]);
    let t = tick(&mut m, 20 * S, &[w(0)]);
    assert_eq!(
        t,
        [tr(Unknown, Safe, Hazard::Recovered, None, &[2, 1], 20 * S)]
    );
    assert!(tick(&mut m, 25 * S - 1, &[w(0)]).is_empty());
    assert_eq!(tick(&mut m, 25 * S, &[w(0)])[0].to, Degraded);
    assert_eq!(tick(&mut m, 30 * S, &[w(0)])[0].to, Normal);
}

#[test]
fn heartbeat_threshold_and_no_workers() {
    let cfg = HealthConfig::default();
    let mut m = normal(TierOrder::highest_first(3));
    let almost = WorkerObservation {
        heartbeat_age_ns: cfg.heartbeat_stale_ns - 1,
        ..w(10)
    };
    assert!(tick(&mut m, S, &[almost]).is_empty());
    let at = WorkerObservation {
        heartbeat_age_ns: cfg.heartbeat_stale_ns,
        ..w(10)
    };
    assert_eq!(tick(&mut m, 2 * S, &[at])[0].to, Unknown);
    // No worker observed: nothing vouches for the dataplane.
    let mut m = normal(TierOrder::highest_first(3));
    let t = tick(&mut m, S, &[]);
    assert_eq!(
        t,
        [tr(Normal, Unknown, Hazard::HeartbeatStale, None, &[], S)]
    );
    // Before any tick the machine is UNKNOWN, too.
    assert_eq!(machine(TierOrder::highest_first(3)).state(), Unknown);
}

/// Drives a machine NORMAL -> DEGRADED -> SAFE and returns the two shed sets.
fn shed_sets(tiers: TierOrder) -> (Vec<usize>, Vec<usize>) {
    let mut m = normal(tiers);
    let d = tick(&mut m, S, &[w(85)]).remove(0);
    let s = tick(&mut m, 2 * S, &[w(97)]).remove(0);
    assert_eq!((d.to, s.to), (Degraded, Safe));
    (d.shed_tiers, s.shed_tiers)
}

#[test]
fn three_tier_reference_policy() {
    let order = TierOrder::from_policy(&Policy::default());
    assert_eq!(order, TierOrder::highest_first(3));
    assert_eq!(order.lowest_first(), [2, 1, 0]); // Low, Medium, High
    assert_eq!(shed_sets(order), (vec![2], vec![2, 1]));
}

#[test]
fn five_tier_classes5_policy() {
    let order = TierOrder::from_policy(&Policy::classes5());
    assert_eq!(order.lowest_first(), [4, 3, 2, 1, 0]); // LogsMetrics ... Critical
    assert_eq!(shed_sets(order), (vec![4], vec![4, 3, 2, 1]));
}

#[test]
fn tier_order_given_by_the_caller() {
    let order = TierOrder::new(vec![1, 0, 2]).unwrap();
    assert_eq!(shed_sets(order), (vec![1], vec![1, 0]));
    let two = TierOrder::new(vec![0, 1]).unwrap();
    assert_eq!(shed_sets(two), (vec![0], vec![0]));
}

#[test]
fn a_tier_holding_priorities_0_and_7_is_protected() {
    let spec = PolicySpec {
        tiers: vec![
            TierSpec::new("Ends", &[0, 7], 50),
            TierSpec::new("Middle", &[1, 2, 3, 4, 5, 6], 50),
        ],
        ..PolicySpec::default()
    };
    let policy = spec.build().unwrap();
    let order = TierOrder::from_policy(&policy);
    assert_eq!(order.lowest_first(), [1, 0]);
    assert_eq!(shed_sets(order), (vec![1], vec![1]));
}

/// One tier: nothing can be shed while protecting it. The states are still entered and
/// reported (SAFE is still unhealthy); the shed sets are empty.
#[test]
fn one_tier_policy_sheds_nothing() {
    let order = TierOrder::new(vec![0]).unwrap();
    let mut m = normal(order);
    let t = tick(&mut m, S, &[w(85)]);
    assert_eq!(
        t,
        [tr(Normal, Degraded, Hazard::PoolNearFull, Some(0), &[], S)]
    );
    let t = tick(&mut m, 2 * S, &[w(97)]);
    assert_eq!(
        t,
        [tr(
            Degraded,
            Safe,
            Hazard::PoolNearFull,
            Some(0),
            &[],
            2 * S
        )]
    );
    assert!(!m.state().is_healthy());
    assert!(m.shed_tiers().is_empty());
    assert_eq!(
        TierOrder::highest_first(0),
        TierOrder::new(vec![0]).unwrap()
    );
}

#[test]
fn a_new_tier_order_changes_the_shed_set_not_the_state() {
    let mut m = normal(TierOrder::highest_first(3));
    tick(&mut m, S, &[w(97)]);
    assert_eq!(m.shed_tiers(), [2, 1]);
    m.set_tier_order(TierOrder::from_policy(&Policy::classes5()));
    assert_eq!(m.state(), Safe);
    assert_eq!(m.shed_tiers(), [4, 3, 2, 1]);
}

fn config_error(cfg: HealthConfig) -> HealthConfigError {
    HealthMachine::new(cfg, TierOrder::highest_first(3)).unwrap_err()
}

#[test]
fn config_errors_name_the_field() {
    let d = HealthConfig::default;
    let cases: Vec<(HealthConfig, &str, &str)> = vec![
        (
            HealthConfig {
                heartbeat_stale_ns: 0,
                ..d()
            },
            "heartbeat_stale_ns",
            "0",
        ),
        (
            HealthConfig {
                pool_degraded: 0.0,
                ..d()
            },
            "pool_degraded",
            "0",
        ),
        (
            HealthConfig {
                pool_degraded: 1.5,
                ..d()
            },
            "pool_degraded",
            "1.5",
        ),
        (
            HealthConfig {
                pool_degraded: f64::NAN,
                ..d()
            },
            "pool_degraded",
            "NaN",
        ),
        (
            HealthConfig {
                pool_safe: -0.1,
                ..d()
            },
            "pool_safe",
            "-0.1",
        ),
        (
            HealthConfig {
                pool_safe: 0.5,
                ..d()
            },
            "pool_safe",
            "0.5",
        ),
        (
            HealthConfig {
                ring_full_ticks: 0,
                ..d()
            },
            "ring_full_ticks",
            "0",
        ),
        (
            HealthConfig {
                recovery_hold_ns: 0,
                ..d()
            },
            "recovery_hold_ns",
            "0",
        ),
    ];
    for (cfg, field, value) in cases {
        let e = config_error(cfg);
        assert_eq!((e.field, e.value.as_str()), (field, value));
        assert!(
            e.to_string()
                .starts_with(&format!("health.{field}: {value}, expected ")),
            "{e}"
        );
    }
    assert_eq!(
        config_error(HealthConfig {
            pool_safe: 0.5,
            ..d()
        })
        .to_string(),
        "health.pool_safe: 0.5, expected >= pool_degraded (0.8)"
    );
    // Equal thresholds are allowed: the pool goes straight to SAFE.
    let cfg = HealthConfig {
        pool_degraded: 0.9,
        pool_safe: 0.9,
        ..d()
    };
    let mut m = HealthMachine::new(cfg, TierOrder::highest_first(3)).unwrap();
    tick(&mut m, 0, &[w(0)]);
    assert_eq!(tick(&mut m, S, &[w(90)])[0].to, Safe);
    assert!(HealthConfig::default().validate().is_ok());
}

#[test]
fn tier_order_errors_name_the_field() {
    for bad in [
        vec![],
        vec![0, 0],
        vec![0, 2],
        (0..9).collect::<Vec<usize>>(),
    ] {
        let e = TierOrder::new(bad.clone()).unwrap_err();
        assert_eq!(e.field, "tier_order", "{bad:?}");
        assert_eq!(e.value, format!("{bad:?}"));
    }
    assert_eq!(
        TierOrder::new(vec![0, 2]).unwrap_err().to_string(),
        "health.tier_order: [0, 2], expected each tier index 0..2 exactly once"
    );
}

#[test]
fn config_reads_from_toml() {
    let cfg: HealthConfig = toml::from_str("pool_safe = 0.99\nring_full_ticks = 5\n").unwrap();
    assert_eq!(
        cfg,
        HealthConfig {
            pool_safe: 0.99,
            ring_full_ticks: 5,
            ..HealthConfig::default()
        }
    );
    let err = toml::from_str::<HealthConfig>("pool_saf = 0.99\n").unwrap_err();
    assert!(err.to_string().contains("pool_saf"), "{err}");
}

#[test]
fn names_on_the_wire() {
    let states = [
        (Normal, "NORMAL", 200),
        (Degraded, "DEGRADED", 200),
        (Safe, "SAFE", 503),
        (Unknown, "UNKNOWN", 503),
    ];
    for (s, name, code) in states {
        assert_eq!(s.to_string(), name);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<HealthState>(&format!("\"{name}\"")).unwrap(),
            s
        );
        assert_eq!(s.http_status(), code);
        assert_eq!(s.is_healthy(), code == 200);
    }
    let hazards = [
        (Hazard::PoolNearFull, "pool_near_full"),
        (Hazard::IngressRingsFull, "ingress_rings_full"),
        (Hazard::WorkerStalled, "worker_stalled"),
        (Hazard::HeartbeatStale, "heartbeat_stale"),
        (Hazard::Recovered, "recovered"),
    ];
    for (h, name) in hazards {
        assert_eq!(h.to_string(), name);
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{name}\""));
    }
    let t = tr(Normal, Degraded, Hazard::PoolNearFull, Some(1), &[2], 7);
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        r#"{"from":"NORMAL","to":"DEGRADED","hazard":"pool_near_full","worker":1,"shed_tiers":[2],"at_ns":7}"#
    );
}

/// Found by a red-team review: after a hazard at 200 s, a calm tick whose clock had
/// stepped back to 0 started the recovery hold "at 0", and a calm tick at 200.25 s
/// then recovered, 250 ms into a 5 s hold. An earlier time is now read as the latest
/// tick's, so the hold runs from 200 s whatever the clock did between.
#[test]
fn o5_a_clock_stepped_back_does_not_shorten_the_recovery_hold() {
    let mut m = normal(TierOrder::highest_first(3));
    let t = tick(&mut m, 200 * S, &[w(85)]);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (Normal, Degraded));
    assert!(
        tick(&mut m, 0, &[w(10)]).is_empty(),
        "a calm tick back at 0"
    );
    assert!(
        tick(&mut m, 200 * S + S / 4, &[w(10)]).is_empty(),
        "250 ms in"
    );
    assert!(tick(&mut m, 204 * S, &[w(10)]).is_empty(), "4 s in");
    let t = tick(&mut m, 205 * S, &[w(10)]);
    assert_eq!(t.len(), 1, "recovers once the 5 s hold has passed");
    assert_eq!(
        (t[0].from, t[0].to, t[0].at_ns),
        (Degraded, Normal, 205 * S)
    );
    assert_eq!(m.state(), Normal);
}
