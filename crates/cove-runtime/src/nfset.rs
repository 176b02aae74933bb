//! Elements of existing nftables sets, added and deleted over nfnetlink from this process.
//!
//! Contract: [`Batch`] collects `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` messages for sets
//! that already exist (made by `nft` at install, see `firewall`) and [`Batch::commit`] sends
//! them as one nfnetlink batch: the kernel applies all of them or none, and answers each. Keys
//! are raw bytes in the set's layout; [`ifname_key`] and [`concat`] build the two layouts the
//! anti-spoofing sets use (`ifname`, and `ifname . ipv4_addr`). Nothing here creates or
//! deletes tables, sets or rules: those stay `nft` transactions.
//!
//! Why not `nft`: each sandbox create and delete changes the anti-spoofing sets, and an `nft`
//! process costs ~6 ms of CPU (start, library init, and a dump of the table to build its cache)
//! on a create path of ~15 ms on two cores, for two elements. Here it is one socket and two
//! messages. Why not a crate: `rustables` is GPL-3.0 (Cove is Apache-2.0) and has no
//! concatenated keys; `nftnl` links the C libnftnl; `nftnl-rs` is frozen in development. The
//! messages are the documented nf_tables ABI (`linux/netfilter/nf_tables.h`), written with
//! `netlink-sys` (already in the tree through `rtnetlink`) for the socket.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// The kernel's interface name size, the terminating NUL included (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// How long [`Batch::commit`] waits for the kernel's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// The nftables family of a table (`NFPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet`.
    Inet,
    /// `bridge`.
    Bridge,
}

impl Family {
    fn proto(self) -> u8 {
        match self {
            Self::Inet => 1,
            Self::Bridge => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Bridge => "bridge",
        }
    }
}

