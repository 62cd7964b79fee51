//! `qos-ctl`, the operator CLI, as a library: every subcommand is a function here that
//! the binary (`src/bin/qos-ctl.rs`) and the tests call the same way.
//!
//! | subcommand | function | what it wraps |
//! | --- | --- | --- |
//! | `policy validate FILE` | [`validate_policy`] | `PolicyDocument::from_bytes` + `validate` (C1) |
//! | `policy sign FILE --key K` | [`sign_policy`] | `signing::read_signing_key` + `sign` (C3) |
//! | `policy apply FILE` | [`apply_policy`] | `POST /policy` with `X-Qos-Signature` (C2, C3) |
//! | `keygen --out DIR` | [`keygen`] | `generate_keypair`, `write_signing_key`, `write_verifying_key` |
//! | `status`, `integrity` | [`fetch_json`] + [`summary`] | `GET /status`, `GET /integrity` (O6) |
//! | `audit verify FILE` | [`verify_audit`] | `audit::verify` / `verify_with_anchor` (C5) |
//! | `hdr print FILE` | [`hdr::table`] | `hlog::summarize_hlog` (O4) |
//! | `hdr plot FILE --out SVG` | [`plot::plot_hlog`] | `hlog::summarize_hlog`, then an SVG through `plotters` |
//!
//! [`cli`] holds the argument parser and [`cli::run`], which prints and picks the exit
//! code: 0 done, 1 refused or broken (a rejected policy, a broken audit chain, S11 not
//! holding), 2 bad arguments, 3 could not do the job (a file, a key, the network).
//!
//! Errors are [`CtlError`]: each message names the file or address and the cause.

pub mod cli;
pub mod hdr;
pub mod http;
pub mod plot;
pub mod summary;

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use qos_control::audit::{self, AuditError, AuditHead, VerifyReport};
use qos_control::hlog::HlogError;
use qos_control::policy::signing::{self, KeyError};
use qos_control::policy::{MAX_DOCUMENT_BYTES, PolicyDocument, PolicyRejection, sha256_hex};
use qos_dataplane::sched::Policy;
use serde::Deserialize;
use thiserror::Error;

use http::{ApiClient, HttpError};

/// Exit code: the check refused or found a problem (rejected policy, broken chain).
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad command-line arguments (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the job could not be done (unreadable file, bad key, network).
pub const EXIT_FAILED: u8 = 3;

/// File name of the signing (secret) key [`keygen`] writes.
pub const SIGNING_KEY_FILE: &str = "policy-signing.key";
/// File name of the verifying (public) key [`keygen`] writes.
pub const VERIFYING_KEY_FILE: &str = "policy-verifying.key";

/// Why a `qos-ctl` command failed. Every message names the file or the API address.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CtlError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A policy file is larger than any document the control plane accepts.
    #[error("{}: more than {limit} bytes, expected a policy document of at most {limit} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// [`MAX_DOCUMENT_BYTES`].
        limit: usize,
    },
    /// The policy document was rejected locally (C1).
    #[error("{}: {rejection}", .path.display())]
    PolicyRejected {
        /// The document.
        path: PathBuf,
        /// Why, naming the field, the value and what was expected.
        rejection: PolicyRejection,
    },
    /// A key file could not be made, read or written (the message names the file).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `keygen` found a key file already there; keys are never overwritten.
    #[error("{}: exists already; keygen never overwrites a key, expected a directory without {SIGNING_KEY_FILE} and {VERIFYING_KEY_FILE}", .path.display())]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A signature file does not hold a well-formed signature.
    #[error("{}: {rejection}", .path.display())]
    BadSignatureFile {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        rejection: PolicyRejection,
    },
    /// No usable HTTP exchange with the API (names the address).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The control plane refused the request: its status and its own reason.
    #[error("{addr} refused {method} {path} ({status}): {message}")]
    Refused {
        /// The API address.
        addr: String,
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The server's `error` text (or its body).
        message: String,
        /// The server's `field`, when it named one.
        field: Option<String>,
    },
    /// The answer is not the JSON this command expects.
    #[error("{addr}: {path}: the answer is not the expected JSON ({reason})")]
    BadAnswer {
        /// The API address.
        addr: String,
        /// The request path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The audit log could not be read, or the anchor is malformed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// An anchor given on the command line is not `NEXT_SEQ:HASH`.
    #[error(
        "--anchor {value:?}: expected NEXT_SEQ:HASH as /status shows audit_head (next_seq, last_hash)"
    )]
    BadAnchor {
        /// The text given.
        value: String,
    },
    /// The `.hlog` could not be read or summed.
    #[error(transparent)]
    Hlog(#[from] HlogError),
    /// The `.hlog` has no interval (matching the tag filter) with any value.
    #[error("{}: no intervals with values{}, expected at least one", .path.display(), tags_suffix(.tags))]
    NoData {
        /// The log.
        path: PathBuf,
        /// The tag filters given.
        tags: Vec<String>,
    },
    /// Drawing the SVG failed.
    #[error("{}: cannot draw the plot: {message}", .path.display())]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

fn tags_suffix(tags: &[String]) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        format!(" for tag {}", tags.join(", "))
    }
}

