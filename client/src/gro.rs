//! Reading runs of datagrams whole (`UDP_GRO`, Linux 5.0 and later).
//!
//! A chat server sends a client its deliveries as runs of datagrams of one
//! length (UDP segmentation offload), and the receiving kernel splits each
//! run back into one queued datagram per line unless the socket asks for
//! runs whole. Then the sender's kernel skips the split, the receiver is
//! queued to and woken once per run, and one read returns the run with its
//! segment size; [`split`] gives the datagrams back one by one, in order.
//! The chat client, the stress tool and the benchmarks' clients read this
//! way; a socket without it reads one datagram at a time, as before.
//!
//! A socket may also ask the kernel to stamp each datagram (or run) with
//! the time it was queued on the socket ([`enable_arrival_stamps`],
//! `SO_TIMESTAMPNS`): a load tool then tells the time a delivery reached
//! its client from the time it got round to reading it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

/// Asks for runs whole on `sock`; returns whether the kernel took it.
pub fn enable(sock: &impl AsRawFd) -> bool {
    switch_on(sock, libc::SOL_UDP, libc::UDP_GRO)
}

/// Asks the kernel to stamp every datagram with the time it was queued on
/// `sock` (`SO_TIMESTAMPNS`, the real-time clock); [`recv`] returns it as
/// [`Run::arrived`]. Returns whether the kernel took it.
pub fn enable_arrival_stamps(sock: &impl AsRawFd) -> bool {
    switch_on(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)
}

/// Sets an int socket option to 1; whether the kernel took it.
fn switch_on(sock: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a live fd and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// What one read brought: `len` bytes of datagrams of `segment` bytes
/// each, the last possibly shorter (`segment == len` for a lone datagram),
/// from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub len: usize,
    pub segment: usize,
    pub from: Option<SocketAddr>,
    /// When the kernel queued it on the socket (real-time clock), if the
    /// socket asked for stamps ([`enable_arrival_stamps`]).
    pub arrived: Option<SystemTime>,
}

impl Run {
    /// How long before `now` it arrived (zero if the clock stepped back
    /// meanwhile); `None` without a stamp.
    pub fn waited(&self, now: SystemTime) -> Option<Duration> {
        self.arrived
            .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO))
    }
}

/// Reads one datagram, or one run, into `buf`, as the socket reads
/// (blocking, with its timeout, or `WouldBlock` when non-blocking). `buf`
/// should hold 64 KiB, the most a run carries: a longer one is cut short.
pub fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Run> {
    // Room for two control messages, an int (the segment size) and a
    // timespec (the arrival stamp), 8-byte aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: try_init hands us storage for a socket address and its
    // length, which recvmsg fills (msg_namelen written back through it).
    let (run, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, addr_len| {
            // SAFETY: all-zero is a valid msghdr: no name, iovec or control.
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = storage.cast();
            msg.msg_namelen = *addr_len;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: msg points at live buffers of the sizes it declares.
            let n = libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0);
            // A negative count is an error, in errno.
            let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            *addr_len = msg.msg_namelen;
            Ok(run_of(&msg, len, None))
        })?
    };
    Ok(Run {
        from: addr.as_socket(),
        ..run
    })
}

/// What recvmsg filled in `msg`: a run of `len` bytes, with its segment
/// size and arrival stamp from the control messages.
///
/// # Safety
/// `msg` is a header recvmsg filled, its control buffer still live.
unsafe fn run_of(msg: &libc::msghdr, len: usize, from: Option<SocketAddr>) -> Run {
    // SAFETY: the caller's.
    let (segment, arrived) = unsafe { (gro_segment(msg), arrival_stamp(msg)) };
    Run {
        len,
        segment: segment.unwrap_or(len).min(len).max(1),
        from,
        arrived,
    }
}

/// Most bytes one read of a run needs (a UDP payload's limit).
pub const RUN_BYTES: usize = 65_536;

