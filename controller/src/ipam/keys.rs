//! Names and records: how IPAM names what it stores (BlockAffinity names, block and
//! handle key segments), the records it keeps, and the checks of names a caller gives.
//! Where the keys live is the store's business (`store/ipam.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tern::model::{Family, check_name};

use super::IpamError;

/// The name of a block's BlockAffinity: `<node>-<cidr>` with `.`, `:` and `/`
/// replaced by `-` (Calico's naming): `node1-10-244-0-0-26`.
pub fn affinity_name(node: &str, cidr: &IpNet) -> String {
    format!("{node}-{}", cidr.to_string().replace(['.', ':', '/'], "-"))
}

/// The last key segment of a block record: the CIDR with `/` replaced by `-`
/// (`10.244.0.0-26`, `fd00::-122`), which reads back unambiguously.
pub fn block_segment(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "-")
}

/// The CIDR of a block record key segment.
pub fn parse_block_segment(seg: &str) -> Option<IpNet> {
    let (addr, len) = seg.rsplit_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

/// A handle as a key segment: bytes other than `[A-Za-z0-9._-]` percent-encoded.
pub fn encode_handle(handle: &str) -> String {
    let mut out = String::with_capacity(handle.len());
    for b in handle.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The handle a key segment names (the inverse of [`encode_handle`]); None for a
/// segment [`encode_handle`] cannot have written.
pub fn decode_handle(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = seg.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Longest handle accepted, in bytes.
pub const MAX_HANDLE_BYTES: usize = 256;

/// Check a handle given by a caller.
pub fn check_handle(handle: &str) -> Result<(), IpamError> {
    if handle.is_empty() {
        return Err(IpamError::invalid("handle", "required"));
    }
    if handle.len() > MAX_HANDLE_BYTES {
        return Err(IpamError::invalid(
            "handle",
            format!("longer than {MAX_HANDLE_BYTES} bytes"),
        ));
    }
    if handle.chars().any(char::is_control) {
        return Err(IpamError::invalid(
            "handle",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Check a node name given by a caller.
pub fn check_node(node: &str) -> Result<(), IpamError> {
    check_name(node).map_err(|e| IpamError::invalid("node", e))
}

/// Check an optional pool name given by a caller.
pub fn check_pool(pool: &str) -> Result<Option<&str>, IpamError> {
    if pool.is_empty() {
        return Ok(None);
    }
    check_name(pool).map_err(|e| IpamError::invalid("pool", e))?;
    Ok(Some(pool))
}

/// Parse a family field: 0 (not given), 4 or 6.
pub fn parse_family(n: u32) -> Result<Option<Family>, IpamError> {
    match n {
        0 => Ok(None),
        n => Family::from_number(n)
            .map(Some)
            .ok_or_else(|| IpamError::invalid("family", format!("{n} is not 4 or 6"))),
    }
}

/// A block record, stored as JSON under `<prefix>/_ipam/blocks/<segment>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRecord {
    pub cidr: IpNet,
    pub pool: String,
    pub node: String,
    /// Address -> handle.
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, String>,
    /// The ordinal the next assignment looks from (round robin).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_ordinal: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BlockRecord {
    pub fn new(cidr: IpNet, pool: &str, node: &str) -> Self {
        BlockRecord {
            cidr,
            pool: pool.to_string(),
            node: node.to_string(),
            allocations: BTreeMap::new(),
            next_ordinal: 0,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a block record is plain data and always serializes")
    }
}

/// A handle record, stored under `<prefix>/_ipam/handles/<node>/<4|6>/<handle>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleRecord {
    pub address: IpAddr,
    pub block: IpNet,
}

impl HandleRecord {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handle record is plain data and always serializes")
    }
}
