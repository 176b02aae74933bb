//! Sandbox networking: one bridge with the first address of the CIDR, and per sandbox a named
//! network namespace (made by runc inside the sandbox's user namespace) with a veth pair whose
//! host end is an *isolated* bridge port (sandboxes reach neither each other nor, past
//! [`crate::firewall`], the host) and whose peer is `eth0` inside.
//! Egress is routed and masqueraded by the host ([`crate::firewall`]); linked sandboxes reach
//! each other through the gateway (a `/32` route each, [`add_peer_route`]), since the isolated
//! ports drop what they would send each other directly.
//!
//! Sandboxes are wired by [`wire`], over rtnetlink from the server, between `runc create` and
//! the release of the container's process: no `ip` process and no hook (they cost a cold
//! create ~20 ms and ~15 ms of CPU). One-shot build steps, which run `runc run` in the
//! foreground, are wired the same way by a `createRuntime` hook ([`attach_hook`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::cmd::{self, CommandError};

/// Where `ip netns add` creates its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A failed network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The CIDR is not `a.b.c.d/n` with a usable prefix.
    #[error("invalid IPv4 CIDR {cidr:?} (want e.g. 10.213.0.0/24, prefix 8..=30)")]
    InvalidCidr {
        /// The text.
        cidr: String,
    },
    /// Creating or configuring the bridge failed.
    #[error("set up bridge {bridge}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// Adding or removing a sandbox's route to a linked peer failed.
    #[error("{op} route to {peer} in network namespace {netns}")]
    PeerRoute {
        /// `add` or `delete`.
        op: &'static str,
        /// The namespace name.
        netns: String,
        /// The peer's address.
        peer: Ipv4Addr,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// Deleting the namespace failed.
    #[error("delete network namespace {netns}")]
    DeleteNamespace {
        /// The namespace name.
        netns: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of wiring a sandbox's network ([`wire`]) failed.
    #[error("wire network namespace {netns}: {step}")]
    Wire {
        /// The namespace name.
        netns: String,
        /// What was being done.
        step: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An IPv4 network: `.1` is the bridge, the rest (minus broadcast) are for sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; host bits are cleared.
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::InvalidCidr { cidr: s.into() };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr { network: u32::from(addr) & mask, prefix })
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's address (network + 1), also the sandboxes' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// Whether `ip` is a sandbox address of this network.
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.network + 2 && v < self.broadcast()
    }

    fn broadcast(&self) -> u32 {
        self.network | (u32::MAX >> self.prefix)
    }

    /// The lowest sandbox address not in `used`.
    pub fn first_free(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        (self.network + 2..self.broadcast()).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// Path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether a network interface exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge if missing, gives it the gateway address and brings it up (idempotent).
pub async fn ensure_bridge(bridge: &str, cidr: &Cidr) -> Result<(), NetError> {
    let err = |source| NetError::Bridge { bridge: bridge.into(), source };
    if !link_exists(bridge) {
        match cmd::run("ip", &["link", "add", bridge, "type", "bridge"], None).await {
            Ok(_) => {}
            // Lost a race with another runtime creating the same bridge.
            Err(e) if e.stderr().contains("File exists") => {}
            Err(e) => return Err(err(e)),
        }
        tracing::info!(bridge, %cidr, "created bridge");
    }
    let addr = format!("{}/{}", cidr.gateway(), cidr.prefix());
    cmd::run("ip", &["addr", "replace", &addr, "dev", bridge], None).await.map_err(err)?;
    cmd::run("ip", &["link", "set", bridge, "up"], None).await.map_err(err)?;
    Ok(())
}

/// The OCI `createRuntime` hook that wires a sandbox's network: runc made the network
/// namespace (inside the sandbox's user namespace, so that sysfs and raw sockets work
/// there); the hook, run by runc on the host before anything in the sandbox starts, reads the
/// container's pid from the state on its stdin, names the namespace `netns` (`ip netns
/// attach`), adds the veth pair with its host end `veth` as an isolated port of `bridge`, and
/// gives `eth0` `ip` and a default route via the bridge. Failures fail the create; the
/// runtime's teardown removes what was made.
pub fn attach_hook(netns: &str, veth: &str, bridge: &str, ip: Ipv4Addr, cidr: &Cidr) -> serde_json::Value {
    attach_hook_with_peers(netns, veth, bridge, ip, cidr, &[])
}

/// [`attach_hook`] that also adds a `/32` route via the gateway to each linked `peer`.
pub fn attach_hook_with_peers(
    netns: &str,
    veth: &str,
    bridge: &str,
    ip: Ipv4Addr,
    cidr: &Cidr,
    peers: &[Ipv4Addr],
) -> serde_json::Value {
    let gw = cidr.gateway();
    let routes: String = peers.iter().map(|p| format!("route replace {p}/32 via {gw}\n")).collect();
    // The port is listed for anti-spoofing (`firewall::port_nft_lines`) before it exists.
    let ports = crate::firewall::port_nft_lines(bridge, veth, ip);
    let script = format!(
        "set -e\n\
         pid=$(sed -n 's/.*\"pid\": *\\([0-9][0-9]*\\).*/\\1/p')\n\
         [ -n \"$pid\" ]\n\
         nft -f - <<EOF\n\
         {ports}\
         EOF\n\
         ip netns attach {netns} \"$pid\"\n\
         ip -batch - <<EOF\n\
         link add {veth} type veth peer name eth0 netns {netns}\n\
         link set {veth} master {bridge}\n\
         link set dev {veth} type bridge_slave isolated on\n\
         link set {veth} up\n\
         EOF\n\
         ip -n {netns} -batch - <<EOF\n\
         addr add {ip}/{prefix} dev eth0\n\
         link set lo up\n\
         link set eth0 up\n\
         route add default via {gw}\n\
         {routes}\
         EOF\n",
        prefix = cidr.prefix(),
    );
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", script],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "timeout": 10,
    })
}

