//! Policies as operators write them: a TOML or JSON document, validated as a whole
//! into the dataplane's [`Policy`](qos_dataplane::sched::Policy) (C1), versioned
//! (C2) and optionally signed with ed25519 (C3).
//!
//! * [`PolicyDocument`]: the document, in operator units (ms, Mbit/s, bytes), on top
//!   of a [`Preset`]; [`PolicyDocument::validate`] converts it with overflow checks
//!   and validates it through the dataplane's `PolicySpec::build`.
//! * [`PolicyRejection`]: every reason a document is refused, each naming the field
//!   as a path in the document (`tiers[2].share_percent`), the value and what was
//!   expected.
//! * [`PolicyGate`]: signature, validation and version checks in front of the
//!   dataplane; [`PolicyGate::admit`] decides, [`PolicyGate::commit`] records a
//!   published policy as running.
//! * [`signing`]: detached signatures over the exact document bytes, key generation
//!   and key files (base64 text).
//!
//! # A complete document
//!
//! Every key is shown; all but `version` are optional. This example is
//! [`EXAMPLE_TOML`].
//!
//! ```toml
#![doc = include_str!("policy/example.toml")]
//! ```
//!
//! Reading and validating it:
//!
//! ```
//! use qos_control::policy::{EXAMPLE_TOML, PolicyDocument};
//!
//! let document = PolicyDocument::from_toml(EXAMPLE_TOML)?;
//! let policy = document.validate()?;
//! assert_eq!(policy.version(), 7);
//! let spec = policy.spec();
//! assert_eq!(spec.tiers.len(), 3);
//! assert_eq!(spec.latency_budget_ns[7], Some(10_000_000));
//! assert_eq!(spec.latency_budget_ns[0], None);
//! let link = spec.link.expect("the example paces a link");
//! assert_eq!((link.rate_bps, link.burst_bytes), (1_000_000_000, 65_536));
//! let aqm = spec.tiers[0].aqm.expect("High overrides CoDel");
//! assert_eq!((aqm.target_ns, aqm.interval_ns), (2_000_000, 20_000_000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A minimal document names only what differs from its preset:
//!
//! ```
//! use qos_control::policy::PolicyDocument;
//!
//! let policy = PolicyDocument::from_toml("version = 2\nlatency_budget_ms = { p7 = 5 }")?
//!     .validate()?;
//! assert_eq!(policy.spec().latency_budget_ns[7], Some(5_000_000));
//! assert_eq!(policy.spec().latency_budget_ns[6], Some(20_000_000)); // the preset's
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Admitting a signed document:
//!
//! ```
//! use qos_control::policy::{Admitted, PolicyGate, signing};
//! use qos_dataplane::sched::Policy;
//!
//! let (secret, public) = signing::generate_keypair()?;
//! let mut gate = PolicyGate::new(&Policy::default(), Some(public));
//! let document = b"version = 2\npreset = \"classes5\"\n";
//! let signature = signing::sign(document, &secret);
//! let admitted = gate.admit(document, Some(&signature))?;
//! assert!(matches!(admitted, Admitted::Apply { version: 2, signed: true, .. }));
//! // ... publish the policy to the dataplane, then:
//! gate.commit(&admitted)?;
//! assert_eq!(gate.running_version(), 2);
//! assert!(gate.admit(document, None).is_err()); // unsigned: rejected
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod document;
mod error;
mod gate;
pub mod signing;

pub use document::{
    AqmDocument, LatencyBudgets, LinkDocument, MAX_DOCUMENT_BYTES, Number, OptionalMs,
    PolicyDocument, Preset, TierDocument,
};
pub use error::{Format, PolicyRejection};
pub use gate::{Admitted, PolicyGate, sha256_hex};
pub use signing::{KeyError, generate_keypair, sign, verify};

/// The complete, commented example document of the module documentation (TOML).
pub const EXAMPLE_TOML: &str = include_str!("policy/example.toml");
