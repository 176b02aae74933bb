//! The command-line client: `cove login`, `cove snapshot …`, `cove sandbox …`,
//! `cove registry …`, `cove api-key …`, `cove node …`, `cove image bootstrap`. It speaks the same HTTP API as the SDKs.
//!
//! Configuration: `cove login` stores the API URL and key in `$XDG_CONFIG_HOME/cove/config.json`
//! (or `~/.config/cove/config.json`, mode 0600); `COVE_API_URL`/`COVE_API_KEY` (or the
//! `DAYTONA_*` names) override it. Login also pins the server's CA there (`pin`), which the
//! client then trusts besides the system's roots when talking to that server.

mod client;
mod context;
mod debian;
mod image;
mod keys;
mod nodes;
mod output;
mod pin;
mod push;
mod registries;
mod sandbox;
mod snapshot;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
pub use client::Client;
use output::Format;
use serde::{Deserialize, Serialize};

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub format: Format,
}

/// `cove login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The API URL, e.g. http://127.0.0.1:3000/api (a URL without `/api` gets it added).
    #[arg(long)]
    pub api_url: String,
    /// The API key (read from COVE_API_KEY when not given).
    #[arg(long, env = "COVE_API_KEY")]
    pub api_key: String,
    /// The server's CA certificate (PEM), given out of band: it must be the CA the server
    /// serves (refused naming both fingerprints otherwise); used as is only when the server
    /// serves none. Without it, the CA is fetched over the authenticated API.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Accept a CA other than the one pinned at an earlier login of this server.
    #[arg(long)]
    pub trust_new_ca: bool,
}

/// Client commands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Store the API URL and key for later commands.
    Login(LoginArgs),
    /// Snapshots: create (from an image or a Dockerfile), push a local image, list, get, …
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Sandboxes: create, list, exec, delete.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Private registries used to pull snapshot images.
    #[command(subcommand)]
    Registry(registries::RegistryCommand),
    /// API keys of your organization.
    #[command(subcommand, name = "api-key")]
    ApiKey(keys::KeyCommand),
    /// The installation's nodes (admin key, servers with --database-url): list, drain, undrain.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Sandbox images: `bootstrap` builds a Debian one with mmdebstrap (admin key).
    #[command(subcommand)]
    Image(image::ImageCommand),
}

/// What `cove login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredConfig {
    api_url: String,
    api_key: String,
    /// The server's CA, pinned at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<pin::PinnedCa>,
}

fn read_stored(path: &std::path::Path) -> anyhow::Result<Option<StoredConfig>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("read {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set: cannot find the config directory")?)
            .join(".config"),
    };
    Ok(base.join("cove").join("config.json"))
}

/// `…/api` for a URL given with or without it.
fn api_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.ends_with("/api") { url.to_string() } else { format!("{url}/api") }
}

fn env_any(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The client from the environment, else from `cove login`'s file.
fn connect() -> anyhow::Result<Client> {
    let stored = match config_path() {
        Ok(p) => read_stored(&p)?,
        Err(_) => None,
    };
    let url = env_any(&["COVE_API_URL", "DAYTONA_API_URL"]).or_else(|| stored.as_ref().map(|s| s.api_url.clone()));
    let key = env_any(&["COVE_API_KEY", "DAYTONA_API_KEY"]).or_else(|| stored.as_ref().map(|s| s.api_key.clone()));
    match (url, key) {
        (Some(url), Some(key)) => {
            // The pin belongs to the server it was fetched from.
            let base = api_base(&url);
            let ca = stored.as_ref().filter(|s| api_base(&s.api_url) == base).and_then(|s| s.ca.as_ref());
            Client::new(&base, &key, ca.map(|c| c.certificate.as_str()))
        }
        _ => anyhow::bail!(
            "not logged in: run `cove login --api-url URL --api-key KEY` or set COVE_API_URL and COVE_API_KEY"
        ),
    }
}

async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let url = api_base(&a.api_url);
    let file = match &a.ca_file {
        Some(p) => Some((p.as_path(), pin::PinnedCa::from_file(p)?)),
        None => None,
    };
    let client = Client::new(&url, &a.api_key, file.as_ref().map(|(_, c)| c.certificate.as_str()))?;
    client.get_json::<serde_json::Value>("/shared-regions").await.context("check the API URL and key")?;
    let served = pin::fetch(&client).await?;
    let path = config_path()?;
    let earlier = read_stored(&path).ok().flatten().filter(|s| api_base(&s.api_url) == url).and_then(|s| s.ca);
    let ca = pin::choose(served, file, earlier.as_ref(), a.trust_new_ca)?;
    let dir = path.parent().expect("the config path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(&StoredConfig { api_url: url.clone(), api_key: a.api_key, ca: ca.clone() })?;
    write_private(&path, &json).with_context(|| format!("write {}", path.display()))?;
    println!("Logged in to {url}; settings saved in {}", path.display());
    match (&ca, &earlier) {
        (Some(c), Some(old)) if c.sha256 != old.sha256 => {
            println!("Pinned the server's new CA, sha256 {} (was sha256 {})", c.sha256, old.sha256)
        }
        (Some(c), _) => println!("Pinned the server's CA, sha256 {}", c.sha256),
        (None, _) => println!("The server serves no CA; the system's trust store is used"),
    }
    Ok(())
}

/// Writes a file only its owner can read, never through a link: the temporary file is made
/// anew (`O_EXCL` refuses a link in its place) and renamed over the path (replacing a link
/// there rather than following it).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs a client command.
pub async fn run(cmd: ClientCommand, g: Global) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Login(a) => login(a).await,
        ClientCommand::Snapshot(c) => snapshot::run(connect()?, c, &g).await,
        ClientCommand::Sandbox(c) => sandbox::run(connect()?, c, &g).await,
        ClientCommand::Registry(c) => registries::run(connect()?, c, &g).await,
        ClientCommand::ApiKey(c) => keys::run(connect()?, c, &g).await,
        ClientCommand::Image(c) => image::run(connect()?, c, &g).await,
        ClientCommand::Node(c) => nodes::run(connect()?, c, &g).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_get_their_api_suffix_once() {
        assert_eq!(api_base("http://h:3000"), "http://h:3000/api");
        assert_eq!(api_base("http://h:3000/api/"), "http://h:3000/api");
    }
}
