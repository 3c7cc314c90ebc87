//! Semantic validation of resources, on top of parsing: Calico's rules, each error
//! naming the field path and the reason (`spec.cidr: 10.0.0.1/8 is not a network
//! address; did you mean 10.0.0.0/8?`).
//!
//! - [`validate`]: the rules of one object. Run it on a normalized resource
//!   ([`Resource::normalize`]), so that defaults (blockSize, encapsulation modes,
//!   allowedUses) are checked like values that were written out.
//! - [`validate_update`]: the rules of a change (immutable fields).
//! - [`check_pool_overlap`]: the cross-resource rule between IP pools; the store runs
//!   it against the pools read at one revision.
//!
//! Every rule reports every violation it finds; nothing here panics on any input.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::{
    AgentConfiguration, AllowedUse, BFDProfile, BGPConfiguration, BGPFilter, BGPFilterRule,
    BGPPassword, BGPPeer, BlockAffinity, Cidr, EncapMode, Family, FelixConfiguration, FieldError,
    FilterAction, GoDuration, IPPool, IPReservation, Kind, Node, ObjectMeta, Resource, Secret,
    SessionOptions, SourceAddress, check_name,
};

/// Block sizes (prefix lengths) an IPv4 pool may use.
pub const BLOCK_SIZES_V4: RangeInclusive<u8> = 20..=32;
/// Block sizes (prefix lengths) an IPv6 pool may use.
pub const BLOCK_SIZES_V6: RangeInclusive<u8> = 116..=128;

/// IPv4 link-local addresses: never pool addresses.
pub const LINK_LOCAL_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16);
/// IPv6 link-local addresses: never pool addresses.
pub const LINK_LOCAL_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10);

/// BGP graceful restart time (RFC 4724: a 12-bit number of seconds).
const RESTART_TIME_SECS: RangeInclusive<u64> = 1..=4095;
/// BGP keepalive time. BIRD requires it to be at most the hold time, whose default
/// (240 s) tern does not change.
const KEEPALIVE_TIME_SECS: RangeInclusive<u64> = 1..=240;
/// A kernel route metric Calico accepts as a route priority.
const ROUTE_PRIORITY: RangeInclusive<u32> = 1..=2_147_483_646;
/// `allow local as N`: an AS_PATH segment holds at most 255 AS numbers.
const MAX_ALLOWED_LOCAL_AS: u32 = 255;
/// The total size of a Secret's data: base64 in the stored document (4/3 of this)
/// stays within the 512 KiB every stored resource is limited to.
const MAX_SECRET_BYTES: usize = 384 * 1024;
/// Kubernetes' limit on the total size of an object's annotations.
const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
/// Longest label value and name part of a qualified name (Kubernetes).
const MAX_LABEL_LEN: usize = 63;
use crate::model::MAX_IFNAME_LEN;

/// Every rule an object or a change broke, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError(pub Vec<FieldError>);

impl ValidationError {
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<FieldError> for ValidationError {
    fn from(e: FieldError) -> Self {
        ValidationError(vec![e])
    }
}

/// Collects the errors of one validation run.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(reason) = result {
            self.add(field, reason);
        }
    }

    fn finish(self) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(self.0))
        }
    }
}

/// Validate one object. Run it on a normalized resource.
pub fn validate(r: &Resource) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    metadata(r.kind(), r.metadata(), &mut e);
    match r {
        Resource::IPPool(p) => ippool(p, &mut e),
        Resource::BGPPeer(p) => bgp_peer(p, &mut e),
        Resource::BGPConfiguration(c) => bgp_configuration(c, &mut e),
        Resource::BGPFilter(f) => bgp_filter(f, &mut e),
        Resource::Node(n) => node(n, &mut e),
        Resource::BlockAffinity(b) => block_affinity(b, &mut e),
        Resource::AgentConfiguration(c) => agent_configuration(c, &mut e),
        Resource::Secret(s) => secret(s, &mut e),
        Resource::BFDProfile(p) => bfd_profile(p, &mut e),
        Resource::IPReservation(r) => ip_reservation(r, &mut e),
        Resource::FelixConfiguration(c) => felix_configuration(c, &mut e),
    }
    e.finish()
}

/// Validate a change from the stored object `old` to `new`: the kind and name stay,
/// and immutable fields keep their values (IPPool `cidr` and `blockSize`,
/// BlockAffinity `cidr` and `node`). Both objects are expected normalized; `new`
/// is validated on its own with [`validate`].
pub fn validate_update(old: &Resource, new: &Resource) -> Result<(), ValidationError> {
    let mut e = Errors::default();
    if old.kind() != new.kind() {
        e.add(
            "kind",
            format!(
                "field is immutable (was {}, now {})",
                old.kind(),
                new.kind()
            ),
        );
        return e.finish();
    }
    if old.name() != new.name() {
        e.add(
            "metadata.name",
            format!("field is immutable (was {})", old.name()),
        );
    }
    match (old, new) {
        (Resource::IPPool(o), Resource::IPPool(n)) => {
            if o.spec.cidr != n.spec.cidr {
                e.add(
                    "spec.cidr",
                    format!("field is immutable (was {})", o.spec.cidr),
                );
            }
            if o.spec.block_size() != n.spec.block_size() {
                e.add(
                    "spec.blockSize",
                    format!("field is immutable (was {})", o.spec.block_size()),
                );
            }
        }
        (Resource::BlockAffinity(o), Resource::BlockAffinity(n)) => {
            if o.spec.cidr != n.spec.cidr {
                e.add(
                    "spec.cidr",
                    format!("field is immutable (was {})", o.spec.cidr),
                );
            }
            if o.spec.node != n.spec.node {
                e.add(
                    "spec.node",
                    format!("field is immutable (was {})", o.spec.node),
                );
            }
        }
        _ => {}
    }
    e.finish()
}

/// The cross-resource rule of IP pools: `pool` must not overlap any of `others`
/// (the pool with the same name, i.e. `pool`'s stored version, is skipped). The
/// error names the first pool it overlaps and that pool's CIDR.
pub fn check_pool_overlap<'a>(
    pool: &IPPool,
    others: impl IntoIterator<Item = &'a IPPool>,
) -> Result<(), FieldError> {
    let net = pool.spec.cidr.net().trunc();
    for other in others {
        if other.metadata.name == pool.metadata.name {
            continue;
        }
        if crate::addr::overlaps(&net, &other.spec.cidr.net().trunc()) {
            return Err(FieldError::new(
                "spec.cidr",
                format!(
                    "{} overlaps IPPool {:?} ({}); pools must not overlap",
                    pool.spec.cidr,
                    other.name(),
                    other.spec.cidr
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Shared checks

fn link_local(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(LINK_LOCAL_V4),
        Family::V6 => IpNet::V6(LINK_LOCAL_V6),
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// A CIDR must be a network address: no host bits set.
fn masked(c: &Cidr) -> Result<(), String> {
    if c.is_masked() {
        Ok(())
    } else {
        Err(format!(
            "{c} is not a network address; did you mean {}?",
            c.net().trunc()
        ))
    }
}

/// Metadata of every kind: the name (with the `default` / `node.<name>` rule for
/// per-node configuration kinds), label keys and values, annotation keys and size.
fn metadata(kind: Kind, m: &ObjectMeta, e: &mut Errors) {
    let name_check = if kind.is_per_node_config() {
        per_node_config_name(kind, &m.name)
    } else {
        check_name(&m.name)
    };
    e.check("metadata.name", name_check);
    for (k, v) in &m.labels {
        e.check(
            format!("metadata.labels.{k}"),
            qualified_name(k).map_err(|r| format!("label key {k:?} is not valid: {r}")),
        );
        e.check(format!("metadata.labels.{k}"), label_value(v));
    }
    let mut size = 0usize;
    for (k, v) in &m.annotations {
        e.check(
            format!("metadata.annotations.{k}"),
            qualified_name(&k.to_ascii_lowercase())
                .map_err(|r| format!("annotation key {k:?} is not valid: {r}")),
        );
        size = size.saturating_add(k.len()).saturating_add(v.len());
    }
    if size > MAX_ANNOTATION_BYTES {
        e.add(
            "metadata.annotations",
            format!("the annotations total {size} bytes; the limit is {MAX_ANNOTATION_BYTES}"),
        );
    }
}

/// `default` or `node.<nodename>`.
fn per_node_config_name(kind: Kind, name: &str) -> Result<(), String> {
    if name == "default" {
        return Ok(());
    }
    if let Some(node) = name.strip_prefix("node.") {
        return check_name(node)
            .map_err(|r| format!("{name:?}: the node name after \"node.\" is not valid: {r}"));
    }
    if name.is_empty() {
        return Err("required".into());
    }
    Err(format!(
        "{name:?} is not a valid {kind} name: use \"default\" (cluster-wide) or \
         \"node.<nodename>\" (one node)"
    ))
}

/// A Kubernetes qualified name: `[prefix/]name`, the prefix a DNS subdomain, the
/// name at most 63 characters of alphanumerics, `-`, `_` and `.`, starting and
/// ending with an alphanumeric.
fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("the prefix before '/' must not be empty".into());
        }
        if name.contains('/') {
            return Err("at most one '/' is allowed".into());
        }
        check_name(p).map_err(|r| format!("the prefix is not a DNS subdomain: {r}"))?;
    }
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    if name.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the name part must be at most {MAX_LABEL_LEN} characters"
        ));
    }
    if !label_text(name) {
        return Err(
            "use alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric \
             (e.g. 'rack', 'example.com/rack')"
                .into(),
        );
    }
    Ok(())
}

/// A Kubernetes label value: empty, or at most 63 characters of alphanumerics, `-`,
/// `_` and `.`, starting and ending with an alphanumeric.
fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label value {v:?} is longer than {MAX_LABEL_LEN} characters"
        ));
    }
    if !label_text(v) {
        return Err(format!(
            "label value {v:?} is not valid: use alphanumerics, '-', '_' and '.', starting \
             and ending with an alphanumeric"
        ));
    }
    Ok(())
}

fn label_text(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() && b.iter().all(inner)
        }
        _ => false,
    }
}

/// A Secret key (Kubernetes): alphanumerics, `-`, `_` and `.`, not `.` or `..`.
fn secret_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("required".into());
    }
    if key.len() > 253 {
        return Err(format!("key {key:?} is longer than 253 characters"));
    }
    if !key
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "key {key:?} is not valid: use alphanumerics, '-', '_' and '.'"
        ));
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err(format!(
            "key {key:?} is not valid: it must not be '.' or start with '..'"
        ));
    }
    Ok(())
}

/// `password.secretKeyRef`: both the Secret's name and the key are required.
fn password(field: &str, p: &BGPPassword, e: &mut Errors) {
    let Some(r) = &p.secret_key_ref else {
        e.add(
            format!("{field}.secretKeyRef"),
            "required: the password comes from a Secret ({name, key})",
        );
        return;
    };
    e.check(format!("{field}.secretKeyRef.name"), check_name(&r.name));
    e.check(format!("{field}.secretKeyRef.key"), secret_key(&r.key));
}

/// A duration BIRD takes as whole seconds within `range`.
fn whole_seconds(d: &GoDuration, range: &RangeInclusive<u64>, what: &str) -> Result<(), String> {
    if d.0.subsec_nanos() != 0 {
        return Err(format!(
            "{d} is not a whole number of seconds (BIRD takes seconds)"
        ));
    }
    let secs = d.as_secs();
    if !range.contains(&secs) {
        return Err(format!(
            "{d} is out of range: the {what} must be between {}s and {}s",
            range.start(),
            range.end()
        ));
    }
    Ok(())
}

