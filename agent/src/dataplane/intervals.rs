//! Address intervals: the canonical form of an nftables interval set's elements (the
//! arithmetic itself is `tern::addr`, shared with validation and IPAM).
//!
//! Pools may nest or touch (a disabled pool inside another, two adjacent /16s); an
//! nftables interval set without auto-merge refuses overlapping elements, and one with
//! auto-merge lists back something other than what was written. So the driver merges
//! the CIDRs of each set itself into sorted, disjoint, non-adjacent ranges, writes
//! exactly those, and compares read-backs as ranges, whatever notation (`a/len`, `a-b`,
//! `a`) nft prints. Sets are merged and compared one by one: an element never spans two
//! sets, and the same addresses may be in two sets (a pool nested in a pool of the other
//! set).

use std::net::IpAddr;

use ipnet::IpNet;
use tern::addr::ordinal;
pub(crate) use tern::addr::{Interval, canonical};

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
                    lo: ordinal(lo),
                    hi: ordinal(hi),
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
    use tern::model::Family;

    fn iv(s: &str) -> Interval {
        Interval::of_net(&s.parse().expect("net"))
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
