//! systemd: one templated unit, `chatserver@.service`; instance N is server
//! N of the cluster file, so host N runs `systemctl enable --now
//! chatserver@N`. Hardened: a dynamic user, no new privileges, a read-only
//! system, the secret handed over as a credential.

use super::{ExportContext, OutFile};
use crate::cluster::settings::RestartPolicy;

/// The unit's file name.
pub(super) const UNIT: &str = "chatserver@.service";

pub(super) fn render(cx: &ExportContext<'_>) -> Vec<OutFile> {
    let servers: Vec<(String, String, String)> = cx
        .cfg
        .servers
        .iter()
        .map(|s| (s.name.clone(), s.bind_text(), s.advertised()))
        .collect();
    let mut files = vec![
        OutFile::public("cluster.toml", cx.cluster_file(&servers)),
        OutFile::public(UNIT, unit(cx)),
        OutFile::public("README.md", readme(cx)),
    ];
    if let Some(s) = &cx.secret {
        files.push(OutFile {
            path: "secret".into(),
            text: format!("{s}\n"),
            private: true,
        });
    }
    files
}

fn unit(cx: &ExportContext<'_>) -> String {
    let a = cx.args;
    let sup = &cx.settings.supervise;
    let bin = a.bin_dir.join("chatserver");
    let cluster = a.config_dir.join("cluster.toml");
    let mut exec = format!("{} {} %i", bin.display(), cluster.display());
    let mut credential = String::new();
    if cx.secret.is_some() {
        exec.push_str(" --secret-file ${CREDENTIALS_DIRECTORY}/secret");
        credential = format!(
            "# The secret (mode 0600, root) reaches the dynamic user as a credential.\nLoadCredential=secret:{}\n",
            a.config_dir.join("secret").display()
        );
    }
    for arg in cx.node_args() {
        exec.push(' ');
        exec.push_str(&systemd_quote(arg));
    }
    let restart = match sup.restart {
        RestartPolicy::Never => "no",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    };
    let low_port = cx.cfg.servers.iter().any(|s| s.bind.port() < 1024);
    let caps = if low_port {
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
    } else {
        "CapabilityBoundingSet=\n"
    };
    format!(
        "# Server %i of chat cluster {name} (ordered multicast over UDP).\n\
         # Written by `launcher export --to systemd`; see README.md beside it.\n\
         [Unit]\n\
         Description=Chat server %i of cluster {name}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         # Give up after {burst} restarts in {window} s, as `launcher up` does.\n\
         StartLimitIntervalSec={window}\n\
         StartLimitBurst={burst}\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={exec}\n\
         {credential}\
         Restart={restart}\n\
         RestartSec={backoff}ms\n\
         TimeoutStopSec={stop}ms\n\
         DynamicUser=yes\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         SystemCallArchitectures=native\n\
         {caps}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = cx.settings.name,
        burst = sup.max_restarts.max(1),
        window = sup.restart_window_s.max(1),
        backoff = sup.backoff_initial_ms,
        stop = sup.stop_timeout_ms,
    )
}

/// Quotes an argument for a systemd command line when it needs it.
fn systemd_quote(s: &str) -> String {
    if super::is_plain_word(s) {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn readme(cx: &ExportContext<'_>) -> String {
    let a = cx.args;
    let dir = a.config_dir.display();
    let bin = a.bin_dir.display();
    let mut hosts = String::new();
    for (i, s) in cx.cfg.servers.iter().enumerate() {
        hosts.push_str(&format!(
            "| {} | {} | {} | `systemctl enable --now chatserver@{}` |\n",
            i + 1,
            s.name,
            s.advertised(),
            i + 1
        ));
    }
    let secret_line = if cx.secret.is_some() {
        format!("    install -D -m 0600 secret {dir}/secret\n")
    } else {
        String::new()
    };
    format!(
        "# Cluster {name} with systemd\n\n\
         One templated unit runs server N of `cluster.toml` as `chatserver@N`.\n\
         On every host, from this directory:\n\n\
         \x20   install -D -m 0755 chatserver {bin}/chatserver   # built with `cargo build --release -p node`\n\
         \x20   install -D -m 0644 cluster.toml {dir}/cluster.toml\n\
         {secret_line}\
         \x20   install -D -m 0644 {unit} /etc/systemd/system/{unit}\n\
         \x20   systemctl daemon-reload\n\n\
         then on each host the one line of its server:\n\n\
         | server | name | address the others reach | command |\n\
         | --- | --- | --- | --- |\n\
         {hosts}\n\
         Open each server's UDP port to the other servers and to the clients.\n\
         `journalctl -u 'chatserver@*'` shows the servers' output;\n\
         `systemctl status chatserver@N` shows one.\n",
        name = cx.settings.name,
        unit = UNIT,
    )
}
