//! Address intervals: the canonical form of an nftables interval set's elements.
//!
//! Pools may nest or touch (a disabled pool inside another, two adjacent /16s); an
//! nftables interval set without auto-merge refuses overlapping elements, and one with
//! auto-merge lists back something other than what was written. So the driver merges
//! the CIDRs of each set itself into sorted, disjoint, non-adjacent ranges, writes
//! exactly those, and compares read-backs as ranges, whatever notation (`a/len`, `a-b`,
//! `a`) nft prints. Sets are merged and compared one by one: an element never spans two
//! sets, and the same addresses may be in two sets (a pool nested in a pool of the other
//! set).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use tern::model::Family;

/// An inclusive range of addresses of one family (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Interval {
    pub lo: u128,
    pub hi: u128,
}

fn max_of(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn to_addr(family: Family, v: u128) -> IpAddr {
    match family {
        // Values of an IPv4 interval never exceed u32::MAX (see max_of).
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl Interval {
    pub fn of_net(net: &IpNet) -> Interval {
        let net = net.trunc();
        Interval {
            lo: to_u128(net.network()),
            hi: to_u128(net.broadcast()),
        }
    }

    pub fn of_addr(a: IpAddr) -> Interval {
        let v = to_u128(a);
        Interval { lo: v, hi: v }
    }

    /// The prefix length when the range is exactly one CIDR.
    fn prefix_len(&self, family: Family) -> Option<u8> {
        let bits = u32::from(family.max_prefix());
        let max = max_of(family);
        if self.lo > self.hi || self.hi > max {
            return None;
        }
        if self.lo == 0 && self.hi == max {
            return Some(0);
        }
        let size = self.hi - self.lo + 1;
        if !size.is_power_of_two() || !self.lo.is_multiple_of(size) {
            return None;
        }
        let host_bits = size.trailing_zeros();
        u8::try_from(bits - host_bits).ok()
    }

    /// nft notation: `10.0.0.1`, `10.0.0.0/16` or `10.0.0.0-10.0.2.255`.
    pub fn render(&self, family: Family) -> String {
        let lo = to_addr(family, self.lo);
        match self.prefix_len(family) {
            Some(len) if len == family.max_prefix() => lo.to_string(),
            Some(len) => format!("{lo}/{len}"),
            None => format!("{lo}-{}", to_addr(family, self.hi)),
        }
    }
}

/// Sort and merge overlapping or adjacent intervals.
pub(crate) fn canonical(items: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut v: Vec<Interval> = items.into_iter().collect();
    v.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for iv in v {
        match out.last_mut() {
            Some(last) if iv.lo <= last.hi.saturating_add(1) => {
                last.hi = last.hi.max(iv.hi);
            }
            _ => out.push(iv),
        }
    }
    out
}

pub(crate) fn of_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Vec<Interval> {
    canonical(nets.into_iter().map(Interval::of_net))
}

pub(crate) fn of_addrs<'a>(addrs: impl IntoIterator<Item = &'a IpAddr>) -> Vec<Interval> {
    canonical(addrs.into_iter().map(|a| Interval::of_addr(*a)))
}

/// Parse one element of an nft JSON set listing: `"10.0.0.1"`,
/// `{"prefix": {"addr": "10.0.0.0", "len": 16}}`, `{"range": ["a", "b"]}`, or any of
/// them wrapped in `{"elem": {"val": ...}}`.
pub(crate) fn parse_json_elem(v: &serde_json::Value) -> Option<Interval> {
    use serde_json::Value;
    match v {
        Value::String(s) => s.parse::<IpAddr>().ok().map(Interval::of_addr),
        Value::Object(m) => {
            if let Some(p) = m.get("prefix") {
                let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                let net = IpNet::new(addr, len).ok()?;
                Some(Interval::of_net(&net))
            } else if let Some(Value::Array(r)) = m.get("range") {
                let lo: IpAddr = r.first()?.as_str()?.parse().ok()?;
                let hi: IpAddr = r.get(1)?.as_str()?.parse().ok()?;
                if lo.is_ipv4() != hi.is_ipv4() {
                    return None;
                }
                Some(Interval {
                    lo: to_u128(lo),
                    hi: to_u128(hi),
                })
            } else if let Some(e) = m.get("elem") {
                parse_json_elem(e.get("val")?)
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(s: &str) -> Interval {
        Interval::of_net(&s.parse().expect("net"))
    }

    #[test]
    fn merges_nested_and_adjacent() {
        let c = canonical([
            iv("10.1.0.0/16"),
            iv("10.0.0.0/16"),
            iv("10.0.5.0/24"),
            iv("10.9.0.0/16"),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].render(Family::V4), "10.0.0.0/15");
        assert_eq!(c[1].render(Family::V4), "10.9.0.0/16");
        let c = canonical([iv("10.1.0.0/16"), iv("10.2.0.0/16")]);
        assert_eq!(c[0].render(Family::V4), "10.1.0.0-10.2.255.255");
    }

    #[test]
    fn renders_edges() {
        assert_eq!(iv("0.0.0.0/0").render(Family::V4), "0.0.0.0/0");
        assert_eq!(iv("::/0").render(Family::V6), "::/0");
        assert_eq!(iv("10.0.0.1/32").render(Family::V4), "10.0.0.1");
        assert_eq!(iv("fd00::/48").render(Family::V6), "fd00::/48");
        assert_eq!(
            iv("255.255.255.255/32").render(Family::V4),
            "255.255.255.255"
        );
        let c = canonical([iv("ffff::/16"), iv("::/1")]);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn parses_nft_json_elements() {
        let j: serde_json::Value = serde_json::from_str(
            r#"["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}},
               {"range": ["10.2.0.1", "10.2.0.9"]},
               {"elem": {"val": {"prefix": {"addr": "fd00::", "len": 48}}, "comment": "x"}},
               {"what": 1}, 7]"#,
        )
        .expect("json");
        let got: Vec<Option<Interval>> = j
            .as_array()
            .expect("array")
            .iter()
            .map(parse_json_elem)
            .collect();
        assert_eq!(got[0], Some(iv("10.0.0.1/32")));
        assert_eq!(got[1], Some(iv("10.1.0.0/16")));
        assert_eq!(
            got[2].map(|i| i.render(Family::V4)).as_deref(),
            Some("10.2.0.1-10.2.0.9")
        );
        assert_eq!(got[3], Some(iv("fd00::/48")));
        assert_eq!(got[4], None);
        assert_eq!(got[5], None);
    }
}
