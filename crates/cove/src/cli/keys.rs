//! `cove api-key …`.

use clap::Subcommand;
use serde_json::{Value, json};

use super::Global;
use super::client::{Client, seg};
use super::output::{self, Format};

/// `cove api-key …`.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key (its value is shown once).
    Create {
        /// A label for the key.
        name: String,
    },
    /// List your organization's keys (never their values).
    List,
    /// Revoke a key.
    Revoke {
        /// Key id.
        id: String,
    },
}

pub async fn run(c: Client, cmd: KeyCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create { name } => {
            let k: Value = c.post_json("/api-keys", &json!({ "name": name })).await?;
            match g.format {
                Format::Json => output::json(&k),
                Format::Table => {
                    println!("Created key {} ({})", output::field(&k, "name"), output::field(&k, "id"));
                    println!("\n    {}\n\nIt is shown only this once.", output::field(&k, "value"));
                }
            }
        }
        KeyCommand::List => {
            let keys: Value = c.get_json("/api-keys").await?;
            let items = keys.as_array().cloned().unwrap_or_default();
            match g.format {
                Format::Json => output::json(&items),
                Format::Table => output::table(
                    &["ID", "NAME", "PREFIX", "CREATED", "LAST USED"],
                    &items
                        .iter()
                        .map(|k| {
                            ["id", "name", "prefix", "createdAt", "lastUsedAt"]
                                .iter()
                                .map(|f| output::field(k, f))
                                .collect()
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        KeyCommand::Revoke { id } => {
            c.delete(&format!("/api-keys/{}", seg(&id))).await?;
            println!("Key {id} revoked");
        }
    }
    Ok(())
}
