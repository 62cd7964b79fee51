//! Shared plumbing of the qosd end-to-end tests: loopback sinks, configs on ephemeral
//! ports, a tiny HTTP client, and the real `qosd` binary as a child process.
#![allow(dead_code, clippy::disallowed_methods)] // test plumbing: wall-clock waits

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qos_tools::header::Header;

/// A UDP sink on loopback counting datagrams per load-generator stream id (`u64::MAX`
/// for datagrams without a header).
pub struct Sink {
    pub addr: SocketAddr,
    sock: UdpSocket,
}

impl Sink {
    pub fn bind() -> Sink {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
        Sink {
            addr: sock.local_addr().expect("addr"),
            sock,
        }
    }

    /// Receives until `quiet` passes with nothing (or `max` passes): counts per stream.
    pub fn drain(&self, quiet: Duration, max: Duration) -> BTreeMap<u64, u64> {
        let mut counts = BTreeMap::new();
        let start = Instant::now();
        let mut last = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while last.elapsed() < quiet && start.elapsed() < max {
            if let Ok(n) = self.sock.recv(&mut buf) {
                last = Instant::now();
                let id = Header::parse(&buf[..n]).map_or(u64::MAX, |h| h.stream_id);
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// A config with loopback ephemeral ports for listen and API, `upstreams` named
/// u0, u1, ..., and `rules` appended verbatim.
pub fn config_text(upstreams: &[SocketAddr], link_mbps: u64, extra: &str, rules: &str) -> String {
    let mut s = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\npinning = \"off\"\ndrain_ms = 3000\n\
         {extra}\n\
         [control]\nlisten = \"127.0.0.1:0\"\n\n\
         [policy]\nversion = 1\npreset = \"default\"\ndisconnect = false\naqm = true\n\
         max_queue_depth = 2000\n[policy.link]\nrate_mbps = {link_mbps}\nburst_bytes = 64000\n\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        s.push_str(&format!("[[upstream]]\nname = \"u{i}\"\naddr = \"{u}\"\n"));
    }
    s.push_str(rules);
    s
}

/// A load-generator datagram of `size` bytes.
pub fn datagram(stream: u64, priority: u8, seq: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(qos_tools::header::LEN)];
    Header::new(stream, priority, seq, 0)
        .write_to(&mut v)
        .expect("fits");
    v
}

/// `GET path` (or `POST` with a body and headers); returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect API");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line `name{labels} value` (exact prefix match on `series`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The real `qosd` binary on a config file, with its stderr watched for the
/// "listening on" line.
pub struct Qosd {
    pub child: Child,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub stderr: mpsc::Receiver<String>,
    /// Stderr lines printed before the "listening on" line, not yet looked at.
    early: Vec<String>,
}

impl Qosd {
    pub fn spawn(config: &Path) -> Qosd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qosd"));
        command.arg("--config").arg(config);
        Self::spawn_command(command)
    }

    /// `qosd` started by `bash -c "<shell>; exec \"$@\""` with qosd and its arguments
    /// as `$@`: the shell sets up limits and signal dispositions, then becomes qosd (the
    /// pid stays, so signals reach it).
    #[allow(dead_code)] // not every test binary that includes this module uses it
    pub fn spawn_under(shell: &str, config: &Path) -> Qosd {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!("{shell}; exec \"$@\""))
            .arg("qosd")
            .arg(env!("CARGO_BIN_EXE_qosd"))
            .arg("--config")
            .arg(config);
        Self::spawn_command(command)
    }

    fn spawn_command(mut command: Command) -> Qosd {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qosd");
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        // The guard owns the child from here: a failed start is killed and reaped.
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut q = Qosd {
            child,
            listen: unset,
            api: unset,
            stderr: rx,
            early: Vec::new(),
        };
        let stderr = stderr.expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = q
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("qosd printed its addresses");
            if let Some(rest) = line.strip_prefix("qosd: listening on [") {
                let (listen, api) = rest
                    .split_once("], control API on http://")
                    .expect("format");
                q.listen = listen
                    .split(',')
                    .next()
                    .expect("one")
                    .trim()
                    .parse()
                    .expect("listen");
                q.api = api.trim().parse().expect("api");
                return q;
            }
            q.early.push(line);
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for a stderr line containing `needle` (up to `timeout`), starting with
    /// those printed before qosd was listening.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(i) = self.early.iter().position(|l| l.contains(needle)) {
            let found = self.early.remove(i);
            self.early.drain(..i);
            return Some(found);
        }
        self.early.clear();
        let deadline = Instant::now() + timeout;
        while let Ok(l) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if l.contains(needle) {
                return Some(l);
            }
        }
        None
    }

    /// SIGTERM, then the drain report from stdout and the exit status.
    pub fn terminate(self) -> (qos_tools::gateway::DrainReport, std::process::ExitStatus) {
        self.signal("TERM");
        self.finish(Duration::from_secs(120))
    }

    /// The drain report from stdout and the exit status, once qosd exits (a failure
    /// if it has not within `limit`; it is killed then).
    pub fn finish(
        mut self,
        limit: Duration,
    ) -> (qos_tools::gateway::DrainReport, std::process::ExitStatus) {
        let mut stdout = self.child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("qosd did not exit within {limit:?}"));
        let status = self.child.wait().expect("wait");
        let report = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("drain report {out:?}: {e}"));
        (report, status)
    }
}

impl Drop for Qosd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
