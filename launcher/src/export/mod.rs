//! `launcher export FILE --to systemd|kubernetes|compose`: what those
//! engines need to run the cluster of FILE without the launcher.
//!
//! Every target gets the same cluster file (`cluster.toml`, written from the
//! parsed config so that it holds only what `chatserver` reads) and the same
//! secret; the engine-specific files say how each server is started. The
//! command line in each is the one `launcher up` runs, with the engine's
//! paths.

mod compose;
mod kubernetes;
mod systemd;
mod yaml;

use crate::cluster::settings::{ClusterFile, SecretSetting, Settings};
use anyhow::Context;
use clap::{Args, ValueEnum};
use node::config::ClusterConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The engines `export` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A templated unit `chatserver@.service`, one instance per host.
    Systemd,
    /// A StatefulSet behind a headless Service, with ConfigMap, Secret and
    /// PodDisruptionBudget.
    Kubernetes,
    /// A compose file with one service per server.
    Compose,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Cluster file (legacy lines or TOML)
    pub file: PathBuf,
    /// The engine to write for
    #[arg(long = "to", value_enum)]
    pub target: Target,
    /// Directory to write into (created; files of the same names are replaced)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// systemd: where `chatserver` is installed on each host
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// systemd: where the cluster file and secret are installed on each host
    #[arg(long, value_name = "DIR", default_value = "/etc/chatserver")]
    pub config_dir: PathBuf,
    /// kubernetes, compose: the container image (built from the repository's
    /// Containerfile)
    #[arg(long, default_value = concat!("chatroom:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// kubernetes, compose: the UDP port every server listens on in its
    /// container
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
}

/// A file to write, relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    pub path: String,
    pub text: String,
    /// Only the owner may read it (the secret).
    pub private: bool,
}

impl OutFile {
    fn public(path: &str, text: String) -> OutFile {
        OutFile {
            path: path.to_string(),
            text,
            private: false,
        }
    }
}

/// What every target needs: the parsed cluster, its secret, the options.
pub struct ExportContext<'a> {
    pub cfg: &'a ClusterConfig,
    /// The launcher's settings of the same file (name, supervision, secret).
    pub settings: &'a Settings,
    /// The cluster secret's text, `None` when the cluster runs without one.
    pub secret: Option<String>,
    pub args: &'a ExportArgs,
}

impl ExportContext<'_> {
    /// The cluster's name as a DNS label (Kubernetes objects, compose
    /// services): lower case, `-` for anything else, at most 40 characters
    /// so that `<name>-<ordinal>` still fits.
    pub fn dns_name(&self) -> String {
        let mut s: String = self
            .settings
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        s.truncate(40);
        let s = s.trim_matches('-').to_string();
        if s.is_empty() { "chat".into() } else { s }
    }

    /// The ordering mode the file sets, else the server's default.
    pub fn ordering(&self) -> &str {
        self.cfg.ordering.as_deref().unwrap_or("unordered")
    }

    /// The extra arguments of every node (`node_args`).
    pub fn node_args(&self) -> &[String] {
        &self.settings.node_args
    }

    /// A cluster file for `chatserver` listing `(name, bind, advertise)` per
    /// server, in order.
    pub fn cluster_file(&self, servers: &[(String, String, String)]) -> String {
        let mut t = format!(
            "# Cluster {name}, written by `launcher export` from {src}.\n\
             # chatserver reads [cluster] and [[node]]; every server gets the same file.\n\n\
             [cluster]\nname = {name_q}\nordering = {ord}\nrooms = {rooms}\nsecret = \"off\"  # the secret is passed with --secret-file\n",
            name = self.settings.name,
            src = self.cfg.source.display(),
            name_q = toml_str(&self.settings.name),
            ord = toml_str(self.ordering()),
            rooms = self.cfg.rooms,
        );
        for (name, bind, advertise) in servers {
            t.push_str(&format!(
                "\n[[node]]\nname = {}\nadvertise = {}\nbind = {}\n",
                toml_str(name),
                toml_str(advertise),
                toml_str(bind)
            ));
        }
        t
    }
}

/// Whether a command-line word needs no quoting in a shell or a unit file.
fn is_plain_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The files for `args.target`.
pub fn render(cx: &ExportContext<'_>) -> anyhow::Result<Vec<OutFile>> {
    Ok(match cx.args.target {
        Target::Systemd => systemd::render(cx),
        Target::Kubernetes => kubernetes::render(cx),
        Target::Compose => compose::render(cx),
    })
}

/// The secret's text for the export: the configured one, or a fresh one
/// where the launcher would generate it at start-up.
fn secret_text(settings: &Settings) -> anyhow::Result<Option<String>> {
    Ok(match &settings.secret {
        SecretSetting::Off => None,
        SecretSetting::Inline(s) => Some(s.clone()),
        SecretSetting::File(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the secret file {}", p.display()))?;
            Some(text.trim().to_string())
        }
        SecretSetting::Generate => Some(crate::up::random_hex(32)?),
    })
}

pub fn run(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let ClusterFile { cfg, settings } = crate::cluster::settings::load(&a.file)?;
    let secret = secret_text(&settings)?;
    let cx = ExportContext {
        cfg: &cfg,
        settings: &settings,
        secret,
        args: &a,
    };
    let files = render(&cx)?;
    let target = match a.target {
        Target::Systemd => "systemd",
        Target::Kubernetes => "kubernetes",
        Target::Compose => "compose",
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{target}", cx.dns_name())));
    write_files(&out, &files)?;
    crate::outln!(
        "wrote {} files for {target} into {}:",
        files.len(),
        out.display()
    );
    for f in &files {
        crate::outln!(
            "  {}{}",
            f.path,
            if f.private {
                "  (secret, mode 0600)"
            } else {
                ""
            }
        );
    }
    crate::outln!("{}", next_step(a.target, &out));
    Ok(ExitCode::SUCCESS)
}

fn next_step(target: Target, out: &Path) -> String {
    let out = out.display();
    match target {
        Target::Systemd => {
            format!("next: see {out}/README.md for the install commands on each host")
        }
        Target::Kubernetes => format!("next: kubectl apply -f {out}/"),
        Target::Compose => format!("next: docker compose -f {out}/compose.yaml up"),
    }
}

fn write_files(dir: &Path, files: &[OutFile]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in files {
        let p = dir.join(&f.path);
        std::fs::write(&p, &f.text).with_context(|| format!("writing {}", p.display()))?;
        let mode = if f.private { 0o600 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    Ok(())
}