/// A BGP community value: `Some(Ok)` for a valid `aa:nn` (16-bit parts) or
/// `aa:nn:mm` (32-bit parts), `Some(Err)` for that shape with parts out of range,
/// `None` when the text does not have that shape at all.
fn community_value(s: &str) -> Option<Result<(), String>> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let large = parts.len() == 3;
    let max = if large {
        u64::from(u32::MAX)
    } else {
        u64::from(u16::MAX)
    };
    let in_range = parts
        .iter()
        .all(|p| p.parse::<u64>().is_ok_and(|v| v <= max));
    Some(if in_range {
        Ok(())
    } else if large {
        Err(format!(
            "{s:?}: each part of a large community aa:nn:mm must be 0-4294967295"
        ))
    } else {
        Err(format!(
            "{s:?}: each part of a standard community aa:nn must be 0-65535"
        ))
    })
}

fn community_literal(s: &str) -> Result<(), String> {
    community_value(s).unwrap_or_else(|| {
        Err(format!(
            "{s:?} is not a community value (aa:nn, or aa:nn:mm for a large community)"
        ))
    })
}

/// An interface name pattern as BIRD and Calico take it: 1-15 characters of
/// alphanumerics, `_`, `.`, `-` and the wildcard `*`.
fn bird_interface_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{s:?} is longer than {MAX_IFNAME_LEN} characters (the longest interface name)"
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'*'))
    {
        return Err(format!(
            "{s:?} is not an interface name pattern: use alphanumerics, '_', '.', '-' \
             and '*' as a wildcard"
        ));
    }
    Ok(())
}

fn unicast(ip: &IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!("{ip} is the unspecified address"));
    }
    if ip.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// IPPool

