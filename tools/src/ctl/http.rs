//! A minimal HTTP/1.1 client for the control API: one request per connection over a
//! std [`TcpStream`], with connect and write timeouts and one deadline for the whole
//! answer, an optional bearer token,
//! and responses framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of
//! the connection.
//!
//! The control API is plain HTTP on loopback (`docs/OPERATIONS.md`), so there is no TLS
//! and no connection reuse: each call connects, sends `Connection: close`, reads one
//! response and drops the socket. Every error names the address it was talking to.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Connect, read and write timeout of an [`ApiClient`] unless
/// [`with_timeout`](ApiClient::with_timeout) says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body read, in bytes (a `/metrics` page with the series limit at
/// its default is well under 1 MiB).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Largest status line plus headers read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// Why a request got no usable response. Every message starts with the address.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address is not `host:port` (optionally after `http://`).
    #[error("{addr}: not an API address ({reason}), expected host:port such as 127.0.0.1:9100")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name could not be resolved.
    #[error("{addr}: cannot resolve: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// No address the name resolves to accepted a connection.
    #[error("{addr}: cannot connect: {source} (is the control plane running and listening there?)")]
    Connect {
        /// The address as given.
        addr: String,
        /// The error of the last address tried.
        source: io::Error,
    },
    /// A header value would break the request (a CR or LF in a token or signature).
    #[error(
        "{addr}: {name}: contains a line break or a control character, expected one line of text"
    )]
    BadHeader {
        /// The address as given.
        addr: String,
        /// The header.
        name: String,
    },
    /// Sending the request or reading the response failed or timed out.
    #[error("{addr}: {method} {path}: {source}")]
    Exchange {
        /// The address as given.
        addr: String,
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// What went wrong.
        source: ResponseError,
    },
}

/// What went wrong reading one response.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The socket failed or timed out.
    #[error("{action}: {source}")]
    Io {
        /// `send` or `receive`.
        action: &'static str,
        /// The OS error (`WouldBlock` / `TimedOut` for a timeout).
        source: io::Error,
    },
    /// The peer closed the connection before the response was complete.
    #[error("connection closed {0}")]
    Closed(&'static str),
    /// The bytes are not an HTTP/1.x response.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The head or body is larger than this client reads.
    #[error("{what} larger than {limit} bytes")]
    TooLarge {
        /// `head` or `body`.
        what: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },
}

/// One HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code (200, 403, ...).
    pub status: u16,
    /// Reason phrase as sent (may be empty).
    pub reason: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of one control API address.
