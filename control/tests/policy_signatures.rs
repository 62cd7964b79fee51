//! C3: detached ed25519 signatures over the exact document bytes, and key files.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use ed25519_dalek::{SigningKey, VerifyingKey};
use qos_control::policy::signing::{
    self, KeyError, read_signing_key, read_verifying_key, write_signing_key, write_verifying_key,
};
use qos_control::policy::{Admitted, PolicyGate, PolicyRejection};
use qos_dataplane::sched::Policy;

const DOC: &[u8] = b"version = 2\npreset = \"classes5\"\n";

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("qos-policy-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys() -> (SigningKey, VerifyingKey) {
    signing::generate_keypair().unwrap()
}

fn gate_with(key: VerifyingKey) -> PolicyGate {
    PolicyGate::new(&Policy::default(), Some(key))
}

#[test]
fn signing_matches_the_rfc_8032_vector() {
    // RFC 8032, section 7.1, TEST 1: the empty message.
    let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let key = SigningKey::from_bytes(&seed.try_into().unwrap());
    let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(key.verifying_key().as_bytes().as_slice(), public.as_slice());
    let expected = hex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    );
    use base64::Engine;
    let signature = signing::sign(b"", &key);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&signature)
            .unwrap(),
        expected
    );
    assert_eq!(signature.len(), 88);
    signing::verify(b"", &signature, &key.verifying_key()).unwrap();
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_document_signed_by_the_key_is_accepted() {
    let (secret, public) = keys();
    let mut gate = gate_with(public);
    let signature = signing::sign(DOC, &secret);
    let admitted = gate.admit(DOC, Some(&signature)).unwrap();
    assert!(
        matches!(
            admitted,
            Admitted::Apply {
                version: 2,
                signed: true,
                ..
            }
        ),
        "{admitted:?}"
    );
    // Surrounding whitespace (a signature file's newline) is ignored.
    let padded = format!("  {signature}\n");
    assert_eq!(gate.admit(DOC, Some(&padded)).unwrap(), admitted);
    gate.commit(&admitted).unwrap();
    assert_eq!(gate.running_version(), 2);
    // A no-op still needs its signature.
    assert_eq!(
        gate.admit(DOC, Some(&signature)).unwrap(),
        Admitted::NoOp { version: 2 }
    );
    assert_eq!(
        gate.admit(DOC, None).unwrap_err(),
        PolicyRejection::SignatureMissing
    );
}

