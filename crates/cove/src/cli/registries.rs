//! `cove registry …`: private registries the server uses to pull snapshot images.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::Global;
use super::client::{Client, seg};
use super::output::{self, Format};

/// Registry kinds.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Docker Hub (user name + personal access token).
    Dockerhub,
    /// Google Artifact Registry (region URL, service-account JSON key, project id).
    Google,
    /// GitHub Container Registry (user name + personal access token).
    Github,
    /// Amazon ECR (registry URL + role ARN the server assumes).
    Ecr,
    /// Any other registry (URL, user name, password).
    Generic,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Dockerhub => "dockerhub",
            Kind::Google => "google",
            Kind::Github => "github",
            Kind::Ecr => "ecr",
            Kind::Generic => "generic",
        }
    }
}

/// `cove registry …`.
#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Add a registry.
    Add(AddArgs),
    /// List registries (never their secrets).
    List,
    /// Delete a registry.
    Delete {
        /// Registry id or name.
        id: String,
    },
}

/// `cove registry add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The kind of registry.
    #[arg(long = "type", value_enum)]
    pub kind: Kind,
    /// A name for it.
    #[arg(long)]
    pub name: String,
    /// Registry URL (fixed for dockerhub and github).
    #[arg(long)]
    pub url: Option<String>,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password, token or (google) the service-account JSON key; `-` reads it from stdin.
    #[arg(long)]
    pub password: Option<String>,
    /// Project (google: the project id; others: a path prefix).
    #[arg(long)]
    pub project: Option<String>,
    /// ECR: the IAM role the server assumes.
    #[arg(long)]
    pub role_arn: Option<String>,
}

pub async fn run(c: Client, cmd: RegistryCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        RegistryCommand::Add(a) => {
            let url = a.url.clone().unwrap_or_else(|| match a.kind {
                Kind::Dockerhub => "docker.io".into(),
                Kind::Github => "ghcr.io".into(),
                _ => String::new(),
            });
            let password = match a.password.as_deref() {
                Some("-") => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                    s.trim_end_matches('\n').to_string()
                }
                Some(p) => p.to_string(),
                None => String::new(),
            };
            let username = a.username.clone().unwrap_or_else(|| match a.kind {
                Kind::Google => "_json_key".into(),
                Kind::Ecr => "AWS".into(),
                _ => String::new(),
            });
            let body = json!({
                "name": a.name, "url": url, "username": username, "password": password,
                "project": a.project, "type": a.kind.as_str(), "roleArn": a.role_arn,
            });
            let r: Value = c.post_json("/docker-registry", &body).await?;
            match g.format {
                Format::Json => output::json(&r),
                Format::Table => print(std::slice::from_ref(&r)),
            }
        }
        RegistryCommand::List => {
            let r: Value = c.get_json("/docker-registry").await?;
            let items = r.as_array().cloned().unwrap_or_default();
            match g.format {
                Format::Json => output::json(&items),
                Format::Table => print(&items),
            }
        }
        RegistryCommand::Delete { id } => {
            // A name is accepted too: the API deletes by id.
            let all: Value = c.get_json("/docker-registry").await?;
            let found =
                all.as_array().into_iter().flatten().find(|r| r["id"] == id.as_str() || r["name"] == id.as_str());
            let target = found.and_then(|r| r["id"].as_str()).unwrap_or(&id).to_string();
            c.delete(&format!("/docker-registry/{}", seg(&target))).await?;
            println!("Registry {id} deleted");
        }
    }
    Ok(())
}

fn print(items: &[Value]) {
    output::table(
        &["ID", "NAME", "TYPE", "URL", "USERNAME", "PROJECT"],
        &items
            .iter()
            .map(|r| {
                vec![
                    output::field(r, "id"),
                    output::field(r, "name"),
                    output::field(r, "provider"),
                    output::field(r, "url"),
                    output::field(r, "username"),
                    output::field(r, "project"),
                ]
            })
            .collect::<Vec<_>>(),
    );
}
