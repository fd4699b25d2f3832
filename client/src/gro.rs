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

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Asks for runs whole on `sock`; returns whether the kernel took it.
pub fn enable(sock: &impl AsRawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a live fd and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
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
}

/// Reads one datagram, or one run, into `buf`, as the socket reads
/// (blocking, with its timeout, or `WouldBlock` when non-blocking). `buf`
/// should hold 64 KiB, the most a run carries: a longer one is cut short.
pub fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Run> {
    // One control message carrying an int fits, 8-byte aligned.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: try_init hands us storage for a socket address and its
    // length, which recvmsg fills (msg_namelen written back through it).
    let ((len, segment), addr) = unsafe {
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
            Ok((len, gro_segment(&msg).unwrap_or(len)))
        })?
    };
    Ok(Run {
        len,
        segment: segment.min(len).max(1),
        from: addr.as_socket(),
    })
}

/// The segment size of a run, from the `UDP_GRO` control message.
///
/// # Safety
/// `msg` is a header recvmsg filled, its control buffer still live.
unsafe fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control messages the kernel wrote, within the
    // length it left in msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
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
                from: Some(b.local_addr().unwrap())
            }
        );
        assert_eq!(&buf[..8], b"one line");
    }
}
