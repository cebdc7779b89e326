//! The SSRF guard: which addresses an outbound request may reach.
//!
//! Endpoint URLs come from subscribers and third parties, so they are hostile input: a URL
//! naming `169.254.169.254` (cloud metadata), `localhost` or a host whose DNS answers with a
//! private address would turn sluice into a proxy into its own network. The guard refuses
//! those addresses at the last moment they can be checked:
//!
//! - [`GuardedResolver`] is the client's DNS resolver. It resolves with tokio on every
//!   connection (no cache of its own, so a rebinding answer is checked like any other) and
//!   hands reqwest only addresses the [`AddressPolicy`] permits.
//! - reqwest never calls a resolver for a URL whose host is an IP literal, so
//!   [`AddressPolicy::check_url`] checks those before a request is built.
//!
//! Refusals are typed ([`Refused`]) and name the address and its class, never the URL (its
//! path and query may carry a subscriber's token).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address may not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// IPv6 unique local, `fc00::/7`.
    UniqueLocal,
    /// `169.254/16` (cloud metadata lives at `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64/10` (RFC 6598).
    SharedCgnat,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`.
    Documentation,
    /// `198.18/15` (RFC 2544).
    Benchmarking,
    /// `192.0.0/24` (IETF protocol assignments), `240/4`, deprecated site-local `fec0::/10`,
    /// discard-only `100::/64`.
    Reserved,
}

impl AddressClass {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::UniqueLocal => "unique_local",
            AddressClass::LinkLocal => "link_local",
            AddressClass::SharedCgnat => "shared_cgnat",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Reserved => "reserved",
        }
    }

    /// The class of a non-public address, or `None` for an address on the public internet.
    pub fn of(ip: IpAddr) -> Option<AddressClass> {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<AddressClass> {
        let [a, b, c, _] = ip.octets();
        let class = if ip.is_loopback() {
            AddressClass::Loopback
        } else if ip.is_private() {
            AddressClass::Private
        } else if ip.is_link_local() {
            AddressClass::LinkLocal
        } else if a == 100 && (b & 0xc0) == 64 {
            AddressClass::SharedCgnat
        } else if a == 0 {
            AddressClass::Unspecified
        } else if ip.is_broadcast() {
            AddressClass::Broadcast
        } else if ip.is_multicast() {
            AddressClass::Multicast
        } else if ip.is_documentation() {
            AddressClass::Documentation
        } else if a == 198 && (b & 0xfe) == 18 {
            AddressClass::Benchmarking
        } else if (a == 192 && b == 0 && c == 0) || a >= 240 {
            AddressClass::Reserved
        } else {
            return None;
        };
        Some(class)
    }

    fn of_v6(ip: Ipv6Addr) -> Option<AddressClass> {
        // IPv4 carried inside IPv6 reaches the IPv4 address: judge that one.
        if let Some(v4) = embedded_v4(ip) {
            return Self::of_v4(v4);
        }
        let first = ip.segments()[0];
        let class = if ip.is_loopback() {
            AddressClass::Loopback
        } else if ip.is_unspecified() {
            AddressClass::Unspecified
        } else if ip.is_multicast() {
            AddressClass::Multicast
        } else if ip.is_unique_local() {
            AddressClass::UniqueLocal
        } else if ip.is_unicast_link_local() {
            AddressClass::LinkLocal
        } else if (first & 0xffc0) == 0xfec0 || (first == 0x0100 && ip.segments()[1..4] == [0; 3]) {
            // Deprecated site-local fec0::/10; discard-only 100::/64.
            AddressClass::Reserved
        } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
            AddressClass::Documentation
        } else {
            return None;
        };
        Some(class)
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, the deprecated
/// IPv4-compatible `::a.b.c.d`, the NAT64 well-known prefix `64:ff9b::/96`, and 6to4
/// `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let join = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x2002 {
        return Some(join(s[1], s[2]));
    }
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then_some(join(s[6], s[7]))
}

/// An address the policy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address is not on the public internet and no allowlist entry names it.
    #[error("address {address} is {class} and not on the outbound allowlist")]
    Address {
        address: IpAddr,
        class: AddressClass,
    },
    /// The URL's scheme is not one the policy sends to.
    #[error("scheme `{scheme}` is not allowed for outbound requests (allowed: {allowed})")]
    Scheme {
        scheme: String,
        allowed: &'static str,
    },
    /// The URL has no host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// DNS answered with no address at all.
    #[error("host `{host}` resolved to no address")]
    NoAddress { host: String },
}