/// Buffers for reading several runs (or datagrams) with one system call
/// (`recvmmsg`). Fewer runs than slots means the socket was empty when
/// read, so the caller need not read again to learn it: a client that gets
/// one delivery per wake-up pays one read for it, not two.
pub struct RunBatch {
    bufs: Vec<u8>,
    controls: Vec<[u64; 8]>,
    addrs: Vec<socket2::SockAddrStorage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    runs: Vec<Run>,
}

impl RunBatch {
    /// Room for `slots` runs of up to [`RUN_BYTES`] each.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        // SAFETY: all-zero is a valid mmsghdr (no name, iovec or control).
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut b = RunBatch {
            bufs: vec![0; slots * RUN_BYTES],
            controls: vec![[0; 8]; slots],
            addrs: (0..slots)
                .map(|_| socket2::SockAddrStorage::zeroed())
                .collect(),
            iovs: Vec::with_capacity(slots),
            hdrs: vec![zero_hdr; slots],
            runs: Vec::with_capacity(slots),
        };
        // The headers point into the vectors' heap storage, which never
        // moves (none of them grows), so this is done once.
        let base = b.bufs.as_mut_ptr();
        for i in 0..slots {
            b.iovs.push(libc::iovec {
                // SAFETY: slot i lies within bufs.
                iov_base: unsafe { base.add(i * RUN_BYTES) }.cast(),
                iov_len: RUN_BYTES,
            });
        }
        for i in 0..slots {
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut b.addrs[i]).cast();
            h.msg_iov = &raw mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = b.controls[i].as_mut_ptr().cast();
        }
        b
    }

    /// How many runs one read takes at most.
    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// Reads what the socket holds, up to [`Self::slots`] runs, without
    /// blocking; `WouldBlock` when it holds nothing. Returns how many.
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        self.runs.clear();
        // The kernel wrote back the lengths it used last time.
        for i in 0..self.slots() {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_namelen = self.addrs[i].size_of();
            h.msg_controllen = std::mem::size_of_val(&self.controls[i]) as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: the headers point at live buffers of the sizes declared.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.slots() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        // A negative count is an error, in errno.
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        for i in 0..n {
            let h = &self.hdrs[i].msg_hdr;
            let len = (self.hdrs[i].msg_len as usize).min(RUN_BYTES);
            // SAFETY: the kernel filled this header, its control buffer and
            // the source address, whose length it wrote back.
            let storage = std::mem::replace(&mut self.addrs[i], socket2::SockAddrStorage::zeroed());
            let run = unsafe {
                let addr = socket2::SockAddr::new(storage, h.msg_namelen);
                run_of(h, len, addr.as_socket())
            };
            self.runs.push(run);
        }
        Ok(n)
    }

    /// Run `i` of the last read and its bytes.
    pub fn run(&self, i: usize) -> (Run, &[u8]) {
        let run = self.runs[i];
        (run, &self.bufs[i * RUN_BYTES..i * RUN_BYTES + run.len])
    }
}

/// The segment size of a run, from the `UDP_GRO` control message.
///
/// # Safety
/// `msg` is a header recvmsg filled, its control buffer still live.
unsafe fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: the caller's; the kernel puts an int there.
    let size = unsafe { control_value::<libc::c_int>(msg, libc::SOL_UDP, libc::UDP_GRO) }?;
    usize::try_from(size).ok().filter(|&s| s > 0)
}

