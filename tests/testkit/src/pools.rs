//! Pool CIDRs in numbers, for NAT tests and benchmarks.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

/// Most pools [`spaced_v4`] can make (every other /24 of 10.0.0.0/8).
pub const MAX_SPACED_V4: usize = 32_767;

/// `n` IPv4 /24s that no interval set can merge: every other /24 of 10.0.0.0/8
/// (10.0.0.0/24, 10.0.2.0/24, ...). `n` is capped at [`MAX_SPACED_V4`].
pub fn spaced_v4(n: usize) -> Vec<IpNet> {
    (0..n.min(MAX_SPACED_V4))
        .filter_map(|i| {
            let k = u32::try_from(i * 2).ok()?;
            Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (k << 8)), 24)
                .ok()
                .map(IpNet::V4)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_pools_do_not_touch() {
        let v: Vec<String> = spaced_v4(3).iter().map(ToString::to_string).collect();
        assert_eq!(v, ["10.0.0.0/24", "10.0.2.0/24", "10.0.4.0/24"]);
        let all = spaced_v4(MAX_SPACED_V4 + 10);
        assert_eq!(all.len(), MAX_SPACED_V4);
        assert_eq!(
            all.last().map(ToString::to_string).as_deref(),
            Some("10.255.252.0/24")
        );
    }
}
