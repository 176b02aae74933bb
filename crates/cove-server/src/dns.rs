//! The sandboxes' DNS forwarder: a small UDP + TCP server on the bridge gateway (port 53)
//! that relays queries to the host's resolvers and enforces per-sandbox domain allow-lists.
//!
//! Contract:
//! - Every query is parsed with `hickory-proto`. Unparseable → FORMERR when its id can be
//!   read (never an answer to a message that is itself a response), more than one question →
//!   FORMERR, an opcode other than QUERY → NOTIMP.
//! - [`DnsClients::policy`] decides per client address: [`ClientPolicy::Open`] forwards,
//!   [`ClientPolicy::Blocked`] gets REFUSED, [`ClientPolicy::Domains`] gets NXDOMAIN for names
//!   outside its list, answered here without asking anyone. Clients that are not IPv4 are
//!   treated as blocked.
//! - Forwarding: upstreams in order, a fresh socket and a random id per attempt, 2 s each;
//!   over UDP for UDP clients (retried over TCP when the answer is truncated; the full answer
//!   is relayed when it fits the client's UDP size, else the truncated one so it asks again
//!   over TCP), over TCP for TCP clients. Only an answer with our id and the same question is
//!   taken; SERVFAIL/REFUSED from one upstream moves on to the next. The upstream's bytes are
//!   relayed as they came (EDNS included) with the client's id; no upstream answer → SERVFAIL.
//! - For a `Domains` client, every A record of the answer section (CNAME chains included: they
//!   all answer the allowed question) is passed to [`DnsClients::allow`] with the smallest
//!   TTL (at least 1 s) *before* the answer leaves; if that fails the client gets SERVFAIL, so
//!   no address is handed out that the firewall would not let through.
//! - Bounded: 256 queries in flight (UDP queries above that are dropped), 64 TCP connections
//!   (10 s idle timeout, messages ≤ 65535 bytes by framing), UDP answers from upstreams over
//!   4096 bytes are dropped. Dropping the [`Forwarder`] stops its listeners and every task.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long one upstream gets to answer one attempt (UDP or TCP).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries being answered at once, UDP and TCP together.
const MAX_IN_FLIGHT: usize = 256;
/// Open TCP connections from clients.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP client connection that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Larger UDP answers from an upstream are dropped.
const MAX_UDP_ANSWER: usize = 4096;
/// Receive buffer for client UDP queries (a longer datagram is cut, then fails to parse).
const MAX_UDP_QUERY: usize = 4096;
/// How long the firewall gets to admit an answer's addresses.
const ALLOW_TIMEOUT: Duration = Duration::from_secs(5);
/// The UDP payload size we advertise in locally made answers.
const LOCAL_EDNS_PAYLOAD: u16 = 1232;

/// What the forwarder does for one client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPolicy {
    /// Forward everything (unknown clients, e.g. build steps, and unrestricted sandboxes).
    Open,
    /// Answer REFUSED to everything.
    Blocked,
    /// Only these names (patterns: "example.com" exact, "*.example.org" strictly below
    /// example.org; lowercase, no trailing dot). Others get NXDOMAIN, answered locally.
    Domains(Vec<String>),
}

/// The forwarder's view of its clients: their policies and the firewall's allowed sets.
#[async_trait::async_trait]
pub trait DnsClients: Send + Sync + 'static {
    /// The policy for queries from `client`.
    fn policy(&self, client: Ipv4Addr) -> ClientPolicy;
    /// Called with the A records of an allowed answer for a `Domains` client before the
    /// answer is sent; an error makes the answer SERVFAIL.
    async fn allow(&self, client: Ipv4Addr, addrs: Vec<Ipv4Addr>, ttl_secs: u32) -> Result<(), String>;
}

