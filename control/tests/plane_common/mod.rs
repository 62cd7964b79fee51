//! Helpers shared by the `plane_*` integration tests: a switchable egress, temp
//! directories, pushing with backpressure retries, bounded waits.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qos_dataplane::runtime::{Discarded, Egress, EnqueueError, Outbox, Producer, StreamHandle};

/// Controls the test egress: while `hold` is set it refuses everything; a non-zero
/// `stall_ms` makes its next call sleep that long (once); `fail` makes it panic when
/// it is offered packets.
#[derive(Clone, Default)]
pub struct Switch {
    pub hold: Arc<AtomicBool>,
    pub stall_ms: Arc<AtomicU64>,
    pub fail: Arc<AtomicBool>,
    pub discards: Arc<Mutex<Vec<String>>>,
}

/// The egress a [`Switch`] controls; it remembers discard reasons.
pub struct Wire(pub Switch);

impl Egress<u64> for Wire {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        let stall = self.0.stall_ms.swap(0, Ordering::Relaxed);
        if stall > 0 {
            std::thread::sleep(Duration::from_millis(stall));
        }
        if self.0.hold.load(Ordering::Relaxed) {
            return;
        }
        assert!(
            out.is_empty() || !self.0.fail.load(Ordering::Relaxed),
            "the test egress fails"
        );
        while out.pop().is_some() {}
    }
    fn discard(&mut self, d: Discarded<u64>) {
        self.0
            .discards
            .lock()
            .unwrap()
            .push(d.reason.as_str().to_string());
    }
}

/// A fresh, empty directory under the system temp dir, unique to this process and call;
/// removed with its contents when dropped (also when the test fails), so repeated runs
/// do not pile up databases in the temp dir.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// See [`TempDir`].
pub fn temp_dir(name: &str) -> TempDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "qos-plane-{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Pushes packets `0..n` of 500 bytes on `h`, retrying while the ring is full (at
/// most 10 s).
pub fn push(tx: &mut Producer<u64>, h: StreamHandle, n: u64) {
    let limit = Instant::now() + Duration::from_secs(10);
    for k in 0..n {
        let mut p = k;
        loop {
            match tx.enqueue(h, p, 500) {
                Ok(()) => break,
                Err(EnqueueError::Full(back)) => {
                    assert!(Instant::now() < limit, "ring full for 10 s");
                    p = back;
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }
}

/// Polls `f` every 20 ms until it holds; fails after `secs`.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    assert!(poll_until(secs, f), "timed out waiting for {what}");
}

/// Polls `f` every 20 ms until it holds (`true`) or `secs` pass (`false`), for a
/// caller that explains a timeout itself.
pub fn poll_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let limit = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A plain HTTP/1.1 request; returns (status, body).
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    // Bodies are sent with Content-Length by hyper for full bodies.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    (status, rest.to_string())
}
