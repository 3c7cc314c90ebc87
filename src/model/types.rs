//! Value types shared by the resource kinds: AS numbers, durations, CIDRs, peer
//! addresses, label maps. Each parses from the text Calico accepts and serializes
//! back to a canonical form, with an error message that says what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements Serialize via Display and Deserialize via FromStr for a string-typed value.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A BGP AS number, 1..=4294967295. Accepts a number, a decimal string or asdot
/// notation (`X.Y` = X*65536+Y); serializes as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsNumber(pub u32);

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for AsNumber {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an AS number (1-4294967295, or asdot X.Y)");
        let v: u64 = match s.split_once('.') {
            Some((hi, lo)) => {
                let hi: u64 = hi.parse().map_err(|_| bad())?;
                let lo: u64 = lo.parse().map_err(|_| bad())?;
                if hi > 65535 || lo > 65535 {
                    return Err(bad());
                }
                hi * 65536 + lo
            }
            None => s.trim().parse().map_err(|_| bad())?,
        };
        AsNumber::try_from(v).map_err(|_| bad())
    }
}

impl TryFrom<u64> for AsNumber {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if v == 0 || v > u64::from(u32::MAX) {
            return Err(format!("{v} is not an AS number (1-4294967295)"));
        }
        Ok(AsNumber(v as u32))
    }
}

impl Serialize for AsNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Float(f64),
            Text(String),
        }
        let err = serde::de::Error::custom;
        match Raw::deserialize(d)? {
            Raw::Num(n) => u64::try_from(n)
                .map_err(|_| format!("{n} is not an AS number (1-4294967295)"))
                .and_then(AsNumber::try_from)
                .map_err(err),
            // JSON from protobuf Struct carries numbers as doubles.
            Raw::Float(f) if f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64 => {
                AsNumber::try_from(f as u64).map_err(err)
            }
            Raw::Float(f) => Err(err(format!("{f} is not an AS number (1-4294967295)"))),
            Raw::Text(s) => s.parse().map_err(err),
        }
    }
}

/// A duration written the way Kubernetes and Calico write them: `90s`, `2m`, `1h30m`,
/// `500ms`. Serializes back in the same notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub fn as_secs(&self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a duration (for example 120s, 2m, 1h30m)");
        let t = s.trim();
        if t == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if t.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            let part = Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(GoDuration(total))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            if d.subsec_nanos().is_multiple_of(1_000_000) {
                return write!(f, "{}ms", d.as_millis());
            }
            return write!(f, "{}ns", d.as_nanos());
        }
        let secs = d.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}
string_serde!(GoDuration);

/// An IP network in CIDR notation. Parsing accepts host bits (`10.0.0.1/8`) so that
/// validation can say "not a network address; did you mean 10.0.0.0/8?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
    pub fn family(&self) -> Family {
        Family::of_net(&self.0)
    }
    /// True when there are no host bits set.
    pub fn is_masked(&self) -> bool {
        self.0 == self.0.trunc()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        t.parse::<IpNet>().map(Cidr).map_err(|_| {
            if t.parse::<IpAddr>().is_ok() {
                format!("{s:?} is an address, not a CIDR (add a prefix length, e.g. {t}/32)")
            } else {
                format!("{s:?} is not a CIDR (for example 10.0.0.0/16 or fd00::/48)")
            }
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_serde!(Cidr);

/// An interface address in CIDR form (`10.0.0.2/24`); a plain address is taken as a
/// host route (/32 or /128). Host bits are expected here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr(pub IpNet);

impl IfAddr {
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl FromStr for IfAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<IpNet>() {
            return Ok(IfAddr(n));
        }
        if let Ok(a) = t.parse::<IpAddr>() {
            return Ok(IfAddr(IpNet::from(a)));
        }
        Err(format!(
            "{s:?} is not an address in CIDR form (for example 10.0.0.2/24)"
        ))
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_serde!(IfAddr);

/// A BGP peer address: `IP`, `IP:port` or `[IPv6]:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for PeerAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not a peer address (IP, IP:port or [IPv6]:port)");
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(PeerAddr { ip, port: None });
        }
        if let Ok(sa) = t.parse::<std::net::SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("{s:?}: port 0 is not a valid BGP port"));
            }
            return Ok(PeerAddr {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        Err(bad())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
        }
    }
}
string_serde!(PeerAddr);

/// A plain IP address as a string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ip(pub IpAddr);

