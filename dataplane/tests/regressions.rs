//! Regressions found in review: each test failed (panicked, wedged or miscounted)
//! before its fix.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use qos_dataplane::sched::{
    BatchEnd, DropReason, Event, LinkRate, LinkShare, Next, Policy, PolicySpec, Priority, RateCap,
    Rejection, Scheduler, SchedulerConfig, StreamConfig,
};

fn sched(policy: PolicySpec) -> Scheduler<u32> {
    Scheduler::new(
        SchedulerConfig::default(),
        Arc::new(policy.build().unwrap()),
    )
    .unwrap()
}

#[test]
fn s5_wait_times_saturate_at_the_end_of_time() {
    let link = Some(LinkRate {
        rate_bps: 1,
        burst_bytes: 9_216,
    });
    let mut s = sched(PolicySpec {
        link,
        ..PolicySpec::default()
    });
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    let now = u64::MAX - 1_000;
    s.enqueue(now, id, 1, 9_216).unwrap();
    s.enqueue(now, id, 2, 9_216).unwrap();
    assert!(matches!(s.dequeue(now), Next::Packet(_)));
    assert_eq!(s.dequeue(now), Next::Wait { until_ns: u64::MAX });
}

#[test]
fn s5_a_burst_shrunk_below_a_queued_packet_does_not_wedge_the_shard() {
    let a = PolicySpec {
        link: Some(LinkRate {
            rate_bps: 80_000_000,
            burst_bytes: 9_216,
        }),
        ..PolicySpec::default()
    };
    let mut s = sched(a.clone());
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    let voice = s.open(StreamConfig::with_priority(7)).unwrap();
    s.enqueue(0, id, 0, 9_216).unwrap();
    s.enqueue(0, id, 1, 9_000).unwrap();
    let b = PolicySpec {
        version: 2,
        max_packet_bytes: 1_500,
        quantum_bytes: 1_500,
        link: Some(LinkRate {
            rate_bps: 80_000_000,
            burst_bytes: 1_500,
        }),
        ..a
    };
    s.set_policy(0, Arc::new(b.build().unwrap()));
    for i in 0..100 {
        s.enqueue(0, voice, 10 + i, 200).unwrap();
    }
    let (mut now, mut sent) = (0u64, 0);
    for _ in 0..10_000 {
        match s.dequeue(now) {
            Next::Packet(_) => sent += 1,
            Next::Wait { until_ns } => now = until_ns,
            Next::Idle => break,
        }
    }
    assert_eq!(
        sent, 102,
        "every packet leaves, the oversize ones after a full bucket"
    );
}

#[test]
fn s6_a_cap_larger_than_its_bucket_after_a_policy_change_still_passes() {
    let small = PolicySpec {
        max_packet_bytes: 1_500,
        quantum_bytes: 1_500,
        ..PolicySpec::default()
    };
    let mut s = sched(small);
    let cap = Some(RateCap {
        rate_bps: 1_000_000,
        burst_bytes: None,
    }); // 2.0 x 10 ms at 1 Mbit/s = 2,500 B: the policy below raises it to 9,216 B
    let id = s
        .open(StreamConfig {
            priority: Priority::ALL[5],
            weight: None,
            cap,
        })
        .unwrap();
    s.set_policy(0, Arc::new(Policy::default()));
    s.enqueue(0, id, 7, 9_000).unwrap();
    let mut now = 0;
    for _ in 0..100 {
        match s.dequeue(now) {
            Next::Packet(d) => return assert_eq!(d.packet, 7),
            Next::Wait { until_ns } => now = until_ns,
            Next::Idle => panic!("the packet is still queued"),
        }
    }
    panic!("the capped packet never left");
}

/// A stream of priority `p` capped at `rate_bps` with bucket `burst_bytes`.
fn capped(p: usize, rate_bps: u64, burst_bytes: Option<u64>) -> StreamConfig {
    StreamConfig {
        priority: Priority::ALL[p],
        weight: None,
        cap: Some(RateCap {
            rate_bps,
            burst_bytes,
        }),
    }
}

