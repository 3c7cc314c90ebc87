//! The CNI protocol, pure: the verb and parameters from the environment, the network
//! configuration from stdin, the result and error documents, and the names tern derives
//! from an attachment. Nothing here touches the kernel or the network, so every rule is
//! unit-tested.
//!
//! Error codes (CNI 1.0/1.1 "well-known" codes below 100, tern's own from 100):
//!
//! | code | when |
//! |---|---|
//! | 1 | `cniVersion` is not one tern speaks (VERSION lists them) |
//! | 2 | a configuration key tern does not know (the message names key and value) |
//! | 3 | the container's network namespace does not exist (ADD, CHECK) |
//! | 4 | a `CNI_*` variable is missing or malformed (the message names it) |
//! | 5 | stdin cannot be read |
//! | 6 | the configuration (or its `prevResult`) is not JSON of the right shape |
//! | 7 | a configuration value is invalid (the message names the field); CHECK without `prevResult` |
//! | 11 | the controller cannot be reached (retry later; the message names the controllers) |
//! | 50 | STATUS: the controller cannot be reached or refuses this node |
//! | 100 | ADD: the interface already exists in the container or on the host |
//! | 101 | CHECK: the container's network differs from the result of its ADD |
//! | 102 | a kernel operation (`ip`) failed |
//! | 103 | the controller refused the IPAM request (no free address, unknown node or pool, not authorized); its status is in `details` |

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI versions tern speaks, oldest first. 1.1.0 adds GC, STATUS and `mtu` on
/// interfaces.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The version a VERSION answer uses when the caller names none.
pub const LATEST_VERSION: &str = "1.1.0";

/// Well-known and tern's own error codes (see the module documentation).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const ALREADY_EXISTS: u32 = 100;
    pub const DRIFT: u32 = 101;
    pub const KERNEL: u32 = 102;
    pub const IPAM_REFUSED: u32 = 103;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error document for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

// ---------------------------------------------------------------- the environment

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Verb {
    pub fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "GC" => Verb::Gc,
            "STATUS" => Verb::Status,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Gc => "GC",
            Verb::Status => "STATUS",
            Verb::Version => "VERSION",
        }
    }

    /// The verbs that act on one attachment (container id and interface).
    pub fn is_attachment(self) -> bool {
        matches!(self, Verb::Add | Verb::Del | Verb::Check)
    }
}

