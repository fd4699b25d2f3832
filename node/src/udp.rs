//! Batched UDP I/O: `recvmmsg` and `sendmmsg` on the server's socket.
//! The kernel's per-datagram cost is the floor of this server's speed, and
//! one system call per batch instead of per datagram cuts it noticeably.
//!
//! Sends go further with UDP segmentation offload (`UDP_SEGMENT`, Linux
//! 4.18 and later): a run of datagrams of one length to one address passes
//! the kernel's stack as one (each still arrives as its own datagram),
//! which costs a fraction of sending them one by one. A flush groups what
//! it sends by destination (keeping the order per destination, the only
//! order a receiver can see) to make such runs. A kernel or route that
//! refuses segmentation turns it off for good, and the refused datagrams
//! go out one by one.

use socket2::SockAddr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams read per `recvmmsg`.
pub(crate) const RECV_BATCH: usize = 64;
/// Bytes kept of each received datagram. Longer ones are still reported
/// with their full length (`MSG_TRUNC`), which is all a server needs to
/// refuse them: no valid client line or server packet is this long.
pub(crate) const RECV_SLOT: usize = 4096;
/// Datagrams written per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// Most datagrams one segmented send carries (the kernel's limit is 64 on
/// older releases).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one segmented send carries (a UDP payload's limit, with
/// room for headers).
const GSO_MAX_BYTES: usize = 60_000;
/// Longest datagram sent segmented: a segment must fit the route's MTU,
/// which a datagram sent alone need not (IP fragments it).
const GSO_MAX_SEGMENT: usize = 1_200;

/// Reusable buffers for [`RecvBatch::recv`].
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// `(source, full length)` of each datagram of the last batch.
    pub(crate) got: Vec<(SocketAddr, usize)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut b = Self {
            bufs: vec![0; RECV_BATCH * RECV_SLOT],
            addrs: vec![zero_addr; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            hdrs: vec![zero_hdr; RECV_BATCH],
            got: Vec::with_capacity(RECV_BATCH),
        };
        // The headers point into the vectors' heap storage, which never
        // moves (none of them grows), so this is done once, not per read.
        let base = b.bufs.as_mut_ptr();
        for i in 0..RECV_BATCH {
            b.iovs.push(libc::iovec {
                // SAFETY: each slot lies within `bufs`.
                iov_base: unsafe { base.add(i * RECV_SLOT) }.cast(),
                iov_len: RECV_SLOT,
            });
        }
        for i in 0..RECV_BATCH {
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut b.addrs[i]).cast();
            h.msg_iov = &raw mut b.iovs[i];
            h.msg_iovlen = 1;
        }
        b
    }

    /// The bytes kept of datagram `i` of the last batch.
    pub(crate) fn data(&self, i: usize) -> &[u8] {
        let len = self.got[i].1.min(RECV_SLOT);
        &self.bufs[i * RECV_SLOT..i * RECV_SLOT + len]
    }

    /// Reads up to [`RECV_BATCH`] datagrams without blocking. `Ok(0)` never
    /// happens: an empty socket is `WouldBlock`.
    pub(crate) fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.got.clear();
        // Only what the kernel writes back: the source's length (an IPv4
        // source shortens it, and an IPv6 one must still fit).
        for h in &mut self.hdrs {
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        let fd = sock.as_raw_fd();
        let hdrs = self.hdrs.as_mut_ptr();
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
        // A negative count is an error, in errno.
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
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

/// Receive buffer asked of the kernel: bursts must not be dropped.
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// Send buffer asked of the kernel.
const SEND_BUFFER: usize = 4 * 1024 * 1024;

/// Binds the server's UDP socket, non-blocking, with large kernel buffers
/// and ICMP errors queued (port/host unreachable for a client ends its
/// session). Returns the socket and the receive buffer size the kernel
/// granted.
pub(crate) fn bind_socket(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    grow_buffers(&sock, RECV_BUFFER, SEND_BUFFER);
    sock.set_nonblocking(true)?;
    enable_recverr(&sock, addr.is_ipv6())?;
    sock.bind(&addr.into())?;
    let granted = sock.recv_buffer_size().unwrap_or(0);
    Ok((sock.into(), granted))
}

/// Asks for `recv`- and `send`-byte kernel buffers, past the system limit
/// when privileged (a burst of a whole cluster must not be dropped by a
/// default-sized buffer). Best effort. The launcher's sockets use it too.
pub fn grow_buffers(sock: &impl AsRawFd, recv: usize, send: usize) {
    grow_buffer(sock, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, recv);
    grow_buffer(sock, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, send);
}

/// Asks for `size`; the FORCE variant first, which gets past the system
/// limit when we are privileged. Best effort.
fn grow_buffer(sock: &impl AsRawFd, opt: libc::c_int, force: libc::c_int, size: usize) {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    if set_int_option(sock, libc::SOL_SOCKET, force, size).is_err() {
        let _ = set_int_option(sock, libc::SOL_SOCKET, opt, size);
    }
}

/// `setsockopt` with an `int` value.
fn set_int_option(
    fd: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt on a valid fd with a pointer to a live c_int.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to queue ICMP errors (port/host unreachable) for this
/// unconnected socket (`IP_RECVERR`, and `IPV6_RECVERR` on an IPv6 socket),
/// so that [`drain_errqueue`] can tell which destination failed.
pub(crate) fn enable_recverr(fd: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_int_option(fd, libc::SOL_IPV6, libc::IPV6_RECVERR, 1)?;
        // IPv4-mapped peers of a dual-stack socket report through IP_RECVERR.
        let _ = set_int_option(fd, libc::SOL_IP, libc::IP_RECVERR, 1);
        Ok(())
    } else {
        set_int_option(fd, libc::SOL_IP, libc::IP_RECVERR, 1)
    }
}

/// One ICMP error from the socket's error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IcmpError {
    /// The destination of the datagram that failed.
    pub(crate) addr: SocketAddr,
    /// `ECONNREFUSED` (port unreachable), `EHOSTUNREACH`, `ENETUNREACH`, ...
    pub(crate) errno: i32,
}

