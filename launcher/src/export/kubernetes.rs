//! Kubernetes: a StatefulSet whose pods `<name>-0..` are servers 1..N,
//! reachable through a headless Service by stable names
//! (`<name>-0.<name>`), the cluster file in a ConfigMap built from those
//! names, the secret in a Secret, and a PodDisruptionBudget that keeps a
//! majority running.

use super::{ExportContext, OutFile, yaml};
use serde_json::{Value, json};

/// Memory per server measured at the spec's scale is about 9 MiB, flat
/// (BENCHMARKS.md); the request leaves room for bursts, the limit for a
/// full admission window.
const MEMORY_REQUEST: &str = "32Mi";
const MEMORY_LIMIT: &str = "256Mi";
const CPU_REQUEST: &str = "100m";

pub(super) fn render(cx: &ExportContext<'_>) -> Vec<OutFile> {
    let name = cx.dns_name();
    let port = cx.args.port;
    let n = cx.cfg.servers.len();
    let servers: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            (
                format!("{name}-{i}"),
                format!("0.0.0.0:{port}"),
                format!("{name}-{i}.{name}:{port}"),
            )
        })
        .collect();
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "chatroom"});
    let mut docs = vec![
        service(&name, port, &labels),
        config_map(&name, &labels, cx.cluster_file(&servers)),
    ];
    if let Some(s) = &cx.secret {
        docs.push(secret(&name, &labels, s));
    }
    docs.push(stateful_set(cx, &name, port, n, &labels));
    docs.push(disruption_budget(&name, n, &labels));
    vec![OutFile {
        path: "cluster.yaml".into(),
        text: format!(
            "# Chat cluster {}: {n} servers, written by `launcher export --to kubernetes`.\n# kubectl apply -f cluster.yaml\n{}",
            cx.settings.name,
            yaml::documents(&docs)
        ),
        // The Secret is inside.
        private: cx.secret.is_some(),
    }]
}

fn metadata(name: &str, labels: &Value) -> Value {
    json!({"name": name, "labels": labels})
}

fn service(name: &str, port: u16, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, labels),
        "spec": {
            // Headless: one DNS name per pod, the servers' stable identities.
            "clusterIP": "None",
            // Servers must find each other before they are ready.
            "publishNotReadyAddresses": true,
            "selector": labels,
            "ports": [{"name": "chat", "port": port, "protocol": "UDP"}],
        },
    })
}

fn config_map(name: &str, labels: &Value, cluster_file: String) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(&format!("{name}-cluster"), labels),
        "data": {"cluster.toml": cluster_file},
    })
}

fn secret(name: &str, labels: &Value, secret: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(&format!("{name}-secret"), labels),
        "type": "Opaque",
        "stringData": {"secret": secret},
    })
}

fn stateful_set(cx: &ExportContext<'_>, name: &str, port: u16, n: usize, labels: &Value) -> Value {
    // Pod `<name>-K` is server K+1: the ordinal is the host name's suffix.
    let mut command = String::from(
        "exec chatserver /etc/chatserver/cluster.toml $(( ${HOSTNAME##*-} + 1 )) --ready-file /run/chatserver/ready",
    );
    if cx.secret.is_some() {
        command.push_str(" --secret-file /etc/chatserver-secret/secret");
    }
    for a in cx.node_args() {
        command.push(' ');
        command.push_str(&sh_quote(a));
    }
    let mut mounts = vec![
        json!({"name": "cluster", "mountPath": "/etc/chatserver", "readOnly": true}),
        json!({"name": "run", "mountPath": "/run/chatserver"}),
    ];
    let mut volumes = vec![
        json!({"name": "cluster", "configMap": {"name": format!("{name}-cluster")}}),
        json!({"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ];
    if cx.secret.is_some() {
        mounts.push(
            json!({"name": "secret", "mountPath": "/etc/chatserver-secret", "readOnly": true}),
        );
        volumes.push(json!({"name": "secret", "secret": {"secretName": format!("{name}-secret"), "defaultMode": 0o400}}));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, labels),
        "spec": {
            "serviceName": name,
            "replicas": n,
            // Servers start together: a cluster waits for its peers.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65534,
                        "runAsGroup": 65534,
                        "fsGroup": 65534,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "chatserver",
                        "image": cx.args.image,
                        "command": ["/bin/sh", "-c", command],
                        "ports": [{"name": "chat", "containerPort": port, "protocol": "UDP"}],
                        "readinessProbe": {
                            "exec": {"command": ["test", "-e", "/run/chatserver/ready"]},
                            "periodSeconds": 2,
                        },
                        "resources": {
                            "requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
                            "limits": {"memory": MEMORY_LIMIT},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

fn disruption_budget(name: &str, n: usize, labels: &Value) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, labels),
        "spec": {
            "minAvailable": n / 2 + 1,
            "selector": {"matchLabels": labels},
        },
    })
}

fn sh_quote(s: &str) -> String {
    if super::is_plain_word(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
