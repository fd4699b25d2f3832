//! UDP plumbing shared by the proxy and the load generators: sockets with
//! large buffers, free ports, and the kernel's count of receive-buffer drops.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Creates a non-blocking UDP socket bound to `addr` with `buffer`-byte send
/// and receive buffers (best effort; see [`set_buffers`]).
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    set_buffers(&sock, buffer);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Asks for `size`-byte send and receive buffers, the server's way
/// ([`node::grow_buffers`]). Best effort.
pub fn set_buffers(sock: &socket2::Socket, size: usize) {
    node::grow_buffers(sock, size, size);
}

/// `n` UDP ports on `ip` that were free a moment ago (all held at once, so
/// they are distinct).
pub fn free_ports(ip: std::net::IpAddr, n: usize) -> io::Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind((ip, 0)))
        .collect::<io::Result<_>>()?;
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// `RcvbufErrors` of the `Udp:` lines of /proc/net/snmp: datagrams the
/// kernel dropped because a receive buffer was full (all sockets).
pub fn kernel_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|w| w == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
