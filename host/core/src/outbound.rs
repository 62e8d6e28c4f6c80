//! Outbound HTTP policy: the origins a plugin may call and the addresses
//! the host refuses to connect to unless the operator allows them.
//!
//! # Origins
//!
//! An [`OriginPattern`] is written `scheme://host[:port]`, in a manifest's
//! `[http] allow` list and in a tenant's `[tenants.<t>.outbound] allow`
//! ceiling:
//! - the scheme is `http` or `https`;
//! - the host is an ASCII DNS name (labels of letters, digits and `-`, 1 to
//!   63 bytes each, 253 in all, none empty, none starting or ending with
//!   `-`, the last not all digits), an IPv4 literal (`127.0.0.1`) or a
//!   bracketed IPv6 literal (`[::1]`), or `*.` followed by a DNS name: that
//!   matches every name with one or more labels in front of the suffix
//!   (`*.example.com` matches `a.example.com` and `a.b.example.com`, not
//!   `example.com`); `*` is allowed nowhere else;
//! - the port is explicit or the scheme's default (80 for http, 443 for
//!   https); a pattern matches its port only;
//! - no path (one trailing `/` is tolerated), query, fragment or userinfo;
//! - letters match without regard to case; a name written in another script
//!   must be given in its ASCII (punycode) form.
//!
//! # Addresses
//!
//! [`is_refused_by_default`] says which resolved addresses the host does
//! not connect to unless they are inside the operator's `allow_private`
//! CIDRs: see [`address_permitted`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The longest origin pattern accepted, in bytes.
pub const MAX_ORIGIN_LEN: usize = 300;

/// The scheme of an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl Scheme {
    /// The scheme's default port: 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The scheme of `text`, without regard to case; `None` for any other.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of an [`OriginPattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this DNS name (lowercase).
    Name(String),
    /// `*.suffix`: any name with one or more labels in front of `suffix`
    /// (stored lowercase, without the `*.`).
    Wildcard(String),
    /// This IPv4 address.
    Ipv4(Ipv4Addr),
    /// This IPv6 address.
    Ipv6(Ipv6Addr),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Self::Ipv4(addr) => write!(f, "{addr}"),
            Self::Ipv6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// A validated `scheme://host[:port]` pattern: see the [module
/// documentation](self) for the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginPattern {
    scheme: Scheme,
    host: HostPattern,
    port: u16,
}

/// Why an origin pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The pattern is longer than [`MAX_ORIGIN_LEN`] bytes.
    #[error("it is {0} bytes long; at most {MAX_ORIGIN_LEN} are allowed")]
    TooLong(usize),
    /// A character outside printable ASCII.
    #[error(
        "it contains {0:?}; only ASCII is allowed (write an international name in its punycode form, xn--...)"
    )]
    NonAscii(char),
    /// No `scheme://` in front.
    #[error("it has no scheme; write it as scheme://host[:port], e.g. https://api.example.com")]
    MissingScheme,
    /// A scheme other than `http` and `https`.
    #[error("the scheme {0:?} is not allowed; only http and https are")]
    Scheme(String),
    /// `user@` before the host.
    #[error("it has userinfo (user@host); credentials may not be part of an origin")]
    UserInfo,
    /// A path other than a single trailing `/`.
    #[error("it has a path; an origin is scheme://host[:port] only")]
    Path,
    /// A `?query`.
    #[error("it has a query; an origin is scheme://host[:port] only")]
    Query,
    /// A `#fragment`.
    #[error("it has a fragment; an origin is scheme://host[:port] only")]
    Fragment,
    /// Nothing between `://` and the port.
    #[error("the host is empty")]
    EmptyHost,
    /// The port is empty, not a number, or outside 1 to 65535.
    #[error("the port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// A `[...]` host that is not an IPv6 address, or an unbracketed one.
    #[error("{0:?} is not an IPv6 address in brackets, as in [2001:db8::1]")]
    Ipv6(String),
    /// `*` anywhere but as the whole first label.
    #[error("'*' is allowed only as the whole first label, as in *.example.com")]
    Wildcard,
    /// Two dots in a row, or a dot at either end of the name.
    #[error("the host {0:?} has an empty label")]
    EmptyLabel(String),
    /// A label longer than 63 bytes.
    #[error("the host has a label of {0} bytes; at most 63 are allowed")]
    LabelTooLong(usize),
    /// A name longer than 253 bytes.
    #[error("the host is {0} bytes long; at most 253 are allowed")]
    NameTooLong(usize),
    /// A character a DNS name may not hold, or a label starting or ending
    /// with `-`.
    #[error("the host {0:?} is not a DNS name (letters, digits and '-', no '-' at a label's ends)")]
    InvalidName(String),
    /// A name whose last label is all digits but which is not an IPv4
    /// address (`1.2.3`, `256.0.0.1`).
    #[error("the host {0:?} looks numeric but is not an IPv4 address of four decimal parts")]
    Numeric(String),
}