/// One attachment: a container's interface on this network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The parameters of one invocation, from the `CNI_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub verb: Verb,
    /// ADD, DEL, CHECK.
    pub attachment: Option<Attachment>,
    /// ADD and CHECK (required); DEL (optional: the namespace may be gone).
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`, parsed (tern reads none of them, but a malformed one is an error).
    pub args: BTreeMap<String, String>,
}

/// A container id as the spec allows it: an alphanumeric first character, then
/// alphanumerics, `_`, `.` and `-`.
pub fn check_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("{id:?} must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "{id:?} has {c:?}: only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// An interface name as the spec allows it.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name.len() > MAX_IFNAME {
        return Err(format!("{name:?} is longer than {MAX_IFNAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} must not contain {c:?}"));
    }
    Ok(())
}

/// Parse `CNI_ARGS` (`K=V;K2=V2`).
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Read the invocation from the environment (`get` looks a variable up). Every missing
/// or malformed variable is named in one error (code 4).
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let invalid = |details: Vec<String>| {
        CniError::new(
            code::INVALID_ENV,
            "invalid CNI environment",
            details.join("; "),
        )
    };
    let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
    let verb = match nonempty("CNI_COMMAND") {
        None => return Err(invalid(vec!["CNI_COMMAND is not set".into()])),
        Some(c) => Verb::parse(&c).ok_or_else(|| {
            invalid(vec![format!(
                "CNI_COMMAND={c:?} is not ADD, DEL, CHECK, GC, STATUS or VERSION"
            )])
        })?,
    };
    let mut problems = Vec::new();
    let mut attachment = None;
    let mut netns = None;
    let mut args = BTreeMap::new();
    if verb.is_attachment() {
        let id = nonempty("CNI_CONTAINERID");
        let ifname = nonempty("CNI_IFNAME");
        match &id {
            None => problems.push("CNI_CONTAINERID is not set".to_string()),
            Some(v) => {
                if let Err(e) = check_container_id(v) {
                    problems.push(format!("CNI_CONTAINERID {e}"));
                }
            }
        }
        match &ifname {
            None => problems.push("CNI_IFNAME is not set".to_string()),
            Some(v) => {
                if let Err(e) = check_ifname(v) {
                    problems.push(format!("CNI_IFNAME {e}"));
                }
            }
        }
        match nonempty("CNI_NETNS") {
            None if verb != Verb::Del => problems.push("CNI_NETNS is not set".to_string()),
            None => {}
            Some(p) if !p.starts_with('/') => {
                problems.push(format!("CNI_NETNS {p:?} is not an absolute path"));
            }
            Some(p) => netns = Some(PathBuf::from(p)),
        }
        if let (Some(container_id), Some(ifname)) = (id, ifname) {
            attachment = Some(Attachment {
                container_id,
                ifname,
            });
        }
        match parse_cni_args(&get("CNI_ARGS").unwrap_or_default()) {
            Ok(a) => args = a,
            Err(e) => problems.push(format!("CNI_ARGS {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Invocation {
        verb,
        attachment,
        netns,
        args,
    })
}

// ---------------------------------------------------------------- the configuration

/// Where the plugin finds the node's certificate (the agent's own files by default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConf {
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Name to verify the controller certificate against.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_ca() -> PathBuf {
    PathBuf::from("/etc/tern/pki/ca.pem")
}
fn default_cert() -> PathBuf {
    PathBuf::from("/etc/tern/pki/node.pem")
}
fn default_key() -> PathBuf {
    PathBuf::from("/etc/tern/pki/node-key.pem")
}

impl Default for TlsConf {
    fn default() -> Self {
        TlsConf {
            ca: default_ca(),
            cert: default_cert(),
            key: default_key(),
            server_name: None,
        }
    }
}

/// A boolean Calico-style: `true` or the string `"true"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

/// The `ipam` section, in the spirit of Calico's: which families, from which pools.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpam {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    assign_ipv4: Option<Flag>,
    #[serde(default)]
    assign_ipv6: Option<Flag>,
    #[serde(default)]
    ipv4_pools: Vec<String>,
    #[serde(default)]
    ipv6_pools: Vec<String>,
}

/// What to assign: per family, whether, and from which pools (in order; empty: any
/// pool of the family that selects the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    pub ipv4: Option<Vec<String>>,
    pub ipv6: Option<Vec<String>>,
}

/// The network configuration a runtime streams on stdin (one plugin of a list, with
/// `cniVersion` and `name` filled in by the runtime).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// This node's name (its certificate names it) [default: the host name].
    pub node_name: Option<String>,
    /// Controller addresses (`host:port`), tried in order: the plugin calls the
    /// controller itself (no agent socket).
    pub controllers: Vec<String>,
    /// The node agent's CNI socket, which does the work (None: `controllers`).
    pub agent_socket: Option<std::path::PathBuf>,
    pub tls: TlsConf,
    /// MTU of the veth pair [default: the kernel's, 1500].
    pub mtu: Option<u32>,
    /// How long one controller call may take, in seconds [default: 10].
    pub timeout_secs: u64,
    pub ipam: IpamConf,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Where the node agent serves CNI requests unless the configuration says otherwise
/// (`tern-agent run --cni-socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/tern/cni.sock";

/// The keys the spec lets a runtime put in a plugin's configuration, and tern's own.
const KNOWN_KEYS: &[&str] = &[
    // The spec's.
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "dns",
    "ipam",
    "cni.dev/valid-attachments",
    // libcni 1.2.0 to 1.2.2 sent the GC list under this name.
    "cni.dev/attachments",
    // tern's.
    "nodeName",
    "agentSocket",
    "controllers",
    "tls",
    "mtu",
    "timeoutSeconds",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    #[serde(default)]
    cni_versions: Option<Vec<String>>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    agent_socket: Option<String>,
    #[serde(default)]
    controllers: Vec<String>,
    #[serde(default)]
    tls: Option<TlsConf>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The `cniVersion` of a configuration, as far as it can be read (for the error
/// document of a configuration that fails later).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Is `v` one of [`SUPPORTED_VERSIONS`]?
pub fn supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Does `v` (a supported version) include the 1.1 additions?
pub fn at_least_1_1(v: &str) -> bool {
    v == "1.1.0"
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network configuration: {field}"),
        format!("{field}: {reason}"),
    )
}

fn flag(field: &str, f: Option<Flag>, default: bool) -> Result<bool, CniError> {
    match f {
        None => Ok(default),
        Some(Flag::Bool(b)) => Ok(b),
        Some(Flag::Text(t)) => match t.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid(field, format!("{t:?} is not true or false"))),
        },
    }
}