/// Why the forwarder could not start, or why one upstream attempt failed (logged only).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The UDP listener could not be bound.
    #[error("bind udp {addr}")]
    BindUdp {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("bind tcp {addr}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The bound UDP socket's address could not be read.
    #[error("read the local address of udp {addr}")]
    LocalAddr {
        /// The address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to an upstream failed.
    #[error("{op} upstream {upstream}")]
    Upstream {
        /// What was being done (`udp exchange with`, `tcp exchange with`).
        op: &'static str,
        /// The upstream.
        upstream: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An upstream did not answer in time.
    #[error("wait for upstream {upstream}: no answer within {timeout:?}")]
    UpstreamTimeout {
        /// The upstream.
        upstream: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// An upstream's answer was unusable.
    #[error("read the answer of upstream {upstream}: {reason}")]
    UpstreamAnswer {
        /// The upstream.
        upstream: SocketAddr,
        /// What was wrong.
        reason: &'static str,
    },
}

/// The running forwarder. Dropping it (or [`Forwarder::shutdown`]) stops the listeners and
/// every query and connection task.
#[derive(Debug)]
pub struct Forwarder {
    local: SocketAddr,
    stop: CancellationToken,
}

impl Forwarder {
    /// Binds `listen` over UDP and TCP (with port 0: one free port for both) and serves
    /// until dropped, forwarding to `upstreams` in order (the listening address itself is
    /// left out, so a resolv.conf naming the forwarder cannot make a loop).
    pub async fn start(
        listen: SocketAddr,
        upstreams: Vec<SocketAddr>,
        clients: Arc<dyn DnsClients>,
    ) -> Result<Self, DnsError> {
        let (udp, tcp, local) = bind_pair(listen).await?;
        let mut kept = Vec::with_capacity(upstreams.len());
        for u in upstreams {
            if u != local && !kept.contains(&u) {
                kept.push(u);
            }
        }
        let shared = Arc::new(Shared { upstreams: kept, clients, in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) });
        let stop = CancellationToken::new();
        tokio::spawn(serve_udp(Arc::new(udp), shared.clone(), stop.clone()));
        tokio::spawn(serve_tcp(tcp, shared, stop.clone()));
        tracing::debug!(%local, "dns forwarder listening");
        Ok(Self { local, stop })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the listeners and every task (the same as dropping it).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `nameserver` lines of a resolv.conf (port 53), in order, duplicates once, loopback ones
/// included (the server runs on the host and can use them). Comments (`#`, `;`), other
/// options and addresses that do not parse (such as scoped `fe80::1%eth0`) are skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else { continue };
        let addr = SocketAddr::new(ip, 53);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// What every task shares.
struct Shared {
    upstreams: Vec<SocketAddr>,
    clients: Arc<dyn DnsClients>,
    in_flight: Arc<Semaphore>,
}

/// How a query came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// An upstream's answer: its bytes and what they say.
struct Upstreamed {
    bytes: Vec<u8>,
    msg: Message,
}

async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    // With port 0 the TCP side may find the UDP side's port taken: try a few ports.
    let tries = if listen.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen).await.map_err(|source| DnsError::BindUdp { addr: listen, source })?;
        let local = udp.local_addr().map_err(|source| DnsError::LocalAddr { addr: listen, source })?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(e) if attempt < tries && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(DnsError::BindTcp { addr: local, source }),
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>, stop: CancellationToken) {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(x) => x,
            Err(error) => {
                tracing::debug!(%error, "dns udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer.ip(), verdict = "dropped", "dns: too many queries in flight");
            continue;
        };
        let packet = buf[..n].to_vec();
        let (sock, shared, stop) = (sock.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                () = async {
                    if let Some(reply) = answer(&shared, peer.ip(), &packet, Transport::Udp).await
                        && let Err(error) = sock.send_to(&reply, peer).await
                    {
                        tracing::debug!(client = %peer.ip(), %error, "dns udp reply failed");
                    }
                } => {}
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(error) => {
                tracing::debug!(%error, "dns tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer.ip(), verdict = "dropped", "dns: too many tcp connections");
            continue;
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve_connection(stream, peer, &shared) => {}
            }
        });
    }
}

/// Answers the queries of one TCP connection in turn until it is idle, closed or broken.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(q)) => q,
            Ok(Err(_)) | Err(_) => return,
        };
        let reply = {
            let Ok(_permit) = shared.in_flight.clone().acquire_owned().await else { return };
            answer(shared, peer.ip(), &query, Transport::Tcp).await
        };
        let Some(reply) = reply else { return };
        match tokio::time::timeout(TCP_IDLE, write_frame(&mut stream, &reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// One length-prefixed DNS message (RFC 1035 4.2.2); at most 65535 bytes by construction.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    if len == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty dns message"));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "dns message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// The reply to one query from `client`, or `None` to send nothing.
async fn answer(shared: &Shared, client: IpAddr, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let (Some(&id_hi), Some(&id_lo)) = (packet.first(), packet.get(1)) else {
        tracing::debug!(%client, verdict = "dropped", "dns: message without an id");
        return None;
    };
    if packet.get(2).is_some_and(|flags| flags & 0x80 != 0) {
        tracing::debug!(%client, verdict = "dropped", "dns: a response sent as a query");
        return None;
    }
    let id = u16::from_be_bytes([id_hi, id_lo]);
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(error) => {
            tracing::debug!(%client, %error, verdict = "formerr", "dns: malformed query");
            let mut reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            reply.metadata.recursion_desired = packet.get(2).is_some_and(|flags| flags & 0x01 != 0);
            return reply.to_vec().ok();
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    if req.metadata.op_code != OpCode::Query {
        tracing::debug!(%client, opcode = %req.metadata.op_code, verdict = "notimp", "dns: unsupported opcode");
        return local_reply(&req, ResponseCode::NotImp);
    }
    let [question] = req.queries.as_slice() else {
        tracing::debug!(%client, questions = req.queries.len(), verdict = "formerr", "dns: not one question");
        return local_reply(&req, ResponseCode::FormErr);
    };
    let (name, qtype) = (&question.name, question.query_type);
    let v4 = match client {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let policy = v4.map_or(ClientPolicy::Blocked, |a| shared.clients.policy(a));
    match &policy {
        ClientPolicy::Blocked => {
            tracing::debug!(%client, %name, %qtype, verdict = "refused", "dns query");
            return local_reply(&req, ResponseCode::Refused);
        }
        ClientPolicy::Domains(patterns) if !name_allowed(patterns, name) => {
            tracing::debug!(%client, %name, %qtype, verdict = "nxdomain", "dns query");
            return local_reply(&req, ResponseCode::NXDomain);
        }
        ClientPolicy::Domains(_) | ClientPolicy::Open => {}
    }
    let udp_limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => client_udp_limit(&req),
    };
    let Some(mut up) = forward(shared, packet, question, transport, udp_limit).await else {
        tracing::debug!(%client, %name, %qtype, verdict = "servfail", "dns: no upstream answered");
        return local_reply(&req, ResponseCode::ServFail);
    };
    if let (ClientPolicy::Domains(_), Some(v4)) = (&policy, v4) {
        let (addrs, ttl) = answer_addresses(&up.msg);
        if !addrs.is_empty() {
            let allowed = tokio::time::timeout(ALLOW_TIMEOUT, shared.clients.allow(v4, addrs.clone(), ttl)).await;
            let failure = match allowed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no decision within {ALLOW_TIMEOUT:?}")),
            };
            if let Some(error) = failure {
                tracing::warn!(%client, %name, %qtype, ?addrs, %error, verdict = "servfail", "dns: allowing the answer's addresses failed");
                return local_reply(&req, ResponseCode::ServFail);
            }
            tracing::debug!(%client, %name, %qtype, ?addrs, ttl, verdict = "allowed", "dns query");
            up.bytes[..2].copy_from_slice(&id.to_be_bytes());
            return Some(up.bytes);
        }
    }
    tracing::debug!(%client, %name, %qtype, rcode = %up.msg.metadata.response_code, verdict = "forwarded", "dns query");
    up.bytes[..2].copy_from_slice(&id.to_be_bytes());
    Some(up.bytes)
}

/// An answer made here: the request's header bits and question with `rcode`.
fn local_reply(req: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::response(req.metadata.id, req.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&req.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = rcode;
    reply.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(LOCAL_EDNS_PAYLOAD);
        reply.edns = Some(edns);
    }
    reply.to_vec().ok()
}

/// The largest UDP answer the client takes: its EDNS size (at most 4096), else 512.
fn client_udp_limit(req: &Message) -> usize {
    req.edns.as_ref().map_or(512, |e| usize::from(e.max_payload()).clamp(512, MAX_UDP_ANSWER))
}

/// Whether `name` is one of `patterns` ("a.b" exact, "*.a.b" strictly below a.b), compared
/// label by label (so a label containing a dot cannot pass for two) ignoring ASCII case.
fn name_allowed(patterns: &[String], name: &Name) -> bool {
    let labels: Vec<&[u8]> = name.iter().collect();
    patterns.iter().any(|pattern| {
        let (below, base) = match pattern.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, pattern.as_str()),
        };
        let base = base.strip_suffix('.').unwrap_or(base);
        let want: Vec<&str> = base.split('.').collect();
        if base.is_empty() || want.iter().any(|l| l.is_empty()) {
            return false;
        }
        let count_ok = if below { labels.len() > want.len() } else { labels.len() == want.len() };
        count_ok
            && labels[labels.len() - want.len()..]
                .iter()
                .zip(&want)
                .all(|(have, want)| have.eq_ignore_ascii_case(want.as_bytes()))
    })
}

/// The A records of an answer section (distinct addresses) and their smallest TTL (≥ 1).
fn answer_addresses(msg: &Message) -> (Vec<Ipv4Addr>, u32) {
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for record in &msg.answers {
        if let RData::A(a) = &record.data {
            if !addrs.contains(&a.0) {
                addrs.push(a.0);
            }
            ttl = ttl.min(record.ttl);
        }
    }
    (addrs, ttl.max(1))
}

/// Asks the upstreams in order; the first usable answer, else the last SERVFAIL/REFUSED.
async fn forward(
    shared: &Shared,
    packet: &[u8],
    question: &Query,
    transport: Transport,
    udp_limit: usize,
) -> Option<Upstreamed> {
    let mut fallback = None;
    for &upstream in &shared.upstreams {
        let attempt = match transport {
            Transport::Tcp => exchange_tcp(upstream, packet, question).await,
            Transport::Udp => match exchange_udp(upstream, packet, question).await {
                Ok(cut) if cut.msg.metadata.truncation => match exchange_tcp(upstream, packet, question).await {
                    Ok(full) if full.bytes.len() <= udp_limit => Ok(full),
                    Ok(_) => Ok(cut),
                    Err(error) => {
                        tracing::debug!(%upstream, error = %cove_types::error::chain(&error), "dns: tcp retry of a truncated answer failed");
                        Ok(cut)
                    }
                },
                other => other,
            },
        };
        match attempt {
            Ok(up) if matches!(up.msg.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                tracing::debug!(%upstream, rcode = %up.msg.metadata.response_code, "dns: upstream failed, trying the next");
                fallback = Some(up);
            }
            Ok(up) => return Some(up),
            Err(error) => {
                tracing::debug!(%upstream, error = %cove_types::error::chain(&error), "dns: upstream attempt failed")
            }
        }
    }
    fallback
}

/// `packet` with a fresh random id, and that id.
fn with_random_id(packet: &[u8]) -> (Vec<u8>, u16) {
    let id = getrandom::u32().map_or_else(|_| u16::from_be_bytes([packet[0], packet[1]]) ^ 0x5a5a, |r| r as u16);
    let mut out = packet.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    (out, id)
}

async fn exchange_udp(upstream: SocketAddr, packet: &[u8], question: &Query) -> Result<Upstreamed, DnsError> {
    let op = "udp exchange with";
    let io = |source| DnsError::Upstream { op, upstream, source };
    let (out, id) = with_random_id(packet);
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let sock = UdpSocket::bind(bind).await.map_err(io)?;
        sock.connect(upstream).await.map_err(io)?;
        sock.send(&out).await.map_err(io)?;
        let mut buf = vec![0u8; MAX_UDP_ANSWER + 1];
        loop {
            let n = sock.recv(&mut buf).await.map_err(io)?;
            if n > MAX_UDP_ANSWER {
                return Err(DnsError::UpstreamAnswer { upstream, reason: "udp answer over 4096 bytes" });
            }
            // Anything else (a late answer to another query, a spoof) is ignored.
            if let Ok(up) = check_answer(upstream, &buf[..n], id, question) {
                return Ok(up);
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| DnsError::UpstreamTimeout { upstream, timeout: UPSTREAM_TIMEOUT })?
}

async fn exchange_tcp(upstream: SocketAddr, packet: &[u8], question: &Query) -> Result<Upstreamed, DnsError> {
    let op = "tcp exchange with";
    let io = |source| DnsError::Upstream { op, upstream, source };
    let (out, id) = with_random_id(packet);
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
        write_frame(&mut stream, &out).await.map_err(io)?;
        let bytes = read_frame(&mut stream).await.map_err(io)?;
        check_answer(upstream, &bytes, id, question)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| DnsError::UpstreamTimeout { upstream, timeout: UPSTREAM_TIMEOUT })?
}

/// `bytes` if they are a response with our id to the same question.
fn check_answer(upstream: SocketAddr, bytes: &[u8], id: u16, question: &Query) -> Result<Upstreamed, DnsError> {
    let bad = |reason| DnsError::UpstreamAnswer { upstream, reason };
    if bytes.len() < 12 || u16::from_be_bytes([bytes[0], bytes[1]]) != id {
        return Err(bad("not an answer to our query id"));
    }
    let msg = Message::from_vec(bytes).map_err(|_| bad("malformed answer"))?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(bad("not a response"));
    }
    match msg.queries.as_slice() {
        [q] if q.name == question.name
            && q.query_type == question.query_type
            && q.query_class == question.query_class => {}
        _ => return Err(bad("answer to another question")),
    }
    Ok(Upstreamed { bytes: bytes.to_vec(), msg })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Record, RecordType};

    use super::*;

    /// A test upstream on 127.0.0.1 (UDP and TCP on one port) that counts what it is asked.
    struct FakeUpstream {
        addr: SocketAddr,
        udp: Arc<AtomicUsize>,
        tcp: Arc<AtomicUsize>,
    }

    impl FakeUpstream {
        async fn start() -> Self {
            let (udp_sock, tcp_listener, addr) =
                bind_pair((Ipv4Addr::LOCALHOST, 0).into()).await.expect("bind the fake upstream");
            let (udp, tcp) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let count = udp.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, peer)) = udp_sock.recv_from(&mut buf).await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let reply = upstream_answer(&buf[..n], false);
                    let _ = udp_sock.send_to(&reply, peer).await;
                }
            });
            let count = tcp.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = tcp_listener.accept().await {
                    let count = count.clone();
                    tokio::spawn(async move {
                        while let Ok(query) = read_frame(&mut stream).await {
                            count.fetch_add(1, Ordering::SeqCst);
                            if write_frame(&mut stream, &upstream_answer(&query, true)).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            Self { addr, udp, tcp }
        }

        fn asked(&self) -> usize {
            self.udp.load(Ordering::SeqCst) + self.tcp.load(Ordering::SeqCst)
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn a(owner: &str, ttl: u32, addr: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(addr))))
    }

    /// open.test: one A; www.allowed.test: a CNAME to two A records (TTL 60 and 30);
    /// big.test: truncated over UDP, an A over TCP; anything else NXDOMAIN.
    fn upstream_answer(query: &[u8], tcp: bool) -> Vec<u8> {
        let req = Message::from_vec(query).expect("the forwarder sends well-formed queries");
        let q = req.queries[0].clone();
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.add_query(q.clone());
        let wants_a = q.query_type == RecordType::A;
        match q.name.to_ascii().to_ascii_lowercase().as_str() {
            "open.test." if wants_a => {
                m.add_answer(a("open.test.", 300, [192, 0, 2, 1]));
            }
            "www.allowed.test." => {
                m.add_answer(Record::from_rdata(
                    name("www.allowed.test."),
                    600,
                    RData::CNAME(CNAME(name("edge.cdn.test."))),
                ));
                if wants_a {
                    m.add_answer(a("edge.cdn.test.", 60, [192, 0, 2, 2]));
                    m.add_answer(a("edge.cdn.test.", 30, [192, 0, 2, 3]));
                }
            }
            "big.test." if tcp => {
                m.add_answer(a("big.test.", 120, [192, 0, 2, 4]));
            }
            "big.test." => m.metadata.truncation = true,
            "open.test." => {}
            _ => m.metadata.response_code = ResponseCode::NXDomain,
        }
        m.to_vec().expect("encode the fake answer")
    }

    /// One `allow` call: client, addresses, TTL, and when it returned.
    type AllowCall = (Ipv4Addr, Vec<Ipv4Addr>, u32, Instant);

    /// Policies set by the test; `allow` calls recorded (after a delay, to prove the answer
    /// waits for them), or refused.
    struct TestClients {
        policy: Mutex<ClientPolicy>,
        allowed: Mutex<Vec<AllowCall>>,
        fail: AtomicBool,
    }

    #[async_trait::async_trait]
    impl DnsClients for TestClients {
        fn policy(&self, _client: Ipv4Addr) -> ClientPolicy {
            self.policy.lock().unwrap().clone()
        }

        async fn allow(&self, client: Ipv4Addr, addrs: Vec<Ipv4Addr>, ttl_secs: u32) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err("firewall said no".into());
            }
            self.allowed.lock().unwrap().push((client, addrs, ttl_secs, Instant::now()));
            Ok(())
        }
    }

    struct Setup {
        upstream: FakeUpstream,
        clients: Arc<TestClients>,
        forwarder: Forwarder,
    }

    async fn setup(policy: ClientPolicy) -> Setup {
        let upstream = FakeUpstream::start().await;
        let clients = Arc::new(TestClients {
            policy: Mutex::new(policy),
            allowed: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
        });
        let forwarder = Forwarder::start((Ipv4Addr::LOCALHOST, 0).into(), vec![upstream.addr], clients.clone())
            .await
            .expect("start the forwarder");
        Setup { upstream, clients, forwarder }
    }

    fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        m.to_vec().expect("encode the query")
    }

    /// Sends `packet` over UDP; the answer, or `None` after 3 s of silence.
    async fn ask_udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
        ask_udp_within(server, packet, Duration::from_secs(3)).await
    }

    /// Sends `packet` over UDP; the answer, or `None` after `wait` of silence.
    async fn ask_udp_within(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        sock.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf)).await.ok()?.unwrap();
        Some(buf[..n].to_vec())
    }

    async fn ask_udp(server: SocketAddr, packet: &[u8]) -> Message {
        let bytes = ask_udp_raw(server, packet).await.expect("an answer over udp");
        Message::from_vec(&bytes).expect("a well-formed answer")
    }

    async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
        let mut stream = TcpStream::connect(server).await.unwrap();
        write_frame(&mut stream, packet).await.unwrap();
        let bytes = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut stream))
            .await
            .expect("an answer over tcp in time")
            .unwrap();
        Message::from_vec(&bytes).expect("a well-formed answer")
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn an_open_client_gets_the_upstream_answer_with_its_own_id() {
        let s = setup(ClientPolicy::Open).await;
        let answer = ask_udp(s.forwarder.local_addr(), &query(0x1234, "open.test.", RecordType::A)).await;
        assert_eq!(answer.metadata.id, 0x1234);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.queries[0].name, name("open.test."));
        assert_eq!(a_records(&answer), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(answer.answers[0].ttl, 300);
        let nx = ask_udp(s.forwarder.local_addr(), &query(7, "missing.test.", RecordType::A)).await;
        assert_eq!((nx.metadata.id, nx.metadata.response_code), (7, ResponseCode::NXDomain));
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 2);
        assert!(s.clients.allowed.lock().unwrap().is_empty(), "open clients never reach the firewall callback");
    }

    #[tokio::test]
    async fn a_domains_client_gets_nxdomain_for_a_name_outside_its_list_without_asking_upstream() {
        let s = setup(ClientPolicy::Domains(vec!["*.allowed.test".into(), "exact.test".into()])).await;
        for (id, qname) in
            [(1, "open.test."), (2, "allowed.test."), (3, "sub.exact.test."), (4, "www.allowed.test.evil.")]
        {
            let answer = ask_udp(s.forwarder.local_addr(), &query(id, qname, RecordType::A)).await;
            assert_eq!(answer.metadata.id, id);
            assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain, "{qname}");
            assert_eq!(answer.queries[0].name, name(qname));
            assert!(answer.answers.is_empty());
        }
        assert_eq!(s.upstream.asked(), 0);
        assert!(s.clients.allowed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_allowed_names_a_records_through_a_cname_reach_allow_with_the_smallest_ttl_before_the_answer() {
        let s = setup(ClientPolicy::Domains(vec!["*.allowed.test".into()])).await;
        let answer = ask_udp(s.forwarder.local_addr(), &query(0xbeef, "WWW.Allowed.test.", RecordType::A)).await;
        let received = Instant::now();
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (0xbeef, ResponseCode::NoError));
        let addrs = vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)];
        assert_eq!(a_records(&answer), addrs);
        let allowed = s.clients.allowed.lock().unwrap().clone();
        assert_eq!(allowed.len(), 1, "one allow call, finished before the answer arrived");
        let (client, got, ttl, at) = &allowed[0];
        assert_eq!((*client, got, *ttl), (Ipv4Addr::LOCALHOST, &addrs, 30));
        assert!(*at <= received);
        // AAAA for an allowed name is forwarded; no A records, so no allow call.
        let aaaa = ask_udp(s.forwarder.local_addr(), &query(9, "www.allowed.test.", RecordType::AAAA)).await;
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert_eq!(aaaa.answers.len(), 1, "the CNAME only");
        assert_eq!(s.clients.allowed.lock().unwrap().len(), 1);
        assert_eq!(s.upstream.asked(), 2);
    }

    #[tokio::test]
    async fn a_failed_allow_answers_servfail_and_hands_out_no_address() {
        let s = setup(ClientPolicy::Domains(vec!["*.allowed.test".into()])).await;
        s.clients.fail.store(true, Ordering::SeqCst);
        let answer = ask_udp(s.forwarder.local_addr(), &query(42, "www.allowed.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (42, ResponseCode::ServFail));
        assert!(answer.answers.is_empty());
        assert_eq!(s.upstream.asked(), 1);
    }

    #[tokio::test]
    async fn a_blocked_client_is_refused_over_udp_and_tcp_without_asking_upstream() {
        let s = setup(ClientPolicy::Blocked).await;
        let answer = ask_udp(s.forwarder.local_addr(), &query(5, "open.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (5, ResponseCode::Refused));
        let answer = ask_tcp(s.forwarder.local_addr(), &query(6, "open.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (6, ResponseCode::Refused));
        assert_eq!(s.upstream.asked(), 0);
    }

    #[tokio::test]
    async fn a_truncated_udp_answer_is_retried_over_tcp() {
        let s = setup(ClientPolicy::Open).await;
        let answer = ask_udp(s.forwarder.local_addr(), &query(77, "big.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (77, ResponseCode::NoError));
        assert!(!answer.metadata.truncation);
        assert_eq!(a_records(&answer), vec![Ipv4Addr::new(192, 0, 2, 4)]);
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 1);
        assert_eq!(s.upstream.tcp.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_tcp_client_is_answered_over_tcp_several_times_on_one_connection() {
        let s = setup(ClientPolicy::Open).await;
        let mut stream = TcpStream::connect(s.forwarder.local_addr()).await.unwrap();
        for id in [100, 101] {
            write_frame(&mut stream, &query(id, "open.test.", RecordType::A)).await.unwrap();
            let bytes = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut stream)).await.unwrap().unwrap();
            let answer = Message::from_vec(&bytes).unwrap();
            assert_eq!((answer.metadata.id, answer.metadata.response_code), (id, ResponseCode::NoError));
            assert_eq!(a_records(&answer), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        }
        assert_eq!(s.upstream.tcp.load(Ordering::SeqCst), 2, "tcp queries go upstream over tcp");
        assert_eq!(s.upstream.udp.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_malformed_packet_gets_formerr_or_nothing_and_the_forwarder_keeps_serving() {
        let s = setup(ClientPolicy::Open).await;
        let server = s.forwarder.local_addr();
        // A header announcing one question that is not there.
        let header = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let formerr = Message::from_vec(&ask_udp_raw(server, &header).await.expect("formerr")).unwrap();
        assert_eq!((formerr.metadata.id, formerr.metadata.response_code), (0xabcd, ResponseCode::FormErr));
        assert!(ask_udp_within(server, &[0x01], Duration::from_secs(1)).await.is_none(), "no id, no answer");
        let mut response = query(3, "open.test.", RecordType::A);
        response[2] |= 0x80;
        assert!(
            ask_udp_within(server, &response, Duration::from_secs(1)).await.is_none(),
            "responses are never answered"
        );
        let mut two = Message::new(8, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(name("open.test."), RecordType::A));
        two.add_query(Query::query(name("www.allowed.test."), RecordType::A));
        let answer = ask_udp(server, &two.to_vec().unwrap()).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (8, ResponseCode::FormErr));
        assert_eq!(s.upstream.asked(), 0);
        let answer = ask_udp(server, &query(4, "open.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (4, ResponseCode::NoError));
        assert_eq!(a_records(&answer), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }

    #[tokio::test]
    async fn upstreams_are_asked_in_order_and_a_dead_one_is_skipped() {
        let upstream = FakeUpstream::start().await;
        let dead = {
            let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            sock.local_addr().unwrap()
        };
        let clients = Arc::new(TestClients {
            policy: Mutex::new(ClientPolicy::Open),
            allowed: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
        });
        let forwarder =
            Forwarder::start((Ipv4Addr::LOCALHOST, 0).into(), vec![dead, upstream.addr], clients).await.unwrap();
        let answer = ask_udp(forwarder.local_addr(), &query(11, "open.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (11, ResponseCode::NoError));
        assert_eq!(upstream.asked(), 1);
    }

    #[tokio::test]
    async fn no_upstream_at_all_answers_servfail() {
        let clients = Arc::new(TestClients {
            policy: Mutex::new(ClientPolicy::Open),
            allowed: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
        });
        let forwarder = Forwarder::start((Ipv4Addr::LOCALHOST, 0).into(), Vec::new(), clients).await.unwrap();
        let answer = ask_udp(forwarder.local_addr(), &query(12, "open.test.", RecordType::A)).await;
        assert_eq!((answer.metadata.id, answer.metadata.response_code), (12, ResponseCode::ServFail));
    }

    #[tokio::test]
    async fn shutdown_stops_the_listeners() {
        let s = setup(ClientPolicy::Open).await;
        let server = s.forwarder.local_addr();
        s.forwarder.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(server).await.is_err(), "tcp listener closed");
        assert!(ask_udp_within(server, &query(1, "open.test.", RecordType::A), Duration::from_secs(1)).await.is_none());
        assert_eq!(s.upstream.asked(), 0);
    }

    #[test]
    fn domain_patterns_match_exact_names_and_strictly_below_wildcards() {
        let patterns = vec!["example.com".to_string(), "*.example.org".to_string()];
        let ok = |n: &str| name_allowed(&patterns, &name(n));
        assert!(ok("example.com."));
        assert!(ok("Example.COM"));
        assert!(!ok("www.example.com."));
        assert!(!ok("example.org."));
        assert!(ok("a.example.org."));
        assert!(ok("a.b.example.org."));
        assert!(!ok("badexample.org."));
        assert!(!ok("example.org.evil."));
        assert!(!ok("."));
        // One label "a.example" under "org" is not below example.org.
        assert!(!ok(r"a\.example.org."));
        assert!(!name_allowed(&["*.".to_string(), String::new()], &name("example.com.")));
    }

    #[test]
    fn upstreams_from_resolv_conf_reads_nameservers_and_skips_comments_options_and_junk() {
        let text = "\
# Generated by NetworkManager
; another comment style
search example.internal
options edns0 trust-ad ndots:2
nameserver 127.0.0.53
nameserver 10.0.0.2 # inline comment
  nameserver   2001:db8::1
nameserver fe80::1%eth0
nameserver not-an-address
#nameserver 9.9.9.9
nameserver
nameservers 8.8.8.8
nameserver 127.0.0.53
";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
            ]
        );
        assert!(upstreams_from_resolv_conf("").is_empty());
    }
}