impl CtlError {
    /// The process exit code for this error: [`EXIT_REFUSED`] when the policy or the
    /// request was refused (a 4xx answer), [`EXIT_USAGE`] for a malformed `--api`
    /// address, [`EXIT_FAILED`] otherwise (a 5xx answer included).
    pub fn exit_code(&self) -> u8 {
        match self {
            // A server error is not an answer: the job could not be done.
            Self::Refused { status, .. } if *status >= 500 => EXIT_FAILED,
            Self::PolicyRejected { .. } | Self::Refused { .. } => EXIT_REFUSED,
            Self::Http(HttpError::BadAddress { .. }) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// Reads a policy document: at most [`MAX_DOCUMENT_BYTES`], exactly as on disk (the
/// signature covers these bytes).
///
/// # Errors
/// [`CtlError::Read`], [`CtlError::TooLarge`].
pub fn read_document(path: &Path) -> Result<Vec<u8>, CtlError> {
    let read = |source| CtlError::Read {
        path: path.to_owned(),
        source,
    };
    qos_control::files::read_limited(path, MAX_DOCUMENT_BYTES)
        .map_err(read)?
        .ok_or_else(|| CtlError::TooLarge {
            path: path.to_owned(),
            limit: MAX_DOCUMENT_BYTES,
        })
}

/// A policy that validated, with the SHA-256 of its document bytes (the `sha256` the
/// control plane logs and audits in `policy.applied`). `Display` is the summary
/// `policy validate` prints.
#[derive(Debug)]
pub struct ValidatedPolicy {
    /// The validated policy.
    pub policy: Policy,
    /// SHA-256 of the document bytes, lowercase hex.
    pub sha256: String,
}

/// `policy validate FILE`: parses the document (TOML or JSON, detected) and validates
/// it as a whole, as the control plane would (C1).
///
/// # Errors
/// [`CtlError::PolicyRejected`] naming the field, the value and what was expected;
/// [`CtlError::Read`] / [`CtlError::TooLarge`] for the file.
pub fn validate_policy(path: &Path) -> Result<ValidatedPolicy, CtlError> {
    let bytes = read_document(path)?;
    let rejected = |rejection| CtlError::PolicyRejected {
        path: path.to_owned(),
        rejection,
    };
    let policy = PolicyDocument::from_bytes(&bytes)
        .and_then(|d| d.validate())
        .map_err(rejected)?;
    Ok(ValidatedPolicy {
        policy,
        sha256: sha256_hex(&bytes),
    })
}

impl fmt::Display for ValidatedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        summary::write_policy(f, &self.policy, &self.sha256)
    }
}

/// `policy sign FILE --key KEY`: the detached signature of the document's exact bytes,
/// in the base64 form `X-Qos-Signature` carries.
///
/// # Errors
/// [`CtlError::Key`] for the key file, [`CtlError::Read`] / [`CtlError::TooLarge`] for
/// the document.
pub fn sign_policy(document: &Path, key: &Path) -> Result<String, CtlError> {
    let key = signing::read_signing_key(key)?;
    let bytes = read_document(document)?;
    Ok(signing::sign(&bytes, &key))
}

/// Writes `signature` and a newline to `path` (replacing an older signature file).
///
/// # Errors
/// [`CtlError::Write`].
pub fn write_signature(path: &Path, signature: &str) -> Result<(), CtlError> {
    qos_control::files::create_write(path)
        .and_then(|mut f| f.write_all(format!("{signature}\n").as_bytes()))
        .map_err(|source| CtlError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Reads a signature file written by [`write_signature`] and checks that it is 64
/// bytes of base64 (the server checks that it verifies).
///
/// # Errors
/// [`CtlError::Read`], [`CtlError::BadSignatureFile`].
pub fn read_signature(path: &Path) -> Result<String, CtlError> {
    let read = |source| CtlError::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    qos_control::files::open_read(path)
        .map_err(read)?
        .take(1024)
        .read_to_string(&mut text)
        .map_err(read)?;
    let text = text.trim().to_owned();
    signing::decode_signature(&text).map_err(|rejection| CtlError::BadSignatureFile {
        path: path.to_owned(),
        rejection,
    })?;
    Ok(text)
}

/// Where `policy apply` gets the document's signature from.
#[derive(Clone, Debug)]
pub enum SignatureSource {
    /// Send unsigned (accepted only when the control plane has no verifying key).
    None,
    /// Sign now with this signing key file.
    Key(PathBuf),
    /// A signature file written by `policy sign --out`.
    File(PathBuf),
}

/// The control plane's answer to an accepted policy (`200` on `POST /policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Applied {
    /// The version now running.
    pub version: u64,
    /// `false` when that version was already running (an idempotent no-op).
    pub changed: bool,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changed {
            write!(f, "applied: policy version {} is running", self.version)
        } else {
            write!(
                f,
                "unchanged: policy version {} was already running with this content",
                self.version
            )
        }
    }
}

/// The body of a refusal from the control API.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

/// `policy apply FILE`: sends the document's exact bytes to `POST /policy`, signed as
/// `signature` says.
///
/// # Errors
/// [`CtlError::Refused`] with the server's status and reason (400 invalid, 401 token,
/// 403 signature, 408 body too slow, 409 stale or conflicting version, 413 too large);
/// [`CtlError::Http`] when the API cannot be reached; [`CtlError::Key`],
/// [`CtlError::Read`], [`CtlError::BadSignatureFile`] for local files.
pub fn apply_policy(
    api: &ApiClient,
    document: &Path,
    signature: &SignatureSource,
) -> Result<Applied, CtlError> {
    let bytes = read_document(document)?;
    let signature = match signature {
        SignatureSource::None => None,
        SignatureSource::Key(key) => Some(signing::sign(&bytes, &signing::read_signing_key(key)?)),
        SignatureSource::File(path) => Some(read_signature(path)?),
    };
    let headers: Vec<(&str, &str)> = signature
        .as_deref()
        .map(|s| ("X-Qos-Signature", s))
        .into_iter()
        .collect();
    let response = api.post("/policy", &headers, &bytes)?;
    if response.status != 200 {
        return Err(refused(api, "POST", "/policy", &response));
    }
    serde_json::from_slice(&response.body).map_err(|e| CtlError::BadAnswer {
        addr: api.addr().to_owned(),
        path: "/policy".into(),
        reason: e.to_string(),
    })
}

fn refused(api: &ApiClient, method: &'static str, path: &str, r: &http::Response) -> CtlError {
    let (mut message, field) = match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(b) => (b.error, b.field),
        Err(_) => (r.text().trim().chars().take(500).collect::<String>(), None),
    };
    if let (300..=399, Some(to)) = (r.status, r.header("location")) {
        // A redirect's body (often an HTML page) says less than where it points.
        message = format!(
            "redirected to {} (qos-ctl does not follow redirects: give --api the address it points to)",
            to.chars().take(200).collect::<String>()
        );
    } else if message.is_empty() {
        message = r.reason.clone();
    }
    CtlError::Refused {
        addr: api.addr().to_owned(),
        method,
        path: path.to_owned(),
        status: r.status,
        message,
        field,
    }
}