/// Routes `peer` (a linked sandbox) via the gateway inside the namespace (idempotent).
pub async fn add_peer_route(netns: &str, peer: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), NetError> {
    let (dst, gw) = (format!("{peer}/32"), gateway.to_string());
    cmd::run("ip", &["-n", netns, "route", "replace", &dst, "via", &gw], None)
        .await
        .map(drop)
        .map_err(|source| NetError::PeerRoute { op: "add", netns: netns.into(), peer, source })
}

/// Removes the route to `peer`; a missing route or namespace is fine.
pub async fn delete_peer_route(netns: &str, peer: Ipv4Addr) -> Result<(), NetError> {
    if !netns_path(netns).exists() {
        return Ok(());
    }
    let dst = format!("{peer}/32");
    match cmd::run("ip", &["-n", netns, "route", "del", &dst], None).await {
        Ok(_) => Ok(()),
        Err(e) if e.stderr().contains("No such process") || e.stderr().contains("Cannot find") => Ok(()),
        Err(source) => Err(NetError::PeerRoute { op: "delete", netns: netns.into(), peer, source }),
    }
}

/// Deletes the namespace (which destroys `eth0` and with it the veth pair) and any stray host
/// veth of that name. Missing pieces are fine. As `ip netns delete` does, in-process: the
/// name's bind mount is detached and the file removed.
pub async fn teardown(netns: &str, veth: &str) -> Result<(), NetError> {
    let path = netns_path(netns);
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    match rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(NetError::DeleteNamespace { netns: netns.into(), source: e.into() }),
    }
    match std::fs::remove_file(&path) {
        Err(e) if !gone(&e) => return Err(NetError::DeleteNamespace { netns: netns.into(), source: e }),
        _ => {}
    }
    if link_exists(veth) {
        let _ = cmd::run("ip", &["link", "delete", veth], None).await;
    }
    Ok(())
}