/// Largest `bytes - rate * t` (bytes; `rate * t` rounded down, so the check is the
/// stricter) over every interval between two sends of `log` (`(ns, len)`, in time
/// order).
fn worst_excess(log: &[(u64, u32)], rate_bps: u64) -> i128 {
    let mut worst = i128::MIN;
    for (i, &(from, _)) in log.iter().enumerate() {
        let mut bytes = 0i128;
        for &(at, len) in &log[i..] {
            bytes += i128::from(len);
            let allowed = i128::from(rate_bps) * i128::from(at - from) / 8_000_000_000;
            worst = worst.max(bytes - allowed);
        }
    }
    worst
}

/// Sends what `s` releases from `now` on, following its waits, until it is idle or
/// `sent` holds `n` packets.
fn drain_paced(s: &mut Scheduler<u32>, mut now: u64, n: usize, sent: &mut Vec<(u64, u32)>) {
    while sent.len() < n {
        match s.dequeue(now) {
            Next::Packet(d) => sent.push((now, d.len)),
            Next::Wait { until_ns } => now = until_ns,
            Next::Idle => return,
        }
    }
}

/// Found by a red-team review: packets queued before a policy shrank the link's burst
/// below them each took only one (small) bucket, so 50 packets of 9,000 bytes left at
/// 6x the link rate (450,000 bytes in 73.5 ms at 1 byte/us). An oversize packet is
/// now charged in full (the bucket earns nothing until its excess is paid): within
/// `rate * t + max(burst, largest packet)` over every interval, and at the rate.
#[test]
fn s5_packets_queued_before_the_burst_shrank_below_them_are_charged_in_full() {
    let rate = 8_000_000; // one byte a microsecond
    let a = PolicySpec {
        link: Some(LinkRate {
            rate_bps: rate,
            burst_bytes: 9_216,
        }),
        // The packets wait up to 450 ms: no queue-delay control here.
        aqm: false,
        ..PolicySpec::default()
    };
    let mut s = sched(a.clone());
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..50 {
        s.enqueue(0, id, i, 9_000).unwrap();
    }
    let b = PolicySpec {
        version: 2,
        max_packet_bytes: 1_500,
        quantum_bytes: 1_500,
        link: Some(LinkRate {
            rate_bps: rate,
            burst_bytes: 1_500,
        }),
        ..a
    };
    s.set_policy(0, Arc::new(b.build().unwrap()));
    let mut sent = Vec::new();
    drain_paced(&mut s, 0, 50, &mut sent);
    assert_eq!(sent.len(), 50, "every packet leaves");
    let worst = worst_excess(&sent, rate);
    assert!(worst <= 9_000, "{worst} bytes above rate * t");
    let span_us = (sent[49].0 - sent[0].0) / 1_000;
    assert!(
        span_us >= 49 * 9_000 - 1_500,
        "49 packets after the first take 441,000 us at the rate, less at most one \
         bucket: {span_us} us"
    );
}

/// Found in review: `set_link_share` took its depth unchecked, so a depth of 0 made
/// every packet's cost 0 (no pacing at all) and one above 2^31 bytes overflowed the
/// token count. The depth is now clamped to `max_packet_bytes..=2^30`.
#[test]
fn s5_a_link_share_with_a_zero_depth_still_paces() {
    let mut s = sched(PolicySpec {
        aqm: false,
        ..PolicySpec::default()
    });
    let share = |burst_bytes| LinkShare {
        rate_bps: 8_000_000, // one byte a microsecond
        burst_bytes,
        tier_weights: [1; 8],
    };
    s.set_link_share(0, share(0));
    let id = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..20 {
        s.enqueue(0, id, i, 1_000).unwrap();
    }
    let mut out = Vec::new();
    let end = s.dequeue_batch(0, 32, &mut out);
    assert_eq!(out.len(), 9, "one largest packet (9,216 bytes) at once");
    assert_eq!(end, BatchEnd::Wait { until_ns: 784_000 });
    // The largest depth taken is 2^30 bytes, without overflow.
    s.set_link_share(1_000_000, share(u64::MAX));
    let mut sent = Vec::new();
    drain_paced(&mut s, 1_000_000, 11, &mut sent);
    assert_eq!(sent.len(), 11);
    assert!(s.shard_stats().is_conserved());
}