#[test]
fn a_missing_signature_is_rejected_when_a_key_is_configured() {
    let (_, public) = keys();
    let gate = gate_with(public);
    let error = gate.admit(DOC, None).unwrap_err();
    assert_eq!(error, PolicyRejection::SignatureMissing);
    assert_eq!(error.field(), Some("signature"));
    assert!(
        error.to_string().starts_with("signature: missing"),
        "{error}"
    );
    // Checked before parsing: garbage without a signature is a signature error.
    let error = gate.admit(b"\xff not a policy", None).unwrap_err();
    assert_eq!(error, PolicyRejection::SignatureMissing);
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn a_malformed_signature_is_rejected() {
    let (secret, public) = keys();
    let gate = gate_with(public);
    let good = signing::sign(DOC, &secret);
    let short = &good[..84]; // 63 bytes, valid base64
    let url_safe = format!("-{}", &good[1..]); // the URL-safe alphabet is not standard
    let cases = [
        ("!!!!", "not base64"),
        ("", "0 bytes"),
        ("AAAA", "3 bytes"),
        (short, "63 bytes"),
        (&url_safe, "not base64"),
        (&good[..87], "not base64"), // padding cut
    ];
    for (signature, reason) in cases {
        let error = gate.admit(DOC, Some(signature)).unwrap_err();
        assert!(
            matches!(error, PolicyRejection::SignatureMalformed { .. }),
            "{signature}: {error}"
        );
        assert_eq!(error.field(), Some("signature"));
        assert!(error.to_string().contains("malformed"), "{error}");
        assert!(error.to_string().contains(reason), "{error}");
    }
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn a_signature_by_another_key_is_rejected() {
    let (_, public) = keys();
    let (other, _) = keys();
    assert_ne!(other.verifying_key(), public);
    let gate = gate_with(public);
    let error = gate
        .admit(DOC, Some(&signing::sign(DOC, &other)))
        .unwrap_err();
    assert!(
        matches!(error, PolicyRejection::SignatureInvalid { .. }),
        "{error}"
    );
    assert_eq!(error.field(), Some("signature"));
    assert!(error.to_string().contains("does not verify"), "{error}");
    assert_eq!(gate.running_version(), 1);
}

#[test]
fn changing_any_byte_after_signing_is_rejected() {
    let (secret, public) = keys();
    let gate = gate_with(public);
    let signature = signing::sign(DOC, &secret);
    for i in 0..DOC.len() {
        let mut changed = DOC.to_vec();
        changed[i] ^= 0x01;
        let error = gate.admit(&changed, Some(&signature)).unwrap_err();
        assert!(
            matches!(error, PolicyRejection::SignatureInvalid { .. }),
            "byte {i}: {error}"
        );
    }
    // Appending a byte (a trailing newline) breaks it too.
    let mut longer = DOC.to_vec();
    longer.push(b'\n');
    assert!(matches!(
        gate.admit(&longer, Some(&signature)),
        Err(PolicyRejection::SignatureInvalid { .. })
    ));
    // And flipping a bit of the signature.
    let mut raw = signature.into_bytes();
    raw[10] = if raw[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(raw).unwrap();
    assert!(matches!(
        gate.admit(DOC, Some(&flipped)),
        Err(PolicyRejection::SignatureInvalid { .. })
    ));
}

#[test]
fn without_a_key_signatures_are_not_checked() {
    let gate = PolicyGate::new(&Policy::default(), None);
    for signature in [None, Some("!!!! not even base64"), Some("AAAA")] {
        let admitted = gate.admit(DOC, signature).unwrap();
        assert!(
            matches!(admitted, Admitted::Apply { signed: false, .. }),
            "{admitted:?}"
        );
    }
    let (secret, _) = keys();
    let admitted = gate.admit(DOC, Some(&signing::sign(DOC, &secret))).unwrap();
    assert!(matches!(admitted, Admitted::Apply { signed: false, .. }));
}

#[test]
fn generated_keys_are_distinct_and_work() {
    let (a, a_public) = keys();
    let (b, _) = keys();
    assert_ne!(a.to_bytes(), b.to_bytes());
    assert_eq!(a.verifying_key(), a_public);
    // Deterministic signatures: same key, same bytes, same signature.
    assert_eq!(signing::sign(DOC, &a), signing::sign(DOC, &a));
    assert_ne!(signing::sign(DOC, &a), signing::sign(DOC, &b));
}

#[test]
fn key_files_round_trip() {
    let dir = TempDir::new("roundtrip");
    let (secret, public) = keys();
    let secret_path = dir.0.join("policy.key");
    let public_path = dir.0.join("policy.pub");
    write_signing_key(&secret_path, &secret).unwrap();
    write_verifying_key(&public_path, &public).unwrap();
    let text = std::fs::read_to_string(&public_path).unwrap();
    assert_eq!(text.len(), 45, "{text:?}"); // 44 base64 characters and a newline
    assert!(text.ends_with('\n') && text.lines().count() == 1);
    assert_eq!(
        read_signing_key(&secret_path).unwrap().to_bytes(),
        secret.to_bytes()
    );
    assert_eq!(read_verifying_key(&public_path).unwrap(), public);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secret key readable by others: {mode:o}");
    }
    // A signature by the key read back verifies against the public key read back.
    let read_back = read_signing_key(&secret_path).unwrap();
    let gate = gate_with(read_verifying_key(&public_path).unwrap());
    gate.admit(DOC, Some(&signing::sign(DOC, &read_back)))
        .unwrap();
    // Key files are never overwritten.
    let (other, _) = keys();
    let error = write_signing_key(&secret_path, &other).unwrap_err();
    assert!(matches!(error, KeyError::Io { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&secret_path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        read_signing_key(&secret_path).unwrap().to_bytes(),
        secret.to_bytes()
    );
}

fn assert_names(error: &KeyError, path: &Path) {
    assert!(
        error
            .to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{error}"
    );
}

#[test]
fn bad_key_files_are_rejected_naming_the_file() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let dir = TempDir::new("bad");
    let not_base64 = dir.file("not-base64.pub", b"this is not base64!\n");
    let error = read_verifying_key(&not_base64).unwrap_err();
    assert!(matches!(error, KeyError::NotBase64 { .. }), "{error}");
    assert_names(&error, &not_base64);
    let short = dir.file("short.pub", format!("{}\n", b64(&[7; 31])).as_bytes());
    let error = read_verifying_key(&short).unwrap_err();
    assert!(
        matches!(
            error,
            KeyError::WrongLength {
                len: 31,
                expected: 32,
                ..
            }
        ),
        "{error}"
    );
    assert_names(&error, &short);
    let long = dir.file("long.key", b64(&[7; 64]).as_bytes());
    let error = read_signing_key(&long).unwrap_err();
    assert!(
        matches!(
            error,
            KeyError::WrongLength {
                len: 64,
                expected: 32,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("signing key seed"), "{error}");
    assert_names(&error, &long);
    let empty = dir.file("empty.key", b"");
    let error = read_signing_key(&empty).unwrap_err();
    assert!(
        matches!(error, KeyError::WrongLength { len: 0, .. }),
        "{error}"
    );
    let two_keys = dir.file("two.pub", format!("{0}\n{0}\n", b64(&[9; 32])).as_bytes());
    assert!(matches!(
        read_verifying_key(&two_keys),
        Err(KeyError::NotBase64 { .. })
    ));
    let huge = dir.file("huge.pub", &vec![b'A'; 1 << 20]);
    let error = read_verifying_key(&huge).unwrap_err();
    assert!(matches!(error, KeyError::TooLarge { .. }), "{error}");
    assert_names(&error, &huge);
    let binary = dir.file("binary.pub", &[0xff, 0xfe, 0x00, 0x80]);
    let error = read_verifying_key(&binary).unwrap_err();
    assert_names(&error, &binary);
    let missing = dir.0.join("missing.pub");
    let error = read_verifying_key(&missing).unwrap_err();
    assert!(matches!(error, KeyError::Io { .. }), "{error}");
    assert_names(&error, &missing);
    // The identity point: 32 well-formed bytes, but of small order (any signature
    // would verify), refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = dir.file("weak.pub", b64(&identity).as_bytes());
    let error = read_verifying_key(&weak).unwrap_err();
    assert!(matches!(error, KeyError::InvalidKey { .. }), "{error}");
    assert_names(&error, &weak);
}
