//! Test hosts: network namespaces that stand for separate machines.
//!
//! Each host is a namespace with one interface, `eth0`, whose peer sits on a
//! bridge in a namespace of its own (the "switch"), addresses from
//! 10.200.0.0/24. Nothing is created in the caller's namespace, so tests run
//! in parallel and never touch the machine's own network. Taking a host's
//! switch port down cuts its cable; its address and routes stay, as on a
//! real host whose link failed.
//!
//! Host names: [`TestNet::set_hosts`] writes `/etc/netns/<ns>/hosts` for
//! every host, which `ip netns exec` bind-mounts over `/etc/hosts` for the
//! programs it starts; the file is rewritten in place, so running programs
//! see changes at their next lookup.
//!
//! Needs root and `ip` (iproute2): `.ci/run` installs iproute2 and CI runs as
//! root. Without them `TestNet::new` panics and says why; no test skips.
//! Everything made here (namespaces, links, hosts files, the processes
//! inside) is removed on drop, also when the test fails; namespaces left by
//! a test process that was killed are removed by the next `TestNet::new`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace the harness makes: `chtest-<pid>-<n>-...`.
const PREFIX: &str = "chtest-";

/// A switch and `n` hosts on it.
pub struct TestNet {
    switch: String,
    hosts: Vec<String>,
}

impl TestNet {
    /// Creates `n` hosts, 10.200.0.1 to 10.200.0.n, on one switch.
    pub fn new(n: usize) -> TestNet {
        assert!((1..250).contains(&n), "1..250 hosts");
        require_root_and_ip();
        remove_stale_namespaces();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let net = TestNet {
            switch: format!("{tag}-sw"),
            hosts: (1..=n).map(|i| format!("{tag}-h{i}")).collect(),
        };
        // From here on, drop removes whatever part was made.
        ip(&["netns", "add", &net.switch]);
        ip(&["-n", &net.switch, "link", "set", "lo", "up"]);
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.switch, "link", "set", "br0", "up"]);
        for (i, ns) in net.hosts.iter().enumerate() {
            let port = format!("p{}", i + 1);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &net.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]);
            ip(&["-n", &net.switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &net.switch, "link", "set", &port, "up"]);
            let cidr = format!("{}/24", Self::addr_of(i + 1));
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        net.wait_reachable();
        net
    }

    /// The address of host `i` (from 1).
    pub fn addr_of(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, i as u8)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The namespace name of host `i` (from 1).
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i - 1]
    }

    /// `program args...` to be run on host `i`: `ip netns exec` execs the
    /// program in place, so the child's PID is the program's.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(i)]).arg(program);
        cmd
    }

    /// A UDP socket bound on host `i` (port 0): a client living on that host.
    pub fn udp_socket(&self, i: usize) -> UdpSocket {
        self.udp_socket_at(i, Self::addr_of(i))
    }

    /// A UDP socket bound to `addr` (port 0) on host `i`.
    pub fn udp_socket_at(&self, i: usize, addr: Ipv4Addr) -> UdpSocket {
        let path = format!("/run/netns/{}", self.ns(i));
        let bind = SocketAddr::from((addr, 0));
        // setns affects only the calling thread: a short-lived thread enters
        // the namespace, and the socket it opens stays there.
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind} in {path}: {e}"))
        })
        .join()
        .expect("socket thread")
    }

    /// Gives host `i` the address `addr` instead of the one it has (a
    /// machine, or a rescheduled pod, back with a new address).
    pub fn readdress(&self, i: usize, addr: Ipv4Addr) {
        ip(&["-n", self.ns(i), "addr", "flush", "dev", "eth0"]);
        ip(&[
            "-n",
            self.ns(i),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
    }

    /// Sets the host-name table of every host (and the switch) to `names`
    /// plus `localhost`: `/etc/netns/<ns>/hosts`, rewritten in place. Takes
    /// effect for programs started by [`TestNet::command`] after the first
    /// call, at their next lookup.
    pub fn set_hosts(&self, names: &[(&str, Ipv4Addr)]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, addr) in names {
            text.push_str(&format!("{addr} {name}\n"));
        }
        for ns in self.hosts.iter() {
            let dir = netns_etc(ns);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            // In place (truncate and write, same inode): the bind mount of a
            // running program shows the new table.
            std::fs::write(dir.join("hosts"), &text)
                .unwrap_or_else(|e| panic!("write {}/hosts: {e}", dir.display()));
        }
    }

    /// Cuts host `i`'s cable (its switch port goes down).
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"]);
    }

    /// Mends host `i`'s cable.
    pub fn mend(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "up"]);
    }

    /// Polls until every host answers a UDP datagram from host 1 (the bridge
    /// ports are forwarding), with a deadline.
    fn wait_reachable(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = self.udp_socket(1);
        probe
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        for i in 1..=self.len() {
            let echo = self.udp_socket(i);
            echo.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let to = echo.local_addr().expect("local addr");
            let mut buf = [0u8; 8];
            loop {
                probe.send_to(b"ping", to).expect("send probe");
                if echo.recv_from(&mut buf).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {i} ({to}) not reachable from host 1 in time"
                );
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            remove_namespace(ns);
        }
    }
}

/// Where `ip netns exec` finds the files it mounts over `/etc` for `ns`.
fn netns_etc(ns: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(ns)
}

/// Kills the processes left in namespace `ns` (only ever processes a test
/// started there) and deletes it, its links and its `/etc/netns` files.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(netns_etc(ns));
}

/// Namespaces of test processes that no longer run (killed before their
/// drop ran).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    // Hosts files of namespaces already gone count too.
    let etc: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .chain(etc.iter().map(String::as_str))
    {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = owner {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                remove_namespace(name);
            }
        }
    }
}

fn require_root_and_ip() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "this test makes network namespaces (separate test hosts) and needs root; \
         run it as root, as CI does (`bash .ci/run`)"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs `ip` from iproute2 (`apt-get install iproute2`; `.ci/run` installs it)"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