/// Found by a red-team review: a cap's bucket was sized when the stream opened and
/// kept that size when a policy raised `max_packet_bytes`, so a cap of 80 kbit/s
/// with a 1,500-byte bucket passed 9,000-byte packets at one bucket each: 603,000
/// bytes in 10 s against 100,000. The bucket now follows the policy (at least one
/// largest packet), whether the cap names its own burst or takes the default.
#[test]
fn s6_a_cap_follows_a_raised_max_packet_and_keeps_its_rate() {
    for burst_bytes in [None, Some(1_500)] {
        let small = PolicySpec {
            max_packet_bytes: 1_500,
            quantum_bytes: 1_500,
            aqm: false,
            ..PolicySpec::default()
        };
        let mut s = sched(small.clone());
        let cap_bps = 80_000; // 10,000 bytes a second
        let config = capped(3, cap_bps, burst_bytes);
        let id = s.open(config).unwrap();
        let big = PolicySpec {
            version: 2,
            max_packet_bytes: 9_216,
            quantum_bytes: 1_514,
            ..small
        };
        s.set_policy(0, Arc::new(big.build().unwrap()));
        let (mut now, mut k, mut sent) = (0u64, 0u32, Vec::new());
        let horizon = 10_000_000_000;
        while now <= horizon {
            while s.stream_stats(id).unwrap().queued < 4 {
                s.enqueue(now, id, k, 9_000).unwrap();
                k += 1;
            }
            match s.dequeue(now) {
                Next::Packet(d) => sent.push((now, d.len)),
                Next::Wait { until_ns } => now = until_ns,
                Next::Idle => panic!("a saturated stream is never idle"),
            }
        }
        let bytes: u64 = sent.iter().map(|&(_, len)| u64::from(len)).sum();
        // The bucket grows to one largest packet (9,216 bytes) holding the 1,500 it
        // had: the first packet waits 750 ms for 7,500 more, then one goes every
        // 900 ms, 11 in 10 s. (Charging the oversize packets in full alone, without
        // the resize, would send the first at once and 12 in all.)
        assert!(
            (750_000_000..750_000_000 + 70_000).contains(&sent[0].0),
            "burst {burst_bytes:?}: first at {} ns",
            sent[0].0
        );
        assert_eq!(bytes, 99_000, "burst {burst_bytes:?}: bytes in 10 s");
        let worst = worst_excess(&sent, cap_bps);
        assert!(
            worst <= 9_216,
            "burst {burst_bytes:?}: {worst} bytes above rate * t"
        );
    }
}

/// A stream parked for tokens is re-timed when a policy shrinks its bucket below its
/// head: the head then needs a full (smaller) bucket, which comes sooner.
#[test]
fn s6_a_parked_stream_is_woken_earlier_when_its_bucket_shrinks_below_its_head() {
    let spec = PolicySpec {
        aqm: false,
        ..PolicySpec::default()
    };
    let mut s = sched(spec.clone());
    // 10,000 bytes a second; bucket one largest packet, 9,216 bytes.
    let config = capped(3, 80_000, None);
    let id = s.open(config).unwrap();
    s.enqueue(0, id, 0, 9_000).unwrap();
    s.enqueue(0, id, 1, 9_000).unwrap();
    assert!(matches!(s.dequeue(0), Next::Packet(_)));
    // 216 bytes left: the second waits 878.4 ms for 8,784 more.
    assert!(matches!(s.dequeue(0), Next::Wait { .. }));
    let smaller = PolicySpec {
        version: 2,
        max_packet_bytes: 1_500,
        quantum_bytes: 1_500,
        ..spec
    };
    s.set_policy(0, Arc::new(smaller.build().unwrap()));
    // Now a full 1,500-byte bucket lets it go: 1,284 bytes more, 128.4 ms.
    let mut sent = Vec::new();
    drain_paced(&mut s, 0, 1, &mut sent);
    assert!(
        (128_400_000..128_400_000 + 70_000).contains(&sent[0].0),
        "sent at {} ns",
        sent[0].0
    );
}

