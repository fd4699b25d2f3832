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
/// they are distinct). They are drawn below the kernel's ephemeral range
/// (`ip_local_port_range`), which is where the kernel picks every port-0
/// bind from: a port chosen from that range could be handed to another
/// socket (a client, a parallel test) before the server that is to bind it
/// does. Falls back to port 0 when no such port is free.
pub fn free_ports(ip: std::net::IpAddr, n: usize) -> io::Result<Vec<u16>> {
    let (low, high) = below_ephemeral_range();
    let mut socks: Vec<UdpSocket> = Vec::with_capacity(n);
    let mut tries = 0;
    while socks.len() < n && tries < 64 * n.max(1) {
        tries += 1;
        let port = fastrand::u16(low..high);
        if let Ok(s) = UdpSocket::bind((ip, port)) {
            socks.push(s);
        }
    }
    while socks.len() < n {
        socks.push(UdpSocket::bind((ip, 0))?);
    }
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// Ports below the kernel's ephemeral range: `[max(1024, start - 20000),
/// start)`, start read from `/proc/sys/net/ipv4/ip_local_port_range`
/// (32768 when it cannot be read).
fn below_ephemeral_range() -> (u16, u16) {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let low = start.saturating_sub(20_000).max(1_024);
    if start <= low + 1_000 {
        // A range that starts low leaves no room below it: use one above.
        (50_000, 60_000)
    } else {
        (low, start)
    }
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
