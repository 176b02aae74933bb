//! Host protection on the sandbox bridge, in nftables.
//!
//! Contract: [`protect_host`] makes the server's own table `inet cove_<bridge>` hold exactly
//! [`ruleset`]'s chains, replacing whatever an earlier run left there in one atomic `nft`
//! transaction (idempotent at every start; one table per bridge, so servers with their own
//! bridges never touch each other's rules). Nothing else on the host is changed.
//!
//! - `input`: packets that arrive on the bridge (sandboxes and `RUN --network` build steps,
//!   which use the same bridge) and are addressed to the host — the bridge address, any other
//!   address of the host, broadcasts — are dropped, except replies to connections the host
//!   opened (`ct state established,related`). Services the server offers to sandboxes get
//!   an accept rule here when they exist (none yet).
//! - `forward`: only the hairpin bridge → bridge is dropped, so that routing through the host
//!   cannot undo the isolated bridge ports (sandboxes never reach each other). Everything
//!   else that is forwarded is left as it is: egress is the networking issue's.
//!
//! The table stays in place when the server stops: sandboxes outlive the server, and they
//! must stay fenced off while it is down. [`remove`] deletes it (tests, uninstall).

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The chain that guards the host's own addresses.
pub const INPUT_CHAIN: &str = "input";
/// The chain that keeps routed bridge → bridge traffic out.
pub const FORWARD_CHAIN: &str = "forward";

/// A failed firewall operation.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` could not be run or refused the ruleset.
    #[error("{op} nftables table inet {table}{}", stderr_suffix(.stderr))]
    Nft {
        /// What was attempted (`install`, `remove`).
        op: &'static str,
        /// The table.
        table: String,
        /// What `nft` printed on stderr, if it ran.
        stderr: String,
        /// Cause.
        #[source]
        source: nftables::helper::NftablesError,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() { String::new() } else { format!(": {s}") }
}

impl FirewallError {
    fn nft(op: &'static str, table: &str, source: nftables::helper::NftablesError) -> Self {
        let stderr = match &source {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => stderr.clone(),
            _ => String::new(),
        };
        FirewallError::Nft { op, table: table.to_string(), stderr, source }
    }
}

/// The server's table for `bridge`: `cove_<bridge>` in the `inet` family.
pub fn table_name(bridge: &str) -> String {
    format!("cove_{bridge}")
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table { family: NfFamily::INet, name: Cow::Owned(name.to_string()), handle: None })
}

fn base_chain(table: &str, name: &'static str, hook: NfHook) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(name),
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

fn rule(
    table: &str,
    chain: &'static str,
    comment: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Borrowed(comment)),
        ..Default::default()
    })
}

fn meta_is(key: MetaKey, value: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key })),
        right: Expression::String(Cow::Owned(value.to_string())),
        op: Operator::EQ,
    })
}

fn ct_state_in(states: &[&'static str]) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT { key: Cow::Borrowed("state"), family: None, dir: None })),
        right: Expression::List(states.iter().map(|s| Expression::String(Cow::Borrowed(*s))).collect()),
        op: Operator::IN,
    })
}

/// The whole transaction [`protect_host`] hands to `nft -j`: make sure the table exists,
/// delete it (with every chain and rule of an earlier run), create it again with the rules
/// of the module docs.
pub fn ruleset(bridge: &str) -> Nftables<'static> {
    let t = table_name(bridge);
    let mut b = Batch::new();
    // `add` of an existing table is a no-op, so the `delete` after it cannot fail on a first
    // start; all of it is one transaction, so no packet ever sees the table missing.
    b.add(table(&t));
    b.delete(table(&t));
    b.add(table(&t));
    b.add(base_chain(&t, INPUT_CHAIN, NfHook::Input));
    b.add(rule(
        &t,
        INPUT_CHAIN,
        "replies to connections the host opened into sandboxes",
        vec![meta_is(MetaKey::Iifname, bridge), ct_state_in(&["established", "related"]), Statement::Accept(None)],
    ));
    b.add(rule(
        &t,
        INPUT_CHAIN,
        "sandboxes never reach the host's own services",
        vec![meta_is(MetaKey::Iifname, bridge), Statement::Drop(None)],
    ));
    b.add(base_chain(&t, FORWARD_CHAIN, NfHook::Forward));
    b.add(rule(
        &t,
        FORWARD_CHAIN,
        "sandboxes never reach each other through the host",
        vec![meta_is(MetaKey::Iifname, bridge), meta_is(MetaKey::Oifname, bridge), Statement::Drop(None)],
    ));
    b.to_nftables()
}

/// Installs (or replaces) the bridge's table; see the module docs.
pub async fn protect_host(bridge: &str) -> Result<(), FirewallError> {
    let t = table_name(bridge);
    nftables::helper::apply_ruleset_async(&ruleset(bridge)).await.map_err(|e| FirewallError::nft("install", &t, e))?;
    tracing::info!(bridge, table = %t, "host protected from the sandbox bridge (nftables)");
    Ok(())
}

