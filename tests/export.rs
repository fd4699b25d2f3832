//! `launcher export`: what it writes for systemd, Kubernetes and compose is
//! checked by those engines' own validators where they run here
//! (`systemd-analyze verify`, `kubernetes-validate` against the official
//! schemas), parsed as YAML, loaded by chatserver's own config parser, and
//! the systemd command lines are run on separate test hosts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::hosts::TestNet;
use support::{Proc, Scratch, bin};

fn export(file: &Path, target: &str, out: &Path, extra: &[&str]) -> String {
    let o = Command::new(bin("launcher"))
        .arg("export")
        .arg(file)
        .args(["--to", target, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run launcher export");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "export --to {target} failed: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// A TOML cluster of `n` servers on test hosts 1..=n, with a secret.
fn hosts_cluster(dir: &Scratch, n: usize) -> PathBuf {
    let mut t = String::from(
        "[cluster]\nname = \"Test_Cluster\"\nordering = \"total\"\nrooms = 4\nsecret = \"generate\"\n",
    );
    for i in 1..=n {
        let a = TestNet::addr_of(i);
        t.push_str(&format!(
            "\n[[node]]\nname = \"h{i}\"\nbind = \"{a}:5000\"\n"
        ));
    }
    dir.write("cluster.toml", &t)
}

/// `python3 -c SCRIPT ARGS`, which must succeed; its stdout.
fn python(script: &str, args: &[&Path]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is on every machine of this project's kind");
    assert!(
        o.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The next datagram on `s` (within `WAIT`), as text.
fn hear(s: &std::net::UdpSocket) -> String {
    s.set_read_timeout(Some(support::WAIT)).expect("timeout");
    let mut buf = vec![0u8; 70000];
    let (n, _) = s.recv_from(&mut buf).expect("a datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Alice on host 4 (server 1) and Bob on host 5 (server 3) join room 2;
/// Alice's `text` reaches both, byte for byte.
fn chat_across_hosts(net: &TestNet, text: &str) {
    let to = |i: usize| std::net::SocketAddr::from((TestNet::addr_of(i), 5000));
    let alice = net.udp_socket(4);
    let bob = net.udp_socket(5);
    let talk = |s: &std::net::UdpSocket, server: usize, line: &str| {
        s.send_to(line.as_bytes(), to(server)).expect("send");
    };
    talk(&alice, 1, "/nick alice");
    assert_eq!(hear(&alice), "+OK Nickname set to 'alice'");
    talk(&alice, 1, "/join 2");
    assert_eq!(hear(&alice), "+OK You are now in chat room #2");
    talk(&bob, 3, "/join 2");
    assert_eq!(hear(&bob), "+OK You are now in chat room #2");
    talk(&alice, 1, text);
    assert_eq!(hear(&alice), format!("<alice> {text}"));
    assert_eq!(hear(&bob), format!("<alice> {text}"));
}

/// chatserver's own parser accepts the file (`launcher check` would also
/// look for the binary and ports; the node's loader is what matters).
fn node_accepts(cluster_file: &Path, servers: usize) {
    let cfg = node::config::load(cluster_file)
        .unwrap_or_else(|e| panic!("chatserver refuses the exported cluster file: {e}"));
    assert_eq!(cfg.servers.len(), servers);
    assert_eq!(cfg.ordering.as_deref(), Some("total"));
    assert_eq!(cfg.rooms, 4);
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = Scratch::new("export-systemd");
    let cfg = hosts_cluster(&dir, 3);
    let out = dir.path().join("out");
    // Install paths that exist here, so that verify can check them.
    let bin_dir = bin("chatserver").parent().expect("bin dir").to_path_buf();
    export(
        &cfg,
        "systemd",
        &out,
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--config-dir",
            out.to_str().unwrap(),
        ],
    );
    let unit = std::fs::read_to_string(out.join("chatserver@.service")).expect("unit");
    for hardening in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "LoadCredential=secret:",
    ] {
        assert!(unit.contains(hardening), "{hardening} missing:\n{unit}");
    }
    let secret = std::fs::metadata(out.join("secret")).expect("secret file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    node_accepts(&out.join("cluster.toml"), 3);

    // verify needs an instance of the template.
    let instance = out.join("chatserver@1.service");
    std::fs::write(&instance, &unit).expect("write instance");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .expect("systemd-analyze (Debian's systemd; .ci/run installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "systemd-analyze verify failed:\n{said}");
    // Warnings (unknown keys, bad values) do not fail verify: none allowed.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );

    // The default install paths.
    let out2 = dir.path().join("default");
    export(&cfg, "systemd", &out2, &[]);
    let unit2 = std::fs::read_to_string(out2.join("chatserver@.service")).expect("unit");
    assert!(
        unit2.contains(
            "ExecStart=/usr/local/bin/chatserver /etc/chatserver/cluster.toml %i --secret-file ${CREDENTIALS_DIRECTORY}/secret"
        ),
        "{unit2}"
    );
}

/// What the systemd export says to run, run by hand on three test hosts
/// (as systemd would: `%i` the instance, the credential directory holding
/// the secret): the servers form a cluster and carry a chat line.
#[test]
fn systemd_command_lines_run_on_test_hosts() {
    let net = TestNet::new(5);
    let dir = Scratch::new("export-systemd-hosts");
    let cfg = hosts_cluster(&dir, 3);
    let out = dir.path().join("out");
    let bin_dir = bin("chatserver").parent().expect("bin dir").to_path_buf();
    export(
        &cfg,
        "systemd",
        &out,
        &[
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--config-dir",
            out.to_str().unwrap(),
        ],
    );
    let unit = std::fs::read_to_string(out.join("chatserver@.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut servers = Vec::new();
    for i in 1..=3 {
        let words: Vec<String> = exec
            .split_whitespace()
            .map(|w| {
                w.replace("%i", &i.to_string())
                    .replace("${CREDENTIALS_DIRECTORY}", out.to_str().unwrap())
            })
            .collect();
        let mut cmd = net.command(i, &words[0]);
        cmd.args(&words[1..]);
        let mut p = Proc::spawn(&format!("exported server {i}"), cmd);
        p.wait_stderr("ready");
        servers.push(p);
    }
    chat_across_hosts(&net, "hello from an exported unit");
}

#[test]
fn kubernetes_manifests_pass_the_official_schemas() {
    let dir = Scratch::new("export-k8s");
    let cfg = hosts_cluster(&dir, 5);
    let out = dir.path().join("out");
    export(
        &cfg,
        "kubernetes",
        &out,
        &["--image", "registry.example/chatroom:1"],
    );
    let manifest = out.join("cluster.yaml");
    let o = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .arg(&manifest)
        .output()
        .expect("kubernetes-validate (PyPI; .ci/run installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "kubernetes-validate failed:\n{said}");
    for kind in [
        "service",
        "configmap",
        "secret",
        "statefulset",
        "poddisruptionbudget",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}/")),
            "{kind} not validated:\n{said}"
        );
    }
    // The parts that matter to the cluster, read back as YAML.
    let facts = python(
        r#"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
sts = docs["StatefulSet"]["spec"]
print("replicas", sts["replicas"])
print("service", docs["Service"]["spec"]["clusterIP"], sts["serviceName"] == docs["Service"]["metadata"]["name"])
print("pdb", docs["PodDisruptionBudget"]["spec"]["minAvailable"])
print("image", sts["template"]["spec"]["containers"][0]["image"])
open(sys.argv[2], "w").write(docs["ConfigMap"]["data"]["cluster.toml"])
"#,
        &[&manifest, &out.join("configmap-cluster.toml")],
    );
    assert!(facts.contains("replicas 5"), "{facts}");
    assert!(facts.contains("service None True"), "{facts}");
    assert!(facts.contains("pdb 3"), "a majority of 5 stays up: {facts}");
    assert!(
        facts.contains("image registry.example/chatroom:1"),
        "{facts}"
    );
    let cluster = std::fs::read_to_string(out.join("configmap-cluster.toml")).expect("cluster");
    assert!(
        cluster.contains("\"test-cluster-0.test-cluster:5000\""),
        "{cluster}"
    );
    assert!(cluster.contains("bind = \"0.0.0.0:5000\""), "{cluster}");
    node_accepts(&out.join("configmap-cluster.toml"), 5);
}

#[test]
fn compose_file_parses_with_one_service_per_server() {
    let dir = Scratch::new("export-compose");
    let cfg = hosts_cluster(&dir, 3);
    let out = dir.path().join("out");
    export(&cfg, "compose", &out, &[]);
    let facts = python(
        r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for name, svc in doc["services"].items():
    print(name, " ".join(svc["command"]), svc["ports"][0])
print("secrets", sorted(doc["secrets"]))
"#,
        &[&out.join("compose.yaml")],
    );
    assert!(
        facts.contains(
            "test-cluster-1 chatserver /etc/chatserver/cluster.toml 1 --secret-file /run/secrets/chat_secret 5000:5000/udp"
        ),
        "{facts}"
    );
    assert!(
        facts.contains("test-cluster-3 chatserver /etc/chatserver/cluster.toml 3"),
        "{facts}"
    );
    assert!(facts.contains("secrets ['chat_secret']"), "{facts}");
    node_accepts(&out.join("cluster.toml"), 3);
}

#[test]
fn export_refuses_a_bad_cluster_file_naming_file_and_line() {
    let dir = Scratch::new("export-bad");
    let cfg = dir.write("bad.toml", "[cluster]\nname = \"x\"\nbogus = 1\n");
    let o = Command::new(bin("launcher"))
        .arg("export")
        .arg(&cfg)
        .args(["--to", "systemd", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .expect("run launcher export");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml:3"), "{err}");
    assert!(
        !dir.path().join("out").exists(),
        "nothing written for a bad file"
    );
}

/// `--ready-file` (the Kubernetes readiness probe tests for it): the file
/// exists, its directory created, once the server says it is ready and
/// serves; it is gone when the server has stopped.
#[test]
fn ready_file_exists_while_the_server_is_ready() {
    let dir = Scratch::new("ready-file");
    let (text, binds, _) = support::legacy_config(1, false);
    let cfg = dir.write("one.txt", &text);
    let ready = dir.path().join("run/chatserver/ready");
    let mut p = support::start_server(
        &cfg,
        1,
        &["--ready-file", ready.to_str().expect("utf-8 path")],
    );
    assert!(ready.exists(), "no ready file once ready");
    let c = support::Client::new(binds[0]);
    c.expect_reply("/join 1", "+OK You are now in chat room #1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    p.wait_stderr(" stopped: ");
    assert!(p.wait_exit().success());
    assert!(!ready.exists(), "the ready file outlived the server");
}

/// What the compose export says to run, on three test hosts whose host
/// names are the compose service names (as compose's network provides):
/// the cluster file names servers only by name, binds the wildcard, and
/// the servers find each other and carry a chat line.
#[test]
fn compose_command_lines_run_on_test_hosts_by_name() {
    let net = TestNet::new(5);
    let dir = Scratch::new("export-compose-hosts");
    let cfg = hosts_cluster(&dir, 3);
    let out = dir.path().join("out");
    export(&cfg, "compose", &out, &[]);
    let names: Vec<String> = (1..=3).map(|i| format!("test-cluster-{i}")).collect();
    let table: Vec<(&str, std::net::Ipv4Addr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), TestNet::addr_of(i + 1)))
        .collect();
    net.set_hosts(&table);
    let commands = python(
        r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for name in sorted(doc["services"]):
    print("\t".join(doc["services"][name]["command"]))
"#,
        &[&out.join("compose.yaml")],
    );
    let mut servers = Vec::new();
    for (i, line) in commands.lines().enumerate() {
        // The container's paths, here: the binary, the config, the secret.
        let words: Vec<String> = line
            .split('\t')
            .map(|w| match w {
                "chatserver" => bin("chatserver").to_string_lossy().into_owned(),
                "/etc/chatserver/cluster.toml" => {
                    out.join("cluster.toml").to_string_lossy().into_owned()
                }
                "/run/secrets/chat_secret" => out.join("secret").to_string_lossy().into_owned(),
                w => w.to_string(),
            })
            .collect();
        let mut cmd = net.command(i + 1, &words[0]);
        cmd.args(&words[1..]);
        let mut p = Proc::spawn(&format!("compose service {}", i + 1), cmd);
        p.wait_stderr("ready");
        servers.push(p);
    }
    assert_eq!(servers.len(), 3, "{commands}");
    chat_across_hosts(&net, "hello by name");
}

/// What the Kubernetes StatefulSet runs in each pod (its `sh -c` command,
/// with the ConfigMap's cluster file, the Secret and the pod's HOSTNAME),
/// run on three test hosts standing for the pods: they start before any
/// pod name resolves (as a StatefulSet's DNS records appear after the
/// pods), say they are ready through the readiness probe's file, and find
/// each other by their names once those resolve.
#[test]
fn kubernetes_pod_commands_run_on_test_hosts_by_name() {
    let net = TestNet::new(5);
    let dir = Scratch::new("export-k8s-hosts");
    let cfg = hosts_cluster(&dir, 3);
    let out = dir.path().join("out");
    export(&cfg, "kubernetes", &out, &[]);
    let pod = dir.path().join("pod");
    std::fs::create_dir_all(&pod).expect("pod dir");
    let facts = python(
        r#"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
c = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
open(sys.argv[2] + "/cluster.toml", "w").write(docs["ConfigMap"]["data"]["cluster.toml"])
open(sys.argv[2] + "/secret", "w").write(docs["Secret"]["stringData"]["secret"])
print(c["command"][0], c["command"][1])
print(c["command"][2])
print(" ".join(c["readinessProbe"]["exec"]["command"]))
"#,
        &[&out.join("cluster.yaml"), &pod],
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(lines.len(), 3, "{facts}");
    assert_eq!(lines[0], "/bin/sh -c", "{facts}");
    assert_eq!(lines[2], "test -e /run/chatserver/ready", "{facts}");
    // No pod name resolves yet (the table exists, empty: `ip netns exec`
    // mounts it for the programs it starts).
    net.set_hosts(&[]);
    let mut servers = Vec::new();
    for k in 0..3 {
        let ready = pod.join(format!("run-{k}/ready"));
        // The pod's paths, here.
        let command = lines[1]
            .replace(
                "exec chatserver ",
                &format!("exec {} ", bin("chatserver").display()),
            )
            .replace(
                "/etc/chatserver/cluster.toml",
                &pod.join("cluster.toml").to_string_lossy(),
            )
            .replace(
                "/etc/chatserver-secret/secret",
                &pod.join("secret").to_string_lossy(),
            )
            .replace("/run/chatserver/ready", &ready.to_string_lossy());
        let mut cmd = net.command(k + 1, "/bin/sh");
        cmd.arg("-c")
            .arg(&command)
            .env("HOSTNAME", format!("test-cluster-{k}"));
        let mut p = Proc::spawn(&format!("pod test-cluster-{k}"), cmd);
        let said = p.wait_stderr("ready");
        assert!(
            said.iter()
                .any(|l| l.contains(&format!("S0{} ready", k + 1))),
            "pod {k} is not server {}: {said:?}",
            k + 1
        );
        assert!(ready.exists(), "pod {k}: no ready file for the probe");
        servers.push(p);
    }
    // The headless Service's records appear.
    let names: Vec<String> = (0..3)
        .map(|k| format!("test-cluster-{k}.test-cluster"))
        .collect();
    let table: Vec<(&str, std::net::Ipv4Addr)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.as_str(), TestNet::addr_of(k + 1)))
        .collect();
    net.set_hosts(&table);
    // `total`: delivered once all three pods, found by name, agreed.
    chat_across_hosts(&net, "hello, pods");
}
