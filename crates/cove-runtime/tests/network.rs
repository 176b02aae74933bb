//! Root integration tests of the sandbox firewall with real packets: a bridge and "sandbox"
//! network namespaces wired by hand exactly as `net::attach_hook` wires them (isolated bridge
//! ports), plus an "outside" namespace behind a veth pair of the host (198.18.x/198.19.x,
//! reachable only through the host's routing; it has no route back to the sandboxes, so only
//! masqueraded traffic gets answers). Nothing outside this machine is contacted. Skipped with
//! a message without root or `nft`. The tests run one at a time: they change forwarding
//! sysctls and restore them.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use cove_runtime::firewall::{self, FirewallConfig};
use cove_runtime::net::{self, Cidr};
use cove_runtime::netpolicy::NetPolicy;
use cove_runtime::{Runtime, RuntimeConfig, SandboxSpec};

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
mod common;
use common::{
    IDLE, TestNet, busybox_rootfs, restore_recorded_sysctls, sandbox_exec, sandbox_spec, tear_down, test_runtime_config,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn usable() -> bool {
    if !rustix::process::geteuid().is_root() || Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skipping: needs root and the nft command");
        return false;
    }
    true
}

/// `sh -c`: (success, stdout + stderr).
fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn must(script: &str) {
    let (ok, out) = sh(script);
    assert!(ok, "{script}: {out}");
}

struct Lab {
    cfg: FirewallConfig,
    /// Sandbox namespaces and their addresses.
    sandboxes: Vec<(String, Ipv4Addr)>,
    outside: String,
    outside_veth: String,
    /// The outside namespace's two addresses (198.18.x.2 and 198.19.x.2) and the host's end.
    far_a: Ipv4Addr,
    far_b: Ipv4Addr,
    host_far: Ipv4Addr,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn new(n: u8) -> Lab {
        let pid = std::process::id();
        let x = (pid % 200) as u8 + n;
        let tag = format!("{n}{:04}", pid % 10_000);
        let dir = tempfile::tempdir().unwrap();
        let cfg = FirewallConfig {
            bridge: format!("cvn{tag}"),
            cidr: Cidr::parse(&format!("10.77.{x}.0/24")).unwrap(),
            egress: true,
            allow_private: vec![],
            state_dir: dir.path().to_path_buf(),
        };
        let mut lab = Lab {
            sandboxes: Vec::new(),
            outside: format!("cvn{tag}o"),
            outside_veth: format!("cvn{tag}v"),
            far_a: Ipv4Addr::new(198, 18, x, 2),
            far_b: Ipv4Addr::new(198, 19, x, 2),
            host_far: Ipv4Addr::new(198, 18, x, 1),
            cfg,
            _dir: dir,
        };
        lab.cleanup();
        net::ensure_bridge(&lab.cfg.bridge, &lab.cfg.cidr).await.unwrap();
        let gw = lab.cfg.cidr.gateway();
        for (i, suffix) in ["a", "b"].iter().enumerate() {
            let ns = format!("cvn{tag}{suffix}");
            let ip = Ipv4Addr::from(u32::from(gw) + 1 + i as u32);
            must(&format!(
                "ip netns add {ns} && ip link add {ns} type veth peer name eth0 netns {ns} && \
                 ip link set {ns} master {br} && ip link set dev {ns} type bridge_slave isolated on && \
                 ip link set {ns} up && ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set lo up && \
                 ip -n {ns} link set eth0 up && ip -n {ns} route add default via {gw}",
                br = lab.cfg.bridge
            ));
            lab.sandboxes.push((ns, ip));
        }
        let (o, v) = (&lab.outside, &lab.outside_veth);
        must(&format!(
            "ip netns add {o} && ip link add {v} type veth peer name eth0 netns {o} && \
             ip addr add {h}/24 dev {v} && ip addr add 198.19.{x}.1/24 dev {v} && ip link set {v} up && \
             ip -n {o} addr add {a}/24 dev eth0 && ip -n {o} addr add {b}/24 dev eth0 && \
             ip -n {o} link set lo up && ip -n {o} link set eth0 up && \
             echo 1 > /proc/sys/net/ipv4/conf/{v}/forwarding",
            h = lab.host_far,
            a = lab.far_a,
            b = lab.far_b,
        ));
        lab
    }

