//! Batched UDP I/O: `recvmmsg` and `sendmmsg` on the tokio socket's fd.
//! The kernel's per-datagram cost is the floor of this server's speed, and
//! one system call per batch instead of per datagram cuts it noticeably.

use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams read per `recvmmsg`.
pub const RECV_BATCH: usize = 64;
/// Bytes kept of each received datagram. Longer ones are still reported
/// with their full length (`MSG_TRUNC`), which is all a server needs to
/// refuse them: no valid client line or server packet is this long.
pub const RECV_SLOT: usize = 4096;
/// Datagrams written per `sendmmsg`.
const SEND_BATCH: usize = 64;

/// Reusable buffers for [`RecvBatch::recv`].
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// `(source, full length)` of each datagram of the last batch.
    pub got: Vec<(SocketAddr, usize)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Self {
            bufs: vec![0; RECV_BATCH * RECV_SLOT],
            addrs: vec![zero_addr; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            hdrs: vec![zero_hdr; RECV_BATCH],
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// The bytes kept of datagram `i` of the last batch.
    pub fn data(&self, i: usize) -> &[u8] {
        let len = self.got[i].1.min(RECV_SLOT);
        &self.bufs[i * RECV_SLOT..i * RECV_SLOT + len]
    }

    /// Reads up to [`RECV_BATCH`] datagrams without blocking. `Ok(0)` never
    /// happens: an empty socket is `WouldBlock`.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let base = self.bufs.as_mut_ptr();
        self.iovs.clear();
        for i in 0..RECV_BATCH {
            self.iovs.push(libc::iovec {
                // SAFETY: each slot lies within `bufs`.
                iov_base: unsafe { base.add(i * RECV_SLOT) }.cast(),
                iov_len: RECV_SLOT,
            });
        }
        for i in 0..RECV_BATCH {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        let fd = sock.as_raw_fd();
        let hdrs = self.hdrs.as_mut_ptr();
        let n = sock.try_io(Interest::READABLE, || {
            // SAFETY: the headers point at live buffers sized as declared.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs,
                    RECV_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })?;
        for i in 0..n {
            let len = self.hdrs[i].msg_len as usize;
            // A non-IP source cannot happen on a UDP/IP socket; keep indices
            // aligned with a placeholder that no one matches.
            let addr = to_socket_addr(&self.addrs[i])
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            self.got.push((addr, len));
        }
        Ok(n)
    }
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Datagrams waiting to be sent, in order.
#[derive(Default)]
pub struct SendQueue {
    items: Vec<(SockAddr, bytes::Bytes)>,
    sent: usize,
}

impl SendQueue {
    pub fn push(&mut self, to: SocketAddr, data: bytes::Bytes) {
        self.items.push((SockAddr::from(to), data));
    }

    pub fn is_empty(&self) -> bool {
        self.sent == self.items.len()
    }

    pub fn len(&self) -> usize {
        self.items.len() - self.sent
    }

    /// Sends everything, waiting for the socket when its buffer is full.
    /// Datagrams the kernel refuses for a reason other than a full buffer
    /// (an unreachable client, say) are skipped and counted.
    pub async fn flush(&mut self, sock: &UdpSocket) -> u64 {
        let mut failed = 0;
        while self.sent < self.items.len() {
            match self.send_some(sock) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sock.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(
                        "send to {:?} failed: {e}",
                        self.items[self.sent].0.as_socket()
                    );
                    self.sent += 1;
                    failed += 1;
                }
            }
        }
        self.items.clear();
        self.sent = 0;
        failed
    }

    fn send_some(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let chunk = &self.items[self.sent..self.items.len().min(self.sent + SEND_BATCH)];
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, d)| libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            })
            .collect();
        // SAFETY: all-zero is a valid mmsghdr; fields are set below.
        let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (i, (addr, _)) in chunk.iter().enumerate() {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = addr.len();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let fd = sock.as_raw_fd();
        sock.try_io(Interest::WRITABLE, || {
            // SAFETY: headers point at live addresses and payloads.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }
}
