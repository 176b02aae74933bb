//! A sandbox's outbound network policy, as the SDK states it and the firewall enforces it.
//!
//! Contract: [`NetPolicy::from_fields`] is the only way the SDK's three fields
//! (`networkBlockAll`, `networkAllowList`, `domainAllowList`) become a policy, and it refuses
//! everything the firewall could not enforce exactly (naming the field and the bad item).
//! The default policy is unrestricted: the sandbox reaches everything except what
//! [`crate::firewall`] always blocks (the host, other sandboxes, loopback, link-local and
//! metadata, multicast, reserved, and private networks the admin did not allow). A policy
//! with CIDRs and/or domains lets out only packets to those CIDRs or to addresses the
//! server's DNS forwarder resolved for an allowed domain (the union); `block_all` lets out
//! nothing at all, not even DNS to the forwarder. Pure data: nothing here touches the host.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// At most this many CIDRs, and this many domains, per policy.
pub const MAX_ITEMS: usize = 64;

/// A refused policy or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A field's value is unusable.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field (the SDK's name where it comes from the SDK).
        field: &'static str,
        /// What is wrong, naming the bad item.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { field, why: why.into() }
}

/// An IPv4 network in CIDR form, any prefix 0..=32, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: u32,
    prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n` (`n` in 0..=32; a bare address is a /32); host bits are cleared.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = || invalid("cidr", format!("{s:?} is not an IPv4 network like 203.0.113.0/24"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Self::new(addr, prefix))
    }

    /// `addr/prefix` with the host bits cleared; `prefix` is capped at 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Ipv4Net { addr: u32::from(addr) & Self::mask(prefix), prefix }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) }
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == self.addr
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first and last address, inclusive.
    pub fn range(&self) -> (u32, u32) {
        (self.addr, self.addr | !Self::mask(self.prefix))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A sandbox's outbound policy. Default = unrestricted (only the always-blocked set applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    /// Nothing leaves the sandbox (no DNS either).
    pub block_all: bool,
    /// Networks the sandbox may reach (with `allow_domains`: the union).
    pub allow_cidrs: Vec<Ipv4Net>,
    /// Names whose resolved addresses the sandbox may reach: `example.com` exactly, or
    /// `*.example.org` for every name below it. Lower-case, no trailing dot.
    pub allow_domains: Vec<String>,
}

/// The ranges [`crate::firewall`] blocks whatever the admin allows, with what they are.
const ALWAYS_BLOCKED_NAMES: [(&str, &str); 6] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local and cloud metadata"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "the reserved range"),
    ("255.255.255.255/32", "broadcast"),
];

const F_BLOCK_ALL: &str = "networkBlockAll";
const F_ALLOW_LIST: &str = "networkAllowList";
const F_DOMAINS: &str = "domainAllowList";

fn items(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Lower-cases, drops one trailing dot, and checks a DNS name with an optional leading `*.`.
fn normalize_domain(item: &str) -> Result<String, String> {
    let lower = item.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let bad = |why: &str| format!("{item:?} {why}");
    if bare.is_empty() {
        return Err(bad("is not a domain name"));
    }
    if bare.len() > 253 {
        return Err(bad("is longer than 253 characters"));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty label or one longer than 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(bad("may only hold letters, digits, '-' and '.' (and a leading \"*.\")"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with '-'"));
        }
    }
    Ok(name.to_string())
}

impl NetPolicy {
    /// From the SDK's fields: `networkBlockAll`, `networkAllowList` `"CIDR,CIDR"`,
    /// `domainAllowList` `"example.com,*.example.org"`. `block_all` together with a non-empty
    /// list is an error naming both fields. Empty and whitespace-only items are ignored; at
    /// most [`MAX_ITEMS`] CIDRs and as many domains; domains are lower-cased, a trailing dot
    /// dropped, and validated as DNS names (labels of 1–63 `[a-z0-9-]`, not starting or
    /// ending with `-`, at most 253 in all) with an optional leading `*.` only. Duplicates
    /// are kept once. Errors name the field and the bad item.
    pub fn from_fields(
        block_all: Option<bool>,
        allow_list: Option<&str>,
        domain_list: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let mut allow_cidrs: Vec<Ipv4Net> = Vec::new();
        for item in items(allow_list) {
            let net = Ipv4Net::parse(item)
                .map_err(|_| invalid(F_ALLOW_LIST, format!("{item:?} is not an IPv4 CIDR like 203.0.113.0/24")))?;
            if !allow_cidrs.contains(&net) {
                allow_cidrs.push(net);
            }
        }
        if allow_cidrs.len() > MAX_ITEMS {
            return Err(invalid(F_ALLOW_LIST, format!("at most {MAX_ITEMS} networks")));
        }
        let mut allow_domains: Vec<String> = Vec::new();
        for item in items(domain_list) {
            let d = normalize_domain(item).map_err(|why| invalid(F_DOMAINS, why))?;
            if !allow_domains.contains(&d) {
                allow_domains.push(d);
            }
        }
        if allow_domains.len() > MAX_ITEMS {
            return Err(invalid(F_DOMAINS, format!("at most {MAX_ITEMS} domains")));
        }
        let block_all = block_all.unwrap_or(false);
        if block_all && !(allow_cidrs.is_empty() && allow_domains.is_empty()) {
            return Err(invalid(
                F_BLOCK_ALL,
                format!("cannot be true together with a non-empty {F_ALLOW_LIST} or {F_DOMAINS}"),
            ));
        }
        Ok(NetPolicy { block_all, allow_cidrs, allow_domains })
    }

    /// Refuses `networkAllowList` entries that no sandbox can ever reach because they lie
    /// wholly in [`crate::firewall`]'s always-blocked set for the server's `allow_private`
    /// (an entry that would be stored and shown but never let anything through). The error
    /// names the entry, why it is blocked and, for private networks, the server flag that
    /// allows them. Entries that only overlap the set (`0.0.0.0/0`) are kept: the rest of
    /// them is reachable.
    pub fn refuse_never_reachable(&self, allow_private: &[Ipv4Net]) -> Result<(), PolicyError> {
        let blocked = crate::firewall::blocked_ranges(allow_private);
        for net in &self.allow_cidrs {
            let (a, b) = net.range();
            let inside = |(x, y): (u32, u32)| x <= a && b <= y;
            if !blocked.iter().any(|(x, y)| inside((u32::from(*x), u32::from(*y)))) {
                continue;
            }
            let why = ALWAYS_BLOCKED_NAMES
                .iter()
                .find(|(n, _)| inside(Ipv4Net::parse(n).expect("constant network").range()))
                .map(|(n, what)| format!("{what} ({n}), which no sandbox reaches whatever its policy"))
                .unwrap_or_else(|| {
                    "a private network (RFC 1918 or CGNAT), which sandboxes reach only where the server \
                     allows it with --sandbox-allow-private"
                        .into()
                });
            return Err(invalid(F_ALLOW_LIST, format!("{:?} is always blocked: it is in {why}", net.to_string())));
        }
        Ok(())
    }

    /// Whether anything beyond the always-blocked set is refused.
    pub fn is_restricted(&self) -> bool {
        self.block_all || !self.allow_cidrs.is_empty() || !self.allow_domains.is_empty()
    }

    /// Whether DNS answers for `name` may be used (and their addresses allowed): `example.com`
    /// matches exactly `example.com`, `*.example.org` any name strictly below `example.org`.
    /// Case and one trailing dot of `name` are ignored. `block_all` allows nothing.
    pub fn allows_domain(&self, name: &str) -> bool {
        if self.block_all {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        self.allow_domains.iter().any(|d| match d.strip_prefix("*.") {
            Some(parent) => name.strip_suffix(parent).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => d == name,
        })
    }

    /// `"a/n,b/m"`, or `None` when there are no CIDRs (the API's `networkAllowList`).
    pub fn allow_list_string(&self) -> Option<String> {
        (!self.allow_cidrs.is_empty())
            .then(|| self.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
    }

    /// `"example.com,*.example.org"`, or `None` when there are no domains.
    pub fn domain_list_string(&self) -> Option<String> {
        (!self.allow_domains.is_empty()).then(|| self.allow_domains.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse(s).unwrap()
    }

    #[test]
    fn networks_parse_with_any_prefix_and_clear_host_bits() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("1.2.3.4").to_string(), "1.2.3.4/32");
        assert_eq!(net("1.2.3.4/32").prefix(), 32);
        assert_eq!(net("192.168.7.9/16").addr(), Ipv4Addr::new(192, 168, 0, 0));
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/", "10.0.0.0/-1", "::1/128"] {
            assert!(Ipv4Net::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_network_contains_exactly_its_addresses() {
        let n = net("172.16.0.0/12");
        assert!(n.contains(Ipv4Addr::new(172, 16, 0, 0)));
        assert!(n.contains(Ipv4Addr::new(172, 31, 255, 255)));
        assert!(!n.contains(Ipv4Addr::new(172, 32, 0, 0)));
        assert!(net("0.0.0.0/0").contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert_eq!(net("10.0.0.0/8").range(), (0x0a00_0000, 0x0aff_ffff));
    }

    #[test]
    fn networks_serialize_as_cidr_strings() {
        let v = serde_json::to_string(&net("10.0.0.0/8")).unwrap();
        assert_eq!(v, "\"10.0.0.0/8\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&v).unwrap(), net("10.0.0.0/8"));
        assert!(serde_json::from_str::<Ipv4Net>("\"10.0.0.0/40\"").is_err());
    }

    #[test]
    fn the_sdk_fields_become_a_policy_with_items_trimmed_and_normalized() {
        let p = NetPolicy::from_fields(
            Some(false),
            Some(" 203.0.113.7/24, ,10.0.0.1/32,"),
            Some("Example.COM., *.example.org ,"),
        )
        .unwrap();
        assert_eq!(p.allow_cidrs, [net("203.0.113.0/24"), net("10.0.0.1/32")]);
        assert_eq!(p.allow_domains, ["example.com", "*.example.org"]);
        assert!(p.is_restricted() && !p.block_all);
        assert_eq!(p.allow_list_string().as_deref(), Some("203.0.113.0/24,10.0.0.1/32"));
        assert_eq!(p.domain_list_string().as_deref(), Some("example.com,*.example.org"));
    }

    #[test]
    fn no_fields_or_empty_lists_are_the_unrestricted_default() {
        for p in [
            NetPolicy::from_fields(None, None, None).unwrap(),
            NetPolicy::from_fields(Some(false), Some(" , "), Some("")).unwrap(),
        ] {
            assert_eq!(p, NetPolicy::default());
            assert!(!p.is_restricted());
            assert_eq!((p.allow_list_string(), p.domain_list_string()), (None, None));
        }
        assert!(NetPolicy::from_fields(Some(true), None, Some(" ")).unwrap().is_restricted());
    }

    #[test]
    fn block_all_with_a_list_is_refused_naming_both_fields() {
        let e = NetPolicy::from_fields(Some(true), Some("10.0.0.0/8"), None).unwrap_err().to_string();
        assert!(e.contains("networkBlockAll") && e.contains("networkAllowList"), "{e}");
        let e = NetPolicy::from_fields(Some(true), None, Some("a.com")).unwrap_err().to_string();
        assert!(e.contains("networkBlockAll") && e.contains("domainAllowList"), "{e}");
    }

    #[test]
    fn bad_items_are_refused_naming_the_field_and_the_item() {
        let e = NetPolicy::from_fields(None, Some("10.0.0.0/8,nonsense"), None).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Invalid { field: "networkAllowList", why } if why.contains("nonsense")),
            "{e}"
        );
        for bad in ["a..b", "-a.com", "a-.com", "*.", "*", "a.*.com", "**.a.com", "x_y.com", "ex ample.com", "é.com"] {
            let e = NetPolicy::from_fields(None, None, Some(bad)).unwrap_err();
            assert!(
                matches!(&e, PolicyError::Invalid { field: "domainAllowList", why } if why.contains(&format!("{bad:?}"))),
                "{bad}: {e}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(NetPolicy::from_fields(None, None, Some(&long_label)).is_err());
        let long_name = vec!["a".repeat(60); 5].join(".");
        assert!(long_name.len() > 253);
        assert!(NetPolicy::from_fields(None, None, Some(&long_name)).is_err());
        let ok_name = vec!["a".repeat(62); 4].join(".");
        assert!(NetPolicy::from_fields(None, None, Some(&ok_name)).is_ok(), "{} characters", ok_name.len());
    }

    #[test]
    fn at_most_64_networks_and_64_domains() {
        let nets: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        assert!(NetPolicy::from_fields(None, Some(&nets[..64].join(",")), None).is_ok());
        let e = NetPolicy::from_fields(None, Some(&nets.join(",")), None).unwrap_err();
        assert!(e.to_string().contains("networkAllowList"), "{e}");
        let names: Vec<String> = (0..65).map(|i| format!("d{i}.example.com")).collect();
        assert!(NetPolicy::from_fields(None, None, Some(&names[..64].join(","))).is_ok());
        assert!(NetPolicy::from_fields(None, None, Some(&names.join(","))).is_err());
    }

    #[test]
    fn exact_domains_match_only_themselves_and_wildcards_only_names_below() {
        let p = NetPolicy::from_fields(None, None, Some("example.com,*.example.org")).unwrap();
        assert!(p.allows_domain("example.com"));
        assert!(p.allows_domain("EXAMPLE.com."));
        assert!(!p.allows_domain("www.example.com"));
        assert!(!p.allows_domain("badexample.com"));
        assert!(p.allows_domain("www.example.org"));
        assert!(p.allows_domain("a.b.example.org"));
        assert!(!p.allows_domain("example.org"), "a wildcard is strictly below its parent");
        assert!(!p.allows_domain("evilexample.org"));
        assert!(!p.allows_domain(".example.org"));
        assert!(!NetPolicy { block_all: true, ..p }.allows_domain("example.com"));
    }

    #[test]
    fn allow_list_entries_the_firewall_always_blocks_are_refused_naming_the_entry_why_and_the_flag() {
        let refused = |list: &str, allow: &[Ipv4Net]| {
            NetPolicy::from_fields(None, Some(list), None)
                .unwrap()
                .refuse_never_reachable(allow)
                .map_err(|e| e.to_string())
        };
        for (entry, why) in [
            ("192.168.1.0/24", "--sandbox-allow-private"),
            ("10.0.0.0/8", "--sandbox-allow-private"),
            ("100.64.3.4", "--sandbox-allow-private"),
            ("169.254.0.0/16", "link-local and cloud metadata"),
            ("169.254.169.254/32", "link-local and cloud metadata"),
            ("127.0.0.1", "loopback"),
        ] {
            let e = refused(&format!("203.0.113.0/24,{entry}"), &[]).unwrap_err();
            let shown = net(entry).to_string();
            assert!(
                e.contains("networkAllowList") && e.contains(&shown) && e.contains("always blocked") && e.contains(why),
                "{entry}: {e}"
            );
        }
        let e = refused("169.254.169.254", &[net("169.254.0.0/16")]).unwrap_err();
        assert!(e.contains("link-local") && !e.contains("--sandbox-allow-private"), "{e}");
        // Allowed by the admin, or only partly blocked: reachable, so kept.
        assert_eq!(refused("192.168.1.0/24", &[net("192.168.0.0/16")]), Ok(()));
        assert_eq!(refused("10.1.0.0/16", &[net("10.1.0.0/24")]), Ok(()), "10.1.0.0/24 of it is reachable");
        assert_eq!(refused("0.0.0.0/0,203.0.113.0/24,8.0.0.0/7", &[]), Ok(()));
        assert_eq!(refused("172.0.0.0/8", &[]), Ok(()), "only 172.16.0.0/12 of it is private");
    }

    #[test]
    fn a_policy_survives_a_json_round_trip() {
        let p = NetPolicy::from_fields(None, Some("198.18.0.0/15"), Some("*.a.io")).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["allow_cidrs"][0], "198.18.0.0/15");
        assert_eq!(serde_json::from_value::<NetPolicy>(json).unwrap(), p);
    }
}