/// Found by a red-team review: a new `cap_burst_multiplier` did not reach caps
/// already open (a bucket of 2.0 x 10 ms kept bursting 25,000 bytes under 1.0). The
/// bucket now takes the new depth; the tokens held are kept, clamped to it.
#[test]
fn s6_a_cap_follows_a_changed_burst_multiplier() {
    let at = |multiplier: f64, version: u64| PolicySpec {
        version,
        aqm: false,
        cap_burst_multiplier: multiplier,
        ..PolicySpec::default()
    };
    let mut s = sched(at(2.0, 1));
    // 10 ms at the cap: 12,500 bytes.
    let config = capped(4, 10_000_000, None);
    let id = s.open(config).unwrap();
    let burst_at = |s: &mut Scheduler<u32>, now: u64| {
        for i in 0..200 {
            s.enqueue(now, id, i, 500).unwrap();
        }
        let mut out = Vec::new();
        let end = s.dequeue_batch(now, 1_000, &mut out);
        assert!(
            matches!(end, BatchEnd::Wait { .. }),
            "the cap stops the burst"
        );
        let bytes: u64 = out.iter().map(|d| u64::from(d.len)).sum();
        // Let the rest go and the bucket fill again.
        let mut later = Vec::new();
        drain_paced(s, now, usize::MAX, &mut later);
        bytes
    };
    assert_eq!(burst_at(&mut s, 0), 25_000, "2.0 x 12,500 bytes");
    s.set_policy(20_000_000_000, Arc::new(at(1.0, 2).build().unwrap()));
    assert_eq!(
        burst_at(&mut s, 20_000_000_000),
        12_500,
        "a full bucket clamped to 1.0 x"
    );
    assert_eq!(
        burst_at(&mut s, 40_000_000_000),
        12_500,
        "and after an idle"
    );
    s.set_policy(60_000_000_000, Arc::new(at(4.0, 3).build().unwrap()));
    assert_eq!(
        burst_at(&mut s, 60_000_000_000),
        12_500,
        "a larger bucket is not refilled by the change"
    );
    assert_eq!(
        burst_at(&mut s, 80_000_000_000),
        50_000,
        "4.0 x once it fills"
    );
}

#[test]
fn s7_episodes_end_on_an_empty_queue_even_when_the_watermark_rounds_to_zero() {
    let mut s = sched(PolicySpec {
        max_queue_depth: 1,
        ..PolicySpec::default()
    });
    let id = s.open(StreamConfig::with_priority(2)).unwrap();
    for round in 0..6 {
        s.enqueue(0, id, round, 100).unwrap();
        let r = s.enqueue(0, id, 100 + round, 100).unwrap_err();
        assert_eq!(
            r.reason,
            Rejection::Dropped(DropReason::QueueFull),
            "round {round}"
        );
        assert!(matches!(s.dequeue(0), Next::Packet(_)));
    }
    assert!(
        !s.stream_stats(id).unwrap().disconnected,
        "it backed off every time"
    );
    let cleared = std::iter::from_fn(|| s.pop_event())
        .filter(|e| matches!(e, Event::BackpressureCleared { .. }))
        .count();
    assert_eq!(cleared, 6);
}