fn check_pools(field: &str, pools: &[String]) -> Result<(), CniError> {
    for (i, p) in pools.iter().enumerate() {
        tern::model::check_name(p).map_err(|e| invalid(&format!("{field}[{i}]"), e))?;
    }
    Ok(())
}

/// Parse and check the configuration. Errors: 6 (not JSON, or a field of the wrong
/// type, named by its path), 2 (an unknown key, named with its value), 1 (a version
/// tern does not speak), 7 (a value that breaks a rule, named).
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(CniError::new(
            code::DECODE,
            "cannot decode the network configuration",
            "it is not a JSON object",
        ));
    };
    if let Some((k, v)) = obj.iter().find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field in network configuration: {k}"),
            format!("{k}: {v} (tern knows {})", KNOWN_KEYS.join(", ")),
        ));
    }
    let raw: RawConf = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names an unknown nested key "unknown field `x`": that is code 2.
        let code = if inner.starts_with("unknown field") {
            code::UNSUPPORTED_FIELD
        } else {
            code::DECODE
        };
        CniError::new(
            code,
            format!("cannot decode the network configuration at {path}"),
            format!("{path}: {inner}"),
        )
    })?;
    let cni_version = raw
        .cni_version
        .ok_or_else(|| invalid("cniVersion", "required"))?;
    if !supported(&cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {cni_version}"),
            format!(
                "cniVersion {cni_version:?}: tern-cni speaks {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if let Some(list) = &raw.cni_versions
        && !list.iter().any(|v| v == &cni_version)
    {
        return Err(invalid(
            "cniVersions",
            format!("does not list cniVersion {cni_version}"),
        ));
    }
    let name = raw.name.ok_or_else(|| invalid("name", "required"))?;
    check_container_id(&name).map_err(|e| invalid("name", e))?;
    match raw.kind.as_deref() {
        Some("tern") => {}
        Some(other) => return Err(invalid("type", format!("{other:?} is not \"tern\""))),
        None => return Err(invalid("type", "required")),
    }
    if let Some(n) = &raw.node_name {
        tern::model::check_name(n).map_err(|e| invalid("nodeName", e))?;
    }
    let agent_socket = match (&raw.agent_socket, raw.controllers.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "agentSocket",
                "given with controllers: name the agent's socket (the agent calls the \
                 controller) or the controllers (the plugin calls them), not both",
            ));
        }
        (Some(p), true) if !p.starts_with('/') => {
            return Err(invalid(
                "agentSocket",
                format!("{p:?} is not an absolute path"),
            ));
        }
        (Some(p), true) => Some(std::path::PathBuf::from(p)),
        (None, true) => Some(std::path::PathBuf::from(DEFAULT_AGENT_SOCKET)),
        (None, false) => None,
    };
    if agent_socket.is_some() && raw.tls.is_some() {
        return Err(invalid(
            "tls",
            "given without controllers: the agent uses its own certificate",
        ));
    }
    for (i, c) in raw.controllers.iter().enumerate() {
        if c.trim().is_empty() || c.chars().any(char::is_whitespace) {
            return Err(invalid(
                &format!("controllers[{i}]"),
                format!("{c:?} is not host:port"),
            ));
        }
    }
    if let Some(m) = raw.mtu
        && !(68..=65535).contains(&m)
    {
        return Err(invalid("mtu", format!("{m} is not within 68..=65535")));
    }
    let timeout_secs = raw.timeout_seconds.unwrap_or(10);
    if !(1..=300).contains(&timeout_secs) {
        return Err(invalid(
            "timeoutSeconds",
            format!("{timeout_secs} is not within 1..=300"),
        ));
    }
    let ipam = match raw.ipam {
        None => IpamConf {
            ipv4: Some(Vec::new()),
            ipv6: None,
        },
        Some(i) => {
            if let Some(t) = &i.kind
                && t != "tern"
            {
                return Err(invalid(
                    "ipam.type",
                    format!(
                        "{t:?}: tern-cni assigns addresses from tern's IPAM; use \"tern\" or leave it out"
                    ),
                ));
            }
            check_pools("ipam.ipv4_pools", &i.ipv4_pools)?;
            check_pools("ipam.ipv6_pools", &i.ipv6_pools)?;
            let v4 = flag("ipam.assign_ipv4", i.assign_ipv4, true)?;
            let v6 = flag("ipam.assign_ipv6", i.assign_ipv6, false)?;
            if !v4 && !v6 {
                return Err(invalid(
                    "ipam",
                    "assign_ipv4 and assign_ipv6 are both false: nothing to assign",
                ));
            }
            if !v4 && !i.ipv4_pools.is_empty() {
                return Err(invalid(
                    "ipam.ipv4_pools",
                    "given while assign_ipv4 is false",
                ));
            }
            if !v6 && !i.ipv6_pools.is_empty() {
                return Err(invalid(
                    "ipam.ipv6_pools",
                    "given while assign_ipv6 is false",
                ));
            }
            IpamConf {
                ipv4: v4.then_some(i.ipv4_pools),
                ipv6: v6.then_some(i.ipv6_pools),
            }
        }
    };
    let attachments = raw.valid_attachments.or(raw.attachments);
    let valid_attachments = attachments.map(|list| {
        list.into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect()
    });
    Ok(NetConf {
        cni_version,
        name,
        node_name: raw.node_name,
        controllers: raw.controllers,
        agent_socket,
        tls: raw.tls.unwrap_or_default(),
        mtu: raw.mtu,
        timeout_secs,
        ipam,
        dns: raw.dns,
        prev_result: raw.prev_result,
        valid_attachments,
    })
}

