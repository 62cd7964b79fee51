//! A plain UDP relay with the same batching as `qosd` (the P9 baseline): per thread
//! one `SO_REUSEPORT` socket, batched receive (recvmmsg with GRO), and each batch
//! forwarded to one upstream with GSO runs of equal-size datagrams. No
//! classification, no queues, no scheduler, no control plane.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};

use crate::udp::BatchRecv;

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// The address it receives on.
    pub listen: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Datagrams forwarded.
    pub forwarded: Arc<AtomicU64>,
}

impl Relay {
    /// Starts `threads` relay threads on `listen` (port 0: any) forwarding to `upstream`.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        threads: usize,
    ) -> std::io::Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let sockets = crate::udp::bind_reuseport(listen, threads.max(1), 4 << 20)?;
        let addr = sockets.first().map_or(Ok(listen), UdpSocket::local_addr)?;
        let mut handles = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
            let (stop, fwd) = (stop.clone(), forwarded.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("relay-{i}"))
                    .spawn(move || relay_loop(&sock, &state, upstream, &stop, &fwd))?,
            );
        }
        Ok(Relay {
            listen: addr,
            stop,
            threads: handles,
            forwarded,
        })
    }

    /// Stops and joins the threads.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.forwarded.load(Relaxed)
    }
}

fn relay_loop(
    sock: &UdpSocket,
    state: &UdpSocketState,
    upstream: SocketAddr,
    stop: &AtomicBool,
    forwarded: &AtomicU64,
) {
    let mut batch = BatchRecv::new();
    let gso = state.max_gso_segments().max(1);
    let mut out = Vec::with_capacity(65_536);
    while !stop.load(Relaxed) {
        let n = match batch.recv(sock, state, 20) {
            Ok(0) | Err(_) => continue,
            Ok(n) => n,
        };
        // Datagrams of the batch, in order, then sent in GSO runs of equal size.
        let mut run_size = 0;
        let mut run_len = 0;
        out.clear();
        let flush = |out: &mut Vec<u8>, size: usize, count: usize| {
            if count == 0 {
                return;
            }
            let t = Transmit {
                destination: upstream,
                ecn: None,
                contents: out,
                segment_size: (count > 1).then_some(size),
                src_ip: None,
            };
            if state.try_send(UdpSockRef::from(sock), &t).is_ok() {
                forwarded.fetch_add(count as u64, Relaxed);
            }
            out.clear();
        };
        for (_, d) in batch.datagrams(n) {
            if d.is_empty() {
                continue;
            }
            if d.len() != run_size || run_len >= gso || out.len() + d.len() > 60_000 {
                flush(&mut out, run_size, run_len);
                run_size = d.len();
                run_len = 0;
            }
            out.extend_from_slice(d);
            run_len += 1;
        }
        flush(&mut out, run_size, run_len);
    }
}