impl OriginPattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        if text.len() > MAX_ORIGIN_LEN {
            return Err(OriginError::TooLong(text.len()));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
            return Err(OriginError::NonAscii(c));
        }
        let (scheme, rest) = text.split_once("://").ok_or(OriginError::MissingScheme)?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| OriginError::Scheme(scheme.to_owned()))?;
        if rest.contains('@') {
            return Err(OriginError::UserInfo);
        }
        if rest.contains('#') {
            return Err(OriginError::Fragment);
        }
        if rest.contains('?') {
            return Err(OriginError::Query);
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') || authority.contains('\\') {
            return Err(OriginError::Path);
        }
        let (host, port) = split_authority(authority)?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => parse_port(p)?,
        };
        Ok(Self {
            scheme,
            host: parse_host_pattern(host)?,
            port,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host pattern.
    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    /// The port (the scheme's default when the pattern gave none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether a request to `scheme://host:port` is allowed by this
    /// pattern. `host` is the request's host as written in its URL: a DNS
    /// name (any case; a name that is not valid matches nothing), an IPv4
    /// literal, or an IPv6 literal with or without brackets.
    pub fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        match RequestHost::parse(host) {
            Some(request) => self.host_matches(&request),
            None => false,
        }
    }

    fn host_matches(&self, request: &RequestHost) -> bool {
        match (&self.host, request) {
            (HostPattern::Name(name), RequestHost::Name(host)) => name == host,
            (HostPattern::Wildcard(suffix), RequestHost::Name(host)) => under(host, suffix),
            (HostPattern::Ipv4(a), RequestHost::Ipv4(b)) => a == b,
            (HostPattern::Ipv6(a), RequestHost::Ipv6(b)) => a == b,
            _ => false,
        }
    }

    /// Whether every request this pattern allows is also allowed by `self`:
    /// the check of a manifest's entry against its tenant's ceiling.
    pub fn covers(&self, other: &Self) -> bool {
        if self.scheme != other.scheme || self.port != other.port {
            return false;
        }
        match (&self.host, &other.host) {
            (HostPattern::Wildcard(mine), HostPattern::Wildcard(theirs)) => {
                mine == theirs || under(theirs, mine)
            }
            (HostPattern::Wildcard(mine), HostPattern::Name(name)) => under(name, mine),
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for OriginPattern {
    /// The canonical form: lowercase, the port only when not the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for OriginPattern {
    /// From its text; a refusal names the entry and what is wrong.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{:?} is refused: {e}",
                crate::text::truncate(&text, 100)
            ))
        })
    }
}

impl std::str::FromStr for OriginPattern {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A request's host, parsed for matching.
enum RequestHost {
    Name(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl RequestHost {
    fn parse(host: &str) -> Option<Self> {
        if let Some(inner) = host.strip_prefix('[') {
            return inner
                .strip_suffix(']')
                .and_then(|a| a.parse().ok())
                .map(Self::Ipv6);
        }
        if let Ok(v6) = host.parse::<Ipv6Addr>() {
            return Some(Self::Ipv6(v6));
        }
        match parse_name_or_ipv4(host) {
            Ok(HostPattern::Name(name)) => Some(Self::Name(name)),
            Ok(HostPattern::Ipv4(v4)) => Some(Self::Ipv4(v4)),
            _ => None,
        }
    }
}

/// Whether `name` has one or more labels in front of `suffix`.
fn under(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

fn split_authority(authority: &str) -> Result<(&str, Option<&str>), OriginError> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inner, after) = bracketed
            .split_once(']')
            .ok_or_else(|| OriginError::Ipv6(authority.to_owned()))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| OriginError::Ipv6(authority.to_owned()))?,
            ),
        };
        // Keep the brackets so that the host parser knows it is IPv6.
        let host = &authority[..inner.len() + 2];
        return Ok((host, port));
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err(OriginError::Ipv6(authority.to_owned())),
    }
}

