//! Cluster files from disk: TOML and the legacy format describe the same
//! servers; every error names the file and the line.

use node::config::{self, ClusterConfig, ConfigFormat};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("node-config-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn servers(c: &ClusterConfig) -> Vec<(String, SocketAddr, SocketAddr)> {
    c.servers
        .iter()
        .map(|s| (s.name.clone(), s.forward, s.bind))
        .collect()
}

fn load_err(path: &Path) -> String {
    match config::load(path) {
        Ok(c) => panic!("{} should not load: {c:#?}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn toml_shorthand_and_legacy_give_the_same_servers() {
    let d = Dir::new("same");
    let legacy = d.write(
        "servers.txt",
        "127.0.0.1:8000,127.0.0.1:5000\n127.0.0.1:8001,127.0.0.1:5001\n127.0.0.1:8002,127.0.0.1:5002\n",
    );
    let toml = d.write(
        "cluster.toml",
        "[nodes]\ncount = 3\nhost = \"127.0.0.1\"\nbase_port = 5000\nforward_base_port = 8000\n",
    );
    let explicit = d.write(
        "explicit.toml",
        r#"
[[node]]
bind = "127.0.0.1:5000"
forward = "127.0.0.1:8000"
[[node]]
bind = "127.0.0.1:5001"
forward = "127.0.0.1:8001"
[[node]]
bind = "localhost:5002"
forward = "localhost:8002"
"#,
    );
    let l = config::load(&legacy).unwrap();
    let t = config::load(&toml).unwrap();
    let e = config::load(&explicit).unwrap();
    assert_eq!(l.format, ConfigFormat::Legacy);
    assert_eq!(t.format, ConfigFormat::Toml);
    assert_eq!(servers(&l), servers(&t));
    assert_eq!(servers(&l), servers(&e));
    assert_eq!(l.rooms, t.rooms);
    assert_eq!(l.ordering, None);
    assert_eq!(l.server(2).unwrap().bind.port(), 5001);
}

#[test]
fn single_address_lines_equal_toml_without_forward_ports() {
    let d = Dir::new("single");
    let legacy = d.write("a.txt", "# comment\n127.0.0.1:6000\n\n127.0.0.1:6001\n");
    let toml = d.write("a.toml", "[nodes]\ncount = 2\nbase_port = 6000\n");
    let l = config::load(&legacy).unwrap();
    let t = config::load(&toml).unwrap();
    assert_eq!(servers(&l), servers(&t));
    assert_eq!(l.servers[1].line, 4);
}

#[test]
fn format_is_detected_by_content_without_extension() {
    let d = Dir::new("detect");
    let t = d.write(
        "cluster.conf",
        "# a cluster\n[cluster]\nrooms = 4\n[nodes]\ncount = 1\nbase_port = 6000\n",
    );
    assert_eq!(config::load(&t).unwrap().format, ConfigFormat::Toml);
    let l = d.write("v6.conf", "[::1]:8000,[::1]:5000\n");
    let c = config::load(&l).unwrap();
    assert_eq!(c.format, ConfigFormat::Legacy);
    assert_eq!(c.servers[0].bind, "[::1]:5000".parse().unwrap());
}

#[test]
fn example_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples");
    let t = config::load(&root.join("cluster.toml")).unwrap();
    assert_eq!(t.servers.len(), 3);
    assert_eq!(t.ordering.as_deref(), Some("total"));
    assert!(t.servers.iter().all(|s| s.forward == s.bind));
    let l = config::load(&root.join("servers.txt")).unwrap();
    assert_eq!(l.servers.len(), 3);
    assert!(l.servers.iter().all(|s| s.forward != s.bind));
    let binds = |c: &ClusterConfig| c.servers.iter().map(|s| s.bind).collect::<Vec<_>>();
    assert_eq!(binds(&t), binds(&l));
}

/// `chatserver` reads a file that carries the launcher's settings too; the
/// launcher checks them (`launcher::cluster::settings`).
#[test]
fn the_launchers_settings_are_left_to_the_launcher() {
    let d = Dir::new("launcher-keys");
    let p = d.write(
        "c.toml",
        "[cluster]\nname = \"c\"\nchatserver = \"bin/cs\"\nstate_dir = \"st\"\nsecret_file = \"/etc/k\"\nnode_args = [\"-v\"]\n\
         [nodes]\ncount = 1\nbase_port = 6000\n[supervise]\nrestart = \"always\"\n[faults]\nloss = 0.5\n",
    );
    let c = config::load(&p).unwrap();
    assert_eq!(c.servers.len(), 1);
}

/// Each case: file name, text, the line the error must name, and words the
/// message must contain.
const ERRORS: &[(&str, &str, usize, &[&str])] = &[
    // legacy
    (
        "l.txt",
        "127.0.0.1:5000\n127.0.0.1:5000\n",
        2,
        &["duplicate address 127.0.0.1:5000"],
    ),
    (
        "l.txt",
        "127.0.0.1:5000\n\n127.0.0.1:70000\n",
        3,
        &["bad port"],
    ),
    ("l.txt", "127.0.0.1:5000\n127.0.0.1:0\n", 2, &["port 0"]),
    ("l.txt", "a,b,c\n", 1, &["expected IP:PORT"]),
    (
        "l.txt",
        "127.0.0.1:8000,127.0.0.1:5000\n127.0.0.1:5000\n",
        2,
        &["duplicate"],
    ),
    // addresses no server can be reached at
    (
        "l.txt",
        "127.0.0.1:5000\n0.0.0.0:5001\n",
        2,
        &["unspecified", "0.0.0.0:5001"],
    ),
    ("l.txt", "[::]:5000\n", 1, &["unspecified", "[::]:5000"]),
    (
        "l.txt",
        "0.0.0.0:8000,127.0.0.1:5000\n",
        1,
        &["unspecified", "only `bind` may be a wildcard"],
    ),
    // bind and advertise
    (
        "t.toml",
        "[[node]]\nadvertise = \"0.0.0.0:6000\"\nbind = \"0.0.0.0:6000\"\n",
        2,
        &["node[1].advertise", "unspecified"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"0.0.0.0:6000\"\nadvertise = \"10.1.2.3:6000\"\nforward = \"10.1.2.3:6000\"\n",
        4,
        &["node[1].forward", "not both", "line 3"],
    ),
    (
        "t.toml",
        "[[node]]\nname = \"a\"\n",
        1,
        &["node[1].bind", "give `bind`, `advertise` or both"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"0.0.0.0:6000\"\nadvertise = \"chat-0.chat.invalid:6000\"\n[[node]]\nbind = \"0.0.0.0:6000\"\nadvertise = \"CHAT-0.chat.invalid:6000\"\n",
        6,
        &[
            "node[2].advertise",
            "duplicate address chat-0.chat.invalid:6000",
        ],
    ),
    ("l.txt", "255.255.255.255:5000\n", 1, &["broadcast"]),
    ("l.txt", "224.0.0.1:5000\n", 1, &["multicast"]),
    ("l.txt", "[ff02::1]:5000\n", 1, &["multicast"]),
    (
        "l.txt",
        "127.0.0.1:5000\n127.0.0.1:5001,\n",
        2,
        &["trailing comma", "IP:PORT"],
    ),
    ("l.txt", ",127.0.0.1:5001\n", 1, &["leading comma"]),
    (
        "l.txt",
        "127.0.0.1:8000,127.0.0.1:5000\n127.0.0.1:8001,127.0.0.1:8000\n",
        2,
        &["duplicate address 127.0.0.1:8000"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"127.0.0.1:6000\"\n[[node]]\nbind = \"0.0.0.0:6001\"\n",
        4,
        &["node[2].bind", "unspecified"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"127.0.0.1:6000\"\nforward = \"224.1.2.3:7000\"\n",
        3,
        &["node[1].forward", "multicast"],
    ),
    (
        "t.toml",
        "[nodes]\nhost = \"0.0.0.0\"\ncount = 2\nbase_port = 6000\n",
        2,
        &["nodes.host", "unspecified"],
    ),
    (
        "t.toml",
        "[nodes]\ncount = 1025\nbase_port = 6000\n",
        2,
        &["nodes.count", "too many servers", "1024"],
    ),
    // TOML syntax and shape
    ("t.toml", "[cluster]\nrooms = \n", 2, &["syntax"]),
    (
        "t.toml",
        "[cluster]\nroom = 3\n",
        2,
        &["cluster.room", "unknown key"],
    ),
    ("t.toml", "[clusters]\n", 1, &["clusters", "unknown table"]),
    ("t.toml", "[cluster]\nrooms = 2\n", 1, &["no nodes"]),
    (
        "t.toml",
        "[nodes]\ncount = 1\nbase_port = 6000\n[[node]]\nbind = \"127.0.0.1:6001\"\n",
        4,
        &["not both"],
    ),
    // values
    (
        "t.toml",
        "[cluster]\nrooms = 0\n[nodes]\ncount = 1\nbase_port = 6000\n",
        2,
        &["cluster.rooms"],
    ),
    (
        "t.toml",
        "[cluster]\nordering = \"chaos\"\n[nodes]\ncount = 1\nbase_port = 6000\n",
        2,
        &["cluster.ordering", "unknown ordering mode 'chaos'"],
    ),
    (
        "t.toml",
        "[nodes]\ncount = 2\nbase_port = 65535\n",
        3,
        &["nodes.base_port"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"127.0.0.1:65536\"\n",
        2,
        &["node[1].bind", "bad port"],
    ),
    (
        "t.toml",
        "[[node]]\nbind = \"127.0.0.1:6000\"\n[[node]]\nbind = \"127.0.0.1:6001\"\nforward = \"127.0.0.1:6000\"\n",
        5,
        &["node[2].forward", "duplicate address 127.0.0.1:6000"],
    ),
];

#[test]
fn every_error_names_file_and_line() {
    let d = Dir::new("errors");
    for (name, text, line, needles) in ERRORS {
        let p = d.write(name, text);
        let msg = load_err(&p);
        let prefix = format!("{}:{line}: ", p.display());
        assert!(
            msg.starts_with(&prefix),
            "{msg:?} should start with {prefix:?} (file {text:?})"
        );
        for n in *needles {
            assert!(msg.contains(n), "{msg:?} should contain {n:?}");
        }
    }
}

#[test]
fn missing_and_empty_files() {
    let d = Dir::new("missing");
    let msg = load_err(&d.0.join("nope.toml"));
    assert!(
        msg.contains("nope.toml") && msg.contains("cannot read"),
        "{msg}"
    );
    let p = d.write("empty.txt", "\n# nothing\n");
    let msg = load_err(&p);
    assert!(msg.contains("no servers"), "{msg}");
}

#[test]
fn server_index_out_of_range() {
    let d = Dir::new("index");
    let c = config::load(&d.write("s.txt", "127.0.0.1:6000\n")).unwrap();
    assert!(c.server(1).is_ok());
    let e = c.server(2).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    assert!(c.server(0).is_err());
}

/// Config input is bounded: a huge or endless file cannot stall a start.
#[test]
fn oversized_and_endless_files_are_refused_without_reading_them_whole() {
    let d = Dir::new("big");
    // Just over the cap, all valid-looking lines.
    let mut text = String::new();
    let mut port = 1u32;
    while text.len() as u64 <= config::MAX_CONFIG_BYTES {
        text.push_str(&format!(
            "127.0.{}.{}:{}\n",
            port / 250 % 250,
            port % 250,
            1000 + port % 60000
        ));
        port += 1;
    }
    let p = d.write("huge.txt", &text);
    let t = std::time::Instant::now();
    let msg = load_err(&p);
    assert!(
        msg.contains("huge.txt") && msg.contains("too large"),
        "{msg}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2));

    // /dev/zero: endless; read stops at the cap.
    let t = std::time::Instant::now();
    let msg = load_err(Path::new("/dev/zero"));
    assert!(
        msg.starts_with("/dev/zero: ") && msg.contains("too large"),
        "{msg}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2));

    // Not UTF-8: names the line.
    let p = d.0.join("bin.txt");
    std::fs::write(&p, b"127.0.0.1:5000\n\xff\xfe\n").unwrap();
    let msg = load_err(&p);
    assert!(
        msg.contains("bin.txt:2: ") && msg.contains("UTF-8"),
        "{msg}"
    );
}

fn many_legacy(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "127.0.{}.{}:{}\n",
                1 + i / 200,
                1 + i % 200,
                5000 + i % 1000
            )
        })
        .collect()
}

#[test]
fn server_count_is_capped_with_file_and_line() {
    let d = Dir::new("many");
    let ok = d.write("ok.txt", &many_legacy(config::DEFAULT_MAX_SERVERS));
    assert_eq!(config::load(&ok).unwrap().servers.len(), 1024);
    let p = d.write("many.txt", &format!("# header\n{}", many_legacy(1025)));
    let msg = load_err(&p);
    assert!(
        msg.starts_with(&format!("{}:1026: ", p.display())) && msg.contains("too many servers"),
        "{msg}"
    );
    // A higher cap is possible, never beyond the 16-bit id space.
    let limits = config::ConfigLimits {
        max_servers: 2000,
        ..Default::default()
    };
    assert_eq!(config::load_with(&p, limits).unwrap().servers.len(), 1025);
    let limits = config::ConfigLimits {
        max_servers: usize::MAX,
        ..Default::default()
    };
    assert_eq!(limits.servers(), config::HARD_MAX_SERVERS);
    // [[node]] entries: the line of the first one too many.
    let mut toml = String::new();
    for i in 0..1025 {
        toml.push_str(&format!(
            "[[node]]\nbind = \"127.0.{}.{}:6000\"\n",
            1 + i / 200,
            1 + i % 200
        ));
    }
    let p = d.write("many.toml", &toml);
    let msg = load_err(&p);
    assert!(
        msg.starts_with(&format!("{}:{}: ", p.display(), 2 * 1024 + 1))
            || msg.starts_with(&format!("{}:{}: ", p.display(), 2 * 1024 + 2)),
        "{msg}"
    );
    assert!(
        msg.contains("node[1025]") && msg.contains("too many servers"),
        "{msg}"
    );
}

#[test]
fn servers_bind_a_wildcard_and_advertise_names_that_may_resolve_later() {
    let d = Dir::new("advertise");
    // The shape `launcher export --to kubernetes` writes: every pod binds
    // the wildcard, the others reach it by a name that does not resolve
    // here (nor, at first, in the cluster).
    let p = d.write(
        "k.toml",
        "[cluster]\nordering = \"total\"\n\
         [[node]]\nadvertise = \"chat-0.chat.invalid:5000\"\nbind = \"0.0.0.0:5000\"\n\
         [[node]]\nforward = \"chat-1.chat.invalid:5000\"\nbind = \"0.0.0.0:5000\"\n\
         [[node]]\nadvertise = \"127.0.0.1:5002\"\nbind = \"[::]:5002\"\n",
    );
    let c = config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.servers.len(), 3);
    let s1 = &c.servers[0];
    assert_eq!(s1.advertised(), "chat-0.chat.invalid:5000");
    assert!(
        !s1.forward_resolved(),
        "a name that does not resolve is kept"
    );
    assert_eq!(s1.forward.port(), 5000);
    assert_eq!(s1.bind, "0.0.0.0:5000".parse().unwrap());
    assert!(s1.bind_resolved());
    assert_eq!(
        c.servers[1].advertised(),
        "chat-1.chat.invalid:5000",
        "`forward` is a synonym"
    );
    let s3 = &c.servers[2];
    assert!(s3.forward_resolved());
    assert_eq!(s3.forward, "127.0.0.1:5002".parse().unwrap());
    assert_eq!(s3.bind, "[::]:5002".parse().unwrap());
    assert_eq!(s3.forward_name, None);

    // A name that resolves is resolved at load, and kept for later.
    let p = d.write(
        "n.toml",
        "[[node]]\nadvertise = \"localhost:5000\"\n[[node]]\nadvertise = \"127.0.0.1:5001\"\n",
    );
    let c = config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.servers[0].forward.ip().is_loopback());
    assert_eq!(c.servers[0].forward_name.as_deref(), Some("localhost:5000"));
    assert_eq!(
        c.servers[0].bind, c.servers[0].forward,
        "bind defaults to advertise"
    );

    // The legacy FWD,BIND pair keeps its meaning; BIND may be a wildcard,
    // FWD a name that does not resolve yet.
    let p = d.write(
        "l.txt",
        "chat-0.chat.invalid:5000,0.0.0.0:5000\n127.0.0.1:8001,127.0.0.1:5001\n",
    );
    let c = config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.servers[0].advertised(), "chat-0.chat.invalid:5000");
    assert!(c.servers[0].bind.ip().is_unspecified());
    assert_eq!(c.servers[1].forward, "127.0.0.1:8001".parse().unwrap());
    assert_eq!(c.servers[1].bind, "127.0.0.1:5001".parse().unwrap());
}