/// What [`wire`] connects: the sandbox's network namespace, named `netns`; its host end
/// `veth`, an isolated port of `bridge`; and `eth0` inside, with `ip` in `cidr`, a default
/// route via the gateway and a `/32` route via it to each linked peer.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Name under [`NETNS_DIR`].
    pub netns: String,
    /// Host end of the veth pair.
    pub veth: String,
    /// The bridge.
    pub bridge: String,
    /// The sandbox's address.
    pub ip: Ipv4Addr,
    /// The sandbox network.
    pub cidr: Cidr,
    /// Linked sandboxes' addresses.
    pub peers: Vec<Ipv4Addr>,
}

/// Wires the network namespace of process `pid` (a container's init, created and waiting to
/// start: nothing in the sandbox runs yet) as [`Wiring`] says, over rtnetlink from this
/// process: no `ip` process, no hook. The steps run on a thread of their own, because the
/// last of them moves that thread into the sandbox's namespace (a netlink socket opened
/// there configures it). What was made is left for [`teardown`] on failure.
pub async fn wire(wiring: Wiring, pid: u32) -> Result<(), NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let netns = wiring.netns.clone();
    std::thread::Builder::new()
        .name("cove-net-wire".into())
        .spawn(move || {
            let _ = tx.send(wire_on_this_thread(&wiring, pid));
        })
        .map_err(wire_err(&netns, "start a thread"))?;
    rx.await.unwrap_or_else(|_| Err(wire_err(&netns, "finish")("the wiring thread panicked")))
}

fn wire_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    netns: &str,
    step: &'static str,
) -> impl FnOnce(E) -> NetError + use<E> {
    let netns = netns.to_string();
    move |e| NetError::Wire { netns, step, source: e.into() }
}

fn wire_on_this_thread(w: &Wiring, pid: u32) -> Result<(), NetError> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
    use std::os::fd::{AsFd, AsRawFd};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(wire_err(&w.netns, "start a runtime"))?;
    attach_netns(&w.netns, pid).map_err(wire_err(&w.netns, "name the namespace"))?;
    let ns = std::fs::File::open(netns_path(&w.netns)).map_err(wire_err(&w.netns, "open the namespace"))?;
    let e = |step| wire_err::<rtnetlink::Error>(&w.netns, step);

    rt.block_on(async {
        let (conn, h, _) = rtnetlink::new_connection().map_err(wire_err(&w.netns, "open netlink"))?;
        tokio::spawn(conn);
        let bridge = index_of(&h, &w.bridge).await.map_err(wire_err(&w.netns, "find the bridge"))?;
        // The pair is made with `eth0` already in the sandbox's namespace (no name clash with
        // the host's own eth0), the host end a port of the bridge but down until isolated.
        let peer = LinkMessageBuilder::<LinkUnspec>::new().name("eth0").setns_by_fd(ns.as_raw_fd()).build();
        let pair =
            LinkVeth::new(&w.veth, "eth0").set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).controller(bridge);
        h.link().add(pair.build()).execute().await.map_err(e("add the veth pair"))?;
        let port = index_of(&h, &w.veth).await.map_err(wire_err(&w.netns, "find the veth"))?;
        h.link()
            .set_port(LinkBridgePort::new(port).isolated(true).build())
            .execute()
            .await
            .map_err(e("isolate the bridge port"))?;
        h.link().set(LinkUnspec::new_with_index(port).up().build()).execute().await.map_err(e("bring the port up"))?;
        Ok::<_, NetError>(())
    })?;

    rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .map_err(|e| wire_err(&w.netns, "enter the namespace")(std::io::Error::from(e)))?;
    let gw = w.cidr.gateway();
    rt.block_on(async {
        let (conn, h, _) = rtnetlink::new_connection().map_err(wire_err(&w.netns, "open netlink inside"))?;
        tokio::spawn(conn);
        let eth0 = index_of(&h, "eth0").await.map_err(wire_err(&w.netns, "find eth0"))?;
        let lo = index_of(&h, "lo").await.map_err(wire_err(&w.netns, "find lo"))?;
        h.address()
            .add(eth0, std::net::IpAddr::V4(w.ip), w.cidr.prefix())
            .execute()
            .await
            .map_err(e("address eth0"))?;
        for link in [lo, eth0] {
            h.link()
                .set(LinkUnspec::new_with_index(link).up().build())
                .execute()
                .await
                .map_err(e("bring a link up"))?;
        }
        h.route()
            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
            .execute()
            .await
            .map_err(e("add the default route"))?;
        for p in &w.peers {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(*p, 32).gateway(gw).build();
            h.route().add(route).replace().execute().await.map_err(e("route a linked peer"))?;
        }
        Ok::<_, NetError>(())
    })
}