// ---------------------------------------------------------------- names

/// Host-side veth names start with this: BIRD's `direct` protocol leaves `cali*` out
/// (the /32 and /128 routes to workloads are exported from the kernel, not as
/// interface routes), as with Calico, so tern's veths are handled the same way.
pub const HOST_VETH_PREFIX: &str = "cali";

/// The IPv4 gateway every container routes through: the host answers ARP for it on
/// the veth (proxy ARP), so no address is spent on a gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The MAC of every host-side veth; the IPv6 gateway is its link-local address.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The IPv6 gateway: the link-local address the host-side veth derives from
/// [`HOST_MAC`] (EUI-64).
pub fn gateway_v6() -> Ipv6Addr {
    let m = HOST_MAC;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The SHA-256 digest of an attachment, for names that must fit an interface name.
fn digest(a: &Attachment) -> ring::digest::Digest {
    let id = format!("{}/{}", a.container_id, a.ifname);
    ring::digest::digest(&ring::digest::SHA256, id.as_bytes())
}

/// The host-side veth of an attachment: `cali` and 11 hex digits of a digest of
/// container id and interface name (15 bytes, the longest name Linux takes).
pub fn host_veth(a: &Attachment) -> String {
    let hex: String = digest(a)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{HOST_VETH_PREFIX}{}",
        &hex[..MAX_IFNAME - HOST_VETH_PREFIX.len()]
    )
}

/// The MAC of the container's interface: locally administered, unicast, from the same
/// digest (so ADD knows it without reading it back).
pub fn container_mac(a: &Attachment) -> [u8; 6] {
    let d = digest(a);
    let d = d.as_ref();
    [(d[20] & 0xfe) | 0x02, d[21], d[22], d[23], d[24], d[25]]
}

/// The IPAM handle of an attachment on a network: `cni/<network>/<container id>/<ifname>`
/// (none of the three may contain `/`), so GC lists one network's handles by prefix.
pub fn handle(network: &str, a: &Attachment) -> String {
    format!("{}{}/{}", handle_prefix(network), a.container_id, a.ifname)
}

