//! Sandbox networking as the server sees it: the bridge between the runtime's per-sandbox
//! policies ([`cove_runtime::netpolicy`]) and the DNS forwarder ([`crate::dns`]).
//!
//! Contract: the forwarder listens on the bridge's address, port 53 (UDP and TCP); every
//! sandbox's `/etc/resolv.conf` names it. For each query it asks [`SandboxDns::policy`] what
//! the client address may resolve: unknown addresses (build steps) and unrestricted sandboxes
//! everything, `networkBlockAll` sandboxes nothing (the firewall drops their DNS anyway),
//! sandboxes with a domain allow-list only those names, whose A records are added to the
//! sandbox's allowed set in the firewall for their TTL before the answer leaves
//! ([`SandboxDns::allow`]). A CIDR-only allow-list resolves everything: the firewall decides.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use cove_runtime::Runtime;

use crate::dns::{ClientPolicy, DnsClients, DnsError, Forwarder};

/// The runtime's policies, as the forwarder needs them.
#[derive(Debug, Clone)]
pub struct SandboxDns {
    runtime: Arc<Runtime>,
}

#[async_trait::async_trait]
impl DnsClients for SandboxDns {
    fn policy(&self, client: Ipv4Addr) -> ClientPolicy {
        match self.runtime.policy_for_ip(client) {
            None => ClientPolicy::Open,
            Some((_, p)) if p.block_all => ClientPolicy::Blocked,
            Some((_, p)) if !p.allow_domains.is_empty() => ClientPolicy::Domains(p.allow_domains),
            Some(_) => ClientPolicy::Open,
        }
    }

    async fn allow(&self, client: Ipv4Addr, addrs: Vec<Ipv4Addr>, ttl_secs: u32) -> Result<(), String> {
        self.runtime.allow_resolved(client, &addrs, ttl_secs).await.map_err(|e| cove_types::error::chain(&e))
    }
}

/// Starts the sandboxes' DNS forwarder on the bridge address, forwarding to the host's
/// resolvers (`/etc/resolv.conf`, loopback stubs included: the server runs on the host).
pub async fn start_dns(runtime: Arc<Runtime>) -> Result<Forwarder, DnsError> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = crate::dns::upstreams_from_resolv_conf(&resolv);
    let listen = SocketAddr::from((runtime.gateway(), 53));
    tracing::info!(%listen, ?upstreams, "sandbox DNS forwarder");
    Forwarder::start(listen, upstreams, Arc::new(SandboxDns { runtime })).await
}