/// The two key files [`keygen`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFiles {
    /// The signing (secret) key: mode 0600; keep it off the gateway.
    pub signing: PathBuf,
    /// The verifying (public) key: the control plane's `verifying_key`.
    pub verifying: PathBuf,
    /// The verifying key as it is written in its file (base64).
    pub verifying_base64: String,
}

/// `keygen --out DIR`: a new ed25519 key pair, written as [`SIGNING_KEY_FILE`] and
/// [`VERIFYING_KEY_FILE`] in `dir` (created if missing). Refuses when either file
/// exists, before writing anything.
///
/// # Errors
/// [`CtlError::KeyExists`], [`CtlError::Write`] for the directory, [`CtlError::Key`].
pub fn keygen(dir: &Path) -> Result<KeyFiles, CtlError> {
    fs::create_dir_all(dir).map_err(|source| CtlError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let verifying_path = dir.join(VERIFYING_KEY_FILE);
    for path in [&signing_path, &verifying_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(CtlError::KeyExists { path: path.clone() });
        }
    }
    let (secret, public) = signing::generate_keypair()?;
    // The library opens with create_new, so a file appearing since the check above is
    // still never overwritten.
    signing::write_signing_key(&signing_path, &secret)?;
    signing::write_verifying_key(&verifying_path, &public)?;
    let verifying_base64 = fs::read_to_string(&verifying_path)
        .map_err(|source| CtlError::Read {
            path: verifying_path.clone(),
            source,
        })?
        .trim()
        .to_owned();
    Ok(KeyFiles {
        signing: signing_path,
        verifying: verifying_path,
        verifying_base64,
    })
}