/// The arrival stamp, from the `SO_TIMESTAMPNS` control message.
///
/// # Safety
/// `msg` is a header recvmsg filled, its control buffer still live.
unsafe fn arrival_stamp(msg: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the caller's; the kernel puts a timespec there.
    let ts =
        unsafe { control_value::<libc::timespec>(msg, libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) }?;
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The data of the control message of `level` and `kind`, if any.
///
/// # Safety
/// `msg` is a header recvmsg filled, its control buffer still live, and
/// that message's data is a `T`.
unsafe fn control_value<T: Copy>(
    msg: &libc::msghdr,
    level: libc::c_int,
    kind: libc::c_int,
) -> Option<T> {
    // SAFETY: walks the control messages the kernel wrote, within the
    // length it left in msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == level && (*c).cmsg_type == kind {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<T>()));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// The datagrams of a run: `run` cut every `segment` bytes. An empty run is
/// one empty datagram (a run never carries one among others).
pub fn split(run: &[u8], segment: usize) -> impl Iterator<Item = &[u8]> {
    let lone_empty = run.is_empty().then_some(run);
    run.chunks(segment.max(1)).chain(lone_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_back_into_their_datagrams() {
        let run = b"aaabbbcc";
        let got: Vec<&[u8]> = split(run, 3).collect();
        assert_eq!(got, vec![&b"aaa"[..], b"bbb", b"cc"]);
        let lone: Vec<&[u8]> = split(b"hello", 5).collect();
        assert_eq!(lone, vec![&b"hello"[..]]);
        let empty: Vec<&[u8]> = split(b"", 1).collect();
        assert_eq!(empty, vec![&b""[..]], "an empty datagram is still one");
    }

    /// A lone datagram reads as a run of one, with its sender.
    #[test]
    fn a_lone_datagram_is_a_run_of_one() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable(&a), "UDP_GRO is in Linux since 5.0");
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.send_to(b"one line", a.local_addr().unwrap()).unwrap();
        let mut buf = vec![0u8; 65_536];
        let run = recv(&a, &mut buf).unwrap();
        assert_eq!(
            run,
            Run {
                len: 8,
                segment: 8,
                from: Some(b.local_addr().unwrap()),
                arrived: None,
            }
        );
        assert_eq!(&buf[..8], b"one line");
    }

    /// One read takes what the socket holds: runs and lone datagrams in
    /// order, each with its segment size and sender, and fewer than the
    /// slots when the socket is empty; an empty socket is `WouldBlock`.
    #[test]
    fn a_batch_reads_what_the_socket_holds_in_one_call() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable(&a));
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RunBatch::new(4);
        let err = batch.recv(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        for d in [&b"first"[..], b"second", b""] {
            b.send_to(d, a.local_addr().unwrap()).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 3 {
            assert!(std::time::Instant::now() < deadline, "got only {got:?}");
            let n = match batch.recv(&a) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            assert!(n <= 3);
            for i in 0..n {
                let (run, bytes) = batch.run(i);
                assert_eq!(run.from, Some(b.local_addr().unwrap()));
                got.extend(split(bytes, run.segment).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec(), Vec::new()]);
        assert_eq!(
            batch.recv(&a).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    /// With stamps asked for, a datagram carries the time it was queued:
    /// after it was sent, well before it was read. The kernel turns stamping
    /// on a little after the first socket asks (a deferred switch; until
    /// then a datagram is stamped when read), so probes are sent until one
    /// is stamped on arrival, within a deadline.
    #[test]
    fn a_stamped_socket_tells_when_a_datagram_arrived() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable_arrival_stamps(&a));
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = vec![0u8; 65_536];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = SystemTime::now();
            b.send_to(b"stamped", a.local_addr().unwrap()).unwrap();
            let sent = SystemTime::now();
            // Read well after the arrival, so the wait is visible.
            std::thread::sleep(Duration::from_millis(20));
            let run = recv(&a, &mut buf).unwrap();
            let read = SystemTime::now();
            assert_eq!(&buf[..run.len], b"stamped");
            let arrived = run.arrived.expect("SO_TIMESTAMPNS gives a stamp");
            assert!(
                arrived >= before,
                "{arrived:?} before the send at {before:?}"
            );
            assert!(arrived <= read, "{arrived:?} after the read at {read:?}");
            if arrived <= sent + Duration::from_millis(5) {
                let waited = run.waited(read).unwrap();
                assert!(waited >= Duration::from_millis(15), "waited {waited:?}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "every datagram was stamped when read, not when it arrived"
            );
        }
    }
}
