//! Batched UDP receive shared by qosd's receive threads and the plain relay: take one
//! `recvmmsg` batch through quinn-udp (with GRO, one buffer may hold several datagrams
//! of one stride), waiting for the socket to be readable only when it is empty
//! (bounded, so a stop flag is seen), and hand out the datagrams one by one.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (port 0: the first socket picks a
/// port, the others share it), asking for `buffer` bytes of receive and send buffer
/// (the kernel caps them at its rmem_max / wmem_max; smaller is fine). An IPv6
/// address binds IPv6 only.
pub fn bind_reuseport(addr: SocketAddr, n: usize, buffer: usize) -> io::Result<Vec<UdpSocket>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
        s.bind(&addr.into())?;
        let sock: UdpSocket = s.into();
        if addr.port() == 0 {
            addr = sock.local_addr()?;
        }
        out.push(sock);
    }
    Ok(out)
}

/// Largest receive buffer: with GRO the kernel coalesces up to 64 KiB.
const SLOT: usize = 65_536;

/// One batch's buffers, reused for every receive.
#[derive(Debug)]
pub struct BatchRecv {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl Default for BatchRecv {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchRecv {
    /// Buffers for the platform's batch size (2 MiB on Linux).
    pub fn new() -> Self {
        let batch = quinn_udp::BATCH_SIZE;
        Self {
            bufs: (0..batch).map(|_| vec![0u8; SLOT]).collect(),
            meta: vec![RecvMeta::default(); batch],
        }
    }

    /// Receives one batch, waiting up to `wait_ms` for `sock` to be readable when
    /// nothing is waiting; returns how many buffers were filled (0 on timeout,
    /// would-block or interrupt), to read with [`BatchRecv::datagrams`]. Under load
    /// this is one `recvmmsg` a batch: the readiness wait (`poll`) is paid only when
    /// the socket is empty. `sock` must be non-blocking (quinn-udp's
    /// `UdpSocketState::new` makes it so).
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        state: &UdpSocketState,
        wait_ms: i64,
    ) -> io::Result<usize> {
        match self.try_recv(sock, state) {
            Ok(0) => {}
            done => return done,
        }
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: wait_ms.clamp(0, 999) * 1_000_000,
        };
        if !matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
            return Ok(0);
        }
        self.try_recv(sock, state)
    }

    /// One non-blocking `recvmmsg` batch; 0 when nothing is waiting.
    fn try_recv(&mut self, sock: &UdpSocket, state: &UdpSocketState) -> io::Result<usize> {
        let mut bufs = self.bufs.iter_mut();
        let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] = std::array::from_fn(|_| {
            IoSliceMut::new(bufs.next().map_or(&mut [][..], |b| &mut b[..]))
        });
        match state.recv(UdpSockRef::from(sock), &mut slices, &mut self.meta) {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// The first `n` buffers, each with its sender and its datagrams' stride (the
    /// length of each but the last; GRO coalesces a run of one sender's datagrams).
    pub fn buffers(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8], usize)> + '_ {
        self.meta.iter().zip(&self.bufs).take(n).map(|(m, buf)| {
            let len = m.len.min(buf.len());
            let stride = if m.stride == 0 { len.max(1) } else { m.stride };
            (m.addr, &buf[..len], stride)
        })
    }

    /// The datagrams of the first `n` buffers, in order, each with its sender (GRO
    /// buffers split at their stride; an empty datagram is one empty slice).
    pub fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.buffers(n).flat_map(|(addr, buf, stride)| {
            segments(buf.len(), stride).map(move |r| (addr, &buf[r]))
        })
    }
}

/// The datagrams of a received buffer of `len` bytes with datagrams of `stride` bytes
/// (the last may be shorter), as ranges; an empty buffer is one empty datagram.
pub fn segments(len: usize, stride: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let stride = stride.max(1);
    let count = if len == 0 { 1 } else { len.div_ceil(stride) };
    (0..count).map(move |i| {
        let start = (i * stride).min(len);
        let end = (start + stride).min(len);
        start..end
    })
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn segments_split_at_the_stride_with_a_short_last_one() {
        assert_eq!(segments(10, 4).collect::<Vec<_>>(), vec![0..4, 4..8, 8..10]);
        assert_eq!(segments(8, 4).collect::<Vec<_>>(), vec![0..4, 4..8]);
        assert_eq!(segments(3, 4).collect::<Vec<_>>(), vec![0..3]);
        assert_eq!(segments(0, 4).collect::<Vec<_>>(), vec![0..0]);
        assert_eq!(segments(5, 0).count(), 5);
    }
}