#[test]
fn s8_strikes_reset_when_the_queue_drains_even_without_a_warning() {
    let mut s = sched(PolicySpec::default());
    let id = s.open(StreamConfig::with_priority(4)).unwrap();
    for i in 0..10 {
        s.enqueue(0, id, i, 100).unwrap();
    }
    let strict = PolicySpec {
        version: 2,
        max_queue_depth: 5,
        critical_strikes: 1,
        ..PolicySpec::default()
    };
    s.set_policy(0, Arc::new(strict.build().unwrap()));
    let r = s.enqueue(0, id, 50, 100).unwrap_err();
    assert_eq!(
        r.reason,
        Rejection::Dropped(DropReason::QueueFull),
        "strike 1"
    );
    while matches!(s.dequeue(0), Next::Packet(_)) {}
    for i in 0..5 {
        s.enqueue(0, id, 60 + i, 100).unwrap();
    }
    let r = s.enqueue(0, id, 70, 100).unwrap_err();
    assert_eq!(
        r.reason,
        Rejection::Dropped(DropReason::QueueFull),
        "a new episode, strike 1 again"
    );
}

/// A disconnected stream whose cap names a burst below a later policy's largest
/// packet reopens (the burst is raised to that packet, as for open streams); it used
/// to be refused, leaving the stream disconnected until closed.
#[test]
fn a_stream_reopens_after_a_policy_raised_max_packet_above_its_cap_burst() {
    let small = PolicySpec {
        max_packet_bytes: 1_500,
        quantum_bytes: 1_500,
        max_queue_depth: 1,
        critical_strikes: 1,
        aqm: false,
        ..PolicySpec::default()
    };
    let mut s = sched(small.clone());
    // 125,000 bytes a second.
    let config = capped(1, 1_000_000, Some(1_500));
    let id = s.open(config).unwrap();
    s.enqueue(0, id, 0, 100).unwrap();
    let _ = s.enqueue(0, id, 1, 100);
    let r = s.enqueue(0, id, 2, 100).unwrap_err();
    assert_eq!(r.reason, Rejection::Dropped(DropReason::Disconnected));
    let bigger = PolicySpec {
        version: 2,
        max_packet_bytes: 9_216,
        quantum_bytes: 9_216,
        max_queue_depth: 10,
        ..small
    };
    s.set_policy(0, Arc::new(bigger.build().unwrap()));
    assert!(
        s.update(id, config).is_err(),
        "a disconnected stream takes no update"
    );
    let id = s.reopen(id).unwrap();
    assert!(!s.stream_stats(id).unwrap().disconnected);
    // Its bucket is one largest packet (9,216 bytes), full: two 4,500-byte packets go
    // at once, a third waits for its tokens (4,284 bytes more at 125 bytes a ms).
    for i in 0..3 {
        s.enqueue(0, id, 10 + i, 4_500).unwrap();
    }
    let mut sent = Vec::new();
    drain_paced(&mut s, 0, 3, &mut sent);
    let times: Vec<u64> = sent.iter().map(|&(at, _)| at).collect();
    assert_eq!(times[..2], [0, 0]);
    assert!(
        (34_272_000..34_272_000 + 70_000).contains(&times[2]),
        "the third at 34.272 ms (within a wheel tick): {times:?}"
    );
}

#[test]
fn dequeue_reports_idle_once_the_only_throttled_stream_is_closed() {
    let mut s = sched(PolicySpec::default());
    let cap = Some(RateCap {
        rate_bps: 1_000_000,
        burst_bytes: Some(9_216),
    });
    let id = s
        .open(StreamConfig {
            priority: Priority::ALL[6],
            weight: None,
            cap,
        })
        .unwrap();
    for i in 0..10 {
        s.enqueue(0, id, i, 1_500).unwrap();
    }
    while matches!(s.dequeue(0), Next::Packet(_)) {}
    assert!(matches!(s.dequeue(0), Next::Wait { .. }), "throttled");
    s.close(id).unwrap();
    while s.pop_reclaimed().is_some() {}
    assert_eq!(s.queued(), 0);
    assert_eq!(s.dequeue(0), Next::Idle);
}