/// A failed set-element change; the table and set are named.
#[derive(Debug, thiserror::Error)]
pub enum NfError {
    /// An interface name the kernel cannot hold.
    #[error("interface name {name:?} is {len} bytes, longer than the kernel's limit of {max}", max = IFNAMSIZ - 1)]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The netlink socket could not be opened, or the batch not sent or answered.
    #[error("nfnetlink socket: {step}")]
    Socket {
        /// What was being done.
        step: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a message of the batch (so it applied none of them).
    #[error("nf_tables refused {what} {family} table {table}, set {set}")]
    Refused {
        /// `adding elements to` or `deleting elements from`.
        what: &'static str,
        /// The table's family.
        family: &'static str,
        /// The table.
        table: String,
        /// The set.
        set: String,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
}

impl NfError {
    /// Whether the kernel refused because the table or set does not exist (or, for a delete,
    /// the element).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Refused { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
    }
}

/// `name` as an `ifname` key: its bytes, NUL-padded to [`IFNAMSIZ`].
pub fn ifname_key(name: &str) -> Result<[u8; IFNAMSIZ], NfError> {
    let b = name.as_bytes();
    if b.len() >= IFNAMSIZ || b.is_empty() || b.contains(&0) {
        return Err(NfError::NameTooLong { name: name.to_string(), len: b.len() });
    }
    let mut key = [0u8; IFNAMSIZ];
    key[..b.len()].copy_from_slice(b);
    Ok(key)
}

/// A concatenated key (`a . b . …`): each field NUL-padded to a multiple of 4 bytes, as the
/// kernel's registers hold them.
pub fn concat(fields: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::new();
    for f in fields {
        key.extend_from_slice(f);
        key.resize(key.len().next_multiple_of(4), 0);
    }
    key
}

/// One message of a batch, kept for naming it in an error.
struct Message {
    seq: u32,
    what: &'static str,
    family: Family,
    table: String,
    set: String,
}

/// Set-element changes sent together (see the module docs).
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    messages: Vec<Message>,
    next_seq: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self { buf: Vec::new(), messages: Vec::new(), next_seq: 1 }
    }

    /// Adds `keys` to `set` of `family` table `table` (keys already there are fine).
    pub fn add(&mut self, family: Family, table: &str, set: &str, keys: &[Vec<u8>]) {
        self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, "adding elements to", family, table, set, keys);
    }

    /// Deletes `keys` from the set (a key that is not there fails the batch: add it first in
    /// the same batch to delete idempotently).
    pub fn delete(&mut self, family: Family, table: &str, set: &str, keys: &[Vec<u8>]) {
        self.elements(NFT_MSG_DELSETELEM, 0, "deleting elements from", family, table, set, keys);
    }

    #[allow(clippy::too_many_arguments)] // the message's fields, private
    fn elements(
        &mut self,
        msg: u16,
        flags: u16,
        what: &'static str,
        family: Family,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
    ) {
        if keys.is_empty() {
            return;
        }
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &c_string(set));
        let mut list = Vec::new();
        for k in keys {
            let mut value = Vec::new();
            attr(&mut value, NFTA_DATA_VALUE, k);
            let mut key = Vec::new();
            attr(&mut key, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &key);
        }
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        let seq = self.seq();
        header(
            &mut self.buf,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family.proto(),
            0,
            &attrs,
        );
        self.messages.push(Message { seq, what, family, table: table.to_string(), set: set.to_string() });
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Sends the batch and waits for the kernel's answer to every message: `Ok` when all were
    /// applied. Blocking (a socket round trip; call it off the async runtime's threads).
    pub fn commit(mut self) -> Result<(), NfError> {
        if self.messages.is_empty() {
            return Ok(());
        }
        let sock_err = |step| move |source| NfError::Socket { step, source };
        let mut out = Vec::with_capacity(self.buf.len() + 64);
        let begin = self.seq();
        header(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, &[]);
        out.extend_from_slice(&self.buf);
        let end = self.seq();
        header(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]);

        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock_err("open"))?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        rustix::net::sockopt::set_socket_timeout(&socket, rustix::net::sockopt::Timeout::Recv, Some(ANSWER_TIMEOUT))
            .map_err(|e| NfError::Socket { step: "set its receive timeout", source: e.into() })?;
        let _ = socket.set_cap_ack(true);
        socket.send_to(&out, &SocketAddr::new(0, 0), 0).map_err(sock_err("send the batch"))?;

        let mut pending: Vec<u32> = self.messages.iter().map(|m| m.seq).collect();
        let mut first_error: Option<NfError> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(first_error.unwrap_or(NfError::Socket { step: "read the answers", source: e })),
            };
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > rest.len() {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let errno = -i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                    if errno != 0 && first_error.is_none() {
                        let source = io::Error::from_raw_os_error(errno);
                        first_error = Some(match self.messages.iter().find(|m| m.seq == seq) {
                            Some(m) => NfError::Refused {
                                what: m.what,
                                family: m.family.name(),
                                table: m.table.clone(),
                                set: m.set.clone(),
                                source,
                            },
                            // The batch header itself: nothing was applied, nothing more comes.
                            None => return Err(NfError::Socket { step: "have the batch accepted", source }),
                        });
                    }
                    pending.retain(|&s| s != seq);
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends a netlink attribute (header, payload, padding to 4 bytes).
fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("an attribute fits in 64 KiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a netlink header, the nfnetlink header (`nfgenmsg`) and `attrs`.
fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = u32::try_from(16 + 4 + attrs.len()).expect("a message fits in 4 GiB");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_name_key_is_nul_padded_to_sixteen_bytes_and_refused_when_too_long() {
        let k = ifname_key("cv1234").unwrap();
        assert_eq!(&k[..6], b"cv1234");
        assert!(k[6..].iter().all(|&b| b == 0));
        assert!(ifname_key(&"x".repeat(15)).is_ok());
        let e = ifname_key(&"x".repeat(16)).unwrap_err().to_string();
        assert!(e.contains("16 bytes") && e.contains("limit of 15"), "{e}");
        assert!(ifname_key("").is_err() && ifname_key("a\0b").is_err());
    }

    #[test]
    fn a_concatenated_key_pads_each_field_to_four_bytes() {
        let k = concat(&[&ifname_key("cv1").unwrap(), &[10, 0, 0, 7]]);
        assert_eq!(k.len(), 20);
        assert_eq!(&k[16..], &[10, 0, 0, 7]);
        assert_eq!(concat(&[b"ab", b"c"]), b"ab\0\0c\0\0\0");
    }

    #[test]
    fn a_batch_lays_out_one_message_per_set_with_nested_elements() {
        let mut b = Batch::new();
        b.add(Family::Bridge, "t", "s", &[vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
        b.delete(Family::Bridge, "t", "s", &[]);
        assert_eq!(b.messages.len(), 1, "an empty change sends nothing");
        let buf = &b.buf;
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len());
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), (10 << 8) | 12);
        assert_eq!(buf[16], 7, "NFPROTO_BRIDGE");
        // table "t\0" (4+2 → 8), set "s\0" (8), elements: 2 × (list elem 4 + key 4 + value 4+4) = 32, + 4
        assert_eq!(len, 20 + 8 + 8 + 4 + 32);
    }
}
