//! What an agent may do to its own Node through its Hello, and how often.
//!
//! - Hellos per node are rate-limited (a token bucket per node and replica): a node that
//!   reconnects faster gets `RESOURCE_EXHAUSTED` and retries after its backoff.
//! - A Hello rewrites its Node at most once per `registration_interval`: every write
//!   reaches every agent that sees the Node (and reloads BIRD on every mesh peer), so a
//!   node that keeps changing its registration gets `RESOURCE_EXHAUSTED` until the
//!   interval has passed. A Hello that changes nothing writes nothing and is not limited
//!   by this.
//! - An address the Hello writes must be a usable unicast address of a host, must not
//!   be another Node's address or a BGPPeer's `peerIP`, and must lie inside
//!   `--node-address-cidrs` when that names networks of its family. Addresses already
//!   stored are not checked again (an administrator may have set them).
//!
//! The limits are per replica: agents spread over R replicas get R times the rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use parking_lot::Mutex;
use tern::model::{Cidr, IfAddr, Kind, Resource};
use tonic::Status;
use tracing::warn;

use crate::api::invalid_field;
use crate::cache::Cache;

/// The knobs of [`RegistrationGuard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Hellos a node may send in a burst...
    pub hello_burst: u32,
    /// ...then one per this interval.
    pub hello_interval: Duration,
    /// Shortest time between two rewrites of a node's Node from its Hellos.
    pub registration_interval: Duration,
    /// When not empty, a self-registered address must lie inside one of these networks
    /// of its family (a family without networks here is not constrained).
    pub node_address_cidrs: Vec<Cidr>,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        RegistrationLimits {
            hello_burst: 10,
            hello_interval: Duration::from_secs(5),
            registration_interval: Duration::from_secs(30),
            node_address_cidrs: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct NodeState {
    tokens: f64,
    refilled: Instant,
    last_write: Option<Instant>,
}

/// The per-node state of registrations on this replica.
#[derive(Debug)]
pub struct RegistrationGuard {
    limits: RegistrationLimits,
    cache: Arc<Cache>,
    nodes: Mutex<HashMap<String, NodeState>>,
}

/// Entries are swept when the map grows past this many (plus its size at the last sweep).
const SWEEP_AFTER: usize = 1024;

impl RegistrationGuard {
    pub fn new(limits: RegistrationLimits, cache: Arc<Cache>) -> Self {
        RegistrationGuard {
            limits,
            cache,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        f64::from(self.limits.hello_burst.max(1))
    }

    /// Take a Hello token of `node`, or refuse the Hello.
    pub fn hello(&self, node: &str) -> Result<(), Status> {
        let now = Instant::now();
        let burst = self.burst();
        let per_token = self.limits.hello_interval.as_secs_f64().max(1e-3);
        let mut nodes = self.nodes.lock();
        if nodes.len() >= SWEEP_AFTER && !nodes.contains_key(node) {
            self.sweep(&mut nodes, now);
        }
        let st = nodes.entry(node.to_string()).or_insert(NodeState {
            tokens: burst,
            refilled: now,
            last_write: None,
        });
        st.tokens =
            (st.tokens + now.duration_since(st.refilled).as_secs_f64() / per_token).min(burst);
        st.refilled = now;
        if st.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - st.tokens) * per_token);
            warn!(
                node,
                "Hello refused: the node reconnects faster than its limit"
            );
            return Err(Status::resource_exhausted(format!(
                "node {node:?} said Hello more often than {} times in a row and then once \
                 every {:?}; retry in {:.1}s",
                self.limits.hello_burst.max(1),
                self.limits.hello_interval,
                wait.as_secs_f64()
            )));
        }
        st.tokens -= 1.0;
        Ok(())
    }

    /// Forget nodes whose bucket is full again and whose last write is older than the
    /// registration interval: they are as if never seen.
    fn sweep(&self, nodes: &mut HashMap<String, NodeState>, now: Instant) {
        let full = self.limits.hello_interval.mul_f64(self.burst());
        nodes.retain(|_, st| {
            now.duration_since(st.refilled) < full
                || st
                    .last_write
                    .is_some_and(|t| now.duration_since(t) < self.limits.registration_interval)
        });
    }

    /// Decide whether a Hello may write `new` over `old` (None: the Node is created):
    /// every address it changes is checked, then the node's write rate.
    pub fn admit_write(
        &self,
        node: &str,
        old: Option<&Resource>,
        new: &Resource,
    ) -> Result<(), Status> {
        let stored = old.map(addresses).unwrap_or_default();
        for (field, addr) in addresses(new) {
            if stored.contains(&(field, addr)) {
                continue;
            }
            self.check_address(node, field, addr)?;
        }
        let last = self.nodes.lock().get(node).and_then(|st| st.last_write);
        if let Some(t) = last {
            let since = t.elapsed();
            if since < self.limits.registration_interval {
                warn!(
                    node,
                    "registration refused: the Node was rewritten from a Hello moments ago"
                );
                return Err(Status::resource_exhausted(format!(
                    "node {node:?}: its Node was rewritten from a Hello {:.1}s ago; a node may \
                     change its registration once every {:?}; retry in {:.1}s",
                    since.as_secs_f64(),
                    self.limits.registration_interval,
                    (self.limits.registration_interval - since).as_secs_f64()
                )));
            }
        }
        Ok(())
    }

    /// Record that a Hello wrote the node's Node.
    pub fn wrote(&self, node: &str) {
        let now = Instant::now();
        let burst = self.burst();
        self.nodes
            .lock()
            .entry(node.to_string())
            .or_insert(NodeState {
                tokens: burst,
                refilled: now,
                last_write: None,
            })
            .last_write = Some(now);
    }

    fn check_address(&self, node: &str, field: &'static str, addr: IfAddr) -> Result<(), Status> {
        let field = format!("hello.registration.{field}");
        if let Err(reason) = host_address(addr) {
            warn!(node, %addr, %reason, "registration refused: unusable address");
            return Err(invalid_field(
                &field,
                format!("{addr}: {reason}; a node registers a unicast address of its own"),
            ));
        }
        let ip = addr.addr();
        let cidrs: Vec<IpNet> = self
            .limits
            .node_address_cidrs
            .iter()
            .map(Cidr::net)
            .filter(|n| n.addr().is_ipv4() == ip.is_ipv4())
            .collect();
        if !cidrs.is_empty() && !cidrs.iter().any(|n| n.contains(&ip)) {
            warn!(node, %addr, "registration refused: address outside --node-address-cidrs");
            return Err(Status::permission_denied(format!(
                "{field}: {addr} is outside the networks nodes may register addresses in \
                 ({}; tern-controller --node-address-cidrs)",
                cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(owner) = self.owner_of(node, ip) {
            warn!(node, %addr, %owner, "registration refused: the address belongs to another");
            return Err(Status::permission_denied(format!(
                "{field}: {addr} is the address of {owner}; a node may not register another's \
                 address"
            )));
        }
        Ok(())
    }

    /// Which other Node or which BGPPeer has `ip`, as the cache knows them.
    fn owner_of(&self, node: &str, ip: IpAddr) -> Option<String> {
        self.cache.read(|st| {
            // One pass over the Nodes, without allocating: this runs for every Hello
            // that changes an address (every node's first one).
            let has = |r: &Resource| match r {
                Resource::Node(n) => n.spec.bgp.as_ref().is_some_and(|b| {
                    [b.ipv4_address, b.ipv6_address]
                        .iter()
                        .flatten()
                        .any(|a| a.addr() == ip)
                }),
                _ => false,
            };
            let nodes = st.of_kind(Kind::Node).find_map(|(key, e)| {
                (*key.1 != *node && has(&e.resource)).then(|| format!("Node {}", key.1))
            });
            nodes.or_else(|| {
                st.of_kind(Kind::BGPPeer)
                    .find_map(|(key, e)| match &e.resource {
                        Resource::BGPPeer(p) if p.spec.peer_ip.is_some_and(|a| a.ip == ip) => {
                            Some(format!("the peerIP of BGPPeer {}", key.1))
                        }
                        _ => None,
                    })
            })
        })
    }
}

/// The addresses of a Node, by field of the Hello that sets them.
fn addresses(r: &Resource) -> Vec<(&'static str, IfAddr)> {
    let Resource::Node(n) = r else {
        return Vec::new();
    };
    let Some(b) = &n.spec.bgp else {
        return Vec::new();
    };
    [
        ("ipv4Address", b.ipv4_address),
        ("ipv6Address", b.ipv6_address),
    ]
    .into_iter()
    .filter_map(|(f, a)| a.map(|a| (f, a)))
    .collect()
}

/// Why an address cannot be a host's own unicast address, if it cannot.
pub fn host_address(addr: IfAddr) -> Result<(), String> {
    let ip = addr.addr();
    if ip.is_unspecified() {
        return Err("the unspecified address".into());
    }
    if ip.is_loopback() {
        return Err("a loopback address".into());
    }
    if ip.is_multicast() {
        return Err("a multicast address".into());
    }
    match (ip, addr.net()) {
        (IpAddr::V4(v4), IpNet::V4(net)) => {
            if v4.is_broadcast() {
                return Err("the broadcast address".into());
            }
            if v4.is_link_local() {
                return Err("a link-local address".into());
            }
            // /31 and /32 have neither (RFC 3021).
            if net.prefix_len() < 31 {
                if v4 == net.broadcast() {
                    return Err(format!("the broadcast address of {}", net.trunc()));
                }
                if v4 == net.network() {
                    return Err(format!("the network address of {}", net.trunc()));
                }
            }
        }
        (IpAddr::V6(v6), _) => {
            if v6.is_unicast_link_local() {
                return Err("a link-local address".into());
            }
            if v6.to_ipv4_mapped().is_some() {
                return Err("an IPv4-mapped IPv6 address".into());
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> IfAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_unicast_host_addresses_pass() {
        for ok in [
            "10.0.0.2/24",
            "192.0.2.1/32",
            "10.0.0.0/31",
            "10.0.0.1/31",
            "fd00::2/64",
            "2001:db8::1/128",
        ] {
            assert_eq!(host_address(addr(ok)), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("0.0.0.0/0", "the unspecified address"),
            ("127.0.0.1/8", "a loopback address"),
            ("127.1.2.3/32", "a loopback address"),
            ("224.0.0.5/32", "a multicast address"),
            ("255.255.255.255/32", "the broadcast address"),
            ("10.0.0.255/24", "the broadcast address of 10.0.0.0/24"),
            ("10.0.0.0/24", "the network address of 10.0.0.0/24"),
            ("169.254.3.4/16", "a link-local address"),
            ("::/0", "the unspecified address"),
            ("::1/128", "a loopback address"),
            ("ff02::1/128", "a multicast address"),
            ("fe80::1/64", "a link-local address"),
            ("::ffff:10.0.0.2/128", "an IPv4-mapped IPv6 address"),
        ] {
            assert_eq!(host_address(addr(bad)), Err(why.to_string()), "{bad}");
        }
    }

    #[test]
    fn hellos_and_writes_are_limited_per_node() {
        let guard = RegistrationGuard::new(
            RegistrationLimits {
                hello_burst: 3,
                hello_interval: Duration::from_secs(10),
                registration_interval: Duration::from_secs(60),
                node_address_cidrs: Vec::new(),
            },
            Cache::new(16),
        );
        for _ in 0..3 {
            guard.hello("a").expect("within the burst");
        }
        let e = guard.hello("a").expect_err("past the burst");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        guard.hello("b").expect("another node has its own bucket");
        let node = Resource::Node(tern::model::Object::new("a", Default::default()));
        guard.admit_write("a", None, &node).expect("first write");
        guard.wrote("a");
        let e = guard
            .admit_write("a", Some(&node), &node)
            .expect_err("a second write right after");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("once every 60s"), "{}", e.message());
        guard
            .admit_write("b", None, &node)
            .expect("another node may write");
    }
}