#[test]
fn s9_switching_aging_off_ends_running_promotions() {
    let aging = PolicySpec {
        aging_timeout_ns: Some(1_000),
        ..PolicySpec::default()
    };
    let mut s = sched(aging.clone());
    let low = s.open(StreamConfig::with_priority(0)).unwrap();
    let mid = s.open(StreamConfig::with_priority(3)).unwrap();
    for i in 0..200 {
        s.enqueue(0, low, i, 1_000).unwrap();
        s.enqueue(0, mid, 1_000 + i, 1_000).unwrap();
    }
    for t in 0..40 {
        let _ = s.dequeue(10_000 + t);
    }
    assert!(s.stream_stats(low).unwrap().promoted, "promoted");
    let off = PolicySpec {
        version: 2,
        aging_timeout_ns: None,
        ..aging.clone()
    };
    s.set_policy(20_000, Arc::new(off.build().unwrap()));
    assert!(!s.stream_stats(low).unwrap().promoted, "promotion ended");
    for t in 0..40 {
        let _ = s.dequeue(20_000 + t);
    }
    assert!(!s.stream_stats(low).unwrap().promoted, "aging is off");
    let on = PolicySpec {
        version: 3,
        ..aging
    };
    s.set_policy(30_000, Arc::new(on.build().unwrap()));
    for t in 0..40 {
        let _ = s.dequeue(30_000 + t);
    }
    assert!(s.stream_stats(low).unwrap().promoted, "promoted again");
    assert!(s.shard_stats().is_conserved());
}

#[test]
fn oversized_capacities_are_a_config_error_not_an_abort() {
    let config = SchedulerConfig {
        max_streams: 1 << 31,
        max_packets: 1 << 31,
        event_capacity: 16,
    };
    let r = Scheduler::<[u8; 4096]>::new(config, Arc::new(Policy::default()));
    // 2^31 slots of 64 B (128 GiB) cannot be reserved on this machine.
    let err = r.expect_err("refused");
    assert!(
        err.field == "max_streams" || err.field == "max_packets",
        "{err}"
    );
}

/// Runs `f` on its own thread; fails if it does not return within `secs` seconds (a
/// hang is a failure, not a stuck test run).
fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(secs))
        .expect("returned in time (a hang otherwise)");
}

/// Two rate-capped streams parked on the timing wheel, heads stamped at 0, the wheel
/// advanced to `at`, then `set_policy(at, next)`.
fn two_parked_then(prio: u8, rate_bps: u64, at: u64, next: PolicySpec) {
    within(20, move || {
        let mut s = sched(PolicySpec::default());
        for _ in 0..2 {
            let id = s
                .open(StreamConfig {
                    cap: Some(RateCap {
                        rate_bps,
                        burst_bytes: None,
                    }),
                    ..StreamConfig::with_priority(prio)
                })
                .unwrap();
            for k in 0..3 {
                s.enqueue(0, id, k, 9_216).unwrap();
            }
        }
        assert!(matches!(s.dequeue(0), Next::Packet(_)));
        assert!(matches!(s.dequeue(0), Next::Packet(_)));
        assert!(matches!(s.dequeue(0), Next::Wait { .. }));
        let _ = s.dequeue(at);
        assert_eq!(s.queued(), 4, "both still parked at {at}");
        s.set_policy(at, Arc::new(next.build().unwrap()));
        // The Low tier's heads are past the new bound: dropped `expired` at once.
        let _ = s.dequeue(at + 1);
        let low = s.priority_stats(Priority::new(prio).unwrap());
        assert!(low.is_conserved(), "{low:?}");
    });
}