fn parse_port(port: &str) -> Result<u16, OriginError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OriginError::Port(port.to_owned()));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(OriginError::Port(port.to_owned())),
    }
}

fn parse_host_pattern(host: &str) -> Result<HostPattern, OriginError> {
    if host.is_empty() {
        return Err(OriginError::EmptyHost);
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| OriginError::Ipv6(host.to_owned()))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(HostPattern::Ipv6)
            .map_err(|_| OriginError::Ipv6(host.to_owned()));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(OriginError::Wildcard);
        }
        return match parse_name_or_ipv4(suffix)? {
            HostPattern::Name(name) => Ok(HostPattern::Wildcard(name)),
            // `*.1.2.3.4` names nothing.
            _ => Err(OriginError::Numeric(host.to_owned())),
        };
    }
    if host.contains('*') {
        return Err(OriginError::Wildcard);
    }
    parse_name_or_ipv4(host)
}

/// A DNS name (lowercased) or an IPv4 address.
fn parse_name_or_ipv4(host: &str) -> Result<HostPattern, OriginError> {
    if host.is_empty() {
        return Err(OriginError::EmptyHost);
    }
    if host.len() > 253 {
        return Err(OriginError::NameTooLong(host.len()));
    }
    let mut last = "";
    for label in host.split('.') {
        if label.is_empty() {
            return Err(OriginError::EmptyLabel(host.to_owned()));
        }
        if label.len() > 63 {
            return Err(OriginError::LabelTooLong(label.len()));
        }
        if label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(OriginError::InvalidName(host.to_owned()));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return host
            .parse::<Ipv4Addr>()
            .map(HostPattern::Ipv4)
            .map_err(|_| OriginError::Numeric(host.to_owned()));
    }
    Ok(HostPattern::Name(host.to_ascii_lowercase()))
}

/// Whether the host refuses to connect to `addr` unless the operator's
/// `allow_private` covers it: addresses that reach the host itself, its
/// networks or its cloud's metadata service, and addresses that are not
/// unicast on the internet.
///
/// IPv4: `0.0.0.0/8` (unspecified, "this network"), `10.0.0.0/8`,
/// `100.64.0.0/10` (carrier-grade NAT), `127.0.0.0/8` (loopback),
/// `169.254.0.0/16` (link-local, with the metadata service at
/// 169.254.169.254), `172.16.0.0/12`, `192.0.0.0/24` (IETF protocol
/// assignments), `192.0.2.0/24`, `198.51.100.0/24` and `203.0.113.0/24`
/// (documentation), `192.168.0.0/16`, `198.18.0.0/15` (benchmarking),
/// `224.0.0.0/4` (multicast), `240.0.0.0/4` (reserved, with the broadcast
/// address).
///
/// IPv6: `::` and `::1`, `fc00::/7` (unique local, with the metadata
/// service at fd00:ec2::254), `fe80::/10` (link-local), `fec0::/10`
/// (site-local), `ff00::/8` (multicast), `2001:db8::/32` (documentation),
/// `2001::/32` (Teredo), `64:ff9b:1::/48` (local NAT64). Addresses that
/// carry an IPv4 address are judged by that address: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::/48`).
pub fn is_refused_by_default(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4_refused(v4),
        IpAddr::V6(v6) => v6_refused(v6),
    }
}

fn v4_refused(addr: Ipv4Addr) -> bool {
    let [a, b, c, _] = addr.octets();
    a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224
}

