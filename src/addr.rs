//! Address arithmetic, shared by validation (pool overlap), the controller's IPAM
//! (free blocks, address picking) and the agent's nftables interval sets.
//!
//! An address is handled as a number (its *ordinal*): IPv4 in the low 32 bits of a
//! `u128`, IPv6 as is. A network is the inclusive range of ordinals it covers. Nothing
//! here allocates per address, so `::/0` is as cheap as a `/32`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::model::Family;

/// An address as a number (IPv4 in the low 32 bits).
pub fn ordinal(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// The address of an ordinal; None when it does not fit the family.
pub fn from_ordinal(family: Family, n: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(n).ok().map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// The highest ordinal of a family.
pub fn max_ordinal(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// First and last address of a network (host bits ignored), as ordinals.
pub fn bounds(n: &IpNet) -> (u128, u128) {
    let n = n.trunc();
    (ordinal(n.network()), ordinal(n.broadcast()))
}

/// True when both networks are of one family.
pub fn same_family(a: &IpNet, b: &IpNet) -> bool {
    Family::of_net(a) == Family::of_net(b)
}

/// Number of addresses in a network (saturating for `::/0`).
pub fn size(n: &IpNet) -> u128 {
    let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// A count as u64, saturating (address counts of IPv6 networks exceed it).
pub fn saturating_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// True when two networks share at least one address (never across families).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    if !same_family(a, b) {
        return false;
    }
    let ((a0, a1), (b0, b1)) = (bounds(a), bounds(b));
    a0 <= b1 && b0 <= a1
}

/// An inclusive range of ordinals of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub lo: u128,
    pub hi: u128,
}

impl Interval {
    pub fn of_net(net: &IpNet) -> Interval {
        let (lo, hi) = bounds(net);
        Interval { lo, hi }
    }

    pub fn of_addr(a: IpAddr) -> Interval {
        let v = ordinal(a);
        Interval { lo: v, hi: v }
    }

    /// The prefix length when the range is exactly one CIDR of `family`.
    pub fn prefix_len(&self, family: Family) -> Option<u8> {
        let bits = u32::from(family.max_prefix());
        let max = max_ordinal(family);
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
        u8::try_from(bits - size.trailing_zeros()).ok()
    }

    /// `10.0.0.1`, `10.0.0.0/16` or `10.0.0.0-10.0.2.255` (the notation nft reads).
    pub fn render(&self, family: Family) -> String {
        // Ordinals of a family's interval never exceed its maximum.
        let addr = |v: u128| {
            from_ordinal(family, v.min(max_ordinal(family)))
                .map_or_else(String::new, |a| a.to_string())
        };
        match self.prefix_len(family) {
            Some(len) if len == family.max_prefix() => addr(self.lo),
            Some(len) => format!("{}/{len}", addr(self.lo)),
            None => format!("{}-{}", addr(self.lo), addr(self.hi)),
        }
    }
}

/// Sort and merge overlapping or adjacent intervals into disjoint, non-adjacent ones.
pub fn canonical(items: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    fn iv(s: &str) -> Interval {
        Interval::of_net(&net(s))
    }

    #[test]
    fn ordinals_round_trip_and_respect_the_family() {
        let a: IpAddr = "10.0.0.1".parse().expect("addr");
        assert_eq!(ordinal(a), 0x0a00_0001);
        assert_eq!(from_ordinal(Family::V4, 0x0a00_0001), Some(a));
        assert_eq!(from_ordinal(Family::V4, 1 << 32), None);
        let b: IpAddr = "fd00::1".parse().expect("addr");
        assert_eq!(from_ordinal(Family::V6, ordinal(b)), Some(b));
    }

    #[test]
    fn sizes_and_bounds() {
        assert_eq!(size(&net("10.0.0.0/24")), 256);
        assert_eq!(size(&net("0.0.0.0/0")), 1 << 32);
        assert_eq!(size(&net("::/0")), u128::MAX);
        assert_eq!(saturating_u64(size(&net("fd00::/64"))), u64::MAX);
        // Host bits are ignored.
        assert_eq!(bounds(&net("10.0.0.5/24")), bounds(&net("10.0.0.0/24")));
    }

    #[test]
    fn overlap_is_per_family_and_inclusive() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(overlaps(&net("10.0.0.0/24"), &net("10.0.0.255/32")));
        assert!(!overlaps(&net("10.0.0.0/24"), &net("10.0.1.0/24")));
        assert!(!overlaps(&net("0.0.0.0/0"), &net("::/0")));
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
}