/// `GET path` (`/status`, `/integrity`, ...): the answer's raw body and its parsed JSON.
///
/// # Errors
/// [`CtlError::Refused`] for a status other than 200, [`CtlError::BadAnswer`] when the
/// body is not JSON, [`CtlError::Http`] when the API cannot be reached.
pub fn fetch_json(api: &ApiClient, path: &str) -> Result<(Vec<u8>, serde_json::Value), CtlError> {
    let response = api.get(path)?;
    if response.status != 200 {
        return Err(refused(api, "GET", path, &response));
    }
    let value = serde_json::from_slice(&response.body).map_err(|e| CtlError::BadAnswer {
        addr: api.addr().to_owned(),
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((response.body, value))
}

/// Parses an anchor as `NEXT_SEQ:HASH` (the `audit_head` of `/status`: `next_seq` and
/// `last_hash`).
///
/// # Errors
/// [`CtlError::BadAnchor`] when there is no `:` or the seq is not a number (the hash is
/// checked by the verifier).
pub fn parse_anchor(text: &str) -> Result<AuditHead, CtlError> {
    let bad = || CtlError::BadAnchor {
        value: text.to_owned(),
    };
    let (seq, hash) = text.trim().split_once(':').ok_or_else(bad)?;
    Ok(AuditHead {
        next_seq: seq.parse().map_err(|_| bad())?,
        last_hash: hash.to_owned(),
    })
}

/// `audit verify FILE [--anchor NEXT_SEQ:HASH]`: the verdict on the hash chain, naming
/// the first bad line (C5). A problem in the chain is the report, not an error.
///
/// # Errors
/// [`CtlError::Audit`] when the file cannot be read or the anchor is malformed.
pub fn verify_audit(path: &Path, anchor: Option<&AuditHead>) -> Result<VerifyReport, CtlError> {
    Ok(match anchor {
        Some(a) => audit::verify_with_anchor(path, a)?,
        None => audit::verify(path)?,
    })
}
