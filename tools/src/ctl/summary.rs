//! The human-readable views `qos-ctl` prints: a validated policy, `/status` and
//! `/integrity`. The API answers are read as JSON values field by field, so an answer
//! with a field missing or added still prints (a missing one as `?`) rather than fail:
//! `--json` gives the answer verbatim for anything this view leaves out.

use std::fmt::{self, Write as _};

use qos_dataplane::sched::Policy;
use serde_json::Value;

use super::hdr::NS_PER_MS;

/// Writes the summary of a validated policy: version, tiers, budgets, queueing, link.
pub(crate) fn write_policy(
    f: &mut fmt::Formatter<'_>,
    policy: &Policy,
    sha256: &str,
) -> fmt::Result {
    let spec = policy.spec();
    writeln!(f, "valid: policy version {}", spec.version)?;
    writeln!(f, "  document sha256 {sha256}")?;
    writeln!(f, "  tiers (share when all are backlogged):")?;
    for tier in &spec.tiers {
        let priorities: Vec<String> = tier.priorities.iter().map(u8::to_string).collect();
        let aqm = tier.aqm.map_or(String::new(), |a| {
            format!(
                ", aqm target {} ms interval {} ms",
                a.target_ns as f64 / NS_PER_MS,
                a.interval_ns as f64 / NS_PER_MS
            )
        });
        writeln!(
            f,
            "    {:<10} {:>3}%  priorities {}{aqm}",
            tier.name,
            tier.share_percent,
            priorities.join(",")
        )?;
    }
    let budgets: Vec<String> = (0..spec.latency_budget_ns.len())
        .rev()
        .map(|p| match spec.latency_budget_ns[p] {
            Some(ns) => format!("p{p} {} ms", ns as f64 / NS_PER_MS),
            None => format!("p{p} none"),
        })
        .collect();
    writeln!(f, "  latency budgets: {}", budgets.join(", "))?;
    writeln!(
        f,
        "  queues: {} packets per stream (warning at {}%, clear at {}%), disconnect {}, aqm {}",
        spec.max_queue_depth,
        spec.warning_percent,
        spec.clear_percent,
        on_off(spec.disconnect),
        on_off(spec.aqm)
    )?;
    match spec.link {
        Some(link) => writeln!(
            f,
            "  link: {} Mbit/s, burst {} bytes",
            link.rate_bps as f64 / 1e6,
            link.burst_bytes
        ),
        None => writeln!(f, "  link: not paced (the scheduler only orders)"),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// A JSON scalar as text (`?` when missing, strings unquoted).
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "?".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Elements of a JSON array field (empty when missing).
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The view of a `GET /status` answer.
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "health          {}", text(v.get("health")));
    let _ = writeln!(out, "policy version  {}", text(v.get("policy_version")));
    let versions = items(v, "worker_policy_versions");
    let _ = writeln!(out, "workers         {}", versions.len());
    let _ = writeln!(
        out,
        "  {:<7} {:>14} {:>8} {:>8} {:>14}",
        "worker", "policy version", "streams", "queued", "heartbeat ms"
    );
    for (w, version) in versions.iter().enumerate() {
        let at = |key: &str| text(items(v, key).get(w));
        let age = items(v, "heartbeat_age_ms")
            .get(w)
            .and_then(Value::as_f64)
            .map_or("?".into(), |ms| format!("{ms:.1}"));
        let _ = writeln!(
            out,
            "  {:<7} {:>14} {:>8} {:>8} {:>14}",
            w,
            text(Some(version)),
            at("shard_streams"),
            at("shard_queued"),
            age
        );
    }
    let shed: Vec<String> = items(v, "shed_tiers")
        .iter()
        .map(|t| text(Some(t)))
        .collect();
    let shed = if shed.is_empty() {
        "none".into()
    } else {
        shed.join(", ")
    };
    let _ = writeln!(out, "shedding        {shed}");
    let audit = match v.get("audit_head") {
        Some(h @ Value::Object(_)) => format!(
            "next seq {}, last hash {} (anchor: {}:{})",
            text(h.get("next_seq")),
            text(h.get("last_hash")),
            text(h.get("next_seq")),
            text(h.get("last_hash"))
        ),
        _ => "no audit log".into(),
    };
    let _ = writeln!(out, "audit head      {audit}");
    let store = match v.get("metrics_db") {
        Some(m @ Value::Object(_)) => format!(
            "{} batches written, {} failed, {} dropped{}",
            text(m.get("batches_written")),
            text(m.get("batches_failed")),
            text(m.get("batches_dropped")),
            match m.get("last_error") {
                Some(Value::String(e)) => format!("; last error: {e}"),
                _ => String::new(),
            }
        ),
        _ => "not configured".into(),
    };
    let _ = writeln!(out, "metrics.db      {store}");
    for w in items(v, "warnings") {
        let _ = writeln!(out, "warning: {}", text(Some(w)));
    }
    out
}

/// The view of a `GET /integrity` answer, and whether it says S11 holds.
pub fn integrity(v: &Value) -> (String, bool) {
    let holds = v.get("s11_holds").and_then(Value::as_bool) == Some(true);
    let mut out = String::new();
    let _ = writeln!(out, "{}", text(v.get("statement")));
    let cols = [
        "taken",
        "sent",
        "discarded",
        "queued",
        "pending",
        "enqueued",
    ];
    let _ = write!(out, "  {:<7}", "worker");
    for c in cols {
        let _ = write!(out, " {c:>10}");
    }
    let _ = writeln!(out, " {:>9}", "conserved");
    for w in items(v, "workers") {
        let _ = write!(out, "  {:<7}", text(w.get("worker")));
        for c in cols {
            let _ = write!(out, " {:>10}", text(w.get(c)));
        }
        let _ = writeln!(out, " {:>9}", text(w.get("conserved")));
    }
    for (key, label) in [
        ("dropped_by_reason", "dropped"),
        ("refused_by_reason", "refused"),
    ] {
        let parts: Vec<String> = v
            .get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| n.as_u64() != Some(0))
                    .map(|(k, n)| format!("{k} {}", text(Some(n))))
                    .collect()
            })
            .unwrap_or_default();
        let parts = if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        };
        let _ = writeln!(out, "{label:<8} {parts}");
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for record in items(v, "policy_history") {
        *outcomes.entry(text(record.get("outcome"))).or_default() += 1;
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
    let _ = writeln!(
        out,
        "history  {} backpressure intervals, {} degrade intervals; policies: {}",
        items(v, "backpressure").len(),
        items(v, "degrade").len(),
        if outcomes.is_empty() {
            "none".into()
        } else {
            outcomes.join(", ")
        }
    );
    (out, holds)
}
