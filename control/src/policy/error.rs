//! Why a policy document was refused: [`PolicyRejection`].

use std::fmt;

use qos_dataplane::sched::PolicyError;
use thiserror::Error;

/// The two document formats a policy can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML (the format of files on disk).
    Toml,
    /// JSON (the format of the control API).
    Json,
}

impl Format {
    /// Guesses the format from the bytes: JSON when the first character that is not
    /// whitespace (after an optional UTF-8 byte-order mark) is `{`, TOML otherwise.
    pub fn detect(bytes: &[u8]) -> Self {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Self::Json,
            _ => Self::Toml,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Toml => "TOML",
            Self::Json => "JSON",
        })
    }
}

/// Why a policy document was refused (C1-C3). The running policy stays whatever the
/// rejection: nothing is published.
///
/// Every message starts with the field it is about, as a path in the document
/// (`tiers[2].share_percent`, `link.rate_mbps`, `latency_budget_ms.p7`, `signature`,
/// `version`), then gives the value and what was expected. [`PolicyRejection::field`]
/// returns that path.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyRejection {
    /// The bytes are not a well-formed document: not UTF-8, a syntax error, an unknown
    /// field, a value of the wrong type. `message` is the parser's own (it names the
    /// key and, for TOML, shows the line).
    #[error(
        "{}{format} document rejected: {message}",
        .path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default()
    )]
    Parse {
        /// The format the bytes were read as.
        format: Format,
        /// Path of the offending key, when the parser got as far as a key.
        path: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A field holds a value the policy does not allow (C1).
    #[error("{field}: {value}, expected {expected}")]
    Invalid {
        /// Path of the field in the document.
        field: String,
        /// The value found, in the document's units.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A verifying key is configured and no signature came with the document (C3).
    #[error(
        "signature: missing, expected a detached ed25519 signature of the document bytes in standard base64 (a verifying key is configured)"
    )]
    SignatureMissing,
    /// The signature is not 64 bytes of standard base64 (C3).
    #[error("signature: {value:?} is malformed ({reason}), expected 64 bytes in standard base64")]
    SignatureMalformed {
        /// The signature text given (cut to 100 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify against the configured key: made by another key,
    /// or the document bytes changed after signing (C3).
    #[error(
        "signature: does not verify against the configured key {key_hex}, expected a signature by that key over these exact document bytes"
    )]
    SignatureInvalid {
        /// The configured verifying key, in hex.
        key_hex: String,
    },
    /// The version is lower than the running one (C2).
    #[error("version: {version} is stale, expected the running version {running} or higher")]
    Stale {
        /// The version of the document.
        version: u64,
        /// The running version.
        running: u64,
    },
    /// The running version again, with different content (C2): a change must carry a
    /// higher version.
    #[error(
        "version: {version} is already running with different content (document sha256 {sha256_hex}), expected a version higher than {version} for a change"
    )]
    Conflict {
        /// The version of the document (the running one).
        version: u64,
        /// SHA-256 of the document given, in hex.
        sha256_hex: String,
    },
}

impl PolicyRejection {
    /// Path of the field the rejection is about (`tiers[2].share_percent`, `signature`,
    /// `version`, ...), or `None` for a syntax error that precedes any key.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Parse { path, .. } => path.as_deref(),
            Self::Invalid { field, .. } => Some(field),
            Self::SignatureMissing
            | Self::SignatureMalformed { .. }
            | Self::SignatureInvalid { .. } => Some("signature"),
            Self::Stale { .. } | Self::Conflict { .. } => Some("version"),
        }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// How the fields the dataplane names (in its own units) read in the document.
pub(crate) struct DocumentNames {
    /// `link.rate_mbps` or `link.rate_bps`, whichever the document used.
    pub link_rate: &'static str,
    /// Priority whose budget is 0, if any.
    pub zero_budget: Option<usize>,
    /// The AQM override of each tier as written (`target_ms = .., interval_ms = ..`).
    pub tier_aqm: Vec<String>,
}

/// Translates a dataplane validation error into the document's terms.
pub(crate) fn from_policy_error(error: PolicyError, names: &DocumentNames) -> PolicyRejection {
    use PolicyRejection as R;
    let tier = |index: usize, key: &str| format!("tiers[{index}].{key}");
    match error {
        PolicyError::TierCount { count } => {
            R::invalid("tiers", format!("{count} tiers"), "1..=8 tiers")
        }
        PolicyError::TierName { index, name } => R::invalid(
            tier(index, "name"),
            format!("{name:?}"),
            "a non-empty name no other tier uses",
        ),
        PolicyError::Share { index, value } => {
            R::invalid(tier(index, "share_percent"), value, "1..=100")
        }
        PolicyError::ShareSum { sum } => R::invalid(
            "tiers[*].share_percent",
            format!("shares sum to {sum}"),
            "shares summing to 100",
        ),
        PolicyError::EmptyTier { index } => R::invalid(
            tier(index, "priorities"),
            "[] (empty)",
            "at least one priority in 0..=7",
        ),
        PolicyError::Priority { index, value } => R::invalid(
            tier(index, "priorities"),
            format!("{value} is out of range"),
            "priorities in 0..=7",
        ),
        PolicyError::PriorityTwice { index, value } => R::invalid(
            tier(index, "priorities"),
            format!("{value} already belongs to a tier"),
            "each priority in exactly one tier",
        ),
        PolicyError::PriorityMissing { value } => R::invalid(
            "tiers[*].priorities",
            format!("priority {value} is in no tier"),
            "tiers covering every priority 0..=7",
        ),
        PolicyError::LowShare { index, value } => R::invalid(
            tier(index, "share_percent"),
            value,
            ">= 5 for the tier holding priority 0 (S9)",
        ),
        PolicyError::Aqm { index, .. } => R::invalid(
            tier(index, "aqm"),
            names.tier_aqm.get(index).map_or("?", String::as_str),
            "0 < target_ms < interval_ms <= 68719.476736 (2^36 ns), each at least 0.000001 (1 ns)",
        ),
        PolicyError::Field {
            field,
            value,
            expected,
        } => from_field_error(field, value, expected, names),
        other => R::invalid("policy", other, "a policy the dataplane accepts"),
    }
}

fn from_field_error(
    field: &str,
    value: String,
    expected: &str,
    names: &DocumentNames,
) -> PolicyRejection {
    let renamed = match field {
        "latency_budget_ns" => match names.zero_budget {
            Some(p) => {
                return PolicyRejection::invalid(
                    format!("latency_budget_ms.p{p}"),
                    0,
                    "a budget > 0 ms, or \"none\" for best effort",
                );
            }
            None => "latency_budget_ms".to_owned(),
        },
        "budget_window_ns" => "budget_window_ms".to_owned(),
        "aging_timeout_ns" => "aging_timeout_ms".to_owned(),
        "link.rate_bps" => names.link_rate.to_owned(),
        other => other.to_owned(),
    };
    PolicyRejection::Invalid {
        field: renamed,
        value,
        expected: expected.to_owned(),
    }
}