pub fn handle_prefix(network: &str) -> String {
    format!("cni/{network}/")
}

/// The attachment a handle of `network` names (None: not one of this network's).
pub fn parse_handle(network: &str, handle: &str) -> Option<Attachment> {
    let rest = handle.strip_prefix(&handle_prefix(network))?;
    let (container_id, ifname) = rest.split_once('/')?;
    (check_container_id(container_id).is_ok() && check_ifname(ifname).is_ok()).then(|| Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A CNI result (1.0 and 1.1 share the shape; 1.1 adds `mtu`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
}

/// What ADD made, for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub host_veth: String,
    pub ifname: String,
    pub container_mac: [u8; 6],
    pub netns: String,
    pub addresses: Vec<IpAddr>,
    pub mtu: Option<u32>,
}

/// The ADD result: the host veth and the container's interface, a host route per
/// address (/32, /128) as the address, the gateways and default routes of each family.
pub fn build_result(conf: &NetConf, made: &Made) -> CniResult {
    let mtu = if at_least_1_1(&conf.cni_version) {
        made.mtu
    } else {
        None
    };
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    let mut v4 = false;
    let mut v6 = false;
    for a in &made.addresses {
        let (address, gateway) = match a {
            IpAddr::V4(_) => {
                v4 = true;
                (IpNet::from(*a), IpAddr::V4(GATEWAY_V4))
            }
            IpAddr::V6(_) => {
                v6 = true;
                (IpNet::from(*a), IpAddr::V6(gateway_v6()))
            }
        };
        ips.push(IpConfig {
            address,
            gateway: Some(gateway),
            interface: Some(1),
        });
    }
    if v4 {
        routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("a literal network"),
            gw: Some(IpAddr::V4(GATEWAY_V4)),
        });
    }
    if v6 {
        routes.push(Route {
            dst: "::/0".parse().expect("a literal network"),
            gw: Some(IpAddr::V6(gateway_v6())),
        });
    }
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: made.host_veth.clone(),
                mac: mac_string(&HOST_MAC),
                sandbox: None,
                mtu,
            },
            Interface {
                name: made.ifname.clone(),
                mac: mac_string(&made.container_mac),
                sandbox: Some(made.netns.clone()),
                mtu,
            },
        ],
        ips,
        routes,
        dns: conf.dns.clone(),
    }
}

/// Read a `prevResult` (CHECK). Its shape is the spec's; other plugins' extra fields
/// are allowed.
pub fn parse_prev_result(v: &Value) -> Result<CniResult, CniError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        CniError::new(
            code::DECODE,
            "cannot decode prevResult",
            format!("prevResult.{path}: {}", e.into_inner()),
        )
    })
}

/// What CHECK expects of one attachment, from its `prevResult`: the container's
/// interface (index, MAC) and the addresses assigned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub host_veth: String,
    pub ifname: String,
    pub container_mac: String,
    pub addresses: Vec<IpAddr>,
}

/// Find this attachment's part of a previous result (a later plugin may have added
/// its own interfaces and addresses).
pub fn expected_from(prev: &CniResult, a: &Attachment) -> Result<Expected, CniError> {
    let drift = |what: String| CniError::new(code::DRIFT, "prevResult does not match", what);
    let host = host_veth(a);
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == a.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            drift(format!(
                "prevResult lists no container interface {:?}",
                a.ifname
            ))
        })?;
    if !prev.interfaces.iter().any(|i| i.name == host) {
        return Err(drift(format!(
            "prevResult lists no host interface {host:?} (made by another plugin?)"
        )));
    }
    let addresses: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .map(|ip| ip.address.addr())
        .collect();
    if addresses.is_empty() {
        return Err(drift(format!(
            "prevResult gives interface {:?} no address",
            a.ifname
        )));
    }
    Ok(Expected {
        host_veth: host,
        ifname: a.ifname.clone(),
        container_mac: prev.interfaces[idx].mac.clone(),
        addresses,
    })
}

/// The VERSION answer.
pub fn version_answer(asked: Option<&str>) -> String {
    serde_json::json!({
        "cniVersion": asked.unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
