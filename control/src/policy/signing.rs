//! Policy signatures (C3): detached ed25519 signatures over the exact bytes of a policy
//! document, and the key files of the operator tools.
//!
//! Everything travels as standard base64 text (RFC 4648, with padding): a signature
//! is 64 bytes (88 characters), a verifying (public) key file holds 32 bytes, a
//! signing (secret) key file holds the 32-byte seed. Key files are one line; leading
//! and trailing whitespace is ignored when reading.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{
    PUBLIC_KEY_LENGTH, SECRET_KEY_LENGTH, SIGNATURE_LENGTH, Signature, Signer, SigningKey,
    VerifyingKey,
};
use thiserror::Error;

use super::error::PolicyRejection;

/// Longest key file read, in bytes (a key is 44 characters of base64).
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// A key that could not be made, read or written. Every message names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("random source: {0}, expected 32 random bytes for a new key")]
    Random(getrandom::Error),
    /// The file could not be read or written (including: it exists already, as key
    /// files are never overwritten).
    #[error("{}: {source}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file is longer than any key file.
    #[error("{}: more than {MAX_KEY_FILE_BYTES} bytes, expected one line of base64 ({expected} bytes encoded)", .path.display())]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// The key length expected, in bytes.
        expected: usize,
    },
    /// The content is not standard base64.
    #[error("{}: not base64 ({reason}), expected one line of standard base64 ({expected} bytes encoded)", .path.display())]
    NotBase64 {
        /// The key file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
        /// The key length expected, in bytes.
        expected: usize,
    },
    /// The content decodes to the wrong number of bytes.
    #[error("{}: {len} bytes of {what}, expected {expected} bytes", .path.display())]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// `signing key seed` or `verifying key`.
        what: &'static str,
        /// The length decoded.
        len: usize,
        /// The length expected.
        expected: usize,
    },
    /// 32 bytes that are not a usable ed25519 public key (not a curve point, or of
    /// small order: any signature would verify).
    #[error("{}: not a valid ed25519 verifying key ({reason}), expected a public key written by the key generator", .path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A new key pair, from a 32-byte seed drawn from the operating system.
pub fn generate_keypair() -> Result<(SigningKey, VerifyingKey), KeyError> {
    let mut seed = [0u8; SECRET_KEY_LENGTH];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    let signing = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let verifying = signing.verifying_key();
    Ok((signing, verifying))
}

/// The detached signature of `document` (its exact bytes), in standard base64.
pub fn sign(document: &[u8], key: &SigningKey) -> String {
    STANDARD.encode(key.sign(document).to_bytes())
}

/// Checks that `signature` (standard base64; surrounding whitespace ignored) is
/// `key`'s signature over exactly `document` (strict ed25519 verification).
pub fn verify(document: &[u8], signature: &str, key: &VerifyingKey) -> Result<(), PolicyRejection> {
    let signature = decode_signature(signature)?;
    key.verify_strict(document, &signature)
        .map_err(|_| PolicyRejection::SignatureInvalid {
            key_hex: hex(key.as_bytes()),
        })
}

/// Decodes a base64 signature, or says why it is malformed.
pub fn decode_signature(text: &str) -> Result<Signature, PolicyRejection> {
    let malformed = |reason: String| PolicyRejection::SignatureMalformed {
        value: text.chars().take(100).collect(),
        reason,
    };
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| malformed(format!("not base64: {e}")))?;
    let bytes: [u8; SIGNATURE_LENGTH] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("{} bytes", bytes.len())))?;
    Ok(Signature::from_bytes(&bytes))
}

/// Writes `key`'s 32-byte seed to a new file at `path` (mode 0600 on Unix). Refuses
/// to overwrite an existing file.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    write_key_file(path, &STANDARD.encode(key.to_bytes()), 0o600)
}

/// Writes `key` to a new file at `path`. Refuses to overwrite an existing file.
pub fn write_verifying_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyError> {
    write_key_file(path, &STANDARD.encode(key.as_bytes()), 0o644)
}

/// Reads a signing key written by [`write_signing_key`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let seed: [u8; SECRET_KEY_LENGTH] = read_key_file(path, "signing key seed")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a verifying key written by [`write_verifying_key`].
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes: [u8; PUBLIC_KEY_LENGTH] = read_key_file(path, "verifying key")?;
    let invalid = |reason: &str| KeyError::InvalidKey {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| invalid(&e.to_string()))?;
    if key.is_weak() {
        return Err(invalid("a point of small order"));
    }
    Ok(key)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn write_key_file(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_key_file<const N: usize>(path: &Path, what: &'static str) -> Result<[u8; N], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    let file = crate::files::open_read(path).map_err(io)?;
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            path: path.to_owned(),
            expected: N,
        });
    }
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| KeyError::NotBase64 {
            path: path.to_owned(),
            reason: e.to_string(),
            expected: N,
        })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
        path: path.to_owned(),
        what,
        len: bytes.len(),
        expected: N,
    })
}
