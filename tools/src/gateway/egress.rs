//! A worker's egress: writes what the scheduler releases to the upstreams through one
//! non-blocking UDP socket, coalescing runs of equal-size datagrams to the same
//! upstream into one GSO send where the kernel has it. A full socket buffer leaves the
//! rest in the outbox (offered again first on the next iteration); a failed send is a
//! counted `egress_error` drop of the stream's datagrams.
//!
//! A run of datagrams that lie next to each other in one receive buffer (one sender's
//! GRO buffer, in order) is sent from that buffer; other runs are copied into one
//! buffer first. Per-stream counts are added once per run and stream, not per
//! datagram, through this worker's own cache of the streams' counters.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use qos_dataplane::runtime::{Discarded, Egress, Outbox};
use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};

use super::Packet;
use super::classify::Dest;
use super::counters::{GatewayCounters, GatewayDrop, StreamCounters};

/// Largest GSO send, bytes (the kernel's limit for one UDP send is 64 KiB).
const GSO_MAX_BYTES: usize = 60_000;

/// One worker's egress.
#[derive(Debug)]
pub struct UdpEgress {
    socket: UdpSocket,
    state: UdpSocketState,
    buf: Vec<u8>,
    gso: usize,
    counters: Arc<GatewayCounters>,
    /// The streams' counters by index, extended when a packet names a new one.
    streams: Vec<Arc<StreamCounters>>,
    /// The destinations by index, likewise.
    dests: Vec<Dest>,
}

/// What happened to a run of datagrams.
#[derive(Clone, Copy)]
enum Outcome {
    Forwarded,
    Failed,
}

impl UdpEgress {
    /// An egress sending from `socket` (made non-blocking here), counting into
    /// `counters`.
    pub fn new(socket: UdpSocket, counters: Arc<GatewayCounters>) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let gso = state.max_gso_segments().max(1);
        Ok(Self {
            socket,
            state,
            buf: Vec::with_capacity(GSO_MAX_BYTES + 65_536),
            gso,
            counters,
            streams: Vec::new(),
            dests: Vec::new(),
        })
    }

    /// The counters of stream `index`.
    fn stream(&mut self, index: u32) -> Option<&StreamCounters> {
        let i = index as usize;
        if i >= self.streams.len() {
            self.counters.extend_streams(&mut self.streams);
        }
        self.streams.get(i).map(|s| &**s)
    }

    /// Destination `index` (every index a packet carries was handed out by the
    /// registry, which never removes one).
    fn dest(&mut self, index: u32) -> Option<&Dest> {
        let i = index as usize;
        if i >= self.dests.len() {
            self.counters.extend_dests(&mut self.dests);
        }
        self.dests.get(i)
    }

    /// Counts `n` datagrams of stream `index`.
    fn count(&mut self, index: u32, n: u64, outcome: Outcome) {
        if n == 0 {
            return;
        }
        // Every index a packet carries was handed out by the registry, which never
        // removes one: the look-up finds it.
        if let Some(s) = self.stream(index) {
            match outcome {
                Outcome::Forwarded => {
                    s.forwarded.fetch_add(n, Relaxed);
                }
                Outcome::Failed => s.gateway_drops(GatewayDrop::EgressError, n),
            }
        }
    }

    /// Takes the first `n` packets of `out` and counts them, once per run of one
    /// stream.
    fn take(&mut self, out: &mut Outbox<'_, Packet>, n: usize, outcome: Outcome) {
        let mut run: Option<(u32, u64)> = None;
        for _ in 0..n {
            let Some(d) = out.pop() else { break };
            let stream = d.packet.stream();
            run = match run {
                Some((s, k)) if s == stream => Some((s, k + 1)),
                Some((s, k)) => {
                    self.count(s, k, outcome);
                    Some((stream, 1))
                }
                None => Some((stream, 1)),
            };
        }
        if let Some((s, k)) = run {
            self.count(s, k, outcome);
        }
    }

    fn send_one(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        self.state.try_send(
            UdpSockRef::from(&self.socket),
            &Transmit {
                destination: dest,
                ecn: None,
                contents,
                segment_size: segment,
                src_ip: None,
            },
        )
    }

    /// Sends the run of the first `n` packets (same upstream, same size `size`).
    fn send_run(
        &mut self,
        out: &Outbox<'_, Packet>,
        dest: SocketAddr,
        n: usize,
        size: usize,
    ) -> io::Result<()> {
        let mut packets = out.iter().take(n).map(|d| &d.packet);
        let Some(first) = packets.next() else {
            return Ok(());
        };
        if n == 1 {
            return self.send_one(dest, first.data(), None);
        }
        // Adjacent in one receive buffer: send from there.
        let mut prev = first;
        let mut adjacent = true;
        for p in packets {
            if !p.follows(prev) {
                adjacent = false;
                break;
            }
            prev = p;
        }
        if adjacent && let Some(span) = first.span_to(prev) {
            return self.send_one(dest, span, Some(size));
        }
        self.buf.clear();
        for d in out.iter().take(n) {
            self.buf.extend_from_slice(d.packet.data());
        }
        self.send_one(dest, &self.buf, Some(size))
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(105) // ENOBUFS
}

impl Egress<Packet> for UdpEgress {
    fn send(&mut self, _now_ns: u64, out: &mut Outbox<'_, Packet>) {
        while let Some(front) = out.front() {
            let index = front.packet.dest();
            let size = front.packet.len();
            match self.dest(index) {
                Some(Dest::One(dest)) => {
                    let dest = *dest;
                    // The run of datagrams to the same destination with the same size.
                    let mut n = 1;
                    if self.gso > 1 {
                        n = out
                            .iter()
                            .take(self.gso.min(GSO_MAX_BYTES / size.max(1)).max(1))
                            .take_while(|d| d.packet.len() == size && d.packet.dest() == index)
                            .count()
                            .max(1);
                    }
                    let result = self.send_run(out, dest, n, size);
                    // A device that cannot segment fails the send (EIO or EINVAL), and
                    // quinn-udp lowers its segment limit: follow it and send again.
                    let limit = self.state.max_gso_segments().max(1);
                    if n > 1 && result.is_err() && limit < self.gso {
                        self.gso = limit;
                        continue;
                    }
                    match result {
                        Err(e) if would_block(&e) => return,
                        Ok(()) => self.take(out, n, Outcome::Forwarded),
                        Err(_) => self.take(out, n, Outcome::Failed),
                    }
                }
                Some(Dest::All(dests)) => {
                    let dests: Arc<[SocketAddr]> = dests.clone();
                    let mut failed = false;
                    for &dest in dests.iter() {
                        match self.send_one(dest, front.packet.data(), None) {
                            Err(e) if would_block(&e) => {
                                // Copies already written are not written again: the
                                // datagram counts as failed rather than duplicated.
                                failed = true;
                                break;
                            }
                            Err(_) => failed = true,
                            Ok(()) => {}
                        }
                    }
                    let outcome = if failed {
                        Outcome::Failed
                    } else {
                        Outcome::Forwarded
                    };
                    self.take(out, 1, outcome);
                }
                // Not reached (see `dest`): counted as an egress error all the same.
                None => self.take(out, 1, Outcome::Failed),
            }
        }
    }

    fn discard(&mut self, d: Discarded<Packet>) {
        let i = d.reason.name_index();
        if let Some(s) = self.stream(d.packet.stream()) {
            s.dataplane_dropped[i].fetch_add(1, Relaxed);
        }
    }
}