/// Policy red team: `set_policy` never returned when it moved the aging bound of two
/// parked, capped Low-tier streams before the wheel's current tick (the default
/// policy with its aging timeout cut from 10 s to 2 s, 5 s after the heads arrived):
/// the walk compared the new time unclamped, found it earlier at every visit, and the
/// two streams swapped places at a slot's tail for good.
#[test]
fn s9_a_shorter_aging_bound_under_parked_capped_streams_returns() {
    two_parked_then(
        0,
        8_000,
        5_000_000_000,
        PolicySpec {
            version: 2,
            aging_timeout_ns: Some(2_000_000_000),
            ..PolicySpec::default()
        },
    );
}

/// The same hang without any change to aging: a remap moves parked, capped P2 streams
/// into the Low tier 15 s after their heads arrived (past Low's 11 s bound).
#[test]
fn s9_a_remap_of_parked_capped_streams_into_the_low_tier_returns() {
    use qos_dataplane::sched::TierSpec;
    two_parked_then(
        2,
        800,
        15_000_000_000,
        PolicySpec {
            version: 2,
            tiers: vec![
                TierSpec::new("High", &[6, 7], 25),
                TierSpec::new("Medium", &[3, 4, 5], 60),
                TierSpec::new("Low", &[0, 1, 2], 15),
            ],
            ..PolicySpec::default()
        },
    );
}

/// Bytes served per tier (High, Medium, Low) over `packets` decisions, three greedy
/// streams of 1,000-byte packets at priorities 7, 4 and 0, under link-share weights
/// `weights` (bit/s) at a rate that never holds them back.
fn tier_bytes_under(weights: [u64; 3], packets: usize) -> [u64; 3] {
    let mut s = sched(PolicySpec {
        aqm: false,
        ..PolicySpec::default()
    });
    let mut tier_weights = [1; 8];
    tier_weights[..3].copy_from_slice(&weights);
    s.set_link_share(
        0,
        LinkShare {
            rate_bps: u64::MAX,
            burst_bytes: 1 << 30,
            tier_weights,
        },
    );
    let ids = [7u8, 4, 0].map(|p| s.open(StreamConfig::with_priority(p)).unwrap());
    for (i, id) in ids.iter().enumerate() {
        for k in 0..packets {
            s.enqueue(0, *id, (i * packets + k) as u32, 1_000).unwrap();
        }
    }
    let mut bytes = [0u64; 3];
    let mut out = Vec::new();
    let mut now = 0;
    while out.len() < packets {
        now += 1_000;
        let _ = s.dequeue_batch(now, 64, &mut out);
    }
    for d in out.iter().take(packets) {
        let t = match d.priority.get() {
            6 | 7 => 0,
            2..=5 => 1,
            _ => 2,
        };
        bytes[t] += u64::from(d.len);
    }
    bytes
}

/// Policy red team (T6, S1): link-share weights are bit/s, and the tiers' inverse
/// weights (2^40 / weight) lost their precision on a fast link: at 1 Tbit/s (weights
/// 2.5e11 / 6e11 / 1.5e11) the inverses were 4, 1 and 7, and the tiers got about
/// 18/72/10 % for 25/60/15. Above 2^63 the lane's doubled weight overflowed (a
/// panic in debug builds). The weights are scaled together first.
#[test]
fn s1_tier_shares_hold_under_the_weights_of_a_terabit_link_and_beyond() {
    let g = 1_000_000_000u64;
    for weights in [
        [25 * g / 100, 60 * g / 100, 15 * g / 100],
        [250 * g, 600 * g, 150 * g],
        [
            u64::MAX / 100 * 25,
            u64::MAX / 100 * 60,
            u64::MAX / 100 * 15,
        ],
    ] {
        let bytes = tier_bytes_under(weights, 9_000);
        let total: u64 = bytes.iter().sum();
        for (got, want) in bytes.iter().zip([0.25, 0.60, 0.15]) {
            let share = *got as f64 / total as f64;
            assert!(
                (share - want).abs() < 0.002,
                "{weights:?}: {bytes:?} ({share:.4} for {want})"
            );
        }
    }
}