#[derive(Clone)]
pub struct ApiClient {
    addr: String,
    host_port: String,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ApiClient {
    /// A client of `addr` (`host:port`, optionally prefixed by `http://` and followed
    /// by `/`), sending `Authorization: Bearer <token>` when `token` is set.
    ///
    /// # Errors
    /// [`HttpError::BadAddress`] for `https://`, a path after the address, or no port.
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, HttpError> {
        let bad = |reason| HttpError::BadAddress {
            addr: addr.to_owned(),
            reason,
        };
        if addr.starts_with("https://") {
            return Err(bad("https is not served: the control API is plain HTTP"));
        }
        let rest = addr.strip_prefix("http://").unwrap_or(addr);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(bad("a path after the address"));
        }
        match rest.rsplit_once(':').map(|(_, p)| p) {
            None | Some("") => return Err(bad("no port number")),
            Some(p) if p.parse::<u16>().is_err() => {
                return Err(bad("the port is not a number in 0..=65535"));
            }
            Some(_) => {}
        }
        Ok(Self {
            addr: addr.to_owned(),
            host_port: rest.to_owned(),
            token,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another connect/read/write timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn get(&self, path: &str) -> Result<Response, HttpError> {
        self.request("GET", path, &[], &[])
    }

    /// `POST path` with `body` and the extra `headers`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        self.request("POST", path, headers, body)
    }

    /// Sends one request and reads its response, whatever its status.
    ///
    /// # Errors
    /// [`HttpError::Resolve`] / [`HttpError::Connect`] when no connection is made,
    /// [`HttpError::BadHeader`] for a header value with a line break,
    /// [`HttpError::Exchange`] when sending or reading fails, times out, or the answer
    /// is not HTTP/1.x.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let head = self.request_head(method, path, headers, body.len())?;
        let stream = self.connect()?;
        let exchange = |source| HttpError::Exchange {
            addr: self.addr.clone(),
            method,
            path: path.to_owned(),
            source,
        };
        let send = |source| {
            exchange(ResponseError::Io {
                action: "send",
                source,
            })
        };
        let mut writer = &stream;
        writer.write_all(head.as_bytes()).map_err(send)?;
        writer.write_all(body).map_err(send)?;
        writer.flush().map_err(send)?;
        // The timeout bounds the whole answer, not each read: a server trickling a
        // byte at a time, or sending interim responses without end, is cut off there.
        let reader = Deadline {
            stream: &stream,
            until: now() + self.timeout,
            timeout: self.timeout,
        };
        read_response(BufReader::new(reader), method == "HEAD").map_err(exchange)
    }

    fn request_head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body_len: usize,
    ) -> Result<String, HttpError> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qos-ctl/{}\r\nAccept: */*\r\nConnection: close\r\nContent-Length: {body_len}\r\n",
            self.host_port,
            env!("CARGO_PKG_VERSION"),
        );
        let bearer = self.token.as_deref().map(|t| format!("Bearer {t}"));
        let token = bearer.as_deref().map(|b| ("Authorization", b));
        for (name, value) in headers.iter().copied().chain(token) {
            if value.chars().any(|c| c.is_control()) {
                return Err(HttpError::BadHeader {
                    addr: self.addr.clone(),
                    name: name.to_owned(),
                });
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        Ok(head)
    }

    fn connect(&self) -> Result<TcpStream, HttpError> {
        let addrs: Vec<SocketAddr> = self
            .host_port
            .to_socket_addrs()
            .map_err(|source| HttpError::Resolve {
                addr: self.addr.clone(),
                source,
            })?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    let set = s
                        .set_read_timeout(Some(self.timeout))
                        .and_then(|()| s.set_write_timeout(Some(self.timeout)));
                    match set {
                        Ok(()) => return Ok(s),
                        Err(e) => last = e,
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(HttpError::Connect {
            addr: self.addr.clone(),
            source: last,
        })
    }
}

/// The time, for the answer's deadline (this client does I/O; it is not sans-IO code).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// A socket whose reads all end by `until`.
struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
    timeout: Duration,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out: no complete answer within {:?}", self.timeout),
            )
        };
        let left = self.until.saturating_duration_since(now());
        if left.is_zero() {
            return Err(timed_out());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut reader = self.stream;
        reader.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => e,
        })
    }
}

/// Reads one response from `reader`: the status line and headers (skipping interim
/// 1xx responses), then the body framed by `Transfer-Encoding: chunked`,
/// `Content-Length`, or the end of the stream. `head_only`: the request was `HEAD`, so
/// there is no body whatever the headers say.
///
/// # Errors
/// [`ResponseError`] for a socket error, an early end, a malformed head or chunk, or
/// more than [`MAX_HEAD_BYTES`] / [`MAX_BODY_BYTES`].
pub fn read_response<R: BufRead>(
    mut reader: R,
    head_only: bool,
) -> Result<Response, ResponseError> {
    let (status, reason, headers) = loop {
        let head = read_head(&mut reader)?;
        if !(100..200).contains(&head.0) {
            break head;
        }
    };
    let mut response = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        read_chunked(&mut reader)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| ResponseError::Malformed(format!("content-length {len:?}")))?;
        read_exact_body(&mut reader, len)?
    } else {
        read_to_end(&mut reader)?
    };
    Ok(response)
}

type Head = (u16, String, Vec<(String, String)>);

fn read_head<R: BufRead>(reader: &mut R) -> Result<Head, ResponseError> {
    let mut budget = MAX_HEAD_BYTES;
    let status_line = read_line(reader, &mut budget, "head", MAX_HEAD_BYTES)?
        .ok_or(ResponseError::Closed("before the status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ResponseError::Malformed(format!(
            "status line {:?}, expected HTTP/1.x",
            cut(&status_line)
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| {
            ResponseError::Malformed(format!(
                "status line {:?}: no status code",
                cut(&status_line)
            ))
        })?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget, "head", MAX_HEAD_BYTES)?
            .ok_or(ResponseError::Closed("in the headers"))?;
        if line.is_empty() {
            return Ok((status, reason, headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ResponseError::Malformed(format!("header line {:?}", cut(&line))))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// One CRLF- (or LF-) terminated line without its terminator, charged to `budget`
/// (`what`'s, of `limit_bytes` in all); `None` at the end of the stream before any
/// byte.
fn read_line<R: BufRead>(
    reader: &mut R,
    budget: &mut usize,
    what: &'static str,
    limit_bytes: usize,
) -> Result<Option<String>, ResponseError> {
    let mut buf = Vec::new();
    let limit = *budget as u64 + 1;
    let n = reader
        .take(limit)
        .read_until(b'\n', &mut buf)
        .map_err(receive)?;
    if n == 0 {
        return Ok(None);
    }
    if n as u64 == limit {
        return Err(ResponseError::TooLarge {
            what,
            limit: limit_bytes,
        });
    }
    *budget -= n;
    if buf.pop() != Some(b'\n') {
        return Err(ResponseError::Closed("in the middle of a line"));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ResponseError::Malformed("a head line that is not UTF-8".into()))
}

fn read_exact_body<R: Read>(reader: &mut R, len: usize) -> Result<Vec<u8>, ResponseError> {
    if len > MAX_BODY_BYTES {
        return Err(ResponseError::TooLarge {
            what: "body",
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            ResponseError::Closed("before content-length bytes of body")
        }
        _ => receive(e),
    })?;
    Ok(body)
}

fn read_to_end<R: Read>(reader: &mut R) -> Result<Vec<u8>, ResponseError> {
    let mut body = Vec::new();
    reader
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(receive)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ResponseError::TooLarge {
            what: "body",
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(body)
}

fn read_chunked<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, ResponseError> {
    let mut body = Vec::new();
    // The framing lines (sizes, trailers) have a budget of the body's size, not the
    // head's: a body of many small chunks is valid.
    let mut budget = MAX_BODY_BYTES;
    loop {
        let line = read_line(reader, &mut budget, "chunk framing", MAX_BODY_BYTES)?
            .ok_or(ResponseError::Closed("before a chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ResponseError::Malformed(format!("chunk size {:?}", cut(&line))))?;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            while !read_line(reader, &mut budget, "chunk framing", MAX_BODY_BYTES)?
                .ok_or(ResponseError::Closed("in the chunked trailer"))?
                .is_empty()
            {}
            return Ok(body);
        }
        if size > MAX_BODY_BYTES - body.len() {
            return Err(ResponseError::TooLarge {
                what: "body",
                limit: MAX_BODY_BYTES,
            });
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ResponseError::Closed("inside a chunk"),
                _ => receive(e),
            })?;
        let end = read_line(reader, &mut budget, "chunk framing", MAX_BODY_BYTES)?
            .ok_or(ResponseError::Closed("after a chunk"))?;
        if !end.is_empty() {
            return Err(ResponseError::Malformed(
                "chunk longer than its size".into(),
            ));
        }
    }
}

fn receive(source: io::Error) -> ResponseError {
    ResponseError::Io {
        action: "receive",
        source,
    }
}

/// At most 80 characters of `text`, for messages.
fn cut(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Response, ResponseError> {
        read_response(raw.as_bytes(), false)
    }

    #[test]
    fn content_length_body() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello+extra",
        )
        .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (200, "OK"));
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(parse(raw).unwrap().body, b"Wikipedia in \r\n\r\nchunks.");
    }

    #[test]
    fn body_to_end_and_interim_response() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 403 Forbidden\r\n\r\n{\"error\":\"no\"}";
        let r = parse(raw).unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.text(), "{\"error\":\"no\"}");
    }

    #[test]
    fn bad_responses_are_named() {
        let cases = [
            ("", "connection closed before the status line"),
            ("SSH-2.0-OpenSSH\r\n", "expected HTTP/1.x"),
            ("HTTP/1.1 abc\r\n\r\n", "no status code"),
            ("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header line"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "before content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "content-length \"-1\"",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "longer than its size",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                "body larger than",
            ),
        ];
        for (raw, expected) in cases {
            let e = parse(raw).unwrap_err().to_string();
            assert!(e.contains(expected), "{raw:?}: {e}");
        }
    }

    #[test]
    fn addresses() {
        assert!(ApiClient::new("127.0.0.1:9100", None).is_ok());
        assert!(ApiClient::new("http://localhost:9100/", None).is_ok());
        for bad in [
            "127.0.0.1",
            "https://127.0.0.1:9100",
            "127.0.0.1:9100/status",
            "h:99999",
        ] {
            let e = ApiClient::new(bad, None).unwrap_err().to_string();
            assert!(e.starts_with(bad), "{e}");
        }
    }

    #[test]
    fn header_injection_is_refused() {
        let c = ApiClient::new("127.0.0.1:1", Some("t\r\nX-Evil: 1".into())).unwrap();
        let e = c.get("/status").unwrap_err();
        assert!(
            matches!(e, HttpError::BadHeader { ref name, .. } if name == "Authorization"),
            "{e}"
        );
    }
}
