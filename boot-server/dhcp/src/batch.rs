//! Batched datagram I/O for the serving loop: `recvmmsg(2)` takes every
//! datagram waiting on the socket (up to [`RECV_BATCH`]) in one call, and
//! `sendmmsg(2)` sends the replies that are ready together in one call.
//! Under load this saves two system calls per exchange; at a trickle it
//! costs nothing (a batch of one is one call, as before).
//!
//! Hand-written over `libc`: tokio and socket2 offer no multi-message calls,
//! and nix's `recvmmsg` wrapper allocates per call.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Datagrams read per `recvmmsg` call at most.
pub const RECV_BATCH: usize = 32;
/// Room per datagram. DHCP messages are ≤ 576 bytes unless a client raises
/// its maximum (option 57) towards its MTU; longer ones arrive truncated and
/// are dropped as malformed.
const SLOT: usize = 4096;

/// One message header: a single buffer and an IPv4 peer address (the
/// caller keeps both alive, and in place, while the kernel uses them).
fn message(iov: &mut libc::iovec, addr: &mut libc::sockaddr_in) -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct; all-zero is valid.
    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
    m.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    m.msg_hdr.msg_iov = iov;
    m.msg_hdr.msg_iovlen = 1;
    m
}

/// Receive buffers for one socket's serving loop.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_in>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; RECV_BATCH * SLOT],
            // SAFETY: sockaddr_in is a plain C struct; all-zero is valid.
            addrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
            lens: vec![0; RECV_BATCH],
            truncated: vec![false; RECV_BATCH],
            n: 0,
        }
    }
}

impl RecvBatch {
    /// Reads what is queued on `fd` without waiting: the number of
    /// datagrams now held (≥ 1), or `WouldBlock` when none is (what tokio's
    /// `try_io` needs to clear the socket's readiness).
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, RECV_BATCH);
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .chunks_mut(SLOT)
            .take(max)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .map(|(iov, addr)| message(iov, addr))
            .collect();
        self.n = 0;
        let got = loop {
            // SAFETY: every mmsghdr points at a live iovec into `self.bufs`
            // and a live sockaddr_in in `self.addrs`, both borrowed mutably
            // for this call; `msgs.len()` entries are initialised.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    msgs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, m) in msgs.iter().take(got).enumerate() {
            self.lens[i] = m.msg_len as usize;
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.n = got;
        Ok(got)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its bytes and sender;
    /// `None` for one that did not fit (or came from a non-IPv4 sender).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
        if i >= self.n || self.truncated[i] {
            return None;
        }
        let a = &self.addrs[i];
        if a.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        let src = SocketAddrV4::new(ip, u16::from_be(a.sin_port));
        Some((&self.bufs[i * SLOT..][..self.lens[i]], src))
    }
}

/// Sends `packets` (bytes, destination) with `sendmmsg(2)`, without waiting:
/// how many the socket took, from the front; the rest met a full send buffer
/// (`Ok`) or an error (`Err`, with the count sent before it).
pub fn send_batch(fd: RawFd, packets: &[(&[u8], SocketAddrV4)]) -> (usize, Option<io::Error>) {
    let mut addrs: Vec<libc::sockaddr_in> = packets
        .iter()
        .map(|(_, d)| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: d.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*d.ip()).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    let mut iovs: Vec<libc::iovec> = packets
        .iter()
        .map(|(b, _)| libc::iovec {
            // sendmmsg only reads through this pointer.
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, addr)| message(iov, addr))
        .collect();
    let mut sent = 0;
    while sent < msgs.len() {
        let rest = &mut msgs[sent..];
        // SAFETY: `rest` holds initialised mmsghdr whose iovecs and names
        // point into `packets` and `addrs`, alive for this call.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return (sent, None),
                _ => return (sent, Some(e)),
            }
        }
        if r == 0 {
            return (sent, None);
        }
        sent += r as usize;
    }
    (sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_back_in_one_call_with_senders() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 300 + i as usize]).collect();
        let packets: Vec<(&[u8], SocketAddrV4)> = bodies.iter().map(|b| (&b[..], to)).collect();
        let (sent, err) = send_batch(tx.as_raw_fd(), &packets);
        assert_eq!((sent, err.is_none()), (40, true));
        // A datagram too long for a slot is reported as such, not cut short.
        tx.send_to(&vec![7u8; SLOT + 10], to).unwrap();
        let mut b = RecvBatch::default();
        let mut got = Vec::new();
        let mut too_long = 0;
        loop {
            let n = match b.recv(rx.as_raw_fd(), RECV_BATCH) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            };
            assert!(n <= RECV_BATCH);
            for i in 0..n {
                match b.get(i) {
                    Some((d, src)) => {
                        assert_eq!(std::net::SocketAddr::V4(src), tx.local_addr().unwrap());
                        got.push(d.to_vec());
                    }
                    None => too_long += 1,
                }
            }
        }
        assert_eq!(got, bodies);
        assert_eq!(too_long, 1);
        assert!(b.get(RECV_BATCH).is_none());
    }
}
