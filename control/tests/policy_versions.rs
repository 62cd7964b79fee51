//! C2: versions. Stale rejected, the running version re-applied a no-op, the running
//! version with other content a conflict, a higher version applied, and the gate moves
//! only on commit.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use qos_control::policy::{Admitted, PolicyDocument, PolicyGate, PolicyRejection, sha256_hex};
use qos_dataplane::sched::Policy;

/// A gate running version 5 from `V5`.
const V5: &[u8] = b"version = 5\nmax_queue_depth = 500\n";

fn gate_at_v5() -> PolicyGate {
    let mut gate = PolicyGate::new(&Policy::default(), None);
    let admitted = gate.admit(V5, None).unwrap();
    gate.commit(&admitted).unwrap();
    assert_eq!(gate.running_version(), 5);
    gate
}

#[test]
fn sha256_is_over_the_exact_bytes() {
    // FIPS 180-2 test vector.
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_higher_version_is_applied_only_once_committed() {
    let mut gate = PolicyGate::new(&Policy::default(), None);
    assert_eq!(
        (gate.running_version(), gate.running_sha256_hex()),
        (1, None)
    );
    let admitted = gate.admit(V5, None).unwrap();
    let Admitted::Apply {
        policy,
        version,
        sha256_hex: sha,
        signed,
    } = &admitted
    else {
        panic!("expected Apply, got {admitted:?}");
    };
    assert_eq!((*version, *signed), (5, false));
    assert_eq!(sha, &sha256_hex(V5));
    assert_eq!(policy.spec().max_queue_depth, 500);
    assert_eq!(
        **policy,
        PolicyDocument::from_bytes(V5).unwrap().validate().unwrap()
    );
    // Admitting changed nothing: the same document is still new.
    assert_eq!(gate.running_version(), 1);
    assert_eq!(gate.admit(V5, None).unwrap(), admitted);
    gate.commit(&admitted).unwrap();
    assert_eq!(gate.running_version(), 5);
    assert_eq!(gate.running_sha256_hex(), Some(sha256_hex(V5).as_str()));
    assert!(Arc::ptr_eq(gate.running(), policy));
}

#[test]
fn a_stale_version_is_rejected() {
    let gate = gate_at_v5();
    let running = Arc::clone(gate.running());
    let error = gate.admit(b"version = 4\n", None).unwrap_err();
    assert_eq!(
        error,
        PolicyRejection::Stale {
            version: 4,
            running: 5
        }
    );
    assert_eq!(error.field(), Some("version"));
    assert_eq!(
        error.to_string(),
        "version: 4 is stale, expected the running version 5 or higher"
    );
    let error = gate.admit(b"{\"version\": 0}", None).unwrap_err();
    assert!(matches!(
        error,
        PolicyRejection::Stale {
            version: 0,
            running: 5
        }
    ));
    assert!(Arc::ptr_eq(gate.running(), &running));
}

#[test]
fn the_running_version_reapplied_is_a_no_op() {
    let mut gate = gate_at_v5();
    let running = Arc::clone(gate.running());
    assert_eq!(gate.admit(V5, None).unwrap(), Admitted::NoOp { version: 5 });
    // Other bytes, same policy (a comment, JSON instead of TOML): still a no-op.
    let reformatted = b"# same policy\nmax_queue_depth = 500\nversion = 5\n";
    assert_eq!(
        gate.admit(reformatted, None).unwrap(),
        Admitted::NoOp { version: 5 }
    );
    let json = br#"{"version": 5, "max_queue_depth": 500, "preset": "default"}"#;
    let noop = gate.admit(json, None).unwrap();
    assert_eq!(noop, Admitted::NoOp { version: 5 });
    gate.commit(&noop).unwrap();
    assert!(Arc::ptr_eq(gate.running(), &running));
    assert_eq!(gate.running_sha256_hex(), Some(sha256_hex(V5).as_str()));
}

#[test]
fn the_running_version_with_other_content_is_a_conflict() {
    let gate = gate_at_v5();
    let other = b"version = 5\nmax_queue_depth = 501\n";
    let error = gate.admit(other, None).unwrap_err();
    assert_eq!(
        error,
        PolicyRejection::Conflict {
            version: 5,
            sha256_hex: sha256_hex(other)
        }
    );
    assert_eq!(error.field(), Some("version"));
    assert!(
        error
            .to_string()
            .contains("expected a version higher than 5"),
        "{error}"
    );
    assert_eq!(gate.running_version(), 5);
}

#[test]
fn the_initial_policy_compares_by_content() {
    // No document is known for the policy the dataplane started with: version 1 of
    // the reference policy is a no-op, version 1 of another policy a conflict.
    let gate = PolicyGate::new(&Policy::default(), None);
    assert_eq!(
        gate.admit(b"version = 1", None).unwrap(),
        Admitted::NoOp { version: 1 }
    );
    let error = gate
        .admit(b"version = 1\npreset = \"classes5\"", None)
        .unwrap_err();
    assert!(
        matches!(error, PolicyRejection::Conflict { version: 1, .. }),
        "{error}"
    );
    let gate = PolicyGate::new(&Policy::classes5(), None);
    assert_eq!(
        gate.admit(b"version = 1\npreset = \"classes5\"", None)
            .unwrap(),
        Admitted::NoOp { version: 1 }
    );
}

#[test]
fn a_commit_never_moves_the_gate_backwards() {
    let mut gate = gate_at_v5();
    let v6 = gate.admit(b"version = 6", None).unwrap();
    let v7 = gate.admit(b"version = 7", None).unwrap();
    gate.commit(&v7).unwrap();
    let error = gate.commit(&v6).unwrap_err();
    assert_eq!(
        error,
        PolicyRejection::Stale {
            version: 6,
            running: 7
        }
    );
    assert_eq!(gate.running_version(), 7);
    assert_eq!(
        gate.running_sha256_hex(),
        Some(sha256_hex(b"version = 7").as_str())
    );
    // Committing the same Apply twice is refused the second time too.
    assert!(gate.commit(&v7).is_err());
}

#[test]
fn an_invalid_document_with_a_higher_version_changes_nothing() {
    let gate = gate_at_v5();
    let error = gate
        .admit(b"version = 6\nmax_queue_depth = 0", None)
        .unwrap_err();
    assert_eq!(error.field(), Some("max_queue_depth"));
    assert_eq!(gate.running_version(), 5);
    // A failed publish is the caller not committing: nothing to undo.
    let admitted = gate.admit(b"version = 6", None).unwrap();
    assert_eq!(admitted.version(), 6);
    assert_eq!(gate.running_version(), 5);
}
