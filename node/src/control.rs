//! What wakes the server's thread besides its socket: a queue of
//! [`Control`] messages from the async side (signals, metrics scrapes,
//! host-name lookups), and an eventfd that makes the queue pollable.
//!
//! The server's hot path is not a tokio task: its thread sleeps in one
//! `ppoll` on the socket and this eventfd, and handles what woke it
//! directly. Going through a runtime cost about 3 µs per wake-up between
//! the kernel's wake-up and the first `recvmmsg` (its driver, the task
//! system and a select of seven branches), and a total-order delivery
//! waits for three such wake-ups in a row.

use orderings::ServerId;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// A message from the async side to the server's loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// SIGINT or SIGTERM: stop after this wake-up.
    Shutdown,
    /// A metrics scrape asks for a fresh snapshot.
    MetricsWanted,
    /// A host-name lookup of a peer ended (`None`: it did not resolve).
    Resolved(ServerId, Option<SocketAddr>),
}

/// The sending side; clone it for each task that reports.
#[derive(Debug, Clone)]
pub struct ControlSender {
    tx: mpsc::Sender<Control>,
    wake: Arc<OwnedFd>,
}

impl ControlSender {
    /// Queues `c` and wakes the loop. Returns false when the loop is gone.
    pub fn send(&self, c: Control) -> bool {
        if self.tx.send(c).is_err() {
            return false;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd. A
        // full counter (EAGAIN) already wakes the reader, so the result
        // does not matter.
        unsafe {
            libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
        true
    }
}

/// The loop's side.
#[derive(Debug)]
pub struct ControlInbox {
    rx: mpsc::Receiver<Control>,
    sender: ControlSender,
}

/// A connected sender and inbox.
pub fn channel() -> io::Result<(ControlSender, ControlInbox)> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a
    // new descriptor that we own from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = mpsc::channel();
    let sender = ControlSender { tx, wake };
    Ok((sender.clone(), ControlInbox { rx, sender }))
}

impl ControlInbox {
    /// A sender for a task started by the loop itself (a lookup).
    pub fn sender(&self) -> ControlSender {
        self.sender.clone()
    }

    /// Takes what is queued, clearing the wake-up first so that a message
    /// sent meanwhile wakes the next wait.
    pub fn take(&self) -> Vec<Control> {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN (not
        // woken) is fine.
        unsafe {
            libc::read(
                self.sender.wake.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            );
        }
        self.rx.try_iter().collect()
    }
}

/// What a [`wait`] found ready.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The socket has datagrams to read.
    pub readable: bool,
    /// The socket's error queue holds ICMP errors (`POLLERR`).
    pub error: bool,
    /// The inbox has messages.
    pub control: bool,
}

/// Sleeps until `socket` or `inbox` is ready or `timeout` passes (`None`:
/// no timeout). Interrupted by a signal, returns nothing ready.
pub(crate) fn wait(
    socket: &impl AsRawFd,
    inbox: &ControlInbox,
    timeout: Option<Duration>,
) -> io::Result<Readiness> {
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: inbox.sender.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = poll(&mut fds, timeout)?;
    if n == 0 {
        return Ok(Readiness::default());
    }
    Ok(Readiness {
        readable: fds[0].revents & libc::POLLIN != 0,
        error: fds[0].revents & libc::POLLERR != 0,
        control: fds[1].revents & libc::POLLIN != 0,
    })
}

/// Sleeps until `socket` can take a datagram or `timeout` passes; true
/// when it can.
pub(crate) fn wait_writable(socket: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    }];
    Ok(poll(&mut fds, Some(timeout))? > 0 && fds[0].revents & libc::POLLOUT != 0)
}

/// `ppoll` with a microsecond-precise timeout (`poll`'s is in whole
/// milliseconds, which would make every timer up to 1 ms late). EINTR is 0.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // A day is as good as forever, and always fits a timespec.
    let ts = timeout.map(|d| {
        let d = d.min(Duration::from_secs(86_400));
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        }
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live slice of pollfd of the length given; the
    // timespec lives until the call returns; no signal mask.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    match usize::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        s
    }

    #[test]
    fn a_quiet_wait_times_out_with_nothing_ready() {
        let (_tx, inbox) = channel().expect("eventfd");
        let s = socket();
        let start = std::time::Instant::now();
        let r = wait(&s, &inbox, Some(Duration::from_millis(20))).expect("wait");
        assert_eq!(r, Readiness::default());
        assert!(start.elapsed() >= Duration::from_millis(20), "it waited");
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn a_datagram_wakes_the_wait_as_readable() {
        let (_tx, inbox) = channel().expect("eventfd");
        let s = socket();
        let peer = socket();
        peer.send_to(b"hello", s.local_addr().expect("addr"))
            .expect("send");
        let r = wait(&s, &inbox, Some(Duration::from_secs(10))).expect("wait");
        assert!(r.readable && !r.control, "{r:?}");
    }

    /// Messages sent from another thread wake the loop, arrive in order,
    /// and are taken once: the next wait sleeps again.
    #[test]
    fn messages_from_another_thread_wake_the_wait_in_order() {
        let (tx, inbox) = channel().expect("eventfd");
        let s = socket();
        let sender = std::thread::spawn(move || {
            assert!(tx.send(Control::MetricsWanted));
            assert!(tx.send(Control::Resolved(ServerId(2), None)));
            assert!(tx.send(Control::Shutdown));
        });
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            let r = wait(&s, &inbox, Some(Duration::from_secs(10))).expect("wait");
            if r.control {
                got.extend(inbox.take());
            }
        }
        sender.join().expect("sender thread");
        assert_eq!(
            got,
            vec![
                Control::MetricsWanted,
                Control::Resolved(ServerId(2), None),
                Control::Shutdown
            ]
        );
        let r = wait(&s, &inbox, Some(Duration::from_millis(1))).expect("wait");
        assert!(!r.control, "taken messages do not wake again");
    }

    #[test]
    fn a_sender_knows_when_the_loop_is_gone() {
        let (tx, inbox) = channel().expect("eventfd");
        drop(inbox);
        assert!(!tx.send(Control::Shutdown));
    }

    #[test]
    fn an_empty_send_buffer_is_writable() {
        let s = socket();
        assert!(wait_writable(&s, Duration::from_secs(1)).expect("poll"));
    }
}
