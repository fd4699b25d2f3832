//! The machine's floor under W2: the same paced clients against a minimal
//! relay with the message path of `total` and nothing else.
//!
//! A `total` delivery is four one-way hops in a row: client to its server,
//! the message to the other servers, each of them acknowledges to the
//! others, each server delivers to its client once it holds the message and
//! every other server's acknowledgement. The relay does exactly that, on one
//! blocking thread per "server" with one datagram per hop, and no ordering,
//! reliability, sessions or batching: what is left is what the kernel and
//! the scheduler of this machine charge for those hops. W2 reports it next
//! to the real figures, so a reader sees how much of the latency is ours.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// A message between relay threads: `M` (the message, from its origin) or
/// `A` (an acknowledgement), then origin (1 byte) and the origin's counter
/// (4 bytes, little-endian); `M` carries the delivery line after that.
const HEADER: usize = 6;

/// The relay threads; stopped (and joined) on drop.
pub struct RelayFloor {
    binds: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RelayFloor {
    /// Starts `n` (2..=255) relay threads on 127.0.0.1.
    pub fn start(n: usize) -> std::io::Result<RelayFloor> {
        let n = n.clamp(2, 255);
        let socks = (0..n)
            .map(|_| {
                let s = crate::net::bind_udp("127.0.0.1:0".parse().expect("address"), 8 << 20)?;
                s.set_nonblocking(false)?;
                // Wakes now and then to see the stop flag.
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<UdpSocket>>>()?;
        let binds = socks
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (me, sock) in socks.into_iter().enumerate() {
            let relay = Relay {
                me: me as u8,
                peers: binds.clone(),
                sock,
                members: Vec::new(),
                nicks: HashMap::new(),
                pending: HashMap::new(),
                counter: 0,
            };
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("relay-{me}"))
                    .spawn(move || relay.run(&stop))?,
            );
        }
        Ok(RelayFloor {
            binds,
            stop,
            threads,
        })
    }

    /// Where the clients of each relay thread send.
    pub fn binds(&self) -> &[SocketAddr] {
        &self.binds
    }
}

impl Drop for RelayFloor {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A message on its way: its delivery line once known, and how many of the
/// `n` marks a delivery needs have arrived (the origin: itself and each
/// acknowledgement; another: the message counts for it and for itself).
struct Pending {
    line: Option<Vec<u8>>,
    marks: usize,
}

struct Relay {
    me: u8,
    peers: Vec<SocketAddr>,
    sock: UdpSocket,
    /// Clients that joined, to deliver to.
    members: Vec<SocketAddr>,
    nicks: HashMap<SocketAddr, String>,
    pending: HashMap<(u8, u32), Pending>,
    counter: u32,
}

impl Relay {
    fn run(mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Relaxed) {
            let Ok((len, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let data = &buf[..len];
            if self.peers.contains(&from) {
                self.handle_peer(data);
            } else {
                self.handle_client(from, data);
            }
        }
    }

    fn send(&self, data: &[u8], to: SocketAddr) {
        // A lost datagram shows as a missing delivery in the run's check.
        let _ = self.sock.send_to(data, to);
    }

    fn handle_client(&mut self, from: SocketAddr, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Some(room) = text.strip_prefix("/join ") {
            if !self.members.contains(&from) {
                self.members.push(from);
            }
            self.send(format!("+OK You are now in room #{room}").as_bytes(), from);
        } else if let Some(nick) = text.strip_prefix("/nick ") {
            self.nicks.insert(from, nick.to_string());
            self.send(b"+OK Nickname set", from);
        } else {
            let nick = self.nicks.get(&from).map_or("anonymous", String::as_str);
            let line = format!("<{nick}> {text}").into_bytes();
            self.counter += 1;
            let mut m = Vec::with_capacity(HEADER + line.len());
            m.extend_from_slice(&Self::header(b'M', self.me, self.counter));
            m.extend_from_slice(&line);
            for (i, p) in self.peers.iter().enumerate() {
                if i != usize::from(self.me) {
                    self.send(&m, *p);
                }
            }
            self.mark((self.me, self.counter), Some(line), 1);
        }
    }

    fn handle_peer(&mut self, data: &[u8]) {
        if data.len() < HEADER {
            return;
        }
        let origin = data[1];
        let counter = u32::from_le_bytes([data[2], data[3], data[4], data[5]]);
        match data[0] {
            b'M' => {
                let ack = Self::header(b'A', origin, counter);
                for (i, p) in self.peers.iter().enumerate() {
                    if i != usize::from(self.me) {
                        self.send(&ack, *p);
                    }
                }
                self.mark((origin, counter), Some(data[HEADER..].to_vec()), 2);
            }
            b'A' => self.mark((origin, counter), None, 1),
            _ => {}
        }
    }

    /// A message's header, on the stack: the floor allocates only for
    /// the lines it keeps.
    fn header(kind: u8, origin: u8, counter: u32) -> [u8; HEADER] {
        let c = counter.to_le_bytes();
        [kind, origin, c[0], c[1], c[2], c[3]]
    }

    /// Adds `marks` to a message; delivers it to every member once it has
    /// them all.
    fn mark(&mut self, id: (u8, u32), line: Option<Vec<u8>>, marks: usize) {
        let p = self.pending.entry(id).or_insert(Pending {
            line: None,
            marks: 0,
        });
        p.marks += marks;
        if line.is_some() {
            p.line = line;
        }
        if p.marks >= self.peers.len()
            && let Some(p) = self.pending.remove(&id)
            && let Some(line) = p.line
        {
            for m in &self.members {
                self.send(&line, *m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clients on two of three relay threads: each line reaches both,
    /// once, in the server's delivery format.
    #[test]
    fn the_relay_delivers_every_line_to_every_member_once() {
        let floor = RelayFloor::start(3).unwrap();
        let clients: Vec<UdpSocket> = (0..2)
            .map(|i| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.connect(floor.binds()[i]).unwrap();
                s
            })
            .collect();
        let mut buf = [0u8; 1024];
        for (i, c) in clients.iter().enumerate() {
            c.send(b"/join 1").unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"+OK You are now in room #1");
            c.send(format!("/nick c{i}").as_bytes()).unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"+OK"));
        }
        clients[0].send(b"hello").unwrap();
        clients[1].send(b"there").unwrap();
        for c in &clients {
            let mut got: Vec<Vec<u8>> = (0..2)
                .map(|_| {
                    let n = c.recv(&mut buf).unwrap();
                    buf[..n].to_vec()
                })
                .collect();
            got.sort();
            assert_eq!(got, vec![b"<c0> hello".to_vec(), b"<c1> there".to_vec()]);
        }
        assert_quiet(&clients[0]);
    }

    /// Nothing more arrives.
    fn assert_quiet(c: &UdpSocket) {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(c.recv(&mut buf).is_err(), "a duplicate delivery");
    }
}