impl FromStr for Ip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(Ip)
            .map_err(|_| format!("{s:?} is not an IP address"))
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_serde!(Ip);

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of_net(n: &IpNet) -> Family {
        match n {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
    pub fn of_addr(a: &IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// 4 or 6.
    pub fn number(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
    pub fn from_number(n: u32) -> Option<Family> {
        match n {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// A port range `lo:hi` (Calico's natPortRange also accepts `lo-hi` and a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range (for example 32768:65535)");
        let t = s.trim();
        let (lo, hi) = match t.split_once([':', '-']) {
            Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
            None => (t.parse::<u16>(), t.parse::<u16>()),
        };
        let (lo, hi) = (lo.map_err(|_| bad())?, hi.map_err(|_| bad())?);
        if lo == 0 || lo > hi {
            return Err(format!(
                "{s:?}: the range must be ascending and start above 0"
            ));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.lo, self.hi)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A port range is text (`lo:hi`) or, as Calico's `numorstring.Port` also takes it, a
/// single port number.
impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Num(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// An outgoing-interface match in iptables syntax: a name, or a name prefix ending in
/// `+` (`eth+`: every interface whose name starts with `eth`). The one grammar of
/// `natOutgoingInterfaceFilter` (AgentConfiguration) and
/// `iptablesNATOutgoingInterfaceFilter` (FelixConfiguration), used by validation and
/// by the agent's NAT drivers alike: at most 15 characters of letters, digits, `.`,
/// `_`, `-` and `:` (Calico's set), then at most one `+`, at the end. Nothing else can
/// appear, so the value never needs quoting in an nftables or iptables rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceFilter {
    name: String,
    wildcard: bool,
}

impl InterfaceFilter {
    /// The name, or the prefix of a wildcard filter.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// iptables syntax (`eth+`).
    pub fn iptables(&self) -> String {
        if self.wildcard {
            format!("{}+", self.name)
        } else {
            self.name.clone()
        }
    }

    /// nftables syntax (`eth*`), without quotes.
    pub fn nft(&self) -> String {
        if self.wildcard {
            format!("{}*", self.name)
        } else {
            self.name.clone()
        }
    }
}

impl FromStr for InterfaceFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty (omit the field to NAT on every interface)".into());
        }
        let (name, wildcard) = match s.strip_suffix('+') {
            Some(prefix) => (prefix, true),
            None => (s, false),
        };
        if name.contains('+') {
            return Err(format!(
                "{s:?}: '+' is only allowed once, at the end, as a wildcard (e.g. eth+)"
            ));
        }
        if s.len() > MAX_IFNAME_LEN {
            return Err(format!(
                "{s:?} is longer than {MAX_IFNAME_LEN} characters (the longest interface name)"
            ));
        }
        if !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b':'))
        {
            return Err(format!(
                "{s:?} is not an interface name: use letters, digits, '_', '.', '-', ':' and \
                 a trailing '+' as a wildcard"
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("{s:?} is not an interface name"));
        }
        Ok(InterfaceFilter {
            name: name.to_string(),
            wildcard,
        })
    }
}

impl fmt::Display for InterfaceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iptables())
    }
}
string_serde!(InterfaceFilter);

