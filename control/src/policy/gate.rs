//! The admission gate (C2, C3): signature, validation and version checks between a
//! policy document and the dataplane.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use qos_dataplane::sched::Policy;
use sha2::{Digest, Sha256};

use super::document::PolicyDocument;
use super::error::PolicyRejection;
use super::signing::{hex, verify};

/// What [`PolicyGate::admit`] decided about a document.
#[derive(Clone, Debug, PartialEq)]
pub enum Admitted {
    /// A new version: publish `policy`, then [`PolicyGate::commit`] this.
    Apply {
        /// The validated policy.
        policy: Arc<Policy>,
        /// Its version.
        version: u64,
        /// SHA-256 of the exact document bytes, lower-case hex.
        sha256_hex: String,
        /// Whether a configured key verified the document's signature.
        signed: bool,
    },
    /// The running version with the same policy again: nothing to publish (C2).
    NoOp {
        /// The running version.
        version: u64,
    },
}

impl Admitted {
    /// The version admitted.
    pub fn version(&self) -> u64 {
        match self {
            Self::Apply { version, .. } | Self::NoOp { version } => *version,
        }
    }
}

/// Decides which policy documents may replace the running policy.
///
/// Call order: [`admit`](Self::admit) a document (the gate does not change), publish
/// the policy of an [`Admitted::Apply`] to the dataplane, and only once that succeeded
/// [`commit`](Self::commit) it. A rejected document, or a publish that failed, leaves
/// the gate, like the dataplane, on the running policy.
///
/// `admit` checks, in this order: the signature, when a verifying key is configured
/// (before the bytes are parsed at all; C3); the document's syntax and the whole
/// policy (C1); the version against the running one (C2): lower is stale, equal is a
/// no-op when the policy is the same and a conflicting replay otherwise, higher is
/// applied.
#[derive(Clone, Debug)]
pub struct PolicyGate {
    running: Arc<Policy>,
    sha256_hex: Option<String>,
    key: Option<VerifyingKey>,
}

impl PolicyGate {
    /// A gate whose running policy is `running` (the one the dataplane was started
    /// with; no document hash is known for it), accepting only documents signed by
    /// `key` when one is given.
    pub fn new(running: &Policy, key: Option<VerifyingKey>) -> Self {
        Self {
            running: Arc::new(running.clone()),
            sha256_hex: None,
            key,
        }
    }

    /// The running policy.
    pub fn running(&self) -> &Arc<Policy> {
        &self.running
    }

    /// The running version.
    pub fn running_version(&self) -> u64 {
        self.running.version()
    }

    /// SHA-256 (hex) of the document the running policy came from, once one was
    /// committed.
    pub fn running_sha256_hex(&self) -> Option<&str> {
        self.sha256_hex.as_deref()
    }

    /// The verifying key documents must be signed with, if any.
    pub fn verifying_key(&self) -> Option<&VerifyingKey> {
        self.key.as_ref()
    }

    /// Decides about `document` (its exact bytes, TOML or JSON by
    /// [`Format::detect`](super::Format::detect)) and its detached `signature`
    /// (standard base64). Does not change the gate.
    ///
    /// Without a configured key a signature is not checked and the result says
    /// `signed: false`.
    pub fn admit(
        &self,
        document: &[u8],
        signature: Option<&str>,
    ) -> Result<Admitted, PolicyRejection> {
        let signed = self.check_signature(document, signature)?;
        let policy = PolicyDocument::from_bytes(document)?.validate()?;
        let version = policy.version();
        let running = self.running.version();
        let sha256 = sha256_hex(document);
        if version < running {
            return Err(PolicyRejection::Stale { version, running });
        }
        if version == running {
            let same_bytes = self.sha256_hex.as_ref() == Some(&sha256);
            if same_bytes || policy.spec() == self.running.spec() {
                return Ok(Admitted::NoOp { version });
            }
            return Err(PolicyRejection::Conflict {
                version,
                sha256_hex: sha256,
            });
        }
        Ok(Admitted::Apply {
            policy: Arc::new(policy),
            version,
            sha256_hex: sha256,
            signed,
        })
    }

    /// Records an admitted policy as running, once it was published. A no-op changes
    /// nothing. An `Apply` whose version is no longer above the running one (another
    /// document was committed since it was admitted) is refused as stale and changes
    /// nothing.
    pub fn commit(&mut self, admitted: &Admitted) -> Result<(), PolicyRejection> {
        let Admitted::Apply {
            policy, sha256_hex, ..
        } = admitted
        else {
            return Ok(());
        };
        let running = self.running.version();
        if policy.version() <= running {
            return Err(PolicyRejection::Stale {
                version: policy.version(),
                running,
            });
        }
        self.sha256_hex = Some(sha256_hex.clone());
        self.running = Arc::clone(policy);
        Ok(())
    }

    fn check_signature(
        &self,
        document: &[u8],
        signature: Option<&str>,
    ) -> Result<bool, PolicyRejection> {
        let Some(key) = &self.key else {
            return Ok(false);
        };
        let signature = signature.ok_or(PolicyRejection::SignatureMissing)?;
        verify(document, signature, key)?;
        Ok(true)
    }
}

/// SHA-256 of `document`, lower-case hex (the form audit records and `Admitted` use).
pub fn sha256_hex(document: &[u8]) -> String {
    hex(&Sha256::digest(document))
}
