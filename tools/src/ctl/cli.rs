//! The command line of `qos-ctl` ([`Cli`], clap derive) and [`run`], which calls the
//! library function of the subcommand, prints, and returns the exit code. The binary
//! is `Cli::parse()` then `run`; tests call `run` on `Cli::try_parse_from(..)` with
//! buffers for stdout and stderr.
//!
//! Output rule: a command that succeeds prints to `out` and returns 0; one that does
//! not prints one line starting with `qos-ctl: ` to `err` (after any data it has, such
//! as the integrity summary) and returns [`EXIT_REFUSED`] or [`EXIT_FAILED`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::http::ApiClient;
use super::{
    CtlError, EXIT_FAILED, EXIT_REFUSED, SignatureSource, apply_policy, fetch_json, hdr, keygen,
    parse_anchor, plot, sign_policy, summary, validate_policy, verify_audit, write_signature,
};

/// `qos-ctl`: the operator CLI of the QoS dataplane.
#[derive(Debug, Parser)]
#[command(
    name = "qos-ctl",
    version,
    about = "Operator CLI of the QoS dataplane: policies, keys, status, integrity, audit log, HDR dumps",
    after_help = "Exit codes: 0 done, 1 refused or broken (policy rejected, audit chain broken, S11 not holding), 2 bad arguments, 3 could not run (file, key, network)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, sign or apply a policy document (TOML or JSON).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Write a new ed25519 key pair for policy signatures (never overwrites).
    Keygen {
        /// Directory for policy-signing.key (mode 0600) and policy-verifying.key.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Show GET /status: policy versions, workers, health, audit head.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON answer verbatim instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Show GET /integrity (O6); exit 1 unless it says S11 holds.
    Integrity {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the API's JSON answer verbatim instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Audit log commands.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// HDR interval log (.hlog) commands.
    #[command(subcommand)]
    Hdr(HdrCommand),
}

/// `qos-ctl policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a document as the control plane would; exit 1 naming the field when
    /// it is rejected.
    Validate {
        /// The policy document.
        file: PathBuf,
    },
    /// Sign a document's exact bytes (the X-Qos-Signature value).
    Sign {
        /// The policy document.
        file: PathBuf,
        /// Signing key file (from keygen).
        #[arg(long, value_name = "SIGNING_KEY")]
        key: PathBuf,
        /// Write the signature here instead of printing it.
        #[arg(long, value_name = "SIG")]
        out: Option<PathBuf>,
    },
    /// POST a document to the control API; exit 1 with the server's reason when it is
    /// refused.
    Apply {
        /// The policy document.
        file: PathBuf,
        /// Sign with this signing key before sending.
        #[arg(long, value_name = "SIGNING_KEY", conflicts_with = "signature")]
        key: Option<PathBuf>,
        /// Send this signature file (from `policy sign --out`).
        #[arg(long, value_name = "SIG")]
        signature: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `qos-ctl audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain; exit 1 naming the first bad line.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// Also check the record a head recorded earlier (NEXT_SEQ:HASH, the
        /// audit_head of /status): detects a changed last line or cut records.
        #[arg(long, value_name = "NEXT_SEQ:HASH")]
        anchor: Option<String>,
    },
}

/// `qos-ctl hdr ...`
#[derive(Debug, Subcommand)]
pub enum HdrCommand {
    /// Print p50/p90/p99/p99.9/max per tag, in ms.
    Print {
        /// The interval log.
        file: PathBuf,
        /// Only tags equal to TAG or starting with TAG. (p7 selects p7.sojourn);
        /// repeatable.
        #[arg(long)]
        tag: Vec<String>,
    },
    /// Draw percentile curves (one per tag) into an SVG.
    Plot {
        /// The interval log.
        file: PathBuf,
        /// The SVG to write (replaced if it exists).
        #[arg(long, value_name = "SVG")]
        out: PathBuf,
        /// Only tags equal to TAG or starting with TAG. ; repeatable.
        #[arg(long)]
        tag: Vec<String>,
    },
}

/// Where the control API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Control API address, host:port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    pub api: String,
    /// Bearer token, when the control plane is configured with one.
    #[arg(long, env = "QOS_CTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Timeout in seconds: to connect, for each write, and for the whole answer.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, default_value = "5")]
    pub timeout: Duration,
}

impl ApiArgs {
    fn client(&self) -> Result<ApiClient, CtlError> {
        Ok(ApiClient::new(&self.api, self.token.clone())?.with_timeout(self.timeout))
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero() && d.as_secs() < 86_400)
        .ok_or_else(|| {
            format!("{text:?}: expected a number of seconds > 0 (at least 1 ns) and under a day")
        })
}

/// Runs `cli`, printing results to `out` and problems to `err`; returns the exit code
/// (0, [`EXIT_REFUSED`] or [`EXIT_FAILED`]).
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let out = &mut Tracked {
        inner: out,
        error: None,
    };
    let err = &mut Tracked {
        inner: err,
        error: None,
    };
    match dispatch(cli.command, out, err) {
        Ok(None) => 0,
        Ok(Some(verdict)) => {
            let _ = out.flush();
            let _ = writeln!(err, "qos-ctl: {}", verdict.message);
            EXIT_REFUSED
        }
        Err(e) => {
            let _ = writeln!(err, "qos-ctl: {e}");
            e.exit_code()
        }
    }
    .max(written(out, err))
}

/// What qos-ctl writes to stdout and stderr. It keeps the first error of a write:
/// stdout is line-buffered, so a write of whole lines fails at once (a full disk, a
/// closed pipe) and the final flush then has nothing left to fail on. And it writes
/// control characters as escapes: the text comes in part from the server (health,
/// warnings, errors), which must not drive the operator's terminal.
struct Tracked<'a> {
    inner: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

impl Write for Tracked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = match escape_controls(buf) {
            Some(escaped) => self.inner.write_all(&escaped).map(|()| buf.len()),
            None => self.inner.write(buf),
        };
        written.inspect_err(|e| {
            if self.error.is_none() {
                self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `buf` with its control characters (C0 but newline and tab, DEL, and C1 in UTF-8)
/// written as `\uNNNN`, or `None` when it has none. JSON's own escape: `--json`
/// prints the server's JSON, whose strings may hold DEL and C1 raw, and stays valid
/// JSON with the same meaning (it holds no raw C0: JSON does not allow it).
fn escape_controls(buf: &[u8]) -> Option<Vec<u8>> {
    let control = |i: usize| {
        let b = buf[i];
        (b < 0x20 && b != b'\n' && b != b'\t')
            || b == 0x7f
            || (b == 0xc2 && buf.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    };
    if !(0..buf.len()).any(control) {
        return None;
    }
    let mut v = Vec::with_capacity(buf.len() + 16);
    let mut i = 0;
    while i < buf.len() {
        if !control(i) {
            v.push(buf[i]);
        } else if buf[i] == 0xc2 {
            // U+0080..U+009F: the code point is the second byte.
            let _ = write!(v, "\\u{:04x}", buf[i + 1]);
            i += 1;
        } else {
            let _ = write!(v, "\\u{:04x}", buf[i]);
        }
        i += 1;
    }
    Some(v)
}

/// [`EXIT_FAILED`] when a write to stdout failed or it could not be flushed (a closed
/// pipe, a full disk), else 0.
fn written(out: &mut Tracked<'_>, err: &mut dyn Write) -> u8 {
    let flushed = out.flush();
    match out.error.take().map_or(flushed, Err) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "qos-ctl: stdout: {e}");
            EXIT_FAILED
        }
    }
}

/// A negative answer that is not a failure of the tool: printed on stderr, exit code
/// [`EXIT_REFUSED`].
struct Verdict {
    message: String,
}

/// Runs one command; `Ok(Some(..))` for a negative verdict (a broken chain, S11 not
/// holding), which is the answer rather than a failure of the tool.
fn dispatch(
    command: Command,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Option<Verdict>, CtlError> {
    Ok(match command {
        Command::Policy(p) => policy(p, out)?,
        Command::Keygen { out: dir } => {
            let keys = keygen(&dir)?;
            print(
                out,
                format_args!(
                    "wrote {} (secret, mode 0600: keep it where policies are signed)\nwrote {} (public: the control plane's verifying_key)\nverifying key {}\n",
                    keys.signing.display(),
                    keys.verifying.display(),
                    keys.verifying_base64
                ),
            );
            None
        }
        Command::Status { api, json } => {
            let (raw, value) = fetch_json(&api.client()?, "/status")?;
            if json {
                write_raw(out, &raw);
            } else {
                print(out, format_args!("{}", summary::status(&value)));
            }
            None
        }
        Command::Integrity { api, json } => {
            let (raw, value) = fetch_json(&api.client()?, "/integrity")?;
            let (text, holds) = summary::integrity(&value);
            if json {
                write_raw(out, &raw);
            } else {
                print(out, format_args!("{text}"));
            }
            // Not holding includes "cannot be checked" (no worker report yet): the
            // exit code says S11 was shown to hold, and the server's statement says why not.
            (!holds).then(|| Verdict {
                message: format!(
                    "{}: {}",
                    api.api,
                    value["statement"]
                        .as_str()
                        .unwrap_or("S11 not shown to hold")
                ),
            })
        }
        Command::Audit(AuditCommand::Verify { file, anchor }) => {
            let anchor = anchor.as_deref().map(parse_anchor).transpose()?;
            let report = verify_audit(&file, anchor.as_ref())?;
            if report.is_ok() {
                print(out, format_args!("{}: {report}\n", file.display()));
                None
            } else {
                Some(Verdict {
                    message: format!("{}: {report}", file.display()),
                })
            }
        }
        Command::Hdr(h) => {
            hdr_command(h, out, err)?;
            None
        }
    })
}

fn policy(command: PolicyCommand, out: &mut dyn Write) -> Result<Option<Verdict>, CtlError> {
    match command {
        PolicyCommand::Validate { file } => {
            let valid = validate_policy(&file)?;
            print(out, format_args!("{valid}"));
        }
        PolicyCommand::Sign {
            file,
            key,
            out: sig,
        } => {
            let signature = sign_policy(&file, &key)?;
            match sig {
                Some(path) => {
                    write_signature(&path, &signature)?;
                    print(
                        out,
                        format_args!(
                            "wrote the signature of {} to {}\n",
                            file.display(),
                            path.display()
                        ),
                    );
                }
                None => print(out, format_args!("{signature}\n")),
            }
        }
        PolicyCommand::Apply {
            file,
            key,
            signature,
            api,
        } => {
            let source = match (key, signature) {
                (Some(k), _) => SignatureSource::Key(k),
                (None, Some(s)) => SignatureSource::File(s),
                (None, None) => SignatureSource::None,
            };
            let applied = apply_policy(&api.client()?, &file, &source)?;
            print(out, format_args!("{}: {applied}\n", api.api));
        }
    }
    Ok(None)
}

/// `hdr print` / `hdr plot`; a skipped incomplete last line is a warning on `err` (the
/// command still succeeds with what was read).
fn hdr_command(
    command: HdrCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let torn_tail = match command {
        HdrCommand::Print { file, tag } => {
            let table = hdr::table(&file, &tag)?;
            print(out, format_args!("{}", hdr::format_table(&table.rows)));
            table.torn_tail.map(|line| (file, line))
        }
        HdrCommand::Plot {
            file,
            out: svg,
            tag,
        } => {
            let drawn = plot::plot_hlog(&file, &tag, &svg)?;
            let curves: Vec<String> = drawn
                .curves
                .iter()
                .map(|(t, n)| format!("{t} ({n} values)"))
                .collect();
            print(
                out,
                format_args!(
                    "wrote {}: {} curves: {}\n",
                    drawn.path.display(),
                    curves.len(),
                    curves.join(", ")
                ),
            );
            if !drawn.empty.is_empty() {
                print(
                    out,
                    format_args!("no values (not drawn): {}\n", drawn.empty.join(", ")),
                );
            }
            drawn.torn_tail.map(|line| (file, line))
        }
    };
    if let Some((file, line)) = torn_tail {
        let _ = writeln!(
            err,
            "qos-ctl: warning: {}",
            hdr::torn_tail_warning(&file, line)
        );
    }
    Ok(())
}

fn print(out: &mut dyn Write, args: std::fmt::Arguments<'_>) {
    // A failed write surfaces once, at the end (see `written`).
    let _ = out.write_fmt(args);
}

fn write_raw(out: &mut dyn Write, raw: &[u8]) {
    let _ = out.write_all(raw);
    if !raw.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
}