/// Deletes the bridge's table; a missing table is fine.
pub async fn remove(bridge: &str) -> Result<(), FirewallError> {
    let t = table_name(bridge);
    let mut b = Batch::new();
    b.add(table(&t));
    b.delete(table(&t));
    nftables::helper::apply_ruleset_async(&b.to_nftables()).await.map_err(|e| FirewallError::nft("remove", &t, e))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn commands(bridge: &str) -> Vec<Value> {
        let v = serde_json::to_value(ruleset(bridge)).unwrap();
        v["nftables"].as_array().unwrap().clone()
    }

    /// (chain, statements) of every rule added, in order.
    fn rules(bridge: &str) -> Vec<(String, Value)> {
        commands(bridge)
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object().cloned())
            .map(|r| (r["chain"].as_str().unwrap().to_string(), r["expr"].clone()))
            .collect()
    }

    #[test]
    fn the_table_is_named_after_the_bridge_so_servers_never_share_one() {
        assert_eq!(table_name("cove0"), "cove_cove0");
        assert_ne!(table_name("cvt1x1"), table_name("cvt1x2"));
        for c in commands("cove0") {
            let obj = c.as_object().unwrap().values().next().unwrap();
            let inner = obj.as_object().unwrap().values().next().unwrap();
            let table = inner.get("table").or_else(|| inner.get("name")).unwrap();
            assert_eq!(table, "cove_cove0", "{c}");
            assert_eq!(inner["family"], "inet", "{c}");
        }
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_so_a_restart_leaves_no_duplicates() {
        let c = commands("cove0");
        let verbs: Vec<(&str, &str)> = c
            .iter()
            .map(|o| {
                let (verb, what) = o.as_object().unwrap().iter().next().unwrap();
                (verb.as_str(), what.as_object().unwrap().keys().next().unwrap().as_str())
            })
            .take(3)
            .collect();
        assert_eq!(verbs, [("add", "table"), ("delete", "table"), ("add", "table")]);
        assert_eq!(ruleset("cove0"), ruleset("cove0"), "the same bridge always gets the same rules");
    }

    #[test]
    fn packets_from_the_bridge_to_the_host_are_dropped_except_replies() {
        let input: Vec<Value> = rules("cove0").into_iter().filter(|(c, _)| c == INPUT_CHAIN).map(|(_, e)| e).collect();
        let iif = json!({"match": {"left": {"meta": {"key": "iifname"}}, "right": "cove0", "op": "=="}});
        assert_eq!(input.len(), 2, "{input:?}");
        assert_eq!(
            input[0],
            json!([iif, {"match": {"left": {"ct": {"key": "state"}}, "right": ["established", "related"], "op": "in"}}, {"accept": null}])
        );
        assert_eq!(input[1], json!([iif, {"drop": null}]));
        let chain = commands("cove0").into_iter().find(|c| c["add"]["chain"]["name"] == INPUT_CHAIN).unwrap();
        assert_eq!(chain["add"]["chain"]["hook"], "input");
        assert_eq!(chain["add"]["chain"]["type"], "filter");
        assert_eq!(chain["add"]["chain"]["policy"], "accept", "only bridge traffic is dropped, never the host's own");
    }

    #[test]
    fn routed_traffic_from_one_sandbox_to_another_is_dropped_and_nothing_else_forwarded_is() {
        let fwd: Vec<Value> = rules("cove0").into_iter().filter(|(c, _)| c == FORWARD_CHAIN).map(|(_, e)| e).collect();
        assert_eq!(
            fwd,
            [json!([
                {"match": {"left": {"meta": {"key": "iifname"}}, "right": "cove0", "op": "=="}},
                {"match": {"left": {"meta": {"key": "oifname"}}, "right": "cove0", "op": "=="}},
                {"drop": null}
            ])]
        );
    }

    #[tokio::test]
    async fn the_ruleset_loads_into_the_kernel_twice_and_lists_as_generated() {
        if !rustix::process::geteuid().is_root() || std::process::Command::new("nft").arg("--version").output().is_err()
        {
            eprintln!("skipping: needs root and the nft command");
            return;
        }
        let bridge = format!("cvfw{}", std::process::id() % 100_000);
        protect_host(&bridge).await.unwrap();
        protect_host(&bridge).await.expect("a second start replaces the table");
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "table", "inet", &table_name(&bridge)])
            .output()
            .unwrap();
        remove(&bridge).await.unwrap();
        remove(&bridge).await.expect("removing a missing table is fine");
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = listed["nftables"].as_array().unwrap().iter().filter(|o| o.get("rule").is_some()).count();
        assert_eq!(n, 3, "exactly one copy of each rule after two starts: {listed}");
    }
}