    fn ns(&self, i: usize) -> &str {
        &self.sandboxes[i].0
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        self.sandboxes[i].1
    }

    /// One ping from namespace `ns` to `to`.
    fn ping(&self, ns: &str, to: Ipv4Addr) -> bool {
        sh(&format!("ip netns exec {ns} busybox ping -c 1 -W 1 {to}")).0
    }

    /// A TCP connection from namespace `ns` to `to:port` (1 s timeout).
    fn connects(&self, ns: &str, to: Ipv4Addr, port: u16) -> bool {
        sh(&format!("ip netns exec {ns} busybox nc -w 1 {to} {port} </dev/null")).0
    }

    fn table(&self) -> (bool, String) {
        sh(&format!("nft list table inet {}", firewall::table_name(&self.cfg.bridge)))
    }

    fn cleanup(&self) {
        for (ns, _) in &self.sandboxes {
            let _ = sh(&format!("ip netns delete {ns}; ip link delete {ns}"));
        }
        let _ = sh(&format!("ip netns delete {}; ip link delete {}", self.outside, self.outside_veth));
        let _ = sh(&format!("ip link delete {}", self.cfg.bridge));
        let _ = sh(&format!("nft delete table inet {}", firewall::table_name(&self.cfg.bridge)));
        let _ = sh(&format!("nft delete table bridge {}", firewall::table_name(&self.cfg.bridge)));
        restore_recorded_sysctls(&self.cfg.state_dir.join(firewall::STATE_FILE));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_egress_masqueraded_but_never_reach_the_host_or_each_other_unless_linked() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new(1).await;
    let (a, b) = (lab.ns(0).to_string(), lab.ns(1).to_string());
    firewall::install(&lab.cfg, &[], &[]).await.unwrap();
    firewall::install(&lab.cfg, &[], &[]).await.expect("a second start replaces the table");

    let (ok, listed) = lab.table();
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&format!("ip saddr {} oifname != \"{}\" masquerade", lab.cfg.cidr, lab.cfg.bridge)),
        "{listed}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{}/forwarding", lab.cfg.bridge)).unwrap().trim(),
        "1"
    );

    // The outside namespace has no route to the sandboxes: answers prove the masquerade.
    assert!(lab.ping(&a, lab.far_a), "A reaches the outside peer through the host");

    // A host listener on every address: reachable from outside, never from a sandbox.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    assert!(lab.connects(&lab.outside, lab.host_far, port), "control: the listener answers the outside namespace");
    assert!(!lab.connects(&a, lab.cfg.cidr.gateway(), port), "A must not reach the host on the bridge address");
    assert!(!lab.connects(&a, lab.host_far, port), "A must not reach the host on another of its addresses");

    // Sandboxes never reach each other, even with a route via the gateway of their own.
    assert!(!lab.ping(&a, lab.ip(1)), "A must not reach B over the bridge");
    must(&format!("ip -n {a} route add {}/32 via {}", lab.ip(1), lab.cfg.cidr.gateway()));
    assert!(!lab.ping(&a, lab.ip(1)), "A must not reach B routed through the host");

    // Nothing outside opens a connection into a sandbox.
    must(&format!("ip -n {} route add {} via {}", lab.outside, lab.cfg.cidr, lab.host_far));
    assert!(!lab.ping(&lab.outside, lab.ip(0)), "the outside must not reach A");

    // Linked, they talk (both directions); unlinked, not any more.
    firewall::link(&lab.cfg.bridge, lab.ip(0), lab.ip(1)).await.unwrap();
    net::add_peer_route(&a, lab.ip(1), lab.cfg.cidr.gateway()).await.unwrap();
    net::add_peer_route(&b, lab.ip(0), lab.cfg.cidr.gateway()).await.unwrap();
    assert!(lab.ping(&a, lab.ip(1)), "linked A reaches B");
    assert!(lab.ping(&b, lab.ip(0)), "linked B reaches A");
    firewall::unlink(&lab.cfg.bridge, lab.ip(0), lab.ip(1)).await.unwrap();
    firewall::unlink(&lab.cfg.bridge, lab.ip(0), lab.ip(1)).await.expect("unlinking twice is fine");
    assert!(!lab.ping(&a, lab.ip(1)), "unlinked A no longer reaches B");

    // A clean stop with no sandboxes removes the table and what it changed.
    firewall::shutdown(&lab.cfg, false).await.unwrap();
    assert!(!lab.table().0, "the table is gone");
    assert!(!lab.cfg.state_dir.join(firewall::STATE_FILE).exists(), "the sysctls were restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_all_drops_everything_and_allow_lists_let_out_only_their_networks_and_resolved_addresses() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new(2).await;
    let (a, b) = (lab.ns(0).to_string(), lab.ns(1).to_string());
    let block_all = NetPolicy::from_fields(Some(true), None, None).unwrap();
    firewall::install(&lab.cfg, &[(lab.ip(0), block_all.clone())], &[]).await.unwrap();

    // DNS on the gateway: a stand-in forwarder (TCP 53) answers B, never a block_all sandbox.
    let dns = TcpListener::bind((lab.cfg.cidr.gateway(), 53)).unwrap();
    std::thread::spawn(move || for _ in dns.incoming() {});
    assert!(lab.connects(&b, lab.cfg.cidr.gateway(), 53), "an unrestricted sandbox reaches the DNS forwarder");
    assert!(!lab.connects(&a, lab.cfg.cidr.gateway(), 53), "block_all: no DNS either");
    assert!(!lab.ping(&a, lab.far_a), "block_all: nothing leaves");
    assert!(lab.ping(&b, lab.far_a) && lab.ping(&b, lab.far_b), "control: B reaches both outside networks");

    // A CIDR allow-list, applied live: only that network.
    let cidrs = NetPolicy::from_fields(None, Some(&format!("{}/24", lab.far_a)), None).unwrap();
    firewall::set_policy(&lab.cfg.bridge, lab.ip(1), &cidrs).await.unwrap();
    assert!(lab.ping(&b, lab.far_a), "the allowed network is reached");
    assert!(!lab.ping(&b, lab.far_b), "another network is not");

    // A domain allow-list: only what the forwarder resolved, for its TTL.
    let domains = NetPolicy::from_fields(None, None, Some("far.example")).unwrap();
    firewall::set_policy(&lab.cfg.bridge, lab.ip(1), &domains).await.unwrap();
    assert!(!lab.ping(&b, lab.far_b), "nothing resolved yet");
    firewall::allow_resolved(&lab.cfg.bridge, lab.ip(1), &[lab.far_b], 5).await.unwrap();
    firewall::allow_resolved(&lab.cfg.bridge, lab.ip(1), &[lab.far_b], 60).await.expect("again refreshes");
    assert!(lab.ping(&b, lab.far_b), "a resolved address is reached");
    assert!(!lab.ping(&b, lab.far_a), "the previous CIDR list is gone");
    let (_, listed) = lab.table();
    assert!(listed.contains(&format!("{} timeout 1m", lab.far_b)), "{listed}");

    // Cleared policies mean unrestricted again.
    firewall::clear_policy(&lab.cfg.bridge, lab.ip(0)).await.unwrap();
    firewall::clear_policy(&lab.cfg.bridge, lab.ip(0)).await.expect("clearing twice is fine");
    assert!(lab.ping(&a, lab.far_a), "A's block_all is lifted");

    // Sandboxes left at a clean stop: locked down until the next install.
    firewall::shutdown(&lab.cfg, true).await.unwrap();
    assert!(!lab.ping(&a, lab.far_a), "locked down: nothing leaves");
    assert!(!lab.connects(&a, lab.cfg.cidr.gateway(), 53), "locked down: no DNS");
    assert!(lab.table().0, "the lockdown table stays");
    firewall::install(&lab.cfg, &[], &[]).await.unwrap();
    assert!(lab.ping(&a, lab.far_a), "the next start lifts the lockdown");
    firewall::shutdown(&lab.cfg, false).await.unwrap();
    assert!(!lab.table().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_send_under_another_sandboxs_address_to_escape_its_policy() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::new(3).await;
    let (a, b) = (lab.ns(0).to_string(), lab.ns(1).to_string());
    let block_all = NetPolicy::from_fields(Some(true), None, None).unwrap();
    firewall::install(&lab.cfg, &[(lab.ip(0), block_all)], &[]).await.unwrap();
    // The ports listed as the runtime lists them, at once (they go into one netlink batch),
    // with a third whose name the kernel cannot hold: that one alone fails, naming why.
    let bad = "x".repeat(40);
    let (first, second, refused) = tokio::join!(
        firewall::admit_port(&lab.cfg.bridge, lab.ns(0), lab.ip(0)),
        firewall::admit_port(&lab.cfg.bridge, lab.ns(1), lab.ip(1)),
        firewall::admit_port(&lab.cfg.bridge, &bad, Ipv4Addr::from(u32::from(lab.ip(1)) + 1)),
    );
    first.unwrap();
    second.unwrap();
    let refused = cove_types::error::chain(&refused.unwrap_err());
    assert!(
        refused.contains("admit port")
            && refused.contains(&firewall::table_name(&lab.cfg.bridge))
            && refused.contains("longer than the kernel's limit of 15"),
        "the reason is in the error: {refused}"
    );
    assert!(lab.ping(&b, lab.far_a), "control: B's own address goes out");
    assert!(!lab.ping(&a, lab.far_a), "A is block_all");
    // A forges B's address (a sandbox can, with CAP_NET_RAW; here simply as an address).
    must(&format!("ip -n {a} addr add {}/32 dev eth0", lab.ip(1)));
    let forged = sh(&format!("ip netns exec {a} busybox ping -c 1 -W 1 -I {} {}", lab.ip(1), lab.far_a));
    assert!(!forged.0, "a forged source address is dropped where it enters the bridge: {}", forged.1);
    let (_, counters) = sh(&format!("nft list chain bridge {} prerouting", firewall::table_name(&lab.cfg.bridge)));
    assert!(counters.contains("drop"), "{counters}");
    // Taken off the list at teardown, the port is no longer held to an address (nothing else
    // of ours then uses it).
    firewall::forget_port(&lab.cfg.bridge, lab.ns(0), lab.ip(0)).await.unwrap();
    firewall::forget_port(&lab.cfg.bridge, lab.ns(0), lab.ip(0)).await.expect("forgetting twice is fine");
    let (_, set) = sh(&format!("nft list set bridge {} ports", firewall::table_name(&lab.cfg.bridge)));
    assert!(!set.contains(lab.ns(0)) && set.contains(lab.ns(1)), "{set}");
    firewall::shutdown(&lab.cfg, false).await.unwrap();
    let (exists, _) = sh(&format!("nft list table bridge {}", firewall::table_name(&lab.cfg.bridge)));
    assert!(!exists, "a clean stop with no sandboxes removes the anti-spoofing table too");
}

/// Removes what a test runtime leaves (containers, mounts, netns, bridge, table, sysctls).
struct RuntimeLab {
    rt: Option<Runtime>,
    cfg: RuntimeConfig,
    lower: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RuntimeLab {
    fn drop(&mut self) {
        tear_down(&mut self.rt, &self.cfg);
    }
}

impl RuntimeLab {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec { memory_mib: 64, disk_mib: 16, pids: 32, ..sandbox_spec(&self.lower, IDLE) }
    }

    async fn exec(&self, id: &str, script: &str) -> (bool, String) {
        sandbox_exec(&self.cfg, id, script).await
    }

    fn nft(&self, what: &str) -> String {
        sh(&format!("nft list {what}")).1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_sandboxes_reach_each_other_by_name_across_restarts_and_destroy_forgets_links_and_policies() {
    if !usable() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    busybox_rootfs(&lower, &[]);
    let cfg = test_runtime_config(
        dir.path(),
        TestNet {
            bridge: format!("cvnr{:05}", pid % 100_000),
            cidr: format!("10.78.{}.0/24", pid % 250),
            cgroup_parent: format!("/cove-nettest-{pid}"),
            name_prefix: format!("nr{:04}", pid % 10_000),
        },
    );
    let rt = Runtime::new(cfg.clone()).await.unwrap();
    let lab = RuntimeLab { rt: Some(rt), cfg: cfg.clone(), lower, _dir: dir };
    let table = format!("table inet {}", firewall::table_name(&cfg.bridge));
    let (a, b) = (lab.spec(), lab.spec());
    lab.rt().create(&a).await.unwrap();
    lab.rt().create(&b).await.unwrap();
    let (ip_a, ip_b) = (lab.rt().ip(&a.id).unwrap(), lab.rt().ip(&b.id).unwrap());
    let name_b: String = b.id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    let name_a: String = a.id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();

    let (_, resolv) = lab.exec(&a.id, "cat /etc/resolv.conf").await;
    assert!(resolv.starts_with(&format!("nameserver {}\n", lab.rt().gateway())), "{resolv}");
    assert!(!lab.exec(&a.id, &format!("ping -c 1 -W 1 {ip_b}")).await.0, "not linked yet");

    lab.rt().link(&a.id, &b.id).await.unwrap();
    lab.rt().link(&b.id, &a.id).await.expect("linking again is fine");
    let (ok, out) = lab.exec(&a.id, &format!("ping -c 1 -W 1 {name_b}")).await;
    assert!(ok, "A reaches B by its name: {out}");
    let (ok, out) = lab.exec(&b.id, &format!("ping -c 1 -W 1 {name_a}")).await;
    assert!(ok, "B reaches A by its name: {out}");
    let (_, hosts) = lab.exec(&a.id, "cat /etc/hosts").await;
    assert_eq!(hosts.matches(&name_b).count(), 1, "one line for B: {hosts}");

    // B starts again in a new namespace: its route to A comes back with it.
    lab.rt().stop(&b.id, Duration::ZERO).await.unwrap();
    lab.rt().start(&b.id).await.unwrap();
    let (ok, out) = lab.exec(&b.id, &format!("ping -c 1 -W 1 {name_a}")).await;
    assert!(ok, "after a restart B still reaches A: {out}");

    // Policies are recorded, answered from memory by address, and in the firewall.
    let block = NetPolicy::from_fields(Some(true), None, None).unwrap();
    lab.rt().set_network_policy(&a.id, block.clone()).await.unwrap();
    assert_eq!(lab.rt().network_policy(&a.id), Some(block.clone()));
    assert_eq!(lab.rt().policy_for_ip(ip_a), Some((a.id.clone(), block)));
    assert_eq!(lab.rt().policy_for_ip(ip_b).map(|(_, p)| p), Some(NetPolicy::default()));
    assert_eq!(lab.rt().policy_for_ip(Ipv4Addr::new(192, 0, 2, 200)), None);
    let chain = firewall::policy_chain(ip_a);
    assert!(lab.nft(&table).contains(&format!("{ip_a} : jump {chain}")), "{}", lab.nft(&table));
    assert!(lab.exec(&a.id, &format!("ping -c 1 -W 1 {name_b}")).await.0, "linked pairs pass before any policy");

    // A new runtime over the same directories reinstalls policies and links in one go.
    let rt = Runtime::new(cfg.clone()).await.unwrap();
    assert!(lab.nft(&table).contains(&format!("{ip_a} : jump {chain}")));
    assert!(rt.policy_for_ip(ip_a).is_some_and(|(_, p)| p.block_all));

    // Destroying B removes its link everywhere; A's policy goes with A.
    rt.destroy(&b.id).await.unwrap();
    let (_, hosts) = lab.exec(&a.id, "cat /etc/hosts").await;
    assert!(!hosts.contains(&name_b), "B's line is gone from A's hosts: {hosts}");
    assert!(!lab.nft(&format!("set inet {} links", firewall::table_name(&cfg.bridge))).contains(&ip_b.to_string()));

    // A still runs: a clean stop locks the bridge down; without sandboxes it removes the table.
    rt.shutdown().await;
    assert!(lab.nft(&table).contains("server down"), "{}", lab.nft(&table));
    rt.destroy(&a.id).await.unwrap();
    assert!(!lab.nft(&table).contains(&chain), "A's policy chain is gone");
    rt.shutdown().await;
    assert!(!sh(&format!("nft list {table}")).0, "no sandboxes: the table is removed");
    assert!(!cfg.root.join(firewall::STATE_FILE).exists(), "sysctls restored");
    restore_recorded_sysctls(&cfg.root.join(firewall::STATE_FILE));
}
