//! A worker's egress: writes what the scheduler releases to the upstreams through one
//! non-blocking UDP socket, coalescing runs of equal-size datagrams to the same
//! upstream into one GSO send where the kernel has it. A full socket buffer leaves the
//! rest in the outbox (offered again first on the next iteration); a failed send is a
//! counted `egress_error` drop of the stream's datagrams.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use qos_dataplane::runtime::{Discarded, Egress, Outbox};
use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};

use super::Packet;
use super::classify::Dest;
use super::counters::{GatewayDrop, dataplane_reason_index};

/// Largest GSO send, bytes (the kernel's limit for one UDP send is 64 KiB).
const GSO_MAX_BYTES: usize = 60_000;

/// One worker's egress.
#[derive(Debug)]
pub struct UdpEgress {
    socket: UdpSocket,
    state: UdpSocketState,
    buf: Vec<u8>,
    gso: usize,
}

impl UdpEgress {
    /// An egress sending from `socket` (made non-blocking here).
    pub fn new(socket: UdpSocket, gso: bool) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let gso = if gso {
            state.max_gso_segments().max(1)
        } else {
            1
        };
        Ok(Self {
            socket,
            state,
            buf: Vec::with_capacity(GSO_MAX_BYTES + 65_536),
            gso,
        })
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
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(105) // ENOBUFS
}

impl Egress<Packet> for UdpEgress {
    fn send(&mut self, _now_ns: u64, out: &mut Outbox<'_, Packet>) {
        while let Some(front) = out.front() {
            match &front.packet.dest {
                Dest::One(dest) => {
                    let dest = *dest;
                    let size = front.packet.data.len();
                    // The run of datagrams to the same upstream with the same size.
                    let mut n = 1;
                    if self.gso > 1 {
                        n = out
                            .iter()
                            .take(self.gso.min(GSO_MAX_BYTES / size.max(1)).max(1))
                            .take_while(|d| {
                                d.packet.data.len() == size
                                    && matches!(&d.packet.dest, Dest::One(a) if *a == dest)
                            })
                            .count()
                            .max(1);
                    }
                    let result = if n == 1 {
                        self.send_one(dest, &front.packet.data, None)
                    } else {
                        self.buf.clear();
                        for d in out.iter().take(n) {
                            self.buf.extend_from_slice(&d.packet.data);
                        }
                        let r = self.send_one(dest, &self.buf, Some(size));
                        if r.as_ref().is_err_and(|e| e.raw_os_error() == Some(5)) {
                            // EIO: the device cannot segment; stop trying GSO.
                            self.gso = 1;
                            continue;
                        }
                        r
                    };
                    match result {
                        Err(e) if would_block(&e) => return,
                        Ok(()) => {
                            for _ in 0..n {
                                if let Some(d) = out.pop() {
                                    d.packet.stream.forwarded.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        Err(_) => {
                            for _ in 0..n {
                                if let Some(d) = out.pop() {
                                    d.packet.stream.gateway_drop(GatewayDrop::EgressError);
                                }
                            }
                        }
                    }
                }
                Dest::All(dests) => {
                    let dests: Arc<[SocketAddr]> = dests.clone();
                    let mut failed = false;
                    for &dest in dests.iter() {
                        match self.send_one(dest, &front.packet.data, None) {
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
                    if let Some(d) = out.pop() {
                        if failed {
                            d.packet.stream.gateway_drop(GatewayDrop::EgressError);
                        } else {
                            d.packet.stream.forwarded.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
        }
    }

    fn discard(&mut self, d: Discarded<Packet>) {
        d.packet.stream.dataplane_dropped[dataplane_reason_index(d.reason.as_str())]
            .fetch_add(1, Relaxed);
    }
}