fn ippool(p: &IPPool, e: &mut Errors) {
    let s = &p.spec;
    if s.ipip.is_some() {
        e.add(
            "spec.ipip",
            "Calico v1's IPIP settings are not accepted in v3: use ipipMode",
        );
    }
    if s.nat_outgoing_v1 {
        e.add(
            "spec.nat-outgoing",
            "Calico v1's nat-outgoing is not accepted in v3: use natOutgoing",
        );
    }
    let family = s.family();
    let net = s.cidr.net();
    e.check("spec.cidr", masked(&s.cidr));

    let ll = link_local(family);
    let trunc = net.trunc();
    if trunc.contains(&ll) {
        e.add(
            "spec.cidr",
            format!("{net} contains the link-local range {ll}, which cannot hold pool addresses"),
        );
    } else if ll.contains(&trunc) {
        e.add(
            "spec.cidr",
            format!("{net} is inside the link-local range {ll}, which cannot hold pool addresses"),
        );
    }

    let bs = s.block_size();
    let range = match family {
        Family::V4 => BLOCK_SIZES_V4,
        Family::V6 => BLOCK_SIZES_V6,
    };
    if !range.contains(&bs) {
        e.add(
            "spec.blockSize",
            format!(
                "{bs} is out of range for an {} pool: use {}-{}",
                family_name(family),
                range.start(),
                range.end()
            ),
        );
    } else if !s.disabled && net.prefix_len() > bs {
        // As Calico: a disabled pool hands out no blocks, so it may be smaller.
        e.add(
            "spec.cidr",
            format!(
                "{net} is smaller than one block of /{bs} (blockSize): use a prefix length of \
                 at most /{bs}, or a blockSize of at least {}",
                net.prefix_len()
            ),
        );
    }

    let ipip = s.ipip_mode();
    let vxlan = s.vxlan_mode();
    if family == Family::V6 && ipip != EncapMode::Never {
        e.add(
            "spec.ipipMode",
            "IPIP is not supported on an IPv6 pool: use Never (VXLAN works on IPv6)",
        );
    }
    if ipip != EncapMode::Never && vxlan != EncapMode::Never {
        e.add(
            "spec.ipipMode",
            "ipipMode and vxlanMode cannot both be enabled: set one of them to Never",
        );
    }

    let mut seen = BTreeSet::new();
    for (i, u) in s.allowed_uses.iter().enumerate() {
        if !seen.insert(*u) {
            e.add(
                format!("spec.allowedUses[{i}]"),
                format!("{u:?} is listed more than once"),
            );
        }
    }
    if seen.contains(&AllowedUse::LoadBalancer) {
        for (i, u) in s.allowed_uses.iter().enumerate() {
            if matches!(u, AllowedUse::Workload | AllowedUse::Tunnel) {
                e.add(
                    format!("spec.allowedUses[{i}]"),
                    format!("LoadBalancer cannot be combined with {u:?}"),
                );
            }
        }
        if ipip != EncapMode::Never || vxlan != EncapMode::Never {
            e.add(
                "spec.allowedUses",
                "a LoadBalancer pool cannot use IPIP or VXLAN: set ipipMode and vxlanMode to Never",
            );
        }
        if s.disable_bgp_export {
            e.add(
                "spec.disableBGPExport",
                "must be false on a LoadBalancer pool (its addresses are advertised over BGP)",
            );
        }
        if !s.node_selector.is_all() {
            e.add(
                "spec.nodeSelector",
                format!(
                    "must be all() on a LoadBalancer pool, not {:?}",
                    s.node_selector.as_str()
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// BGPPeer

fn bgp_peer(p: &BGPPeer, e: &mut Errors) {
    let s = &p.spec;
    if !s.node.is_empty() {
        e.check("spec.node", check_name(&s.node));
        if !s.node_selector.is_empty() {
            e.add(
                "spec.node",
                "node and nodeSelector cannot both be set (node names one node, nodeSelector \
                 picks nodes by label; neither makes a global peer)",
            );
        }
    }

    let workloads = !s.local_workload_selector.is_empty();
    match (&s.peer_ip, s.peer_selector.is_empty()) {
        (Some(_), false) => e.add(
            "spec.peerIP",
            "peerIP and peerSelector cannot both be set (peerIP names an outside peer, \
             peerSelector peers with other nodes)",
        ),
        (None, true) if !workloads => e.add(
            "spec.peerIP",
            "one of peerIP, peerSelector or localWorkloadSelector is required",
        ),
        _ => {}
    }
    if workloads {
        if s.peer_ip.is_some() || !s.peer_selector.is_empty() {
            e.add(
                "spec.localWorkloadSelector",
                "cannot be set together with peerIP or peerSelector",
            );
        }
        if s.as_number.is_none() {
            e.add(
                "spec.asNumber",
                "required with localWorkloadSelector (the workloads' AS number)",
            );
        }
    }
    // As in Calico, a peerIP without asNumber is allowed: when the address is a node's,
    // that node's AS is used; otherwise the cluster's AS (an iBGP session).
    if !s.peer_selector.is_empty() && s.as_number.is_some() {
        e.add(
            "spec.asNumber",
            "must be empty with peerSelector (each selected node's own AS number is used)",
        );
    }

    if let Some(pw) = &s.password {
        password("spec.password", pw, e);
    }

    if s.keep_original_next_hop && s.next_hop_mode.is_some() {
        e.add(
            "spec.keepOriginalNextHop",
            "cannot be set together with nextHopMode (keepOriginalNextHop: true is the older \
             form of nextHopMode: Keep)",
        );
    }

    if let Some(d) = &s.max_restart_time {
        e.check(
            "spec.maxRestartTime",
            whole_seconds(d, &RESTART_TIME_SECS, "graceful restart time"),
        );
    }
    if let Some(d) = &s.keepalive_time
        && s.hold_time.is_none()
    {
        e.check(
            "spec.keepaliveTime",
            whole_seconds(
                d,
                &KEEPALIVE_TIME_SECS,
                "keepalive time (at most BIRD's hold time)",
            ),
        );
    }
    if let Some(n) = s.num_allowed_local_as_numbers
        && n > MAX_ALLOWED_LOCAL_AS
    {
        e.add(
            "spec.numAllowedLocalASNumbers",
            format!("{n} is out of range: use 0-{MAX_ALLOWED_LOCAL_AS}"),
        );
    }
    if s.ttl_security == Some(0) {
        e.add(
            "spec.ttlSecurity",
            "must be 1-255 (the number of hops to the peer); omit it to turn TTL security off",
        );
    }

    if let Some(via) = &s.reachable_by {
        match &s.peer_ip {
            None => e.add("spec.reachableBy", "requires peerIP"),
            Some(peer) => {
                let (pf, vf) = (Family::of_addr(&peer.ip), Family::of_addr(&via.0));
                if pf != vf {
                    e.add(
                        "spec.reachableBy",
                        format!(
                            "{} is an {} address but peerIP {} is {}: both must be of one family",
                            via,
                            family_name(vf),
                            peer,
                            family_name(pf)
                        ),
                    );
                }
            }
        }
    }

    for (i, f) in s.filters.iter().enumerate() {
        e.check(
            format!("spec.filters[{i}]"),
            check_name(f).map_err(|r| format!("not a BGPFilter name: {r}")),
        );
    }

    session_options(&s.session_options(), "spec.", "", e);
    if !s.bfd_profile.is_empty() && s.source_address() == SourceAddress::None {
        e.add(
            "spec.bfdProfile",
            "BFD needs a source address (BIRD runs multihop BFD, which requires one): \
             leave sourceAddress at UseNodeIP",
        );
    }
}

// ---------------------------------------------------------------------------------
// BGPConfiguration

fn bgp_configuration(c: &BGPConfiguration, e: &mut Errors) {
    let s = &c.spec;
    let global = c.metadata.name == "default";

    if !global {
        let only_default = |field: &str| {
            format!(
                "{field} is cluster-wide: set it in the BGPConfiguration \"default\", not in a \
                 per-node one"
            )
        };
        if s.node_to_node_mesh_enabled.is_some() {
            e.add(
                "spec.nodeToNodeMeshEnabled",
                only_default("nodeToNodeMeshEnabled"),
            );
        }
        if s.as_number.is_some() {
            e.add(
                "spec.asNumber",
                "the cluster-wide AS number is set in the BGPConfiguration \"default\"; set a \
                 node's own AS in its Node resource (spec.bgp.asNumber)",
            );
        }
        for (field, list) in [
            ("serviceClusterIPs", &s.service_cluster_ips),
            ("serviceExternalIPs", &s.service_external_ips),
            ("serviceLoadBalancerIPs", &s.service_load_balancer_ips),
        ] {
            if !list.is_empty() {
                e.add(format!("spec.{field}"), only_default(field));
            }
        }
        if s.node_mesh_password.is_some() {
            e.add("spec.nodeMeshPassword", only_default("nodeMeshPassword"));
        }
        if s.node_mesh_max_restart_time.is_some() {
            e.add(
                "spec.nodeMeshMaxRestartTime",
                only_default("nodeMeshMaxRestartTime"),
            );
        }
        mesh_options_only_in_default(s, &only_default, e);
    }
    session_options(&s.mesh_session_options(), "spec.", "nodeMesh", e);

    if s.listen_port == Some(0) {
        e.add("spec.listenPort", "must be 1-65535");
    }

    for (field, ip, want) in [
        (
            "spec.localWorkloadPeeringIPV4",
            s.local_workload_peering_ipv4,
            Family::V4,
        ),
        (
            "spec.localWorkloadPeeringIPV6",
            s.local_workload_peering_ipv6,
            Family::V6,
        ),
    ] {
        if let Some(ip) = ip {
            let got = Family::of_addr(&ip.0);
            if got != want {
                e.add(
                    field,
                    format!(
                        "{ip} is an {} address; expected {}",
                        family_name(got),
                        family_name(want)
                    ),
                );
            } else {
                e.check(field, unicast(&ip.0));
            }
        }
    }
    for (field, priority) in [
        ("spec.ipv4NormalRoutePriority", s.ipv4_normal_route_priority),
        ("spec.ipv6NormalRoutePriority", s.ipv6_normal_route_priority),
    ] {
        if let Some(p) = priority
            && !ROUTE_PRIORITY.contains(&p)
        {
            e.add(
                field,
                format!(
                    "{p} is out of range: use {}-{}",
                    ROUTE_PRIORITY.start(),
                    ROUTE_PRIORITY.end()
                ),
            );
        }
    }

    for (field, list) in [
        ("serviceClusterIPs", &s.service_cluster_ips),
        ("serviceExternalIPs", &s.service_external_ips),
        ("serviceLoadBalancerIPs", &s.service_load_balancer_ips),
    ] {
        // Entries without a CIDR (`- {}`) are accepted and ignored, as Calico does.
        for (i, b) in list.iter().enumerate() {
            if let Some(cidr) = &b.cidr {
                e.check(format!("spec.{field}[{i}].cidr"), masked(cidr));
            }
        }
    }

    let mut names = BTreeSet::new();
    for (i, com) in s.communities.iter().enumerate() {
        e.check(
            format!("spec.communities[{i}].name"),
            check_name(&com.name).map_err(|r| format!("not a valid community name: {r}")),
        );
        if !names.insert(com.name.as_str()) {
            e.add(
                format!("spec.communities[{i}].name"),
                format!("{:?} is defined more than once", com.name),
            );
        }
        e.check(
            format!("spec.communities[{i}].value"),
            community_literal(&com.value),
        );
    }
    if !s.communities.is_empty() && s.prefix_advertisements.is_empty() {
        e.add(
            "spec.communities",
            "communities are defined but no prefixAdvertisements use them",
        );
    }
    for (i, pa) in s.prefix_advertisements.iter().enumerate() {
        e.check(
            format!("spec.prefixAdvertisements[{i}].cidr"),
            masked(&pa.cidr),
        );
        for (j, com) in pa.communities.iter().enumerate() {
            let field = format!("spec.prefixAdvertisements[{i}].communities[{j}]");
            match community_value(com) {
                Some(result) => e.check(field, result),
                None if names.contains(com.as_str()) => {}
                None => e.add(
                    field,
                    format!(
                        "{com:?} is neither a name defined in spec.communities nor a community \
                         value (aa:nn or aa:nn:mm)"
                    ),
                ),
            }
        }
    }

    let mesh_off = s.node_to_node_mesh_enabled == Some(false);
    if let Some(pw) = &s.node_mesh_password {
        password("spec.nodeMeshPassword", pw, e);
        if mesh_off {
            e.add(
                "spec.nodeMeshPassword",
                "cannot be set while nodeToNodeMeshEnabled is false",
            );
        }
    }
    if let Some(d) = &s.node_mesh_max_restart_time {
        e.check(
            "spec.nodeMeshMaxRestartTime",
            whole_seconds(d, &RESTART_TIME_SECS, "graceful restart time"),
        );
        if mesh_off {
            e.add(
                "spec.nodeMeshMaxRestartTime",
                "cannot be set while nodeToNodeMeshEnabled is false",
            );
        }
    }

    for (i, iface) in s.ignored_interfaces.iter().enumerate() {
        let field = format!("spec.ignoredInterfaces[{i}]");
        if iface == "*" {
            e.add(field, "\"*\" would ignore every interface");
        } else {
            e.check(field, bird_interface_pattern(iface));
        }
    }
}

// ---------------------------------------------------------------------------------
// BGPFilter

fn bgp_filter(f: &BGPFilter, e: &mut Errors) {
    let s = &f.spec;
    for (list, family, rules) in [
        ("exportV4", Family::V4, &s.export_v4),
        ("importV4", Family::V4, &s.import_v4),
        ("exportV6", Family::V6, &s.export_v6),
        ("importV6", Family::V6, &s.import_v6),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            bgp_filter_rule(&format!("spec.{list}[{i}]"), family, rule, e);
        }
    }
}

fn bgp_filter_rule(at: &str, family: Family, r: &BGPFilterRule, e: &mut Errors) {
    if let Some(cidr) = &r.cidr {
        e.check(format!("{at}.cidr"), masked(cidr));
        if cidr.family() != family {
            e.add(
                format!("{at}.cidr"),
                format!(
                    "{cidr} is an {} CIDR in an {} rule list",
                    family_name(cidr.family()),
                    family_name(family)
                ),
            );
        }
    }
    match (&r.cidr, &r.match_operator) {
        (Some(_), None) => e.add(
            format!("{at}.matchOperator"),
            "required with cidr (Equal, NotEqual, In or NotIn)",
        ),
        (None, Some(_)) => e.add(format!("{at}.cidr"), "required with matchOperator"),
        _ => {}
    }
    if let Some(pl) = &r.prefix_length {
        if r.cidr.is_none() {
            e.add(format!("{at}.cidr"), "required with prefixLength");
        }
        let max = family.max_prefix();
        for (name, v) in [("min", pl.min), ("max", pl.max)] {
            if let Some(v) = v
                && v > max
            {
                e.add(
                    format!("{at}.prefixLength.{name}"),
                    format!(
                        "{v} is out of range for {}: use 0-{max}",
                        family_name(family)
                    ),
                );
            }
        }
        if let (Some(min), Some(max)) = (pl.min, pl.max)
            && min > max
        {
            e.add(
                format!("{at}.prefixLength"),
                format!("min ({min}) must not be greater than max ({max})"),
            );
        }
    }
    if let Some(iface) = &r.interface
        && iface != "*"
    {
        e.check(format!("{at}.interface"), bird_interface_pattern(iface));
    }
    if let Some(c) = &r.communities {
        // As Calico: a rule matches exactly one community.
        if c.values.len() != 1 {
            e.add(
                format!("{at}.communities.values"),
                format!(
                    "must hold exactly one community value ({} given)",
                    c.values.len()
                ),
            );
        }
        for (j, v) in c.values.iter().enumerate() {
            e.check(
                format!("{at}.communities.values[{j}]"),
                community_literal(v),
            );
        }
    }
    if !r.operations.is_empty() && r.action != FilterAction::Accept {
        e.add(
            format!("{at}.operations"),
            format!(
                "operations change accepted routes: they are only allowed on Accept rules, \
                 not on {:?}",
                r.action
            ),
        );
    }
    for (j, op) in r.operations.iter().enumerate() {
        let field = format!("{at}.operations[{j}]");
        let set = [
            op.add_community.is_some(),
            op.prepend_as_path.is_some(),
            op.set_priority.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if set != 1 {
            e.add(
                field.clone(),
                format!(
                    "exactly one of addCommunity, prependASPath or setPriority must be set \
                     ({set} are)"
                ),
            );
        }
        if let Some(c) = &op.add_community {
            e.check(
                format!("{field}.addCommunity.value"),
                community_literal(&c.value),
            );
        }
        if let Some(p) = &op.prepend_as_path
            && p.prefix.is_empty()
        {
            e.add(
                format!("{field}.prependASPath.prefix"),
                "must list at least one AS number",
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Node

fn mac_address(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a MAC address (six hex pairs: 66:2f:4a:1c:d0:9e)"
        ))
    }
}

fn node(n: &Node, e: &mut Errors) {
    for (field, mac) in [
        ("spec.vxlanTunnelMACAddr", &n.spec.vxlan_tunnel_mac_addr),
        (
            "spec.vxlanTunnelMACAddrV6",
            &n.spec.vxlan_tunnel_mac_addr_v6,
        ),
    ] {
        if let Some(m) = mac {
            e.check(field, mac_address(m));
        }
    }
    for (field, ip, want) in [
        (
            "spec.ipv4VXLANTunnelAddr",
            n.spec.ipv4_vxlan_tunnel_addr,
            Family::V4,
        ),
        (
            "spec.ipv6VXLANTunnelAddr",
            n.spec.ipv6_vxlan_tunnel_addr,
            Family::V6,
        ),
        (
            "spec.wireguard.interfaceIPv4Address",
            n.spec
                .wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv4_address),
            Family::V4,
        ),
        (
            "spec.wireguard.interfaceIPv6Address",
            n.spec
                .wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv6_address),
            Family::V6,
        ),
    ] {
        if let Some(ip) = ip
            && Family::of_addr(&ip.0) != want
        {
            e.add(
                field,
                format!("{ip} is not an {} address", family_name(want)),
            );
        }
    }
    for (i, iface) in n.spec.interfaces.iter().enumerate() {
        if iface.name.is_empty() || iface.name.len() > MAX_IFNAME_LEN {
            e.add(
                format!("spec.interfaces[{i}].name"),
                format!("must be 1-{MAX_IFNAME_LEN} characters"),
            );
        }
        for (j, a) in iface.addresses.iter().enumerate() {
            let t = a.trim();
            if t.parse::<IpAddr>().is_err() && t.parse::<IpNet>().is_err() {
                e.add(
                    format!("spec.interfaces[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address or CIDR"),
                );
            }
        }
    }
    // Calico's `net` rule: an IP address or an address in CIDR form.
    for (i, a) in n.spec.addresses.iter().enumerate() {
        let t = a.address.trim();
        if t.parse::<IpAddr>().is_err() && t.parse::<IpNet>().is_err() {
            e.add(
                format!("spec.addresses[{i}].address"),
                format!(
                    "{:?} is not an IP address or an address in CIDR form (for example \
                     10.0.0.2 or 10.0.0.2/24)",
                    a.address
                ),
            );
        }
    }
    let Some(b) = &n.spec.bgp else {
        return;
    };
    if *b == Default::default() {
        e.add("spec.bgp", "must not be empty (omit it instead)");
        return;
    }
    for (field, addr, want) in [
        ("spec.bgp.ipv4Address", b.ipv4_address, Family::V4),
        ("spec.bgp.ipv6Address", b.ipv6_address, Family::V6),
    ] {
        let Some(a) = addr else { continue };
        let got = Family::of_net(&a.net());
        if got != want {
            e.add(
                field,
                format!(
                    "{a} is an {} address; expected {}",
                    family_name(got),
                    family_name(want)
                ),
            );
        } else {
            e.check(field, unicast(&a.addr()));
        }
    }
    for (field, ip) in [
        (
            "spec.bgp.routeReflectorClusterID",
            b.route_reflector_cluster_id,
        ),
        ("spec.bgp.ipv4IPIPTunnelAddr", b.ipv4_ipip_tunnel_addr),
    ] {
        if let Some(ip) = ip
            && !ip.0.is_ipv4()
        {
            e.add(field, format!("{ip} is not an IPv4 address"));
        }
    }
}

// ---------------------------------------------------------------------------------
// BlockAffinity

fn block_affinity(b: &BlockAffinity, e: &mut Errors) {
    let s = &b.spec;
    e.check("spec.node", check_name(&s.node));
    e.check("spec.cidr", masked(&s.cidr));
    let family = s.cidr.family();
    let range = match family {
        Family::V4 => BLOCK_SIZES_V4,
        Family::V6 => BLOCK_SIZES_V6,
    };
    let len = s.cidr.net().prefix_len();
    if !range.contains(&len) {
        e.add(
            "spec.cidr",
            format!(
                "/{len} is not a block size: {} blocks are /{} to /{}",
                family_name(family),
                range.start(),
                range.end()
            ),
        );
    }
    if !s.pool.is_empty() {
        e.check("spec.pool", check_name(&s.pool));
    }
    let deleted = match &s.deleted {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(t)) => t.eq_ignore_ascii_case("true"),
        _ => false,
    };
    if deleted {
        e.add(
            "spec.deleted",
            "cannot be set to true (delete the object instead)",
        );
    }
}

// ---------------------------------------------------------------------------------
// AgentConfiguration

fn agent_configuration(c: &AgentConfiguration, e: &mut Errors) {
    let s = &c.spec;
    if let Some(ip) = &s.nat_outgoing_address {
        e.check("spec.natOutgoingAddress", unicast(&ip.0));
    }
}

fn felix_configuration(c: &FelixConfiguration, e: &mut Errors) {
    if let Some(ip) = &c.spec.nat_outgoing_address {
        e.check("spec.natOutgoingAddress", unicast(&ip.0));
    }
}

// ---------------------------------------------------------------------------------
// IPReservation

fn ip_reservation(r: &IPReservation, e: &mut Errors) {
    for (i, c) in r.spec.reserved_cidrs.iter().enumerate() {
        e.check(format!("spec.reservedCIDRs[{i}]"), unicast(&c.addr()));
    }
}

// ---------------------------------------------------------------------------------
// Secret

/// The characters a BGP password cannot hold: BIRD reads the password as a quoted
/// string in its configuration, where none of them can be written.
const UNQUOTABLE: [char; 5] = ['"', '\\', '\r', '\n', '\0'];

/// A BGP password BIRD can carry, or why not (the value itself is never quoted back).
pub fn bird_password(value: &str) -> Result<(), String> {
    if value.contains(UNQUOTABLE) {
        return Err(
            "holds a character BIRD cannot carry in a password (a double quote, a backslash, \
             CR, LF or NUL)"
                .into(),
        );
    }
    Ok(())
}

fn secret(s: &Secret, e: &mut Errors) {
    let mut size = 0usize;
    for (k, v) in &s.spec {
        e.check(format!("data.{k}"), secret_key(k));
        // tern's Secrets hold BGP passwords: refuse what BIRD could not use.
        e.check(format!("data.{k}"), bird_password(v.expose()));
        size = size
            .saturating_add(k.len())
            .saturating_add(v.expose().len());
    }
    if size > MAX_SECRET_BYTES {
        e.add(
            "data",
            format!("the data totals {size} bytes; the limit is {MAX_SECRET_BYTES}"),
        );
    }
}

// ---------------------------------------------------------------------------------
// tern's BGP extensions (model/bgp_ext.rs): BFDProfile, session timers, long-lived
// graceful restart. Kept together so the Calico rules above read as Calico's.

/// BFD intervals BIRD accepts and a network can keep up with: 10 ms to 60 s.
const BFD_INTERVAL: RangeInclusive<std::time::Duration> =
    std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(60);
/// BFD detection multiplier (an 8-bit field, 0 is not allowed).
const BFD_MULTIPLIER: RangeInclusive<u32> = 1..=255;
/// BGP hold time other than 0 (RFC 4271: 0 or at least 3 s; 16 bits).
const HOLD_TIME_SECS: RangeInclusive<u64> = 3..=65535;
/// Connect retry time (BIRD keeps it in 16 bits).
const CONNECT_RETRY_SECS: RangeInclusive<u64> = 1..=65535;
/// Long-lived stale time (RFC 9494: 24 bits of seconds).
const LONG_LIVED_STALE_SECS: RangeInclusive<u64> = 1..=16_777_215;

fn bfd_profile(p: &BFDProfile, e: &mut Errors) {
    let s = &p.spec;
    for (field, value) in [
        ("receiveInterval", s.receive_interval),
        ("transmitInterval", s.transmit_interval),
        ("idleTransmitInterval", s.idle_transmit_interval),
    ] {
        if let Some(d) = value {
            e.check(format!("spec.{field}"), bfd_interval(&d));
        }
    }
    if let Some(m) = s.multiplier
        && !BFD_MULTIPLIER.contains(&m)
    {
        e.add(
            "spec.multiplier",
            format!(
                "{m} is out of range: the detection multiplier must be between {} and {}",
                BFD_MULTIPLIER.start(),
                BFD_MULTIPLIER.end()
            ),
        );
    }
}

fn bfd_interval(d: &GoDuration) -> Result<(), String> {
    if !d.0.subsec_nanos().is_multiple_of(1000) {
        return Err(format!(
            "{d} is finer than a microsecond (BFD counts intervals in microseconds)"
        ));
    }
    if !BFD_INTERVAL.contains(&d.0) {
        return Err(format!(
            "{d} is out of range: a BFD interval must be between 10ms and 60s"
        ));
    }
    Ok(())
}

/// The mesh options of tern's extensions are cluster-wide, as nodeMeshPassword is.
fn mesh_options_only_in_default(
    s: &crate::model::BGPConfigurationSpec,
    only_default: &dyn Fn(&str) -> String,
    e: &mut Errors,
) {
    for (field, set) in [
        ("nodeMeshBFDProfile", s.node_mesh_bfd_profile.is_some()),
        ("nodeMeshHoldTime", s.node_mesh_hold_time.is_some()),
        (
            "nodeMeshKeepaliveTime",
            s.node_mesh_keepalive_time.is_some(),
        ),
        (
            "nodeMeshConnectRetryTime",
            s.node_mesh_connect_retry_time.is_some(),
        ),
        (
            "nodeMeshLongLivedStaleTime",
            s.node_mesh_long_lived_stale_time.is_some(),
        ),
    ] {
        if set {
            e.add(format!("spec.{field}"), only_default(field));
        }
    }
}

/// The session options of a BGPPeer (`prefix` "spec.", no field prefix) or of the mesh
/// (field prefix "nodeMesh"): BGP's timer rules, as BIRD enforces them.
fn session_options(o: &SessionOptions<'_>, path: &str, prefix: &str, e: &mut Errors) {
    let field = |name: &str| {
        if prefix.is_empty() {
            format!("{path}{name}")
        } else {
            let mut chars = name.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            format!(
                "{path}{prefix}{}{}",
                first.unwrap_or_default(),
                chars.as_str()
            )
        }
    };
    if let Some(name) = o.bfd_profile {
        let f = if prefix.is_empty() {
            field("bfdProfile")
        } else {
            format!("{path}{prefix}BFDProfile")
        };
        e.check(
            f,
            check_name(name).map_err(|r| format!("not a BFDProfile name: {r}")),
        );
    }
    let hold = o.hold_time.map(|h| {
        if h.0.subsec_nanos() != 0 {
            e.add(
                field("holdTime"),
                format!("{h} is not a whole number of seconds (BIRD takes seconds)"),
            );
        } else if h.as_secs() != 0 && !HOLD_TIME_SECS.contains(&h.as_secs()) {
            e.add(
                field("holdTime"),
                format!(
                    "{h} is out of range: the hold time must be 0 (no keepalives) or between \
                     {}s and {}s",
                    HOLD_TIME_SECS.start(),
                    HOLD_TIME_SECS.end()
                ),
            );
        }
        h.as_secs()
    });
    if let (Some(hold), Some(k)) = (hold, o.keepalive_time) {
        if k.0.subsec_nanos() != 0 {
            e.add(
                field("keepaliveTime"),
                format!("{k} is not a whole number of seconds (BIRD takes seconds)"),
            );
        } else if hold == 0 && k.as_secs() != 0 {
            e.add(
                field("keepaliveTime"),
                "must be empty or 0 with a hold time of 0 (no keepalives are sent)",
            );
        } else if hold != 0 && k.as_secs() >= hold {
            e.add(
                field("keepaliveTime"),
                format!(
                    "{k} must be below the hold time ({}s); a third of it is usual",
                    hold
                ),
            );
        }
    } else if !prefix.is_empty()
        && let Some(k) = o.keepalive_time
    {
        // A BGPPeer's keepaliveTime alone is Calico's rule (checked with its fields);
        // the mesh's is ours.
        e.check(
            field("keepaliveTime"),
            whole_seconds(
                &k,
                &KEEPALIVE_TIME_SECS,
                "keepalive time (at most BIRD's hold time)",
            ),
        );
    }
    if let Some(d) = &o.connect_retry_time {
        e.check(
            field("connectRetryTime"),
            whole_seconds(d, &CONNECT_RETRY_SECS, "connect retry time"),
        );
    }
    if let Some(d) = &o.long_lived_stale_time {
        e.check(
            field("longLivedStaleTime"),
            whole_seconds(d, &LONG_LIVED_STALE_SECS, "long-lived stale time"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;

    /// Parse, normalize: what the controller does before validating.
    fn parse(doc: &str) -> Resource {
        let mut r = parse_checked(doc).unwrap_or_else(|e| panic!("{doc}: does not parse: {e}"));
        r.normalize();
        r
    }

    /// Parse a manifest document as the controller reads it.
    fn parse_checked(doc: &str) -> Result<Resource, ValidationError> {
        let mut docs = crate::manifest::parse_documents_raw(doc).expect("test YAML parses");
        assert_eq!(docs.len(), 1, "{doc}");
        Ok(Resource::from_value(docs.remove(0))?)
    }

    /// Parse, normalize, validate: every error a write would get.
    fn admit(doc: &str) -> Result<Resource, ValidationError> {
        let mut r = parse_checked(doc)?;
        r.normalize();
        validate(&r)?;
        Ok(r)
    }

    fn doc(kind: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: tern.dev/v1\nkind: {kind}\nmetadata: {{name: {name:?}}}\nspec: {spec}\n"
        )
    }

    /// Every valid row passes; every invalid row fails with (at least) an error on
    /// the expected field whose reason contains the expected text.
    fn table(kind: &str, valid: &[(&str, &str)], invalid: &[(&str, &str, &str, &str)]) {
        for (name, spec) in valid {
            let d = doc(kind, name, spec);
            if let Err(e) = validate(&parse(&d)) {
                panic!("{kind} {name} {spec}: expected valid, got: {e}");
            }
        }
        for (name, spec, field, reason) in invalid {
            let d = doc(kind, name, spec);
            expect_error(&d, field, reason);
        }
    }

    fn expect_error(d: &str, field: &str, reason: &str) {
        match admit(d).map(|_| ()) {
            Ok(()) => panic!("{d}: expected {field}: {reason}, but it is valid"),
            Err(e) => assert!(
                e.0.iter()
                    .any(|fe| fe.field == field && fe.reason.contains(reason)),
                "{d}: expected {field}: ...{reason}..., got: {e}"
            ),
        }
    }

    #[test]
    fn the_masked_cidr_message_is_exact() {
        let e = validate(&parse(&doc("IPPool", "p", "{cidr: 10.0.0.1/8}"))).expect_err("host bits");
        assert_eq!(
            e.to_string(),
            "spec.cidr: 10.0.0.1/8 is not a network address; did you mean 10.0.0.0/8?"
        );
        let e = validate(&parse(&doc("IPPool", "p", "{cidr: 'fd00::1/64'}"))).expect_err("v6");
        assert_eq!(
            e.to_string(),
            "spec.cidr: fd00::1/64 is not a network address; did you mean fd00::/64?"
        );
    }

    #[test]
    fn several_errors_are_reported_together() {
        let e = validate(&parse(&doc(
            "IPPool",
            "Bad_Name",
            "{cidr: 10.0.0.1/8, blockSize: 19, ipipMode: Always, vxlanMode: Always}",
        )))
        .expect_err("four errors");
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.cidr",
                "spec.blockSize",
                "spec.ipipMode"
            ]
        );
        let joined: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        assert_eq!(e.to_string(), joined.join("; "));
    }

    #[test]
    #[rustfmt::skip]
    fn metadata() {
        let valid = [
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata:\n  name: pool-1.example\n  labels: {zone: a, example.com/rack: r-1, empty: ''}\n  annotations: {Example.com/Note: anything at all}\nspec: {cidr: 10.0.0.0/16}\n",
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: kube-master\n  labels: {routeReflector: true, rack: 12}\n",
        ];
        for d in valid {
            validate(&parse(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        let pool = |meta: &str| {
            format!("apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {meta}\nspec: {{cidr: 10.0.0.0/16}}\n")
        };
        let invalid = [
            (pool("{name: ''}"), "metadata.name", "required"),
            (pool("{name: Pool}"), "metadata.name", "is not a valid name"),
            (pool("{name: 'a_b'}"), "metadata.name", "is not a valid name"),
            (pool(&format!("{{name: {}}}", "a".repeat(254))), "metadata.name", "longer than 253"),
            (pool("{name: p, labels: {'-bad': x}}"), "metadata.labels.-bad", "label key \"-bad\" is not valid"),
            (pool("{name: p, labels: {'a/b/c': x}}"), "metadata.labels.a/b/c", "at most one '/'"),
            (pool("{name: p, labels: {'/b': x}}"), "metadata.labels./b", "prefix before '/' must not be empty"),
            (pool("{name: p, labels: {'Bad_Prefix/b': x}}"), "metadata.labels.Bad_Prefix/b", "prefix is not a DNS subdomain"),
            (pool(&format!("{{name: p, labels: {{{}: x}}}}", "k".repeat(64))), &format!("metadata.labels.{}", "k".repeat(64)), "at most 63"),
            (pool("{name: p, labels: {zone: 'a b'}}"), "metadata.labels.zone", "label value \"a b\" is not valid"),
            (pool("{name: p, labels: {zone: '-a'}}"), "metadata.labels.zone", "is not valid"),
            (pool(&format!("{{name: p, labels: {{zone: {}}}}}", "v".repeat(64))), "metadata.labels.zone", "longer than 63"),
            (pool("{name: p, annotations: {'bad key': x}}"), "metadata.annotations.bad key", "annotation key"),
        ];
        for (d, field, reason) in &invalid {
            expect_error(d, field, reason);
        }
        let big = "x".repeat(MAX_ANNOTATION_BYTES + 1);
        expect_error(
            &pool(&format!("{{name: p, annotations: {{note: {big}}}}}")),
            "metadata.annotations",
            "the limit is",
        );
    }

    #[test]
    #[rustfmt::skip]
    fn ippool() {
        table(
            "IPPool",
            &[
                ("p", "{cidr: 192.168.0.0/16}"),
                ("p", "{cidr: 192.168.0.0/16, natOutgoing: true, ipipMode: Always, vxlanMode: Never}"),
                ("p", "{cidr: 10.0.0.0/8, vxlanMode: CrossSubnet, blockSize: 20}"),
                ("p", "{cidr: 10.0.0.0/26}"),
                ("p", "{cidr: 10.0.0.0/32, blockSize: 32}"),
                ("p", "{cidr: 10.0.0.0/30, disabled: true}"),
                ("p", "{cidr: 'fd00::/48'}"),
                ("p", "{cidr: 'fd00::/112', blockSize: 116}"),
                ("p", "{cidr: 'fd00::/122', vxlanMode: Always, blockSize: 128}"),
                ("p", "{cidr: 169.255.0.0/16}"),
                ("p", "{cidr: 169.253.0.0/16}"),
                ("p", "{cidr: 'fec0::/10'}"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [Workload]}"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [Tunnel, Workload]}"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer]}"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer], nodeSelector: all()}"),
                ("p", "{cidr: 10.0.0.0/16, assignmentMode: Manual, nodeSelector: \"zone == 'a'\"}"),
                ("p", "{cidr: 10.0.0.0/16, namespaceSelector: \"team == 'a'\"}"),
                ("p", "{CIDR: 10.0.0.0/16, natoutgoing: true, NodeSelector: all()}"),
            ],
            &[
                ("p", "{cidr: 10.0.0.1/8}", "spec.cidr", "10.0.0.1/8 is not a network address; did you mean 10.0.0.0/8?"),
                ("p", "{cidr: 169.254.0.0/16}", "spec.cidr", "contains the link-local range 169.254.0.0/16"),
                ("p", "{cidr: 169.0.0.0/8}", "spec.cidr", "contains the link-local range"),
                ("p", "{cidr: 169.254.10.0/24}", "spec.cidr", "is inside the link-local range 169.254.0.0/16"),
                ("p", "{cidr: 'fe80::/64'}", "spec.cidr", "is inside the link-local range fe80::/10"),
                ("p", "{cidr: 'fe80::/10'}", "spec.cidr", "contains the link-local range fe80::/10"),
                ("p", "{cidr: 'fe00::/7'}", "spec.cidr", "contains the link-local range fe80::/10"),
                ("p", "{cidr: 0.0.0.0/0, blockSize: 26}", "spec.cidr", "contains the link-local range"),
                ("p", "{cidr: 10.0.0.0/16, blockSize: 19}", "spec.blockSize", "19 is out of range for an IPv4 pool: use 20-32"),
                ("p", "{cidr: 10.0.0.0/16, blockSize: 33}", "spec.blockSize", "out of range"),
                ("p", "{cidr: 'fd00::/48', blockSize: 115}", "spec.blockSize", "out of range for an IPv6 pool: use 116-128"),
                ("p", "{cidr: 'fd00::/48', blockSize: 26}", "spec.blockSize", "out of range for an IPv6 pool"),
                ("p", "{cidr: 10.0.0.0/28}", "spec.cidr", "10.0.0.0/28 is smaller than one block of /26 (blockSize)"),
                ("p", "{cidr: 10.0.0.0/24, blockSize: 20}", "spec.cidr", "smaller than one block of /20"),
                ("p", "{cidr: 'fd00::/124'}", "spec.cidr", "smaller than one block of /122"),
                ("p", "{cidr: 10.0.0.0/16, ipipMode: Always, vxlanMode: CrossSubnet}", "spec.ipipMode", "cannot both be enabled"),
                ("p", "{cidr: 10.0.0.0/16, ipipMode: CrossSubnet, vxlanMode: Always}", "spec.ipipMode", "cannot both be enabled"),
                ("p", "{cidr: 'fd00::/48', ipipMode: Always}", "spec.ipipMode", "IPIP is not supported on an IPv6 pool"),
                ("p", "{cidr: 'fd00::/48', ipipMode: CrossSubnet}", "spec.ipipMode", "IPIP is not supported on an IPv6 pool"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer, Workload]}", "spec.allowedUses[1]", "LoadBalancer cannot be combined with Workload"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [Tunnel, LoadBalancer]}", "spec.allowedUses[0]", "LoadBalancer cannot be combined with Tunnel"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [Workload, Workload]}", "spec.allowedUses[1]", "listed more than once"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer], vxlanMode: Always}", "spec.allowedUses", "cannot use IPIP or VXLAN"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer], disableBGPExport: true}", "spec.disableBGPExport", "must be false on a LoadBalancer pool"),
                ("p", "{cidr: 10.0.0.0/16, allowedUses: [LoadBalancer], nodeSelector: \"zone == 'a'\"}", "spec.nodeSelector", "must be all() on a LoadBalancer pool"),
                ("p", "{cidr: 10.0.0.0/16, ipip: {enabled: true, mode: always}}", "spec.ipip", "use ipipMode"),
                ("p", "{cidr: 10.0.0.0/16, nat-outgoing: true}", "spec.nat-outgoing", "use natOutgoing"),
                ("p", "{cidr: 10.0.0.0/16, namespaceSelector: 'has(('}", "spec.namespaceSelector", "position"),
                ("p", "{cidr: 10.0.0.0/16, natOutgoing: true, natoutgoing: false}", "spec", "both set the field \"natOutgoing\""),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn bgp_peer() {
        table(
            "BGPPeer",
            &[
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512}"),
                ("p", "{peerIP: '10.0.0.1:1790', asNumber: '1.10', node: kube-master}"),
                ("p", "{peerIP: '[fd00::1]:179', asNumber: 65001, nodeSelector: \"rack == 'a'\"}"),
                ("p", "{peerSelector: has(routeReflector), nodeSelector: '!has(routeReflector)'}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, password: {secretKeyRef: {name: bgp-secrets, key: rr_password}}}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, keepOriginalNextHop: true}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, nextHopMode: Self}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, ttlSecurity: 1, maxRestartTime: 2m, keepaliveTime: 20s}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, ttlSecurity: 255, maxRestartTime: 4095s, keepaliveTime: 4m}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, numAllowedLocalASNumbers: 0}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, numAllowedLocalASNumbers: 255}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, reachableBy: 10.0.0.254}"),
                ("p", "{peerIP: 'fd00::1', asNumber: 64512, reachableBy: 'fd00::fe'}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, filters: [export-only, f.2]}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 64512, localASNumber: 65000, sourceAddress: None}"),
                // As in Calico: the AS of the node that has this address is used.
                ("p", "{peerIP: 10.0.0.1}"),
                ("p", "{peerIP: 'fe0a::2'}"),
                ("p", "{localWorkloadSelector: \"role == 'bgp'\", asNumber: 65401}"),
                ("p", "{peerip: 10.0.0.1, ASNumber: 64512, keepaliveTIME: 20s, password: {SecretKeyRef: {name: s, KEY: k, optional: true}}}"),
            ],
            &[
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, node: a, nodeSelector: all()}", "spec.node", "node and nodeSelector cannot both be set"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, node: Node_1}", "spec.node", "is not a valid name"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, peerSelector: all()}", "spec.peerIP", "peerIP and peerSelector cannot both be set"),
                ("p", "{nodeSelector: all()}", "spec.peerIP", "one of peerIP, peerSelector or localWorkloadSelector is required"),
                ("p", "{peerSelector: all(), asNumber: 64512}", "spec.asNumber", "must be empty with peerSelector"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, keepOriginalNextHop: true, nextHopMode: Keep}", "spec.keepOriginalNextHop", "cannot be set together with nextHopMode"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, ttlSecurity: 0}", "spec.ttlSecurity", "must be 1-255"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, password: {}}", "spec.password.secretKeyRef", "required"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, password: {secretKeyRef: {name: '', key: k}}}", "spec.password.secretKeyRef.name", "required"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, password: {secretKeyRef: {name: Bad_Name, key: k}}}", "spec.password.secretKeyRef.name", "is not a valid name"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, password: {secretKeyRef: {name: s, key: ''}}}", "spec.password.secretKeyRef.key", "required"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, password: {secretKeyRef: {name: s, key: 'a/b'}}}", "spec.password.secretKeyRef.key", "is not valid"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, numAllowedLocalASNumbers: 256}", "spec.numAllowedLocalASNumbers", "out of range: use 0-255"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, maxRestartTime: 4096s}", "spec.maxRestartTime", "must be between 1s and 4095s"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, maxRestartTime: '0'}", "spec.maxRestartTime", "out of range"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, maxRestartTime: 1500ms}", "spec.maxRestartTime", "not a whole number of seconds"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, keepaliveTime: 0s}", "spec.keepaliveTime", "must be between 1s and 240s"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, keepaliveTime: 5m}", "spec.keepaliveTime", "out of range"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, keepaliveTime: 500ms}", "spec.keepaliveTime", "not a whole number of seconds"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, reachableBy: 'fd00::1'}", "spec.reachableBy", "both must be of one family"),
                ("p", "{peerIP: 'fd00::1', asNumber: 1, reachableBy: 10.0.0.1}", "spec.reachableBy", "both must be of one family"),
                ("p", "{peerSelector: all(), reachableBy: 10.0.0.1}", "spec.reachableBy", "requires peerIP"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, filters: [good, Bad_Filter]}", "spec.filters[1]", "not a BGPFilter name"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, filters: ['']}", "spec.filters[0]", "required"),
                ("p", "{localWorkloadSelector: all()}", "spec.asNumber", "required with localWorkloadSelector"),
                ("p", "{localWorkloadSelector: all(), peerIP: 10.0.0.1, asNumber: 1}", "spec.localWorkloadSelector", "cannot be set together with peerIP or peerSelector"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn bgp_configuration() {
        table(
            "BGPConfiguration",
            &[
                ("default", "{}"),
                ("default", "{nodeToNodeMeshEnabled: false, asNumber: 63400, listenPort: 178, bindMode: NodeIP, logSeverityScreen: Debug}"),
                ("default", "{serviceClusterIPs: [{cidr: 10.96.0.0/12}], serviceExternalIPs: [{cidr: 104.244.42.129/32}, {cidr: 172.217.3.0/24}], serviceLoadBalancerIPs: [{cidr: 'fd00:1::/112'}]}"),
                // Calico's empty entries are accepted (and ignored).
                ("default", "{serviceClusterIPs: [{}], serviceExternalIPs: [{}, {cidr: 104.244.42.129/32}], serviceLoadBalancerIPs: [{}]}"),
                ("default", "{communities: [{name: bgp-large-community, value: '63400:300:100'}], prefixAdvertisements: [{cidr: 172.218.4.0/26, communities: [bgp-large-community, '63400:120']}]}"),
                ("default", "{communities: [{name: max, value: '65535:65535'}, {name: large, value: '4294967295:0:4294967295'}], prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: [max, large]}]}"),
                ("default", "{nodeMeshPassword: {secretKeyRef: {name: bgp-secrets, key: mesh}}, nodeMeshMaxRestartTime: 120s}"),
                ("default", "{ignoredInterfaces: [eth1, 'cali*', vxlan.calico, 'a-b_c']}"),
                ("node.kube-master", "{listenPort: 1790, logSeverityScreen: Warning, bindMode: NodeIP}"),
                ("node.kube-master", "{communities: [{name: c, value: '1:2'}], prefixAdvertisements: [{cidr: 10.1.0.0/16, communities: [c]}]}"),
                ("node.rack1.host-1", "{ignoredInterfaces: [eth9]}"),
                ("default", "{serviceLoadBalancerAggregation: Disabled, localWorkloadPeeringIPV4: 169.254.0.179, localWorkloadPeeringIPV6: 'fe80::179', ipv4NormalRoutePriority: 1024, ipv6NormalRoutePriority: 2147483646}"),
                ("node.a", "{ipv4NormalRoutePriority: 1}"),
                ("default", "{LISTENPORT: 1790, asnumber: 65000, NodeToNodeMeshEnabled: false}"),
            ],
            &[
                ("Default", "{}", "metadata.name", "use \"default\" (cluster-wide) or \"node.<nodename>\""),
                ("global", "{}", "metadata.name", "is not a valid BGPConfiguration name"),
                ("node.", "{}", "metadata.name", "the node name after \"node.\" is not valid: required"),
                ("node.Bad_Node", "{}", "metadata.name", "the node name after \"node.\" is not valid"),
                ("node.a", "{nodeToNodeMeshEnabled: false}", "spec.nodeToNodeMeshEnabled", "is cluster-wide: set it in the BGPConfiguration \"default\""),
                ("node.a", "{asNumber: 65000}", "spec.asNumber", "set a node's own AS in its Node resource"),
                ("node.a", "{serviceClusterIPs: [{cidr: 10.96.0.0/12}]}", "spec.serviceClusterIPs", "is cluster-wide"),
                ("node.a", "{serviceExternalIPs: [{cidr: 10.96.0.0/12}]}", "spec.serviceExternalIPs", "is cluster-wide"),
                ("node.a", "{serviceLoadBalancerIPs: [{cidr: 10.96.0.0/12}]}", "spec.serviceLoadBalancerIPs", "is cluster-wide"),
                ("node.a", "{nodeMeshPassword: {secretKeyRef: {name: s, key: k}}}", "spec.nodeMeshPassword", "is cluster-wide"),
                ("node.a", "{nodeMeshMaxRestartTime: 10s}", "spec.nodeMeshMaxRestartTime", "is cluster-wide"),
                ("default", "{listenPort: 0}", "spec.listenPort", "must be 1-65535"),
                ("default", "{serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: 10.97.0.1/16}]}", "spec.serviceClusterIPs[1].cidr", "10.97.0.1/16 is not a network address; did you mean 10.97.0.0/16?"),
                ("default", "{serviceExternalIPs: [{cidr: 104.244.42.129/24}]}", "spec.serviceExternalIPs[0].cidr", "not a network address"),
                ("default", "{serviceLoadBalancerIPs: [{cidr: 'fd00::1/64'}]}", "spec.serviceLoadBalancerIPs[0].cidr", "not a network address"),
                ("default", "{serviceExternalIPs: [{}, {cidr: 10.0.0.1/8}]}", "spec.serviceExternalIPs[1].cidr", "not a network address"),
                ("node.a", "{serviceClusterIPs: [{}]}", "spec.serviceClusterIPs", "is cluster-wide"),
                ("default", "{communities: [{name: Bad_Name, value: '1:2'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].name", "not a valid community name"),
                ("default", "{communities: [{name: c, value: '1:2'}, {name: c, value: '1:3'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[1].name", "defined more than once"),
                ("default", "{communities: [{name: c, value: '65536:1'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].value", "standard community aa:nn must be 0-65535"),
                ("default", "{communities: [{name: c, value: '1:4294967296:1'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].value", "large community aa:nn:mm must be 0-4294967295"),
                ("default", "{communities: [{name: c, value: 'no-export'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].value", "is not a community value"),
                ("default", "{communities: [{name: c, value: '1:2:3:4'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].value", "is not a community value"),
                ("default", "{communities: [{name: c, value: '1:'}], prefixAdvertisements: [{cidr: 10.0.0.0/8}]}", "spec.communities[0].value", "is not a community value"),
                ("default", "{communities: [{name: c, value: '1:2'}]}", "spec.communities", "no prefixAdvertisements use them"),
                ("default", "{prefixAdvertisements: [{cidr: 10.0.0.1/8}]}", "spec.prefixAdvertisements[0].cidr", "did you mean 10.0.0.0/8?"),
                ("default", "{prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: ['1:2', undefined]}]}", "spec.prefixAdvertisements[0].communities[1]", "neither a name defined in spec.communities nor a community value"),
                ("default", "{prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: ['1:99999']}]}", "spec.prefixAdvertisements[0].communities[0]", "must be 0-65535"),
                ("default", "{nodeMeshPassword: {}}", "spec.nodeMeshPassword.secretKeyRef", "required"),
                ("default", "{nodeMeshPassword: {secretKeyRef: {name: s, key: ''}}}", "spec.nodeMeshPassword.secretKeyRef.key", "required"),
                ("default", "{nodeToNodeMeshEnabled: false, nodeMeshPassword: {secretKeyRef: {name: s, key: k}}}", "spec.nodeMeshPassword", "cannot be set while nodeToNodeMeshEnabled is false"),
                ("default", "{nodeToNodeMeshEnabled: false, nodeMeshMaxRestartTime: 10s}", "spec.nodeMeshMaxRestartTime", "cannot be set while nodeToNodeMeshEnabled is false"),
                ("default", "{nodeMeshMaxRestartTime: 2h}", "spec.nodeMeshMaxRestartTime", "between 1s and 4095s"),
                ("default", "{ignoredInterfaces: [eth0, '']}", "spec.ignoredInterfaces[1]", "must not be empty"),
                ("default", "{ignoredInterfaces: ['*']}", "spec.ignoredInterfaces[0]", "would ignore every interface"),
                ("default", "{ignoredInterfaces: ['a-very-long-interface']}", "spec.ignoredInterfaces[0]", "longer than 15"),
                ("default", "{ignoredInterfaces: ['eth 0']}", "spec.ignoredInterfaces[0]", "not an interface name pattern"),
                ("default", "{ipv4NormalRoutePriority: 0}", "spec.ipv4NormalRoutePriority", "0 is out of range: use 1-2147483646"),
                ("default", "{ipv6NormalRoutePriority: 2147483647}", "spec.ipv6NormalRoutePriority", "out of range"),
                ("default", "{localWorkloadPeeringIPV4: 'fe80::1'}", "spec.localWorkloadPeeringIPV4", "is an IPv6 address; expected IPv4"),
                ("default", "{localWorkloadPeeringIPV6: 10.0.0.1}", "spec.localWorkloadPeeringIPV6", "expected IPv6"),
                ("default", "{serviceLoadBalancerAggregation: Sometimes}", "spec.serviceLoadBalancerAggregation", "unknown variant"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn bgp_filter() {
        table(
            "BGPFilter",
            &[
                ("f", "{}"),
                ("f", "{exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In}, {action: Reject}]}"),
                ("f", "{importV6: [{action: Reject, cidr: 'fd00::/8', matchOperator: NotIn, prefixLength: {min: 16, max: 128}}]}"),
                ("f", "{exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: Equal, prefixLength: {max: 32}}]}"),
                ("f", "{importV4: [{action: Accept, source: RemotePeers, interface: 'eth*', peerType: eBGP}]}"),
                ("f", "{importV4: [{action: Accept, interface: '*'}]}"),
                ("f", "{exportV4: [{action: Accept, communities: {values: ['65000:100']}}, {action: Reject, communities: {values: ['1:2:3']}}]}"),
                ("f", "{exportV4: [{action: Accept, operations: [{addCommunity: {value: '65000:1'}}, {prependASPath: {prefix: [65000, 65000]}}, {setPriority: {value: 10}}]}]}"),
            ],
            &[
                ("f", "{exportV4: [{action: Accept, cidr: 10.0.0.1/8, matchOperator: In}]}", "spec.exportV4[0].cidr", "10.0.0.1/8 is not a network address; did you mean 10.0.0.0/8?"),
                ("f", "{exportV4: [{action: Accept}, {action: Accept, cidr: 10.0.0.0/8}]}", "spec.exportV4[1].matchOperator", "required with cidr"),
                ("f", "{importV4: [{action: Accept, matchOperator: In}]}", "spec.importV4[0].cidr", "required with matchOperator"),
                ("f", "{exportV4: [{action: Accept, cidr: 'fd00::/8', matchOperator: In}]}", "spec.exportV4[0].cidr", "is an IPv6 CIDR in an IPv4 rule list"),
                ("f", "{importV6: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In}]}", "spec.importV6[0].cidr", "is an IPv4 CIDR in an IPv6 rule list"),
                ("f", "{exportV4: [{action: Accept, prefixLength: {min: 24}}]}", "spec.exportV4[0].cidr", "required with prefixLength"),
                ("f", "{exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {min: 28, max: 24}}]}", "spec.exportV4[0].prefixLength", "min (28) must not be greater than max (24)"),
                ("f", "{exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {max: 33}}]}", "spec.exportV4[0].prefixLength.max", "33 is out of range for IPv4: use 0-32"),
                ("f", "{exportV6: [{action: Accept, cidr: 'fd00::/8', matchOperator: In, prefixLength: {min: 129}}]}", "spec.exportV6[0].prefixLength.min", "out of range for IPv6: use 0-128"),
                ("f", "{exportV4: [{action: Accept, communities: {values: ['65536:1']}}]}", "spec.exportV4[0].communities.values[0]", "must be 0-65535"),
                ("f", "{exportV4: [{action: Accept, communities: {values: ['65000:100', '1:2:3']}}]}", "spec.exportV4[0].communities.values", "exactly one community value (2 given)"),
                ("f", "{exportV4: [{action: Accept, communities: {values: []}}]}", "spec.exportV4[0].communities.values", "exactly one community value (0 given)"),
                ("f", "{exportV4: [{action: Reject, operations: [{setPriority: {value: 10}}]}]}", "spec.exportV4[0].operations", "only allowed on Accept rules, not on Reject"),
                ("f", "{exportV4: [{action: Accept, communities: {values: [nope]}}]}", "spec.exportV4[0].communities.values[0]", "is not a community value"),
                ("f", "{exportV4: [{action: Accept, operations: [{}]}]}", "spec.exportV4[0].operations[0]", "exactly one of addCommunity, prependASPath or setPriority must be set (0 are)"),
                ("f", "{exportV4: [{action: Accept, operations: [{addCommunity: {value: '1:2'}, setPriority: {value: 1}}]}]}", "spec.exportV4[0].operations[0]", "(2 are)"),
                ("f", "{exportV4: [{action: Accept, operations: [{addCommunity: {value: '1:2:x'}}]}]}", "spec.exportV4[0].operations[0].addCommunity.value", "is not a community value"),
                ("f", "{exportV4: [{action: Accept, operations: [{prependASPath: {prefix: []}}]}]}", "spec.exportV4[0].operations[0].prependASPath.prefix", "at least one AS number"),
                ("f", "{importV4: [{action: Accept, interface: ''}]}", "spec.importV4[0].interface", "must not be empty"),
                ("f", "{importV4: [{action: Accept, interface: 'eth0;'}]}", "spec.importV4[0].interface", "not an interface name pattern"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn node() {
        table(
            "Node",
            &[
                ("kube-master", "{}"),
                ("kube-master", "{bgp: {ipv4Address: 10.0.0.2/24, ipv6Address: 'fd00::2/64', asNumber: 65001, routeReflectorClusterID: 224.0.0.1}}"),
                ("n1.rack-2", "{bgp: {ipv4Address: 10.0.0.2, ipv4IPIPTunnelAddr: 192.168.0.1}}"),
                // As `calicoctl get node -o yaml` exports it.
                ("kube-master", "{addresses: [{address: 10.0.0.2/24, type: CalicoNodeIP}, {address: 10.0.0.2, type: InternalIP}, {address: 'fd00::2'}], orchRefs: [{nodeName: kube-master, orchestrator: k8s}]}"),
                ("kube-master", "{ipv4VXLANTunnelAddr: 192.168.0.1, vxlanTunnelMACAddr: '66:2f:4a:1c:d0:9e', ipv6VXLANTunnelAddr: 'fd00:1::1', vxlanTunnelMACAddrV6: '66:2F:4A:1C:D0:9F', wireguard: {interfaceIPv4Address: 192.168.0.2, interfaceIPv6Address: 'fd00:2::1'}, interfaces: [{name: eth0, addresses: [10.0.0.2, 'fd00::2/64']}]}"),
            ],
            &[
                ("Kube_Master", "{}", "metadata.name", "is not a valid name"),
                ("n", "{bgp: {}}", "spec.bgp", "must not be empty"),
                ("n", "{bgp: {ipv4Address: 'fd00::2/64'}}", "spec.bgp.ipv4Address", "is an IPv6 address; expected IPv4"),
                ("n", "{bgp: {ipv6Address: 10.0.0.2/24}}", "spec.bgp.ipv6Address", "is an IPv4 address; expected IPv6"),
                ("n", "{bgp: {ipv4Address: 0.0.0.0/0}}", "spec.bgp.ipv4Address", "unspecified address"),
                ("n", "{bgp: {ipv4Address: 10.0.0.2/24, routeReflectorClusterID: 'fd00::1'}}", "spec.bgp.routeReflectorClusterID", "not an IPv4 address"),
                ("n", "{bgp: {ipv4Address: 10.0.0.2/24, ipv4IPIPTunnelAddr: 'fd00::1'}}", "spec.bgp.ipv4IPIPTunnelAddr", "not an IPv4 address"),
                ("n", "{addresses: [{address: 10.0.0.2}, {address: node-1.example}]}", "spec.addresses[1].address", "is not an IP address or an address in CIDR form"),
                ("n", "{vxlanTunnelMACAddr: '66:2f:4a:1c:d0'}", "spec.vxlanTunnelMACAddr", "is not a MAC address"),
                ("n", "{ipv4VXLANTunnelAddr: 'fd00::1'}", "spec.ipv4VXLANTunnelAddr", "is not an IPv4 address"),
                ("n", "{wireguard: {interfaceIPv6Address: 10.0.0.1}}", "spec.wireguard.interfaceIPv6Address", "is not an IPv6 address"),
                ("n", "{interfaces: [{name: eth0, addresses: [nope]}]}", "spec.interfaces[0].addresses[0]", "not an IP address or CIDR"),
                ("n", "{wireguard: {publicKey: x}}", "spec.wireguard.publicKey", "unknown field"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn block_affinity() {
        table(
            "BlockAffinity",
            &[
                ("kube-master-10-0-0-0-26", "{node: kube-master, cidr: 10.0.0.0/26}"),
                ("b", "{node: n1, cidr: 10.0.0.0/26, state: confirmed, deleted: 'false', pool: default-ipv4-ippool}"),
                ("b", "{node: n1, cidr: 'fd00::/122', state: pending}"),
                ("b", "{node: n1, cidr: 10.0.0.0/20, state: ''}"),
            ],
            &[
                ("b", "{node: n1, cidr: 10.0.0.1/26}", "spec.cidr", "10.0.0.1/26 is not a network address; did you mean 10.0.0.0/26?"),
                ("b", "{node: n1, cidr: 10.0.0.0/16}", "spec.cidr", "/16 is not a block size: IPv4 blocks are /20 to /32"),
                ("b", "{node: n1, cidr: 'fd00::/64'}", "spec.cidr", "IPv6 blocks are /116 to /128"),
                ("b", "{node: '', cidr: 10.0.0.0/26}", "spec.node", "required"),
                ("b", "{node: Bad_Node, cidr: 10.0.0.0/26}", "spec.node", "is not a valid name"),
                ("b", "{node: n1, cidr: 10.0.0.0/26, pool: Bad_Pool}", "spec.pool", "is not a valid name"),
                ("b", "{node: n1, cidr: 10.0.0.0/26, deleted: 'true'}", "spec.deleted", "cannot be set to true"),
                ("b", "{node: n1, cidr: 10.0.0.0/26, deleted: true}", "spec.deleted", "cannot be set to true"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn agent_configuration() {
        table(
            "AgentConfiguration",
            &[
                ("default", "{}"),
                ("default", "{natOutgoingAddress: 203.0.113.7, natPortRange: '32768:65535', natOutgoingExclusions: IPPoolsAndHostIPs, natOutgoingInterfaceFilter: 'eth+', dataplane: nftables}"),
                ("node.kube-master", "{natOutgoingAddress: '2001:db8::7', natOutgoingInterfaceFilter: eth0, dataplane: iptables}"),
                ("node.n1", "{natOutgoingInterfaceFilter: 'bond0.100', natPortRange: '1024-2048'}"),
                ("node.n1", "{natOutgoingInterfaceFilter: 'a-very-long-if+'}"),
            ],
            &[
                ("agent", "{}", "metadata.name", "is not a valid AgentConfiguration name"),
                ("node.", "{}", "metadata.name", "the node name after \"node.\" is not valid"),
                ("default", "{natOutgoingAddress: 0.0.0.0}", "spec.natOutgoingAddress", "unspecified address"),
                ("default", "{natOutgoingAddress: 239.1.1.1}", "spec.natOutgoingAddress", "multicast address"),
                ("default", "{natOutgoingInterfaceFilter: ''}", "spec.natOutgoingInterfaceFilter", "must not be empty"),
                ("default", "{natOutgoingInterfaceFilter: 'e+th'}", "spec.natOutgoingInterfaceFilter", "'+' is only allowed once, at the end"),
                ("default", "{natOutgoingInterfaceFilter: 'eth++'}", "spec.natOutgoingInterfaceFilter", "'+' is only allowed once"),
                ("default", "{natOutgoingInterfaceFilter: 'a-very-long-ifname'}", "spec.natOutgoingInterfaceFilter", "longer than 15"),
                ("default", "{natOutgoingInterfaceFilter: 'eth*'}", "spec.natOutgoingInterfaceFilter", "is not an interface name"),
                ("default", "{natOutgoingInterfaceFilter: 'eth 0'}", "spec.natOutgoingInterfaceFilter", "is not an interface name"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn felix_configuration() {
        table(
            "FelixConfiguration",
            &[
                ("default", "{}"),
                ("default", "{natOutgoingAddress: 203.0.113.7, natPortRange: '32768:65535', natOutgoingExclusions: IPPoolsAndHostIPs, iptablesNATOutgoingInterfaceFilter: 'eth+'}"),
                ("node.kube-master", "{logSeverityScreen: Info, bpfEnabled: false, ipipEnabled: true, vxlanVNI: 4096, iptablesMarkMask: 0xffff0000, failsafeInboundHostPorts: [{protocol: tcp, port: 22}], routeTableRanges: [{min: 1, max: 250}]}"),
                ("default", "{reportingInterval: 0s, featureDetectOverride: 'SNATFullyRandom=true,MASQFullyRandom=false,RestoreSupportsLock=', natPortRange: 8080}"),
            ],
            &[
                ("felix", "{}", "metadata.name", "is not a valid FelixConfiguration name"),
                ("default", "{natOutgoingAddress: 0.0.0.0}", "spec.natOutgoingAddress", "unspecified address"),
                ("default", "{iptablesNATOutgoingInterfaceFilter: 'veth@if5'}", "spec.iptablesNATOutgoingInterfaceFilter", "is not an interface name"),
                ("default", "{vxlanVNI: 16777216}", "spec.vxlanVNI", "out of range"),
                ("default", "{chainInsertMode: Middle}", "spec.chainInsertMode", "is not one of Insert, Append"),
                ("default", "{wireguardInterfaceName: 'wg 0'}", "spec.wireguardInterfaceName", "not an interface name"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn ip_reservation() {
        table(
            "IPReservation",
            &[
                ("r", "{}"),
                ("r", "{reservedCIDRs: [192.168.0.0/24, 192.168.1.7, 'fd00::/120']}"),
            ],
            &[
                ("r", "{reservedCIDRs: [nope]}", "spec.reservedCIDRs[0]", "is not an address in CIDR form"),
                ("r", "{reservedCIDRs: [224.0.0.1/32]}", "spec.reservedCIDRs[0]", "multicast"),
                ("R", "{}", "metadata.name", "is not a valid name"),
            ],
        );
    }

    #[test]
    #[rustfmt::skip]
    fn secret() {
        let s = |name: &str, data: &str| {
            format!("apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {{name: {name}}}\n{data}\n")
        };
        for d in [
            s("bgp-secrets", "stringData: {rr_password: hunter2, mesh.key-1: x}"),
            s("empty", ""),
            s("b64", "data: {pw: aHVudGVyMg==}"),
        ] {
            validate(&parse(&d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        for (d, field, reason) in [
            (s("Bad_Name", ""), "metadata.name", "is not a valid name"),
            (s("s", "stringData: {'a/b': x}"), "data.a/b", "is not valid: use alphanumerics"),
            (s("s", "stringData: {'..x': x}"), "data...x", "must not be '.' or start with '..'"),
            (s("s", "stringData: {'.': x}"), "data..", "must not be '.'"),
            (s("s", "stringData: {'': x}"), "data.", "required"),
            (s("s", "stringData: {pw: 'say \"hi\"'}"), "data.pw", "a character BIRD cannot carry"),
            (s("s", "stringData: {pw: 'back\\\\slash'}"), "data.pw", "a character BIRD cannot carry"),
            (s("s", "stringData: {pw: \"two\\nlines\"}"), "data.pw", "a character BIRD cannot carry"),
            (s("s", "stringData: {pw: \"cr\\r\"}"), "data.pw", "a character BIRD cannot carry"),
            (s("s", "stringData: {pw: \"nul\\0\"}"), "data.pw", "a character BIRD cannot carry"),
            (s("s", "data: {pw: YSJi}"), "data.pw", "a character BIRD cannot carry"),
        ] {
            expect_error(&d, field, reason);
        }
        let big = "x".repeat(MAX_SECRET_BYTES);
        expect_error(&s("s", &format!("stringData: {{k: {big}}}")), "data", "the limit is");
    }

    #[test]
    fn updates_keep_immutable_fields() {
        let pool = |spec: &str| parse(&doc("IPPool", "p", spec));
        let old = pool("{cidr: 10.0.0.0/16}");
        validate_update(
            &old,
            &pool("{cidr: 10.0.0.0/16, natOutgoing: true, disabled: true}"),
        )
        .expect("mutable fields change");
        validate_update(&old, &pool("{cidr: 10.0.0.0/16, blockSize: 26}"))
            .expect("the default written out is no change");
        let e = validate_update(&old, &pool("{cidr: 10.1.0.0/16}")).expect_err("cidr");
        assert_eq!(
            e.to_string(),
            "spec.cidr: field is immutable (was 10.0.0.0/16)"
        );
        let e = validate_update(&old, &pool("{cidr: 10.0.0.0/16, blockSize: 28}")).expect_err("bs");
        assert_eq!(e.to_string(), "spec.blockSize: field is immutable (was 26)");
        let e =
            validate_update(&old, &pool("{cidr: 10.1.0.0/16, blockSize: 24}")).expect_err("both");
        assert_eq!(e.0.len(), 2);

        let ba = |spec: &str| parse(&doc("BlockAffinity", "b", spec));
        let old = ba("{node: a, cidr: 10.0.0.0/26}");
        validate_update(&old, &ba("{node: a, cidr: 10.0.0.0/26, state: confirmed}"))
            .expect("state changes");
        let e = validate_update(&old, &ba("{node: b, cidr: 10.0.0.64/26}")).expect_err("both");
        assert_eq!(
            e.to_string(),
            "spec.cidr: field is immutable (was 10.0.0.0/26); spec.node: field is immutable (was a)"
        );

        let e = validate_update(&old, &pool("{cidr: 10.0.0.0/16}")).expect_err("kind");
        assert_eq!(e.0[0].field, "kind");
        let e = validate_update(
            &parse(&doc("IPPool", "q", "{cidr: 10.0.0.0/16}")),
            &old_pool(),
        )
        .expect_err("name");
        assert_eq!(e.to_string(), "metadata.name: field is immutable (was q)");

        // Kinds without immutable fields.
        let peer = |spec: &str| parse(&doc("BGPPeer", "p", spec));
        validate_update(
            &peer("{peerIP: 10.0.0.1, asNumber: 1}"),
            &peer("{peerIP: 10.0.0.2, asNumber: 2}"),
        )
        .expect("peers change freely");
    }

    fn old_pool() -> Resource {
        parse(&doc("IPPool", "p", "{cidr: 10.0.0.0/16}"))
    }

    fn pool_obj(name: &str, cidr: &str) -> IPPool {
        let spec = serde_json::from_value(serde_json::json!({ "cidr": cidr })).expect("spec");
        Object::new(name, spec)
    }

    #[test]
    #[rustfmt::skip]
    fn pool_overlap() {
        let others = [
            pool_obj("a", "10.0.0.0/16"),
            pool_obj("b", "192.168.0.0/16"),
            pool_obj("v6", "fd00::/48"),
        ];
        for (cidr, ok) in [
            ("10.1.0.0/16", true),
            ("172.16.0.0/12", true),
            ("fd01::/48", true),
            ("10.0.0.0/16", false),
            ("10.0.128.0/17", false),
            ("10.0.0.0/8", false),
            ("0.0.0.0/0", false),
            ("192.168.1.0/24", false),
            ("fd00:0:0:1::/64", false),
            ("fd00::/8", false),
            // Host bits do not hide an overlap.
            ("10.0.0.1/8", false),
        ] {
            let r = check_pool_overlap(&pool_obj("new", cidr), &others);
            assert_eq!(r.is_ok(), ok, "{cidr}: {r:?}");
        }
        let e = check_pool_overlap(&pool_obj("new", "10.0.0.0/8"), &others).expect_err("overlap");
        assert_eq!(e.field, "spec.cidr");
        assert_eq!(
            e.reason,
            "10.0.0.0/8 overlaps IPPool \"a\" (10.0.0.0/16); pools must not overlap"
        );
        // The pool's own stored version is not an overlap.
        check_pool_overlap(&pool_obj("a", "10.0.0.0/16"), &others).expect("itself");
        check_pool_overlap(&pool_obj("a", "10.0.0.0/16"), []).expect("no others");
    }

    #[test]
    #[rustfmt::skip]
    fn community_values() {
        for ok in ["0:0", "65535:65535", "0:0:0", "4294967295:4294967295:4294967295"] {
            assert_eq!(community_value(ok), Some(Ok(())), "{ok}");
        }
        for range in ["65536:0", "0:65536", "4294967296:0:0", "1:99999999999999999999999"] {
            assert!(matches!(community_value(range), Some(Err(_))), "{range}");
        }
        for shape in ["", "1", ":", "1:", ":1", "a:b", "1:2:3:4", "1 :2", "-1:2", "+1:2", "no-export"] {
            assert_eq!(community_value(shape), None, "{shape}");
        }
    }

    // ---- tern's BGP extensions

    #[test]
    fn bfd_profiles() {
        table(
            "BFDProfile",
            &[
                (
                    "fast",
                    "{receiveInterval: 300ms, transmitInterval: 300ms, multiplier: 3}",
                ),
                (
                    "edges",
                    "{receiveInterval: 10ms, transmitInterval: 60s, idleTransmitInterval: 15500us, multiplier: 255, passive: true}",
                ),
                ("defaults", "{}"),
            ],
            &[
                (
                    "a",
                    "{receiveInterval: 5ms}",
                    "spec.receiveInterval",
                    "between 10ms and 60s",
                ),
                (
                    "a",
                    "{transmitInterval: 61s}",
                    "spec.transmitInterval",
                    "between 10ms and 60s",
                ),
                (
                    "a",
                    "{idleTransmitInterval: 10000500ns}",
                    "spec.idleTransmitInterval",
                    "finer than a microsecond",
                ),
                (
                    "a",
                    "{multiplier: 0}",
                    "spec.multiplier",
                    "between 1 and 255",
                ),
                (
                    "a",
                    "{multiplier: 256}",
                    "spec.multiplier",
                    "between 1 and 255",
                ),
                // BIRD has no echo mode: there is nothing to set it with.
                (
                    "a",
                    "{echoInterval: 50ms}",
                    "spec.echoInterval",
                    "unknown field 'echoInterval', expected one of 'receiveInterval'",
                ),
            ],
        );
        // Defaults are filled in on write.
        let Resource::BFDProfile(p) = parse(&doc("BFDProfile", "d", "{}")) else {
            panic!("not a BFDProfile")
        };
        assert_eq!(p.spec.multiplier, Some(3));
        assert_eq!(
            p.spec.receive_interval.map(|d| d.to_string()),
            Some("300ms".into())
        );
    }

    #[test]
    fn session_timers_follow_bgp() {
        table(
            "BGPPeer",
            &[
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 9s, keepaliveTime: 3s, connectRetryTime: 2s, bfdProfile: fast}",
                ),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, holdTime: '0'}"),
                ("p", "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 3s}"),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 1000s, keepaliveTime: 300s}",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, longLivedStaleTime: 1h}",
                ),
            ],
            &[
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 2s}",
                    "spec.holdTime",
                    "0 (no keepalives) or between 3s and 65535s",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 70000s}",
                    "spec.holdTime",
                    "between 3s and 65535s",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 3500ms}",
                    "spec.holdTime",
                    "whole number of seconds",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: 9s, keepaliveTime: 9s}",
                    "spec.keepaliveTime",
                    "below the hold time (9s)",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, holdTime: '0', keepaliveTime: 3s}",
                    "spec.keepaliveTime",
                    "hold time of 0",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, connectRetryTime: '0'}",
                    "spec.connectRetryTime",
                    "between 1s and 65535s",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, longLivedStaleTime: 5000h}",
                    "spec.longLivedStaleTime",
                    "between 1s and 16777215s",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, bfdProfile: Fast}",
                    "spec.bfdProfile",
                    "not a BFDProfile name",
                ),
                (
                    "p",
                    "{peerIP: 10.0.0.1, asNumber: 1, bfdProfile: fast, sourceAddress: None}",
                    "spec.bfdProfile",
                    "needs a source address",
                ),
            ],
        );
        table(
            "BGPConfiguration",
            &[
                (
                    "default",
                    "{nodeMeshBFDProfile: fast, nodeMeshHoldTime: 30s, nodeMeshKeepaliveTime: 10s, nodeMeshConnectRetryTime: 5s, nodeMeshLongLivedStaleTime: 10m}",
                ),
                ("node.a", "{routeReflectorClients: Dynamic}"),
            ],
            &[
                (
                    "default",
                    "{nodeMeshHoldTime: 1s}",
                    "spec.nodeMeshHoldTime",
                    "between 3s and 65535s",
                ),
                (
                    "default",
                    "{nodeMeshHoldTime: 6s, nodeMeshKeepaliveTime: 6s}",
                    "spec.nodeMeshKeepaliveTime",
                    "below the hold time",
                ),
                (
                    "default",
                    "{nodeMeshKeepaliveTime: 300s}",
                    "spec.nodeMeshKeepaliveTime",
                    "between 1s and 240s",
                ),
                (
                    "default",
                    "{nodeMeshBFDProfile: Bad_Name}",
                    "spec.nodeMeshBFDProfile",
                    "not a BFDProfile name",
                ),
                (
                    "node.a",
                    "{nodeMeshBFDProfile: fast}",
                    "spec.nodeMeshBFDProfile",
                    "cluster-wide",
                ),
                (
                    "node.a",
                    "{nodeMeshHoldTime: 9s}",
                    "spec.nodeMeshHoldTime",
                    "cluster-wide",
                ),
            ],
        );
    }
}

#[cfg(test)]
mod docs_examples {
    use super::*;

    /// Every YAML example in docs/api.md parses and passes validation.
    #[test]
    fn api_md_examples_are_valid() {
        let md = include_str!("../docs/api.md");
        let mut blocks = 0;
        let mut rest = md;
        while let Some(start) = rest.find("```yaml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").expect("closed code block");
            let docs = crate::manifest::parse_documents(&body[..end])
                .unwrap_or_else(|e| panic!("{}: {e}", &body[..end]));
            for mut r in docs {
                r.normalize();
                if let Err(e) = validate(&r) {
                    panic!("{} {}: {e}", r.kind(), r.name());
                }
            }
            blocks += 1;
            rest = &body[end..];
        }
        assert!(blocks >= 8, "only {blocks} examples found");
    }
}