fn v6_refused(addr: Ipv6Addr) -> bool {
    let seg = addr.segments();
    if let Some(v4) = embedded_v4(addr) {
        return v4_refused(v4);
    }
    addr.is_unspecified()
        || addr.is_loopback()
        || (seg[0] & 0xfe00) == 0xfc00
        || (seg[0] & 0xffc0) == 0xfe80
        || (seg[0] & 0xffc0) == 0xfec0
        || (seg[0] & 0xff00) == 0xff00
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        || (seg[0] == 0x2001 && seg[1] == 0)
        || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1)
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped, IPv4-compatible
/// (not `::` and `::1`), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = addr.segments();
    let o = addr.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if seg[..5] == [0, 0, 0, 0, 0] && seg[5] == 0xffff {
        return Some(low);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !addr.is_unspecified() && !addr.is_loopback() {
        return Some(low);
    }
    if seg[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// Whether the host may connect to `addr`: it is not
/// [refused by default](is_refused_by_default), or it lies inside one of
/// the operator's `allow_private` networks. An IPv4-mapped IPv6 address is
/// compared as the IPv4 address it maps.
pub fn address_permitted(addr: IpAddr, allow_private: &[IpNet]) -> bool {
    if !is_refused_by_default(addr) {
        return true;
    }
    let canonical = addr.to_canonical();
    allow_private
        .iter()
        .any(|net| net.contains(&addr) || net.contains(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> OriginPattern {
        OriginPattern::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> OriginError {
        match OriginPattern::parse(text) {
            Ok(p) => panic!("{text:?} must be refused, parsed as {p}"),
            Err(e) => e,
        }
    }

    #[test]
    fn exact_names_and_default_ports() {
        let https = p("https://api.example.com");
        assert_eq!(https.port(), 443);
        assert!(https.matches(Scheme::Https, "api.example.com", 443));
        assert!(!https.matches(Scheme::Https, "api.example.com", 8443));
        assert!(!https.matches(Scheme::Http, "api.example.com", 443));
        assert!(!https.matches(Scheme::Https, "example.com", 443));
        assert!(!https.matches(Scheme::Https, "x.api.example.com", 443));
        assert!(!https.matches(Scheme::Https, "api.example.com.evil.net", 443));
        assert_eq!(p("http://a.example").port(), 80);
        assert_eq!(p("https://api.example.com:443"), https);
        assert_eq!(p("https://api.example.com:8443").port(), 8443);
        assert_eq!(https.to_string(), "https://api.example.com");
        assert_eq!(
            p("http://a.example:8080").to_string(),
            "http://a.example:8080"
        );
    }

    #[test]
    fn case_and_trailing_slash() {
        let a = p("HTTPS://API.Example.COM/");
        assert_eq!(a, p("https://api.example.com"));
        assert!(a.matches(Scheme::Https, "Api.EXAMPLE.com", 443));
        assert_eq!(err("https://api.example.com//"), OriginError::Path);
        // A trailing dot is an empty label, in patterns and in requests.
        assert!(matches!(
            err("https://api.example.com."),
            OriginError::EmptyLabel(_)
        ));
        assert!(!a.matches(Scheme::Https, "api.example.com.", 443));
    }

    #[test]
    fn wildcards() {
        let w = p("https://*.hooks.example.com:443");
        assert_eq!(w.host(), &HostPattern::Wildcard("hooks.example.com".into()));
        assert!(w.matches(Scheme::Https, "a.hooks.example.com", 443));
        assert!(w.matches(Scheme::Https, "a.b.hooks.example.com", 443));
        assert!(w.matches(Scheme::Https, "A.HOOKS.example.com", 443));
        assert!(!w.matches(Scheme::Https, "hooks.example.com", 443));
        assert!(!w.matches(Scheme::Https, "evilhooks.example.com", 443));
        assert!(!w.matches(Scheme::Https, ".hooks.example.com", 443));
        assert!(!w.matches(Scheme::Https, "a..hooks.example.com", 443));
        assert!(!w.matches(Scheme::Https, "a.hooks.example.com", 80));
        assert!(!w.matches(Scheme::Http, "a.hooks.example.com", 443));
        assert_eq!(w.to_string(), "https://*.hooks.example.com");
        for bad in [
            "https://a.*.example.com",
            "https://*a.example.com",
            "https://a*.example.com",
            "https://*.*.example.com",
            "https://*",
            "https://*.example.*",
            "https://example.*",
        ] {
            assert_eq!(err(bad), OriginError::Wildcard, "{bad}");
        }
        assert_eq!(err("https://*."), OriginError::EmptyHost);
        assert!(matches!(err("https://*.1.2.3.4"), OriginError::Numeric(_)));
    }

    #[test]
    fn ip_literals() {
        let v4 = p("http://127.0.0.1:8080");
        assert_eq!(v4.host(), &HostPattern::Ipv4(Ipv4Addr::LOCALHOST));
        assert!(v4.matches(Scheme::Http, "127.0.0.1", 8080));
        assert!(!v4.matches(Scheme::Http, "127.0.0.2", 8080));
        assert!(!v4.matches(Scheme::Http, "localhost", 8080));
        // Other spellings of the same address are not IPv4 literals.
        assert!(!v4.matches(Scheme::Http, "127.1", 8080));
        assert!(!v4.matches(Scheme::Http, "0x7f.0.0.1", 8080));
        let v6 = p("https://[2001:DB8::1]:8443/");
        assert_eq!(
            v6.host(),
            &HostPattern::Ipv6("2001:db8::1".parse().expect("v6"))
        );
        assert!(v6.matches(Scheme::Https, "[2001:db8::1]", 8443));
        assert!(v6.matches(Scheme::Https, "2001:db8:0::1", 8443));
        assert!(!v6.matches(Scheme::Https, "[2001:db8::2]", 8443));
        assert_eq!(v6.to_string(), "https://[2001:db8::1]:8443");
        assert_eq!(p("http://[::1]").port(), 80);
        assert!(matches!(err("http://::1"), OriginError::Ipv6(_)));
        assert!(matches!(err("http://[::1"), OriginError::Ipv6(_)));
        assert!(matches!(err("http://[::1]8080"), OriginError::Ipv6(_)));
        assert!(matches!(err("http://[nothost]"), OriginError::Ipv6(_)));
        assert!(matches!(err("http://1.2.3"), OriginError::Numeric(_)));
        assert!(matches!(err("http://256.1.1.1"), OriginError::Numeric(_)));
        assert!(matches!(err("http://01.1.1.1"), OriginError::Numeric(_)));
        // A name pattern does not match an address, nor the reverse.
        assert!(!p("http://example.com").matches(Scheme::Http, "93.184.215.14", 80));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        assert_eq!(err("https://api.example.com/v1"), OriginError::Path);
        assert_eq!(err("https://api.example.com\\x"), OriginError::Path);
        assert_eq!(err("https://api.example.com?x=1"), OriginError::Query);
        assert_eq!(err("https://api.example.com/?x"), OriginError::Query);
        assert_eq!(err("https://api.example.com#x"), OriginError::Fragment);
        assert_eq!(err("https://user@api.example.com"), OriginError::UserInfo);
        assert_eq!(err("https://u:p@api.example.com"), OriginError::UserInfo);
        assert_eq!(err("ftp://example.com"), OriginError::Scheme("ftp".into()));
        assert_eq!(err("ws://example.com"), OriginError::Scheme("ws".into()));
        assert_eq!(err("://example.com"), OriginError::Scheme(String::new()));
        assert_eq!(err("example.com"), OriginError::MissingScheme);
        assert_eq!(err("https://"), OriginError::EmptyHost);
        assert_eq!(err("https://:443"), OriginError::EmptyHost);
        assert_eq!(err("https://a.com:"), OriginError::Port(String::new()));
        assert_eq!(err("https://a.com:0"), OriginError::Port("0".into()));
        assert_eq!(
            err("https://a.com:65536"),
            OriginError::Port("65536".into())
        );
        assert_eq!(err("https://a.com:+80"), OriginError::Port("+80".into()));
        assert_eq!(err("https://a.com:8a"), OriginError::Port("8a".into()));
        assert!(matches!(err("https://a..com"), OriginError::EmptyLabel(_)));
        assert!(matches!(err("https://.a.com"), OriginError::EmptyLabel(_)));
        assert!(matches!(err("https://-a.com"), OriginError::InvalidName(_)));
        assert!(matches!(err("https://a-.com"), OriginError::InvalidName(_)));
        assert!(matches!(
            err("https://a_b.com"),
            OriginError::InvalidName(_)
        ));
        assert!(matches!(
            err("https://a b.com"),
            OriginError::InvalidName(_)
        ));
        assert_eq!(err("https://bücher.de"), OriginError::NonAscii('ü'));
        assert_eq!(err("https://a.com\n"), OriginError::NonAscii('\n'));
        assert_eq!(
            err(&format!("https://{}.com", "a".repeat(64))),
            OriginError::LabelTooLong(64)
        );
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(matches!(
            err(&format!("https://{long}")),
            OriginError::NameTooLong(_)
        ));
        assert!(matches!(
            err(&format!("https://{}", "a".repeat(400))),
            OriginError::TooLong(_)
        ));
        // Punycode is fine.
        p("https://xn--bcher-kva.de");
        // Messages say what is wrong.
        assert!(err("https://a.com/x").to_string().contains("path"));
        assert!(err("ftp://a.com").to_string().contains("\"ftp\""));
    }

    #[test]
    fn covers_is_the_ceiling_check() {
        let ceiling = p("https://*.example.com");
        assert!(ceiling.covers(&p("https://api.example.com")));
        assert!(ceiling.covers(&p("https://a.b.example.com")));
        assert!(ceiling.covers(&p("https://*.example.com")));
        assert!(ceiling.covers(&p("https://*.hooks.example.com")));
        assert!(!ceiling.covers(&p("https://example.com")));
        assert!(!ceiling.covers(&p("https://api.example.com:8443")));
        assert!(!ceiling.covers(&p("http://api.example.com")));
        assert!(!ceiling.covers(&p("https://*.com")));
        assert!(!ceiling.covers(&p("https://api.example.org")));
        let exact = p("https://api.example.com");
        assert!(exact.covers(&p("https://API.example.com/")));
        assert!(!exact.covers(&p("https://*.api.example.com")));
        assert!(!exact.covers(&p("https://x.api.example.com")));
        let ip = p("http://127.0.0.1:8080");
        assert!(ip.covers(&p("http://127.0.0.1:8080")));
        assert!(!ip.covers(&p("http://127.0.0.1:8081")));
        assert!(matches!(err("https://*.0.0.1"), OriginError::Numeric(_)));
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("v4"))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("v6"))
    }

    #[test]
    fn ipv4_refused_by_default() {
        for addr in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "192.0.0.8",
            "198.18.0.1",
        ] {
            assert!(is_refused_by_default(v4(addr)), "{addr}");
        }
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.255",
        ] {
            assert!(!is_refused_by_default(v4(addr)), "{addr}");
        }
    }

    #[test]
    fn ipv6_refused_by_default() {
        for addr in [
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "64:ff9b:1::1",
            // Carrying a refused IPv4 address.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.1.2.3",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(is_refused_by_default(v6(addr)), "{addr}");
        }
        for addr in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_refused_by_default(v6(addr)), "{addr}");
        }
    }

    #[test]
    fn allow_private_opens_what_it_covers() {
        let allow: Vec<IpNet> = vec!["127.0.0.1/32".parse().expect("net")];
        assert!(address_permitted(v4("127.0.0.1"), &allow));
        assert!(address_permitted(v6("::ffff:127.0.0.1"), &allow));
        assert!(!address_permitted(v4("127.0.0.2"), &allow));
        assert!(!address_permitted(v6("::1"), &allow));
        assert!(!address_permitted(v4("169.254.169.254"), &allow));
        assert!(address_permitted(v4("8.8.8.8"), &[]));
        assert!(!address_permitted(v4("127.0.0.1"), &[]));
        let v6net: Vec<IpNet> = vec!["::1/128".parse().expect("net")];
        assert!(address_permitted(v6("::1"), &v6net));
    }
}
