//! `cove node …`: the installation's nodes (admin key; a server with `--database-url`).

use clap::Subcommand;
use serde_json::{Value, json};

use super::Global;
use super::client::{Client, seg};
use super::output::{self, Format};

/// `cove node …`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the nodes: state, region, address, capacity, heartbeat age, sandboxes.
    List,
    /// Stop a node from taking new sandboxes; those it has stay and keep running.
    Drain {
        /// Node id (see `cove node list`).
        id: String,
    },
    /// Let a drained node take new sandboxes again.
    Undrain {
        /// Node id.
        id: String,
    },
}

pub async fn run(c: Client, cmd: NodeCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List => {
            let nodes: Value = c.get_json("/nodes").await?;
            let items = nodes.as_array().cloned().unwrap_or_default();
            match g.format {
                Format::Json => output::json(&items),
                Format::Table => output::table(
                    &["ID", "STATE", "REGION", "ADDRESS", "CPUS", "MEMORY", "DISK", "GPUS", "HEARTBEAT", "SANDBOXES"],
                    &items.iter().map(row).collect::<Vec<_>>(),
                ),
            }
        }
        NodeCommand::Drain { id } => change(&c, &id, "drain", g).await?,
        NodeCommand::Undrain { id } => change(&c, &id, "undrain", g).await?,
    }
    Ok(())
}

async fn change(c: &Client, id: &str, verb: &str, g: &Global) -> anyhow::Result<()> {
    let n: Value = c.post_json(&format!("/nodes/{}/{verb}", seg(id)), &json!({})).await?;
    match g.format {
        Format::Json => output::json(&n),
        Format::Table => println!("Node {id} is {}", output::field(&n, "state")),
    }
    Ok(())
}

/// One table row; this node's id is marked with `*`.
fn row(n: &Value) -> Vec<String> {
    let mib = |f: &str| n[f].as_i64().map_or("-".into(), |v| format!("{:.1} GiB", v as f64 / 1024.0));
    let mut id = output::field(n, "id");
    if n["thisNode"].as_bool() == Some(true) {
        id.push('*');
    }
    vec![
        id,
        output::field(n, "state"),
        output::field(n, "region"),
        output::field(n, "address"),
        output::field(n, "cpus"),
        mib("memoryMib"),
        mib("diskMib"),
        output::field(n, "gpus"),
        n["heartbeatAgeMs"].as_i64().map_or("-".into(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0)),
        output::field(n, "sandboxes"),
    ]
}
