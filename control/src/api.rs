//! The HTTP control API: `hyper` 1 on a current-thread `tokio` runtime, on the
//! control thread (never a worker).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text 0.0.4 (O1); OpenMetrics 1.0 when the `Accept` header asks for `application/openmetrics-text` |
//! | `GET /healthz` | `{"state": ..., "healthy": ..., "warnings": [...]}`; 200 for NORMAL and DEGRADED (serving), 503 for SAFE and UNKNOWN, and 503 (not healthy) while a worker has failed; `warnings` names a failing metrics.db, audit log or `.hlog`, and a failed worker |
//! | `GET /status` | policy version per worker, shard sizes, health, audit head, store state |
//! | `GET /integrity` | the integrity report (O6) |
//! | `POST /policy` | a policy document (TOML or JSON) in the body, its detached ed25519 signature (base64) in `X-Qos-Signature`; 200 applied or no-op, 400 invalid (a malformed or incomplete body, a signature header given twice), 403 signature, 408 body not received within the client timeout, 409 stale or conflicting version, 413 too large |
//! | `POST /reload` | runs the embedder's reload hook ([`crate::plane::ControlPlane::set_reload_hook`]; qosd re-reads its configuration file, C4): 200 `{"reloaded": true, "policy_version": n}`, 409 refused (with the reason), nothing to reload, or a reload still running, 500 if the hook panicked |
//!
//! It binds loopback by default; another address needs `allow_remote` and a bearer
//! token. With a token configured, every route but `/healthz` needs
//! `Authorization: Bearer <token>` (401 otherwise; the scheme in any case).
//!
//! Clients cannot hold it: at most [`MAX_CONNECTIONS`] connections are served at once
//! (more wait in the kernel's backlog), request headers and a policy's body must
//! arrive within the client timeout ([`CLIENT_TIMEOUT`] by default), a connection lives
//! at most [`LIFETIME_TIMEOUTS`] client timeouts, a body announced
//! larger than a policy can be is refused (413) before it is read, one reload runs at
//! a time (409 to the others), and a failing `accept` (out of file descriptors) is
//! logged and backed off from rather than retried at once. `HEAD` is answered as `GET`
//! without the body; a 405 names the allowed methods in `Allow`.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::plane::{State, lock};
use crate::policy::{MAX_DOCUMENT_BYTES, PolicyRejection};

/// Header carrying a policy's detached signature (base64).
pub const SIGNATURE_HEADER: &str = "x-qos-signature";

/// Connections served at once; more wait in the listen backlog until one closes.
pub const MAX_CONNECTIONS: usize = 256;

/// Default time a client has to send a request's headers (also how long a kept-alive
/// connection may sit idle between requests) and a policy document's body.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API thread is started with.
pub(crate) struct Limits {
    pub(crate) tick: Duration,
    pub(crate) token: Option<String>,
    pub(crate) client_timeout: Duration,
}

/// A connection lives at most this many client timeouts (then it is shut down
/// gracefully, with one more client timeout to finish).
pub const LIFETIME_TIMEOUTS: u32 = 6;

/// Pause after a failed `accept` (out of file descriptors, most likely).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Shared<P> = Arc<Mutex<State<P>>>;

/// The control thread's body: the API and the tick, until `stop` fires.
pub(crate) fn run<P: Send + 'static>(
    state: Shared<P>,
    listener: TcpListener,
    limits: Limits,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: crate::logs::EVENT_TARGET, event = "control.failed", error = %e);
            return;
        }
    };
    rt.block_on(serve(state, listener, limits, stop));
}

async fn serve<P: Send + 'static>(
    state: Shared<P>,
    listener: TcpListener,
    limits: Limits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Limits {
        tick,
        token,
        client_timeout,
    } = limits;
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: crate::logs::EVENT_TARGET, event = "control.failed", error = %e);
            return;
        }
    };
    let token: Arc<Option<String>> = Arc::new(token);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let reloads = Arc::new(tokio::sync::Semaphore::new(1));
    let mut accept_errors: u64 = 0;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => lock(&state).tick(),
            // At the connection cap, the next accept waits for a connection to end.
            accepted = async {
                let permit = connections.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => {
                let (permit, accepted) = accepted;
                // The semaphore is never closed.
                let Ok(permit) = permit else { return };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, most likely: retrying at once spins
                        // the thread. Logged on the first failure and every 100th.
                        if accept_errors.is_multiple_of(100) {
                            tracing::warn!(
                                target: crate::logs::EVENT_TARGET,
                                event = "control.accept_failed",
                                error = %e,
                                failures = accept_errors + 1,
                            );
                        }
                        accept_errors += 1;
                        drop(permit);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let service = Service {
                    state: state.clone(),
                    token: token.clone(),
                    reloads: reloads.clone(),
                    client_timeout,
                };
                tokio::spawn(async move {
                    service.serve(stream).await;
                    drop(permit);
                });
            }
        }
    }
}

