//! Cluster files from disk: TOML and the legacy format describe the same
//! servers; every error names the file and the line.

use node::config::{self, ClusterConfig, ConfigFormat, SecretSetting};
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
    // Legacy files carry no ordering and no secret; TOML generates one.
    assert_eq!(l.ordering, None);
    assert_eq!(l.secret, SecretSetting::Off);
    assert_eq!(t.secret, SecretSetting::Generate);
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

#[test]
fn relative_paths_are_relative_to_the_file() {
    let d = Dir::new("paths");
    let p = d.write(
        "c.toml",
        "[cluster]\nchatserver = \"bin/cs\"\nstate_dir = \"st\"\nsecret_file = \"/etc/k\"\n[nodes]\ncount = 1\nbase_port = 6000\n",
    );
    let c = config::load(&p).unwrap();
    assert_eq!(c.chatserver, Some(d.0.join("bin/cs")));
    assert_eq!(c.state_dir, Some(d.0.join("st")));
    assert_eq!(c.secret, SecretSetting::File("/etc/k".into()));
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
    (
        "t.toml",
        "[nodes]\ncount = 1\nbase_port = 6000\n[faults]\nloss = 2\n",
        5,
        &["faults.loss", "out of range"],
    ),
    (
        "t.toml",
        "[nodes]\ncount = 1\nbase_port = 6000\n[supervise]\nrestart = \"maybe\"\n",
        5,
        &["supervise.restart"],
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