impl Refused {
    /// The class of the refused address, when an address was refused.
    pub fn class(&self) -> Option<AddressClass> {
        match self {
            Refused::Address { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// A CIDR on the allowlist could not be read.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a CIDR like 127.0.0.1/32 or an IP address: {reason}")]
pub struct BadCidr {
    text: String,
    reason: String,
}

/// Which addresses and schemes outbound requests may use.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    https_only: bool,
}

impl AddressPolicy {
    /// The strict policy: public addresses only, http or https.
    pub fn new() -> Self {
        Self::default()
    }

    /// Permits the non-public addresses in `cidrs` (`127.0.0.1/32`, `10.1.0.0/16`, or a bare
    /// address meaning just itself).
    pub fn allow<I, S>(mut self, cidrs: I) -> Result<Self, BadCidr>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for text in cidrs {
            self.allow.push(parse_cidr(text.as_ref())?);
        }
        Ok(self)
    }

    /// Sends only to `https` URLs.
    pub fn https_only(mut self, yes: bool) -> Self {
        self.https_only = yes;
        self
    }

    /// Whether only `https` URLs are sent to.
    pub fn is_https_only(&self) -> bool {
        self.https_only
    }

    /// Permits or refuses one address.
    pub fn check_ip(&self, address: IpAddr) -> Result<(), Refused> {
        let Some(class) = AddressClass::of(address) else {
            return Ok(());
        };
        let canonical = address.to_canonical();
        if self
            .allow
            .iter()
            .any(|net| net.contains(&address) || net.contains(&canonical))
        {
            return Ok(());
        }
        Err(Refused::Address { address, class })
    }

    /// Checks what can be checked before sending: the scheme, and the host when it is an IP
    /// literal (which reqwest connects to without asking the resolver).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let allowed = if self.https_only {
            "https"
        } else {
            "http, https"
        };
        let scheme = url.scheme();
        if scheme != "https" && (self.https_only || scheme != "http") {
            return Err(Refused::Scheme {
                scheme: scheme.to_owned(),
                allowed,
            });
        }
        let host = url.host_str().ok_or(Refused::NoHost)?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip),
            Err(_) => Ok(()),
        }
    }

    /// Keeps the permitted addresses of a DNS answer; refuses the answer if none is left,
    /// naming the first refused address.
    pub fn filter(
        &self,
        host: &str,
        answer: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let mut permitted = Vec::new();
        let mut first_refusal = None;
        for addr in answer {
            match self.check_ip(addr.ip()) {
                Ok(()) => permitted.push(addr),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        if !permitted.is_empty() {
            return Ok(permitted);
        }
        Err(first_refusal.unwrap_or_else(|| Refused::NoAddress {
            host: host.to_owned(),
        }))
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, BadCidr> {
    let text = text.trim();
    let bad = |reason: String| BadCidr {
        text: text.to_owned(),
        reason,
    };
    if text.contains('/') {
        text.parse::<IpNet>().map_err(|e| bad(e.to_string()))
    } else {
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| bad(e.to_string()))
    }
}

/// The outbound client's DNS resolver: resolves with tokio, then applies the policy.
///
/// tokio resolves with the system resolver on its blocking pool; the connect timeout bounds
/// how long an attempt waits for it.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port on the addresses it is given.
            let answer = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted = policy.filter(&host, answer)?;
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<AddressClass> {
        AddressClass::of(text.parse().unwrap())
    }

    #[test]
    fn every_non_public_range_has_its_class() {
        use AddressClass::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("2001:db8::1", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.1", Benchmarking),
            ("192.0.0.8", Reserved),
            ("240.0.0.1", Reserved),
            ("fec0::1", Reserved),
            // IPv4 inside IPv6 is judged as the IPv4 address it reaches.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.0.0.1", Private),
            ("::10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("2002:7f00:1::1", Loopback),
            ("2002:a00:1::", Private),
            ("100::1", Reserved),
        ];
        for (text, expected) in cases {
            assert_eq!(class(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn public_addresses_have_no_class() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "100:0:0:1::1",
        ] {
            assert_eq!(class(text), None, "{text}");
        }
    }

    #[test]
    fn the_allowlist_permits_only_what_it_names() {
        let policy = AddressPolicy::new()
            .allow(["127.0.0.1/32", "10.1.0.0/16"])
            .unwrap();
        assert!(policy.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check_ip("10.1.200.3".parse().unwrap()).is_ok());
        let refused = policy.check_ip("127.0.0.2".parse().unwrap()).unwrap_err();
        assert_eq!(refused.class(), Some(AddressClass::Loopback));
        assert!(policy.check_ip("10.2.0.1".parse().unwrap()).is_err());
        assert!(policy.check_ip("::1".parse().unwrap()).is_err());
        assert!(AddressPolicy::new()
            .allow(["::1"])
            .unwrap()
            .check_ip("::1".parse().unwrap())
            .is_ok());
        let bad = AddressPolicy::new().allow(["127.0.0.1/33"]).unwrap_err();
        assert!(bad.to_string().contains("127.0.0.1/33"), "{bad}");
        assert!(AddressPolicy::new().allow(["localhost"]).is_err());
    }

    #[test]
    fn ip_literal_urls_are_checked_in_every_spelling() {
        let policy = AddressPolicy::new();
        let refused = |url: &str| {
            policy
                .check_url(&reqwest::Url::parse(url).unwrap())
                .unwrap_err()
                .class()
        };
        assert_eq!(
            refused("http://127.0.0.1:8080/x"),
            Some(AddressClass::Loopback)
        );
        // The URL parser normalises decimal, hex and short forms to dotted quads.
        assert_eq!(refused("http://2130706433/"), Some(AddressClass::Loopback));
        assert_eq!(refused("http://0x7f.1/"), Some(AddressClass::Loopback));
        assert_eq!(refused("http://[::1]/"), Some(AddressClass::Loopback));
        assert_eq!(
            refused("http://[::ffff:169.254.169.254]/latest/meta-data"),
            Some(AddressClass::LinkLocal)
        );
        assert!(policy
            .check_url(&reqwest::Url::parse("https://hooks.example.com/a?token=s3cret").unwrap())
            .is_ok());
    }

    #[test]
    fn schemes_other_than_http_are_refused_and_https_only_refuses_http() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let open = AddressPolicy::new();
        assert!(matches!(
            open.check_url(&url("ftp://example.com/")),
            Err(Refused::Scheme { .. })
        ));
        assert!(matches!(
            open.check_url(&url("file:///etc/passwd")),
            Err(Refused::Scheme { .. })
        ));
        assert!(open.check_url(&url("http://example.com/")).is_ok());
        let strict = AddressPolicy::new().https_only(true);
        let refused = strict.check_url(&url("http://example.com/")).unwrap_err();
        assert!(refused.to_string().contains("allowed: https"), "{refused}");
        assert!(strict.check_url(&url("https://example.com/")).is_ok());
    }

    #[test]
    fn a_dns_answer_keeps_only_permitted_addresses() {
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let policy = AddressPolicy::new().allow(["127.0.0.1/32"]).unwrap();
        let kept = policy
            .filter("localhost", [addr("[::1]:0"), addr("127.0.0.1:0")])
            .unwrap();
        assert_eq!(kept, vec![addr("127.0.0.1:0")]);
        let refused = AddressPolicy::new()
            .filter("localhost", [addr("[::1]:0"), addr("127.0.0.1:0")])
            .unwrap_err();
        assert_eq!(refused.class(), Some(AddressClass::Loopback));
        assert!(matches!(
            policy.filter("empty", []),
            Err(Refused::NoAddress { .. })
        ));
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_allowed() {
        let strict = GuardedResolver::new(Arc::new(AddressPolicy::new()));
        let err = strict
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        let refused = err.downcast_ref::<Refused>().expect("a typed refusal");
        assert_eq!(refused.class(), Some(AddressClass::Loopback));

        let allowing = GuardedResolver::new(Arc::new(
            AddressPolicy::new().allow(["127.0.0.1/32"]).unwrap(),
        ));
        let addrs: Vec<_> = allowing
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip() == IpAddr::from([127, 0, 0, 1])));
    }
}