/// The index of link `name` in the namespace of `h`'s socket.
async fn index_of(h: &rtnetlink::Handle, name: &str) -> Result<u32, std::io::Error> {
    use futures_util::TryStreamExt;
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no link {name}"))),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Names the network namespace of `pid` as `ip netns attach` does: [`NETNS_DIR`] a shared
/// mount (so that a name removed later disappears from every mount namespace that copied
/// it), an empty file made there (never through a link), and the namespace bind-mounted on it.
fn attach_netns(name: &str, pid: u32) -> std::io::Result<()> {
    use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
    use std::os::unix::fs::OpenOptionsExt;
    static SHARED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if SHARED.get().is_none() {
        std::fs::create_dir_all(NETNS_DIR)?;
        let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
        if let Err(rustix::io::Errno::INVAL) = mount_change(NETNS_DIR, shared) {
            rustix::mount::mount_bind_recursive(NETNS_DIR, NETNS_DIR)?;
            mount_change(NETNS_DIR, shared)?;
        }
        let _ = SHARED.set(());
    }
    let path = netns_path(name);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o000).custom_flags(libc::O_NOFOLLOW).open(&path)?;
    if let Err(e) = mount_bind(format!("/proc/{pid}/ns/net").as_str(), &path) {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_gives_the_bridge_dot_one_and_sandboxes_the_rest() {
        let c = Cidr::parse("10.213.0.0/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(c.first_free(&[]), Some(Ipv4Addr::new(10, 213, 0, 2)));
        assert!(c.contains_host(Ipv4Addr::new(10, 213, 0, 254)));
        assert!(!c.contains_host(Ipv4Addr::new(10, 213, 0, 255)));
        assert!(!c.contains_host(Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(c.to_string(), "10.213.0.0/24");
    }

    #[test]
    fn allocation_takes_the_lowest_address_nobody_uses() {
        let c = Cidr::parse("10.9.9.0/24").unwrap();
        let used = [Ipv4Addr::new(10, 9, 9, 2), Ipv4Addr::new(10, 9, 9, 4)];
        assert_eq!(c.first_free(&used), Some(Ipv4Addr::new(10, 9, 9, 3)));
    }

    #[test]
    fn a_full_network_has_no_free_address() {
        let c = Cidr::parse("10.0.0.0/30").unwrap();
        assert_eq!(c.first_free(&[Ipv4Addr::new(10, 0, 0, 2)]), None);
    }

    #[test]
    fn the_hook_routes_linked_peers_via_the_gateway() {
        let c = Cidr::parse("10.9.9.0/24").unwrap();
        let hook =
            attach_hook_with_peers("ns", "ns", "br", Ipv4Addr::new(10, 9, 9, 2), &c, &[Ipv4Addr::new(10, 9, 9, 7)]);
        let script = hook["args"][2].as_str().unwrap();
        assert!(
            script.contains("route add default via 10.9.9.1\nroute replace 10.9.9.7/32 via 10.9.9.1\nEOF\n"),
            "{script}"
        );
        let plain = attach_hook("ns", "ns", "br", Ipv4Addr::new(10, 9, 9, 2), &c);
        assert!(!plain["args"][2].as_str().unwrap().contains("/32"));
    }

    #[test]
    fn malformed_cidrs_are_rejected_and_host_bits_cleared() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/31", "x/24", "10.0.0/24"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse("10.1.2.77/24").unwrap().to_string(), "10.1.2.0/24");
    }
}