impl IcmpError {
    /// Port, host or network unreachable: nobody receives at `addr`.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self.errno,
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN
        )
    }
}

/// Whether a send error is the socket's pending asynchronous error (an
/// earlier ICMP error, reported by the next system call whatever its
/// destination) rather than something about this datagram.
pub(crate) fn is_async_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)
    )
}

/// Reads up to `max` entries of the socket's error queue (`recvmsg` with
/// `MSG_ERRQUEUE`, never blocking) and appends the ICMP errors to `out`.
/// Returns how many entries were read (ICMP or not) and whether the queue
/// was found empty.
pub(crate) fn drain_errqueue(
    fd: &impl AsRawFd,
    out: &mut Vec<IcmpError>,
    max: usize,
) -> (usize, bool) {
    let fd = fd.as_raw_fd();
    let mut read = 0;
    let mut empty = false;
    while read < max {
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut data = [0u8; 64];
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: msg points at live buffers of the sizes it declares.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            empty = true; // EAGAIN: the queue is empty.
            break;
        }
        read += 1;
        let Some(addr) = to_socket_addr(&name) else {
            continue;
        };
        // SAFETY: the CMSG macros walk the control buffer the kernel filled,
        // within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let h = &*c;
                let ours = (h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                    || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_RECVERR);
                if ours {
                    let ee: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if ee.ee_origin == libc::SO_EE_ORIGIN_ICMP
                        || ee.ee_origin == libc::SO_EE_ORIGIN_ICMP6
                    {
                        out.push(IcmpError {
                            addr,
                            errno: ee.ee_errno as i32,
                        });
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    (read, empty)
}

/// Most ICMP errors collected per flush (the rest stay in the kernel's
/// queue, itself bounded by the socket's receive buffer).
const MAX_ICMP_PER_FLUSH: usize = 65_536;
/// How often a send is retried when it fails only because an earlier
/// ICMP error was pending on the socket.
const ICMP_RETRIES: u32 = 8;
/// How long a flush waits for a full send buffer before dropping the rest.
pub(crate) const SEND_STALL: std::time::Duration = std::time::Duration::from_millis(50);

/// What a flush did besides sending.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushReport {
    /// Datagrams the kernel refused for another reason than a full buffer.
    pub(crate) failed: u64,
    /// Datagrams dropped because the send buffer stayed full for
    /// [`SEND_STALL`].
    pub(crate) dropped: u64,
    /// Datagrams sent as part of a segmented run.
    pub(crate) segmented: u64,
}

/// Datagrams waiting to be sent, in order per destination. The server
/// flushes it whenever it holds [`SendQueue::FLUSH_AT`] datagrams, so it
/// never grows without bound; a send buffer that stays full makes a flush
/// drop (and count) what is left instead of waiting forever.
pub(crate) struct SendQueue {
    items: Vec<(SocketAddr, bytes::Bytes)>,
    sent: usize,
    /// ICMP errors seen while sending (taken by the server).
    pub(crate) icmp: Vec<IcmpError>,
    /// Runs of datagrams may go out segmented (see the module's doc).
    segmentation: bool,
    /// Datagrams sent as part of a segmented run in this flush.
    segmented: u64,
    /// Most datagrams one segmented send carries.
    max_segments: usize,
    /// Reused by [`SendQueue::group_by_destination`].
    group_of: crate::FastMap<SocketAddr, usize>,
    group_sizes: Vec<usize>,
    groups: Vec<usize>,
    /// Reused by [`SendQueue::send_some`].
    scratch: SendScratch,
}

/// What one `sendmmsg` is built in, kept between sends so that a flush
/// allocates nothing (five vectors per send were a few percent of a
/// server's time at full speed). The headers point into the others and
/// into the queued payloads only during [`SendQueue::send_some`], which
/// empties everything before it returns.
#[derive(Default)]
struct SendScratch {
    /// (first item, datagrams) per message.
    messages: Vec<(usize, usize)>,
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    controls: Vec<SegmentControl>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` are set and used within
// one call of `send_some` on the owning thread and cleared before it
// returns, so moving an idle scratch to another thread moves no pointer
// anyone follows.
unsafe impl Send for SendScratch {}

impl SendScratch {
    fn clear(&mut self) {
        self.messages.clear();
        self.addrs.clear();
        self.iovs.clear();
        self.controls.clear();
        self.hdrs.clear();
    }
}

impl Default for SendQueue {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            sent: 0,
            icmp: Vec::new(),
            segmentation: true,
            segmented: 0,
            max_segments: GSO_MAX_SEGMENTS,
            group_of: crate::FastMap::default(),
            group_sizes: Vec::new(),
            groups: Vec::new(),
            scratch: SendScratch::default(),
        }
    }
}

/// The socket options a segmented send carries: one `UDP_SEGMENT` control
/// message, 8-byte aligned as `cmsghdr` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentControl([u8; 32]);

impl SendQueue {
    /// Queue length at which the server flushes before queueing more.
    pub(crate) const FLUSH_AT: usize = 16_384;

    pub(crate) fn push(&mut self, to: SocketAddr, data: bytes::Bytes) {
        self.items.push((to, data));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sent == self.items.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len() - self.sent
    }

    /// Reads the socket's error queue into [`SendQueue::icmp`]; returns
    /// (entries read, whether the queue was found empty).
    pub(crate) fn collect_icmp(&mut self, sock: &impl AsRawFd) -> (usize, bool) {
        let room = MAX_ICMP_PER_FLUSH.saturating_sub(self.icmp.len());
        drain_errqueue(sock, &mut self.icmp, room)
    }

    /// Sends everything, waiting up to [`SEND_STALL`] at a time for a full
    /// send buffer. A send that fails because an ICMP error was pending on
    /// the socket is retried (the error belongs to an earlier datagram, and
    /// the error queue says which); other refusals are skipped and counted.
    pub(crate) fn flush(&mut self, sock: &impl AsRawFd) -> FlushReport {
        let mut report = FlushReport::default();
        let mut retries = 0;
        if self.segmentation {
            self.group_by_destination();
        }
        while self.sent < self.items.len() {
            match self.send_some(sock) {
                Ok(n) => {
                    self.sent += n;
                    retries = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !matches!(crate::control::wait_writable(sock, SEND_STALL), Ok(true)) {
                        report.dropped += (self.items.len() - self.sent) as u64;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_async_icmp_error(&e) && retries < ICMP_RETRIES => {
                    retries += 1;
                    self.collect_icmp(sock);
                }
                Err(e) => {
                    tracing::debug!("send to {} failed: {e}", self.items[self.sent].0);
                    self.sent += 1;
                    report.failed += 1;
                    retries = 0;
                }
            }
        }
        self.items.clear();
        self.sent = 0;
        report.segmented = std::mem::take(&mut self.segmented);
        report
    }

    /// Puts each destination's datagrams next to each other, in their
    /// order, destinations in the order they first appear (a stable
    /// counting sort; nothing moves when no destination repeats).
    fn group_by_destination(&mut self) {
        let pending = &mut self.items[self.sent..];
        if pending.len() < 3 {
            return;
        }
        self.group_of.clear();
        self.group_sizes.clear();
        self.groups.clear();
        for (to, _) in pending.iter() {
            let next = self.group_of.len();
            let g = *self.group_of.entry(*to).or_insert(next);
            if g == self.group_sizes.len() {
                self.group_sizes.push(0);
            }
            self.group_sizes[g] += 1;
            self.groups.push(g);
        }
        if self.group_sizes.len() == pending.len() || self.group_sizes.len() == 1 {
            return;
        }
        // Each group's next free place.
        let mut place = 0;
        for size in &mut self.group_sizes {
            let start = place;
            place += *size;
            *size = start;
        }
        let filler = (pending[0].0, bytes::Bytes::new());
        let mut sorted = vec![filler; pending.len()];
        for (item, &g) in pending.iter_mut().zip(&self.groups) {
            sorted[self.group_sizes[g]] = (item.0, std::mem::take(&mut item.1));
            self.group_sizes[g] += 1;
        }
        pending.swap_with_slice(&mut sorted);
    }

    /// How many datagrams from `from` one send may carry: a run to one
    /// address, all of the first one's length but the last (which may be
    /// shorter, not empty: an empty segment would vanish), within the
    /// segmentation limits; 1 without segmentation.
    fn run_at(&self, from: usize) -> usize {
        let (to, first) = &self.items[from];
        let size = first.len();
        if !self.segmentation || size == 0 || size > GSO_MAX_SEGMENT {
            return 1;
        }
        let mut n = 1;
        let mut bytes = size;
        for (a, d) in &self.items[from + 1..] {
            if n == self.max_segments
                || a != to
                || d.len() > size
                || d.is_empty()
                || bytes + d.len() > GSO_MAX_BYTES
            {
                break;
            }
            n += 1;
            bytes += d.len();
            if d.len() < size {
                break;
            }
        }
        n
    }

    /// One `sendmmsg` of up to [`SEND_BATCH`] messages, each one datagram
    /// or one segmented run. Returns how many datagrams went out.
    fn send_some(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.send_some_with(sock, &mut scratch);
        scratch.clear();
        self.scratch = scratch;
        result
    }

    fn send_some_with(&mut self, sock: &impl AsRawFd, b: &mut SendScratch) -> io::Result<usize> {
        let mut at = self.sent;
        while at < self.items.len() && b.messages.len() < SEND_BATCH {
            let n = self.run_at(at);
            b.messages.push((at, n));
            at += n;
        }
        let pending = &self.items[self.sent..at];
        b.addrs.extend(
            b.messages
                .iter()
                .map(|&(i, _)| SockAddr::from(self.items[i].0)),
        );
        b.iovs.extend(pending.iter().map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        }));
        b.controls.resize(b.messages.len(), SegmentControl([0; 32]));
        // SAFETY: all-zero is a valid mmsghdr; fields are set below.
        b.hdrs
            .resize_with(b.messages.len(), || unsafe { std::mem::zeroed() });
        for (m, &(first, n)) in b.messages.iter().enumerate() {
            let h = &mut b.hdrs[m].msg_hdr;
            h.msg_name = b.addrs[m].as_ptr() as *mut libc::c_void;
            h.msg_namelen = b.addrs[m].len();
            h.msg_iov = &mut b.iovs[first - self.sent];
            h.msg_iovlen = n;
            if n > 1 {
                let segment = self.items[first].1.len() as u16;
                set_segment_size(h, &mut b.controls[m], segment);
            }
        }
        let fd = sock.as_raw_fd();
        let hdrs = &mut b.hdrs;
        // SAFETY: headers point at live addresses, payloads and control
        // buffers.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        // A negative count is an error, in errno.
        let result = usize::try_from(n).map_err(|_| io::Error::last_os_error());
        let messages = &b.messages;
        match result {
            Ok(done) => {
                let sent: usize = messages[..done].iter().map(|&(_, n)| n).sum();
                self.segmented += messages[..done]
                    .iter()
                    .filter(|&&(_, n)| n > 1)
                    .map(|&(_, n)| n as u64)
                    .sum::<u64>();
                Ok(sent)
            }
            Err(e)
                if messages[0].1 > 1
                    && !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    )
                    && !is_async_icmp_error(&e) =>
            {
                // The kernel or the route refuses segmentation (too old,
                // no checksum offload, a segment beyond the MTU): send
                // one by one from now on.
                tracing::info!("UDP segmentation refused ({e}); datagrams go out one by one");
                self.segmentation = false;
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

/// Attaches a `UDP_SEGMENT` control message of `segment` bytes to `h`,
/// in `control`.
fn set_segment_size(h: &mut libc::msghdr, control: &mut SegmentControl, segment: u16) {
    h.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 32-byte buffer, which
    // is 8-byte aligned; CMSG_FIRSTHDR of a msghdr with that control buffer
    // is its start.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(1 << 22)
            .unwrap();
        s
    }

    fn sender() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// Receives `n` datagrams, each as its own.
    fn receive(sock: &std::net::UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = sock.recv_from(&mut buf).expect("a datagram");
                buf[..len].to_vec()
            })
            .collect()
    }

    /// What the server sends looks the same to every receiver whether or
    /// not it went out segmented: each datagram arrives alone, in its order
    /// per destination, whatever the lengths and the interleaving.
    #[test]
    fn segmented_runs_arrive_as_single_datagrams_in_order() {
        let (a, b) = (receiver(), receiver());
        let sock = sender();
        let mut want_a = Vec::new();
        let mut want_b = Vec::new();
        let mut q = SendQueue::default();
        for i in 0..150 {
            // Runs of one length, a shorter one now and then, interleaved.
            let len = if i % 40 == 39 { 7 } else { 100 + (i / 50) * 30 };
            let da = format!("a{i:05}").into_bytes();
            let mut da = da.repeat(len / da.len() + 1);
            da.truncate(len);
            let db = format!("b{i}").into_bytes();
            q.push(a.local_addr().unwrap(), bytes::Bytes::from(da.clone()));
            q.push(b.local_addr().unwrap(), bytes::Bytes::from(db.clone()));
            want_a.push(da);
            want_b.push(db);
            if i == 75 {
                // An empty datagram amid a run still arrives.
                q.push(a.local_addr().unwrap(), bytes::Bytes::new());
                want_a.push(Vec::new());
            }
        }
        let r = q.flush(&sock);
        assert_eq!((r.failed, r.dropped), (0, 0));
        assert!(
            r.segmented >= 100,
            "runs go out segmented on Linux >= 4.18: {} of 301",
            r.segmented
        );
        assert_eq!(receive(&a, 151), want_a);
        assert_eq!(receive(&b, 150), want_b);
    }

    /// A segmented send the kernel refuses (here: more segments than it
    /// takes at once) turns segmentation off, and the datagrams go out one
    /// by one, none lost.
    #[test]
    fn a_refused_segmented_send_goes_out_one_by_one() {
        let a = receiver();
        let sock = sender();
        let mut q = SendQueue {
            max_segments: 1_000,
            ..SendQueue::default()
        };
        let want: Vec<Vec<u8>> = (0..300).map(|i| format!("{i:08}").into_bytes()).collect();
        for d in &want {
            q.push(a.local_addr().unwrap(), bytes::Bytes::from(d.clone()));
        }
        let r = q.flush(&sock);
        assert_eq!((r.failed, r.dropped, r.segmented), (0, 0, 0));
        assert!(!q.segmentation, "turned off");
        assert_eq!(receive(&a, 300), want);
        // Without segmentation, runs go out one by one.
        let mut q = SendQueue {
            segmentation: false,
            ..SendQueue::default()
        };
        for d in &want {
            q.push(a.local_addr().unwrap(), bytes::Bytes::from(d.clone()));
        }
        assert_eq!(q.flush(&sock).segmented, 0);
        assert_eq!(receive(&a, 300), want);
    }

    /// A receiver with `UDP_GRO` reads a segmented run as one buffer and
    /// cuts it back into the very datagrams sent, in order: runs of
    /// several lengths, a shorter last one, lone datagrams and an empty one.
    #[test]
    fn a_gro_receiver_reads_runs_whole_and_splits_them_back() {
        let a = receiver();
        assert!(client::gro::enable(&a), "UDP_GRO is in Linux since 5.0");
        a.set_nonblocking(true).unwrap();
        let sock = sender();
        let mut q = SendQueue::default();
        let mut want = Vec::new();
        for i in 0..200usize {
            let len = match i {
                60 => 0,
                i if i % 50 == 49 => 11,
                i => 100 + (i / 70) * 40,
            };
            let mut d = format!("{i:06}-").into_bytes().repeat(len / 7 + 1);
            d.truncate(len);
            q.push(a.local_addr().unwrap(), bytes::Bytes::from(d.clone()));
            want.push(d);
        }
        let r = q.flush(&sock);
        assert_eq!((r.failed, r.dropped), (0, 0));
        assert!(r.segmented >= 100, "sent segmented: {}", r.segmented);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut reads = 0;
        let mut buf = vec![0u8; 65_536];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < want.len() && std::time::Instant::now() < deadline {
            match client::gro::recv(&a, &mut buf) {
                Ok(run) => {
                    reads += 1;
                    assert_eq!(run.from, Some(sock.local_addr().unwrap()));
                    let data = &buf[..run.len];
                    got.extend(client::gro::split(data, run.segment).map(<[u8]>::to_vec));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("gro::recv: {e}"),
            }
        }
        assert_eq!(got, want);
        assert!(
            reads < want.len() / 4,
            "runs came whole: {reads} reads for {}",
            want.len()
        );
    }

    /// A closed port answers with ICMP port unreachable; the error queue
    /// names it, and a send to a live socket right after is not lost.
    #[test]
    fn errqueue_names_closed_ports_and_sends_survive_pending_errors() {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_sock.set_nonblocking(true).unwrap();
        enable_recverr(&std_sock, false).unwrap();
        let sock = std_sock;
        let live = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        live.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let dead: Vec<SocketAddr> = (0..50)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap()
            })
            .collect();
        let mut q = SendQueue::default();
        for (i, d) in dead.iter().enumerate() {
            q.push(*d, bytes::Bytes::from_static(b"to nobody"));
            q.push(
                live.local_addr().unwrap(),
                bytes::Bytes::from(format!("{i}")),
            );
        }
        let r = q.flush(&sock);
        assert_eq!((r.failed, r.dropped), (0, 0));
        q.collect_icmp(&sock);
        let mut got: Vec<SocketAddr> = q
            .icmp
            .iter()
            .filter(|e| e.is_unreachable())
            .map(|e| e.addr)
            .collect();
        got.sort();
        got.dedup();
        let mut want = dead.clone();
        want.sort();
        // Each socket closes at the end of its closure, so the kernel may
        // hand the same free port out twice: it is one dead address.
        want.dedup();
        assert_eq!(got, want);
        let mut buf = [0u8; 16];
        for i in 0..50 {
            let (n, _) = live
                .recv_from(&mut buf)
                .expect("every live datagram arrives");
            assert_eq!(&buf[..n], format!("{i}").as_bytes());
        }
    }
}
