//! `cove sandbox …`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Global;
use super::client::{Client, seg};
use super::output::{self, Format};

/// `cove sandbox …`.
#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Create a sandbox from a snapshot (the server's default snapshot when none is given).
    Create(CreateArgs),
    /// List sandboxes.
    List,
    /// Show one sandbox: state, resources, its IP and network policy.
    Get {
        /// Sandbox id or name.
        id: String,
    },
    /// Run a command in a sandbox: `cove sandbox exec ID -- CMD ARGS…`; exits with its code.
    Exec {
        /// Sandbox id or name.
        id: String,
        /// The command (run through a shell, as the SDKs do).
        #[arg(required = true, last = true)]
        command: Vec<String>,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
    },
    /// Delete a sandbox.
    Delete {
        /// Sandbox id or name.
        id: String,
    },
}

/// `cove sandbox create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Snapshot name or id.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Sandbox name.
    #[arg(long)]
    pub name: Option<String>,
    /// `KEY=VALUE` environment (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// `KEY=VALUE` label (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Block all outbound network traffic.
    #[arg(long)]
    pub network_block_all: bool,
    /// Allow outbound traffic only to these comma-separated IPv4 CIDRs.
    #[arg(long)]
    pub network_allow_list: Option<String>,
    /// Allow outbound traffic only to these comma-separated domains (`*.example.org` too).
    #[arg(long)]
    pub domain_allow_list: Option<String>,
    /// A sandbox (id or name) that this one may reach, and that may reach it, by name.
    #[arg(long)]
    pub linked_sandbox: Option<String>,
    /// Container-engine mode (Docker-in-Docker, no privileged container): `true` or `false`,
    /// over what the snapshot's image says (on for docker:*-dind and `--profile docker`
    /// images). Sets the label dev.cove.container-engine.
    #[arg(long, value_name = "BOOL")]
    pub docker_in_docker: Option<bool>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn run(c: Client, cmd: SandboxCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        SandboxCommand::Create(a) => {
            let env: serde_json::Map<String, Value> = a.env.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let mut labels: serde_json::Map<String, Value> = a.labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
            if let Some(on) = a.docker_in_docker {
                let (key, value) = (cove_types::sandbox::ENGINE_LABEL, on.to_string());
                if labels.get(key).is_some_and(|v| v != &json!(value)) {
                    anyhow::bail!("--docker-in-docker {on} contradicts --label {key}={}", labels[key]);
                }
                labels.insert(key.into(), json!(value));
            }
            let mut body = json!({ "snapshot": a.snapshot, "name": a.name, "env": env, "labels": labels });
            if a.network_block_all {
                body["networkBlockAll"] = json!(true);
            }
            for (key, v) in [
                ("networkAllowList", a.network_allow_list),
                ("domainAllowList", a.domain_allow_list),
                ("linkedSandbox", a.linked_sandbox),
            ] {
                if let Some(v) = v {
                    body[key] = json!(v);
                }
            }
            let s: Value = c.post_json("/sandbox", &body).await?;
            match g.format {
                Format::Json => output::json(&s),
                Format::Table => print(std::slice::from_ref(&s)),
            }
            Ok(())
        }
        SandboxCommand::List => {
            let page: Value = c.get_json("/sandbox").await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            match g.format {
                Format::Json => output::json(&items),
                Format::Table => print(&items),
            }
            Ok(())
        }
        SandboxCommand::Get { id } => {
            let s: Value = c.get_json(&format!("/sandbox/{}", seg(&id))).await?;
            match g.format {
                Format::Json => output::json(&s),
                Format::Table => print!("{}", detail(&s)),
            }
            Ok(())
        }
        SandboxCommand::Exec { id, command, cwd } => {
            let s: Value = c.get_json(&format!("/sandbox/{}", seg(&id))).await?;
            let sid = s["id"].as_str().context("the sandbox has no id")?;
            let toolbox = s["toolboxProxyUrl"].as_str().context("the sandbox has no toolbox URL")?;
            let url = format!("{}/{sid}/process/execute", toolbox.trim_end_matches('/'));
            let body = json!({ "command": shell_join(&command), "cwd": cwd });
            let resp =
                c.send(c.request_url(reqwest::Method::POST, &url).json(&body), "POST", "process/execute").await?;
            let r: Value = resp.json().await.context("read the command's result")?;
            let code = r["exitCode"].as_i64().unwrap_or(1);
            match g.format {
                Format::Json => output::json(&r),
                Format::Table => print!("{}", r["result"].as_str().unwrap_or_default()),
            }
            if code != 0 {
                std::process::exit(i32::try_from(code).unwrap_or(1).clamp(1, 255));
            }
            Ok(())
        }
        SandboxCommand::Delete { id } => {
            c.delete(&format!("/sandbox/{}", seg(&id))).await?;
            println!("Sandbox {id} deleted");
            Ok(())
        }
    }
}