/// Deserialize a label map whose values may be written as YAML scalars
/// (`routeReflector: true`, `rack: 12`): every value becomes its string form.
pub fn deserialize_labels<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw.unwrap_or_default() {
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => String::new(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "label {k:?}: value must be a string, not {other}"
                )));
            }
        };
        out.insert(k, s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_numbers() {
        assert_eq!("64512".parse::<AsNumber>(), Ok(AsNumber(64512)));
        assert_eq!("1.10".parse::<AsNumber>(), Ok(AsNumber(65546)));
        assert_eq!("4294967295".parse::<AsNumber>(), Ok(AsNumber(u32::MAX)));
        assert!("0".parse::<AsNumber>().is_err());
        assert!("4294967296".parse::<AsNumber>().is_err());
        assert!("1.65536".parse::<AsNumber>().is_err());
        assert!("x".parse::<AsNumber>().is_err());
        let a: AsNumber = serde_json::from_str("64512").expect("number");
        assert_eq!(a, AsNumber(64512));
        let a: AsNumber = serde_json::from_str("64512.0").expect("double from Struct");
        assert_eq!(a, AsNumber(64512));
        let a: AsNumber = serde_json::from_str("\"2.1\"").expect("asdot");
        assert_eq!(a, AsNumber(131073));
        assert!(serde_json::from_str::<AsNumber>("-1").is_err());
        assert!(serde_json::from_str::<AsNumber>("1.5").is_err());
    }

    #[test]
    fn durations() {
        for (text, secs, back) in [
            ("120s", 120, "2m"),
            ("2m", 120, "2m"),
            ("1h30m", 5400, "1h30m"),
            ("90s", 90, "1m30s"),
            ("0", 0, "0s"),
        ] {
            let d: GoDuration = text.parse().expect(text);
            assert_eq!(d.as_secs(), secs, "{text}");
            assert_eq!(d.to_string(), back);
        }
        assert_eq!(
            "500ms".parse::<GoDuration>().map(|d| d.0),
            Ok(Duration::from_millis(500))
        );
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "1.2.3s",
            "99999999999999999999999h",
            "10000000000000000000s10000000000000000000s",
        ] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_addresses() {
        let p: PeerAddr = "10.0.0.1".parse().expect("v4");
        assert_eq!((p.ip.to_string(), p.port), ("10.0.0.1".into(), None));
        let p: PeerAddr = "10.0.0.1:1790".parse().expect("v4 port");
        assert_eq!(p.port, Some(1790));
        assert_eq!(p.to_string(), "10.0.0.1:1790");
        let p: PeerAddr = "[ac13::57]:50".parse().expect("v6 port");
        assert_eq!((p.ip.to_string(), p.port), ("ac13::57".into(), Some(50)));
        assert_eq!(p.to_string(), "[ac13::57]:50");
        let p: PeerAddr = "ac13::57".parse().expect("v6");
        assert_eq!(p.port, None);
        for bad in ["10.0.0.1:0", "10.0.0.300", "ac13::57:50x", "host:179", ""] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ranges() {
        let c: Cidr = "10.0.0.1/8".parse().expect("host bits parse");
        assert!(!c.is_masked());
        let c: Cidr = "9000:0::0/64".parse().expect("v6");
        assert_eq!(c.to_string(), "9000::/64");
        assert!(
            "10.0.0.1"
                .parse::<Cidr>()
                .expect_err("no prefix")
                .contains("is an address")
        );
        let a: IfAddr = "10.0.0.2".parse().expect("plain address");
        assert_eq!(a.to_string(), "10.0.0.2/32");
        assert_eq!(
            "1024:2048".parse::<PortRange>(),
            Ok(PortRange { lo: 1024, hi: 2048 })
        );
        assert_eq!(
            "1024-2048".parse::<PortRange>(),
            Ok(PortRange { lo: 1024, hi: 2048 })
        );
        assert!("2048:1024".parse::<PortRange>().is_err());
        let one: PortRange = serde_json::from_str("8080").expect("a number is one port");
        assert_eq!(one, PortRange { lo: 8080, hi: 8080 });
        assert!("0:10".parse::<PortRange>().is_err());
    }

    #[test]
    fn interface_filters() {
        for (text, name, wildcard, nft) in [
            ("eth0", "eth0", false, "eth0"),
            ("eth+", "eth", true, "eth*"),
            ("+", "", true, "*"),
            ("bond0.100", "bond0.100", false, "bond0.100"),
            ("eth0:1", "eth0:1", false, "eth0:1"),
            ("a-very-long-if+", "a-very-long-if", true, "a-very-long-if*"),
        ] {
            let f: InterfaceFilter = text.parse().expect(text);
            assert_eq!(
                (f.name(), f.is_wildcard(), f.nft()),
                (name, wildcard, nft.to_string())
            );
            assert_eq!(f.to_string(), text);
        }
        for (bad, why) in [
            ("", "must not be empty"),
            ("e+th", "only allowed once, at the end"),
            ("eth++", "only allowed once, at the end"),
            ("veth@if5", "is not an interface name"),
            ("eth 0", "is not an interface name"),
            ("eth\"", "is not an interface name"),
            ("..", "is not an interface name"),
            ("a-very-long-ifname", "longer than 15"),
        ] {
            let e = bad.parse::<InterfaceFilter>().expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_accept_scalars() {
        #[derive(Deserialize)]
        struct M {
            #[serde(deserialize_with = "deserialize_labels")]
            labels: BTreeMap<String, String>,
        }
        let m: M =
            crate::manifest::from_str("labels:\n  routeReflector: true\n  rack: 12\n  zone: a\n")
                .expect("scalars");
        assert_eq!(m.labels["routeReflector"], "true");
        assert_eq!(m.labels["rack"], "12");
        assert!(crate::manifest::from_str::<M>("labels:\n  a: [1]\n").is_err());
    }
}