/// What one connection is served with.
/// What every connection and every request of the API shares (cheap to clone).
struct Service<P> {
    state: Shared<P>,
    token: Arc<Option<String>>,
    reloads: Arc<tokio::sync::Semaphore>,
    client_timeout: Duration,
}

impl<P> Clone for Service<P> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            token: self.token.clone(),
            reloads: self.reloads.clone(),
            client_timeout: self.client_timeout,
        }
    }
}

impl<P: Send + 'static> Service<P> {
    /// Serves one connection. Besides the header timeout (which also closes an idle
    /// kept-alive connection), a connection lives at most [`LIFETIME_TIMEOUTS`] client
    /// timeouts: a client that pipelines requests and never reads the answers stalls
    /// hyper's writes, and with them its header timer. It then gets one more client
    /// timeout to finish what is under way.
    async fn serve(self, stream: tokio::net::TcpStream) {
        let client_timeout = self.client_timeout;
        let service = service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.route(req).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(client_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let lifetime = client_timeout.saturating_mul(LIFETIME_TIMEOUTS);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = tokio::time::sleep(lifetime) => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(client_timeout, connection).await;
            }
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode the answer: {e}\n"),
        ),
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the token: `Authorization: Bearer <token>`, the scheme
/// in any case, spaces around the token ignored. `Err` names a malformed header (given
/// twice).
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> Result<bool, &'static str> {
    let Some(token) = token else { return Ok(true) };
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(false);
    };
    if values.next().is_some() {
        return Err("Authorization: given more than once, expected one `Bearer <token>`");
    }
    let value = value.as_bytes().trim_ascii();
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Ok(false);
    };
    let (scheme, given) = value.split_at(space);
    Ok(scheme.eq_ignore_ascii_case(b"bearer") && same(given.trim_ascii(), token.as_bytes()))
}

/// The methods each route answers, for `Allow`.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" | "/healthz" | "/status" | "/integrity" => Some("GET, HEAD"),
        "/policy" | "/reload" => Some("POST"),
        _ => None,
    }
}

impl<P: Send + 'static> Service<P> {
    /// Answers one request: the token check, then the route.
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Self {
            state,
            token,
            reloads,
            client_timeout,
        } = self;
        let (token, client_timeout) = (token.as_deref(), *client_timeout);
        let path = req.uri().path().to_owned();
        let auth = if path == "/healthz" {
            Ok(true)
        } else {
            authorized(token, &req)
        };
        if let Err(error) = auth {
            return json(
                StatusCode::BAD_REQUEST,
                &ErrorBody {
                    error: error.into(),
                    field: Some("Authorization".into()),
                },
            );
        }
        if auth != Ok(true) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &ErrorBody {
                    error:
                        "missing or wrong bearer token; expected `Authorization: Bearer <token>`"
                            .into(),
                    field: Some("Authorization".into()),
                },
            );
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return r;
        }
        // HEAD is GET without the body (hyper sends no body for it).
        let method = match *req.method() {
            Method::HEAD => Method::GET,
            ref m => m.clone(),
        };
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                let openmetrics = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let snapshot = lock(state).metrics_snapshot();
                let text = crate::metrics::render(snapshot);
                if openmetrics {
                    respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    )
                } else {
                    respond(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        crate::metrics::to_prometheus_text(&text),
                    )
                }
            }
            (&Method::GET, "/healthz") => {
                let (st, warnings, failed) = {
                    let guard = lock(state);
                    let failed = !guard.failed_workers().is_empty();
                    (guard.health_state(), guard.warnings(), failed)
                };
                // A failed worker: 503 whatever the level (the warnings name it).
                let code = match failed {
                    true => StatusCode::SERVICE_UNAVAILABLE,
                    false => StatusCode::from_u16(st.http_status())
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                };
                #[derive(Serialize)]
                struct Health {
                    state: crate::health::HealthState,
                    healthy: bool,
                    /// A failing metrics.db, audit log or .hlog (reported; the dataplane
                    /// serves on and the code follows its health), or a failed worker
                    /// (503).
                    warnings: Vec<String>,
                }
                json(
                    code,
                    &Health {
                        state: st,
                        healthy: st.is_healthy() && !failed,
                        warnings,
                    },
                )
            }
            (&Method::GET, "/status") => json(StatusCode::OK, &lock(state).status()),
            (&Method::GET, "/integrity") => json(StatusCode::OK, &lock(state).integrity()),
            (&Method::POST, "/policy") => post_policy(state, client_timeout, req).await,
            (&Method::POST, "/reload") => post_reload(state, reloads).await,
            _ if allowed(&path).is_some() => {
                let allow = allowed(&path).unwrap_or("");
                let mut r = json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &ErrorBody {
                        error: format!(
                            "{} is not allowed on {path}; expected {allow}",
                            req.method()
                        ),
                        field: None,
                    },
                );
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &ErrorBody {
                    error: format!(
                        "no route {path}; expected /metrics, /healthz, /status, /integrity, /policy or /reload"
                    ),
                    field: None,
                },
            ),
        }
    }
}

