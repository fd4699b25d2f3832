//! compose: one service per server on one network, each reaching the others
//! by service name; server N's port is published on the host as
//! `port + N - 1` for clients.

use super::{ExportContext, OutFile, yaml};
use serde_json::{Map, json};

pub(super) fn render(cx: &ExportContext<'_>) -> Vec<OutFile> {
    let name = cx.dns_name();
    let port = cx.args.port;
    let n = cx.cfg.servers.len();
    let service = |i: usize| format!("{name}-{}", i + 1);
    let servers: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            (
                service(i),
                format!("0.0.0.0:{port}"),
                format!("{}:{port}", service(i)),
            )
        })
        .collect();
    let mut services = Map::new();
    for i in 0..n {
        let mut command = vec![
            "chatserver".to_string(),
            "/etc/chatserver/cluster.toml".to_string(),
            (i + 1).to_string(),
        ];
        if cx.secret.is_some() {
            command.extend(["--secret-file".into(), "/run/secrets/chat_secret".into()]);
        }
        command.extend(cx.node_args().iter().cloned());
        let mut svc = json!({
            "image": cx.args.image,
            "command": command,
            "restart": "on-failure",
            "ports": [format!("{}:{port}/udp", u32::from(port) + i as u32)],
            "configs": [{"source": "cluster", "target": "/etc/chatserver/cluster.toml"}],
            "read_only": true,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
        });
        if cx.secret.is_some() {
            svc["secrets"] = json!(["chat_secret"]);
        }
        services.insert(service(i), svc);
    }
    let mut doc = json!({
        "name": name,
        "services": services,
        "configs": {"cluster": {"file": "./cluster.toml"}},
    });
    let mut files = vec![OutFile::public("cluster.toml", cx.cluster_file(&servers))];
    if let Some(s) = &cx.secret {
        doc["secrets"] = json!({"chat_secret": {"file": "./secret"}});
        files.push(OutFile {
            path: "secret".into(),
            text: format!("{s}\n"),
            private: true,
        });
    }
    files.insert(
        0,
        OutFile::public(
            "compose.yaml",
            format!(
                "# Chat cluster {}: {n} servers, written by `launcher export --to compose`.\n# docker compose up  (or podman compose up)\n{}",
                cx.settings.name,
                yaml::document(&doc)
            ),
        ),
    );
    files
}