fn print(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                output::field(s, "id"),
                output::field(s, "name"),
                output::field(s, "state"),
                output::field(s, "snapshot"),
                format!("{}/{}/{}", output::field(s, "cpu"), output::field(s, "memory"), output::field(s, "disk")),
                output::field(s, "target"),
            ]
        })
        .collect();
    output::table(&["ID", "NAME", "STATE", "SNAPSHOT", "CPU/MEM/DISK", "REGION"], &rows);
}

/// `cove sandbox get`: one `Key: value` line per property, the network last.
fn detail(s: &Value) -> String {
    let or = |key: &str, none: &str| {
        let v = output::field(s, key);
        if v.is_empty() { none.to_string() } else { v }
    };
    let egress = if s["networkBlockAll"].as_bool() == Some(true) {
        "blocked (networkBlockAll)".to_string()
    } else {
        let lists: Vec<String> = [("CIDRs", "networkAllowList"), ("domains", "domainAllowList")]
            .iter()
            .filter(|(_, k)| s[*k].as_str().is_some_and(|v| !v.is_empty()))
            .map(|(what, k)| format!("{what} {}", output::field(s, k)))
            .collect();
        if lists.is_empty() { "unrestricted".to_string() } else { format!("only {}", lists.join(" and ")) }
    };
    let rows = [
        ("ID", output::field(s, "id")),
        ("Name", output::field(s, "name")),
        ("State", output::field(s, "state")),
        ("Error", or("errorReason", "-")),
        ("Snapshot", or("snapshot", "-")),
        ("Region", output::field(s, "target")),
        (
            "CPU/Memory/Disk",
            format!(
                "{} / {} GiB / {} GiB",
                output::field(s, "cpu"),
                output::field(s, "memory"),
                output::field(s, "disk")
            ),
        ),
        ("Public", output::field(s, "public")),
        ("IP", or("ip", "-")),
        ("Egress", egress),
        ("Linked sandbox", or("linkedSandboxId", "-")),
    ];
    rows.iter().map(|(k, v)| format!("{:<16}{v}\n", format!("{k}:"))).collect()
}

/// Joins argv into one shell command line, quoting what needs it.
fn shell_join(args: &[String]) -> String {
    if args.len() == 1 {
        return args[0].clone(); // `cove sandbox exec ID -- "echo a | wc"`: already a command line
    }
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_shows_the_ip_and_the_policy_in_words() {
        let s = json!({"id": "i", "name": "n", "state": "started", "cpu": 1, "memory": 1, "disk": 3, "target": "us",
                       "public": false, "ip": "10.213.0.5", "networkBlockAll": false,
                       "networkAllowList": "10.0.0.0/8", "domainAllowList": "pypi.org"});
        let d = detail(&s);
        assert!(d.contains("IP:             10.213.0.5"), "{d}");
        assert!(d.contains("Egress:         only CIDRs 10.0.0.0/8 and domains pypi.org"), "{d}");
        let blocked = detail(&json!({"networkBlockAll": true}));
        assert!(blocked.contains("Egress:         blocked (networkBlockAll)"), "{blocked}");
        assert!(detail(&json!({})).contains("Egress:         unrestricted"));
    }

    #[test]
    fn argv_is_quoted_for_the_shell_and_a_single_argument_is_a_command_line() {
        assert_eq!(shell_join(&["echo a | wc -c".into()]), "echo a | wc -c");
        assert_eq!(shell_join(&["echo".into(), "it's".into(), "x y".into()]), r"echo 'it'\''s' 'x y'");
    }
}