/// C4: runs the embedder's reload hook (qosd: re-read the configuration file) off the
/// runtime's thread and without the plane's lock, since the hook calls the plane. One
/// at a time: a reload asked for while one runs is answered 409 at once, rather than
/// holding a blocking thread in a queue.
async fn post_reload<P: Send + 'static>(
    state: &Shared<P>,
    reloads: &Arc<tokio::sync::Semaphore>,
) -> Response<Full<Bytes>> {
    let Ok(running) = reloads.clone().try_acquire_owned() else {
        return json(
            StatusCode::CONFLICT,
            &ErrorBody {
                error: "a reload is already running; retry when it has answered".into(),
                field: None,
            },
        );
    };
    let Some(hook) = lock(state).reload.clone() else {
        return json(
            StatusCode::CONFLICT,
            &ErrorBody {
                error: "nothing to reload: no configuration file (an embedded default, or no reload hook set)".into(),
                field: None,
            },
        );
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let answer = hook();
        drop(running);
        answer
    })
    .await;
    #[derive(Serialize)]
    struct Reloaded {
        reloaded: bool,
        policy_version: u64,
    }
    match outcome {
        Ok(Ok(policy_version)) => json(
            StatusCode::OK,
            &Reloaded {
                reloaded: true,
                policy_version,
            },
        ),
        Ok(Err(error)) => json(StatusCode::CONFLICT, &ErrorBody { error, field: None }),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &ErrorBody {
                error: format!("the reload failed: {e}"),
                field: None,
            },
        ),
    }
}

async fn post_policy<P: Send + 'static>(
    state: &Shared<P>,
    client_timeout: Duration,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req
        .headers()
        .get_all(SIGNATURE_HEADER)
        .iter()
        .nth(1)
        .is_some()
    {
        // Which one would be meant? (The first was taken: a good one then garbage was
        // applied, the reverse refused.)
        return json(
            StatusCode::BAD_REQUEST,
            &ErrorBody {
                error: format!("{SIGNATURE_HEADER}: given more than once, expected one"),
                field: Some(SIGNATURE_HEADER.into()),
            },
        );
    }
    let signature = match req.headers().get(SIGNATURE_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) => Some(s.trim().to_owned()),
        Some(Err(_)) => {
            return json(
                StatusCode::FORBIDDEN,
                &ErrorBody {
                    error: format!("{SIGNATURE_HEADER}: not ASCII, expected base64"),
                    field: Some(SIGNATURE_HEADER.into()),
                },
            );
        }
    };
    let too_large = |what: String| {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &ErrorBody {
                error: format!(
                    "body: {what}; expected a policy document of at most {MAX_DOCUMENT_BYTES} bytes"
                ),
                field: None,
            },
        )
    };
    // Announced larger than a policy can be: refused before anything is read.
    let announced = req.body().size_hint().lower();
    if announced > MAX_DOCUMENT_BYTES as u64 {
        return too_large(format!("Content-Length {announced}"));
    }
    let read = Limited::new(req.into_body(), MAX_DOCUMENT_BYTES).collect();
    let body = match tokio::time::timeout(client_timeout, read).await {
        Err(_) => {
            return json(
                StatusCode::REQUEST_TIMEOUT,
                &ErrorBody {
                    error: format!("body: not received within {client_timeout:?}"),
                    field: None,
                },
            );
        }
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large(e.to_string());
        }
        // Bad chunk framing, a body cut short by the client: not a size problem (they
        // were all answered 413 "too large").
        Ok(Err(e)) => {
            return json(
                StatusCode::BAD_REQUEST,
                &ErrorBody {
                    error: format!("body: malformed or incomplete: {e}"),
                    field: None,
                },
            );
        }
    };
    let result = lock(state).apply_policy(&body, signature.as_deref(), "http");
    match result {
        Ok(applied) => json(StatusCode::OK, &applied),
        Err(e) => {
            let code = match &e {
                PolicyRejection::SignatureMissing
                | PolicyRejection::SignatureMalformed { .. }
                | PolicyRejection::SignatureInvalid { .. } => StatusCode::FORBIDDEN,
                PolicyRejection::Stale { .. } | PolicyRejection::Conflict { .. } => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::BAD_REQUEST,
            };
            json(
                code,
                &ErrorBody {
                    error: e.to_string(),
                    field: e.field().map(str::to_owned),
                },
            )
        }
    }
}
