//! The resource model: Kubernetes-style objects with Calico v3 field names.
//!
//! Every object has `apiVersion`, `kind`, `metadata` and (except Secret) `spec`.
//! Manifests may say `apiVersion: projectcalico.org/v3`; tern writes `tern.dev/v1`.
//! [`Resource`] is the typed sum of all kinds; it parses from and serializes to the
//! JSON document that etcd stores, the API carries and `ternctl get -o json` prints.

pub mod bgp_ext;
pub mod effective;
pub mod felix;
pub mod fold;
pub mod kinds;
pub mod protojson;
pub mod stored_only;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use bgp_ext::*;
pub use felix::FelixConfigurationSpec;
pub use kinds::*;
pub use stored_only::{FieldWarning, stored_only};
pub use types::*;

/// The apiVersion tern writes.
pub const API_VERSION: &str = "tern.dev/v1";
/// Calico's apiVersion, accepted on input.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";
/// Kubernetes' apiVersion of a Secret, accepted on input for that kind only.
pub const KUBERNETES_SECRET_API_VERSION: &str = "v1";

/// The fields a document may have at its top level (their names are matched ignoring
/// case, as calicoctl matches them).
const TOP_LEVEL_FIELDS: [&str; 8] = [
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "status",
    "data",
    "stringData",
    "type",
];

/// An error in one field of a resource: the JSON path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path in the document, e.g. `spec.cidr` or `spec.exportV4[2].action`.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The kinds of resource tern stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    IPPool,
    BGPPeer,
    BGPConfiguration,
    BGPFilter,
    Node,
    BlockAffinity,
    AgentConfiguration,
    Secret,
    BFDProfile,
    IPReservation,
    FelixConfiguration,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::IPPool,
        Kind::BGPPeer,
        Kind::BGPConfiguration,
        Kind::BGPFilter,
        Kind::Node,
        Kind::BlockAffinity,
        Kind::AgentConfiguration,
        Kind::Secret,
        Kind::BFDProfile,
        Kind::IPReservation,
        Kind::FelixConfiguration,
    ];

    /// The kind as written in manifests: `IPPool`, `BGPPeer`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::BGPPeer => "BGPPeer",
            Kind::BGPConfiguration => "BGPConfiguration",
            Kind::BGPFilter => "BGPFilter",
            Kind::Node => "Node",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::AgentConfiguration => "AgentConfiguration",
            Kind::Secret => "Secret",
            Kind::BFDProfile => "BFDProfile",
            Kind::IPReservation => "IPReservation",
            Kind::FelixConfiguration => "FelixConfiguration",
        }
    }

    /// The path segment in the store: `/tern/v1/<segment>/<name>`.
    pub fn key_segment(self) -> &'static str {
        match self {
            Kind::IPPool => "ippool",
            Kind::BGPPeer => "bgppeer",
            Kind::BGPConfiguration => "bgpconfiguration",
            Kind::BGPFilter => "bgpfilter",
            Kind::Node => "node",
            Kind::BlockAffinity => "blockaffinity",
            Kind::AgentConfiguration => "agentconfiguration",
            Kind::Secret => "secret",
            Kind::BFDProfile => "bfdprofile",
            Kind::IPReservation => "ipreservation",
            Kind::FelixConfiguration => "felixconfiguration",
        }
    }

    pub fn from_key_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key_segment() == s)
    }

    /// Parse a kind name the way calicoctl does: case-insensitive, singular or plural,
    /// with the usual short forms (`ippool`, `ippools`, `pool`, `bgppeer`, `bgpconfig`).
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        let k = match l.as_str() {
            "ippool" | "ippools" | "pool" | "pools" | "ipp" | "ipps" => Kind::IPPool,
            "bgppeer" | "bgppeers" | "bgpp" | "bgpps" | "peer" | "peers" | "bp" | "bps" => {
                Kind::BGPPeer
            }
            "bgpconfiguration" | "bgpconfigurations" | "bgpconfig" | "bgpconfigs" | "bgpc"
            | "bgpcs" => Kind::BGPConfiguration,
            "bgpfilter" | "bgpfilters" | "bgpf" | "bgpfs" | "filter" | "filters" => Kind::BGPFilter,
            "node" | "nodes" | "no" | "nos" => Kind::Node,
            "blockaffinity" | "blockaffinities" | "affinity" | "affinities" | "ba" | "bas" => {
                Kind::BlockAffinity
            }
            "agentconfiguration"
            | "agentconfigurations"
            | "agentconfig"
            | "agentconfigs"
            | "ac" => Kind::AgentConfiguration,
            "secret" | "secrets" => Kind::Secret,
            "bfdprofile" | "bfdprofiles" | "bfd" => Kind::BFDProfile,
            "ipreservation" | "ipreservations" | "ipr" | "iprs" | "reservation"
            | "reservations" => Kind::IPReservation,
            "felixconfiguration"
            | "felixconfigurations"
            | "felixconfig"
            | "felixconfigs"
            | "fc" => Kind::FelixConfiguration,
            _ => return None,
        };
        Some(k)
    }

    /// Singleton-style kinds whose objects are `default` or `node.<nodename>`.
    pub fn is_per_node_config(self) -> bool {
        matches!(
            self,
            Kind::BGPConfiguration | Kind::AgentConfiguration | Kind::FelixConfiguration
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::parse(s).ok_or_else(|| {
            format!(
                "unknown resource kind {s:?} (known: {})",
                Kind::ALL.map(|k| k.as_str()).join(", ")
            )
        })
    }
}

/// Object metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "types::deserialize_labels"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "types::deserialize_labels"
    )]
    pub annotations: BTreeMap<String, String>,
    /// The etcd mod revision. Never stored: filled in when read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
}

/// A resource of one kind: metadata plus spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    pub metadata: ObjectMeta,
    pub spec: S,
}

impl<S> Object<S> {
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Object {
            metadata: ObjectMeta {
                name: name.into(),
                ..Default::default()
            },
            spec,
        }
    }
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }
}

pub type IPPool = Object<IPPoolSpec>;
pub type BGPPeer = Object<BGPPeerSpec>;
pub type BGPConfiguration = Object<BGPConfigurationSpec>;
pub type BGPFilter = Object<BGPFilterSpec>;
pub type Node = Object<NodeSpec>;
pub type BlockAffinity = Object<BlockAffinitySpec>;
pub type AgentConfiguration = Object<AgentConfigurationSpec>;
pub type BFDProfile = Object<BFDProfileSpec>;
pub type IPReservation = Object<IPReservationSpec>;
pub type FelixConfiguration = Object<FelixConfigurationSpec>;
/// A Secret carries `data` (key -> value) instead of a spec.
pub type Secret = Object<SecretData>;

/// Any resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    IPPool(IPPool),
    BGPPeer(BGPPeer),
    BGPConfiguration(BGPConfiguration),
    BGPFilter(BGPFilter),
    Node(Node),
    BlockAffinity(BlockAffinity),
    AgentConfiguration(AgentConfiguration),
    Secret(Secret),
    BFDProfile(BFDProfile),
    IPReservation(IPReservation),
    FelixConfiguration(FelixConfiguration),
}

/// Run an expression over the object inside any variant.
macro_rules! each {
    ($r:expr, $o:ident => $e:expr) => {
        match $r {
            Resource::IPPool($o) => $e,
            Resource::BGPPeer($o) => $e,
            Resource::BGPConfiguration($o) => $e,
            Resource::BGPFilter($o) => $e,
            Resource::Node($o) => $e,
            Resource::BlockAffinity($o) => $e,
            Resource::AgentConfiguration($o) => $e,
            Resource::Secret($o) => $e,
            Resource::BFDProfile($o) => $e,
            Resource::IPReservation($o) => $e,
            Resource::FelixConfiguration($o) => $e,
        }
    };
}

fn parse_spec<S: DeserializeOwned>(spec: Value) -> Result<S, FieldError> {
    serde_path_to_error::deserialize(fold::Folded(spec)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde says "missing field `cidr`" at the parent: name the field itself.
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            let field = if path == "." || path.is_empty() {
                format!("spec.{name}")
            } else {
                format!("spec.{path}.{name}")
            };
            return FieldError::new(field, "required");
        }
        let field = if path == "." || path.is_empty() {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        FieldError::new(field, tidy_serde_message(&inner))
    })
}

/// serde messages end with " at line 1 column 2" when they come from text; ours come
/// from values, but keep the message short and without backticks either way.
fn tidy_serde_message(msg: &str) -> String {
    let msg = msg.replace('`', "'");
    if msg.starts_with("invalid type: boolean") {
        // Most likely an unquoted yes/no/on/off where a name or a word was meant.
        return format!(
            "{msg} (unquoted, YAML reads yes, no, on, off, y, n, true and false as booleans: \
             quote the value)"
        );
    }
    msg
}

/// The apiVersion a document of `kind` may say: tern's, Calico's, and Kubernetes' `v1`
/// for a Secret.
fn check_api_version(api_version: &str, kind: Kind) -> Result<(), FieldError> {
    match api_version {
        API_VERSION | CALICO_API_VERSION => Ok(()),
        KUBERNETES_SECRET_API_VERSION if kind == Kind::Secret => Ok(()),
        other => Err(FieldError::new(
            "apiVersion",
            format!(
                "{other:?} is not supported for {kind} (use {API_VERSION} or \
                 {CALICO_API_VERSION}; {KUBERNETES_SECRET_API_VERSION} only for a Secret)"
            ),
        )),
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::IPPool(_) => Kind::IPPool,
            Resource::BGPPeer(_) => Kind::BGPPeer,
            Resource::BGPConfiguration(_) => Kind::BGPConfiguration,
            Resource::BGPFilter(_) => Kind::BGPFilter,
            Resource::Node(_) => Kind::Node,
            Resource::BlockAffinity(_) => Kind::BlockAffinity,
            Resource::AgentConfiguration(_) => Kind::AgentConfiguration,
            Resource::Secret(_) => Kind::Secret,
            Resource::BFDProfile(_) => Kind::BFDProfile,
            Resource::IPReservation(_) => Kind::IPReservation,
            Resource::FelixConfiguration(_) => Kind::FelixConfiguration,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Parse a whole document (`apiVersion`, `kind`, `metadata`, `spec`).
    ///
    /// `apiVersion` is `tern.dev/v1` or `projectcalico.org/v3`; a Secret may also say
    /// Kubernetes' `v1`, so that a Kubernetes Secret manifest applies unchanged.
    pub fn from_value(v: Value) -> Result<Resource, FieldError> {
        let Value::Object(map) = v else {
            return Err(FieldError::new("", "a resource must be a JSON/YAML object"));
        };
        let mut map =
            fold::fold_keys(map, &TOP_LEVEL_FIELDS).map_err(|e| FieldError::new("", e))?;
        let api_version = match map.get("apiVersion") {
            Some(Value::String(a)) => a.clone(),
            Some(_) => return Err(FieldError::new("apiVersion", "must be a string")),
            None => return Err(FieldError::new("apiVersion", "required")),
        };
        let kind =
            match map.remove("kind") {
                Some(Value::String(k)) => Kind::ALL
                    .into_iter()
                    .find(|x| x.as_str() == k)
                    .ok_or_else(|| {
                        FieldError::new(
                            "kind",
                            format!(
                                "unknown kind {k:?} (known: {})",
                                Kind::ALL.map(|k| k.as_str()).join(", ")
                            ),
                        )
                    })?,
                Some(_) => return Err(FieldError::new("kind", "must be a string")),
                None => return Err(FieldError::new("kind", "required")),
            };
        check_api_version(&api_version, kind)?;
        Resource::from_parts(kind, map)
    }

    /// Parse a document whose kind is already known (the rest of the fields in `map`).
    pub fn from_parts(kind: Kind, mut map: Map<String, Value>) -> Result<Resource, FieldError> {
        map.remove("apiVersion");
        map.remove("kind");
        let metadata: ObjectMeta = match map.remove("metadata") {
            Some(m) => serde_path_to_error::deserialize(fold::Folded(m)).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "metadata".to_string()
                } else {
                    format!("metadata.{path}")
                };
                FieldError::new(field, tidy_serde_message(&e.into_inner().to_string()))
            })?,
            None => return Err(FieldError::new("metadata.name", "required")),
        };
        if kind == Kind::Secret {
            let data = take_secret_data(&mut map)?;
            // Kubernetes' Secret type (`Opaque`, `kubernetes.io/basic-auth`, ...): tern
            // reads every Secret as plain key/value data, so the type is not kept.
            match map.remove("type") {
                None | Some(Value::String(_)) => {}
                Some(_) => return Err(FieldError::new("type", "must be a string")),
            }
            if let Some(extra) = map.keys().next() {
                return Err(FieldError::new(
                    extra.clone(),
                    "unknown field (a Secret has metadata, type, data and stringData)",
                ));
            }
            return Ok(Resource::Secret(Object {
                metadata,
                spec: data,
            }));
        }
        let spec = map
            .remove("spec")
            .unwrap_or_else(|| Value::Object(Map::new()));
        // `calicoctl get ... -o yaml` prints the status Calico's components write (a
        // Node's WireGuard keys and pod CIDRs, an IPPool's conditions): Calico's own,
        // read and dropped so that such an export applies. tern keeps its own status.
        map.remove("status");
        if let Some(extra) = map.keys().next() {
            return Err(FieldError::new(
                extra.clone(),
                "unknown field (expected apiVersion, kind, metadata, spec)",
            ));
        }
        let spec = if spec.is_null() {
            Value::Object(Map::new())
        } else {
            spec
        };
        Ok(match kind {
            Kind::IPPool => Resource::IPPool(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::BGPPeer => Resource::BGPPeer(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::BGPConfiguration => Resource::BGPConfiguration(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::BGPFilter => Resource::BGPFilter(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::Node => Resource::Node(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::BlockAffinity => Resource::BlockAffinity(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::AgentConfiguration => Resource::AgentConfiguration(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::BFDProfile => Resource::BFDProfile(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::IPReservation => Resource::IPReservation(Object {
                metadata,
                spec: parse_spec(spec)?,
            }),
            Kind::FelixConfiguration => Resource::FelixConfiguration(Object {
                metadata,
                spec: FelixConfigurationSpec::parse(spec)?,
            }),
            Kind::Secret => unreachable!("handled above"),
        })
    }

    /// Parse the stored JSON bytes of a resource.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Resource, FieldError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| FieldError::new("", format!("not JSON: {e}")))?;
        Resource::from_value(v)
    }

    /// The canonical JSON document (apiVersion tern.dev/v1). Secret values are
    /// included, base64-encoded in `data` as Kubernetes does.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        map.insert("kind".into(), Value::String(self.kind().as_str().into()));
        map.insert(
            "metadata".into(),
            serde_json::to_value(self.metadata()).expect("metadata is always serializable"),
        );
        match self {
            Resource::Secret(s) => {
                let data: Map<String, Value> = s
                    .spec
                    .iter()
                    .map(|(k, v)| {
                        let enc = base64::engine::general_purpose::STANDARD.encode(v.expose());
                        (k.clone(), Value::String(enc))
                    })
                    .collect();
                map.insert("data".into(), Value::Object(data));
            }
            Resource::IPPool(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::BGPPeer(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::BGPConfiguration(o) => {
                map.insert("spec".into(), serialize_spec(&o.spec));
            }
            Resource::BGPFilter(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::Node(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::BlockAffinity(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::AgentConfiguration(o) => {
                map.insert("spec".into(), serialize_spec(&o.spec));
            }
            Resource::BFDProfile(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::IPReservation(o) => _ = map.insert("spec".into(), serialize_spec(&o.spec)),
            Resource::FelixConfiguration(o) => {
                map.insert("spec".into(), serialize_spec(&o.spec));
            }
        }
        Value::Object(map)
    }

    /// The canonical JSON document as bytes (what etcd stores).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).expect("a Value always serializes")
    }

    /// Fill in the documented defaults (Calico's), so stored objects show them.
    pub fn normalize(&mut self) {
        match self {
            Resource::IPPool(p) => {
                let s = &mut p.spec;
                s.block_size.get_or_insert(match s.family() {
                    Family::V4 => DEFAULT_BLOCK_SIZE_V4,
                    Family::V6 => DEFAULT_BLOCK_SIZE_V6,
                });
                if s.node_selector.is_empty() {
                    s.node_selector = crate::selector::Selector::all();
                }
                s.ipip_mode.get_or_insert(EncapMode::Never);
                s.vxlan_mode.get_or_insert(EncapMode::Never);
                if s.allowed_uses.is_empty() {
                    s.allowed_uses = vec![AllowedUse::Workload, AllowedUse::Tunnel];
                }
                s.assignment_mode.get_or_insert(AssignmentMode::Automatic);
            }
            Resource::BGPConfiguration(c) if c.metadata.name == "default" => {
                let s = &mut c.spec;
                s.node_to_node_mesh_enabled.get_or_insert(true);
                s.as_number.get_or_insert(DEFAULT_AS_NUMBER);
                s.listen_port.get_or_insert(DEFAULT_LISTEN_PORT);
                s.log_severity_screen.get_or_insert(LogSeverity::Info);
            }
            Resource::BFDProfile(p) => p.spec.normalize(),
            _ => {}
        }
    }

    pub fn as_ippool(&self) -> Option<&IPPool> {
        match self {
            Resource::IPPool(p) => Some(p),
            _ => None,
        }
    }
}

fn serialize_spec<S: Serialize>(spec: &S) -> Value {
    serde_json::to_value(spec).expect("specs are plain data and always serialize")
}

/// Secret payload: `data` (base64, as Kubernetes) and/or `stringData` (plain), taken
/// out of `map`. The one decoder of Secret data: documents read here and manifests
/// turned into API requests ([`protojson::value_to_proto`]) both use it. A value that
/// is not text is refused without being quoted back (it may be a password).
pub fn take_secret_data(map: &mut Map<String, Value>) -> Result<SecretData, FieldError> {
    let mut out = SecretData::new();
    let text = |field: String, v: Value| -> Result<String, FieldError> {
        match v {
            Value::String(s) => Ok(s),
            _ => Err(FieldError::new(
                field,
                "must be a string (quote it: unquoted, YAML reads yes, no, on, off, true, \
                 false and numbers as such)",
            )),
        }
    };
    if let Some(data) = map.remove("data") {
        let Value::Object(d) = data else {
            return Err(FieldError::new(
                "data",
                "must be a map of key to base64 value",
            ));
        };
        for (k, v) in d {
            let raw = text(format!("data.{k}"), v)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .map_err(|_| {
                    FieldError::new(
                        format!("data.{k}"),
                        "is not base64 (use stringData for plain text)",
                    )
                })?;
            let value = String::from_utf8(bytes)
                .map_err(|_| FieldError::new(format!("data.{k}"), "is not UTF-8 text"))?;
            out.insert(k, SecretValue::new(value));
        }
    }
    if let Some(data) = map.remove("stringData") {
        let Value::Object(d) = data else {
            return Err(FieldError::new(
                "stringData",
                "must be a map of key to value",
            ));
        };
        for (k, v) in d {
            let value = text(format!("stringData.{k}"), v)?;
            out.insert(k, SecretValue::new(value));
        }
    }
    Ok(out)
}

/// The store key of a resource under a prefix: `<prefix>/<kind>/<name>`.
pub fn resource_key(prefix: &str, kind: Kind, name: &str) -> String {
    format!(
        "{}/{}/{}",
        prefix.trim_end_matches('/'),
        kind.key_segment(),
        name
    )
}

/// Kubernetes-style name check: a DNS-1123 subdomain (lower case alphanumerics, `-`
/// and `.`, starting and ending alphanumeric, at most 253 characters).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    if !ok_chars || !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        return Err(format!(
            "{name:?} is not a valid name: use lower case letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One document, read as manifests are read.
    fn parse_yaml(y: &str) -> Result<Resource, FieldError> {
        let mut docs = crate::manifest::parse_documents_raw(y).expect("test yaml parses");
        assert_eq!(docs.len(), 1, "{y}");
        Resource::from_value(docs.remove(0))
    }

    #[test]
    fn parses_calico_manifests() {
        let r = parse_yaml(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p1\nspec:\n  cidr: 192.168.0.0/16\n  ipipMode: Always\n  natOutgoing: true\n",
        )
        .expect("valid pool");
        let Resource::IPPool(p) = &r else {
            panic!("not a pool")
        };
        assert!(p.spec.nat_outgoing);
        assert_eq!(p.spec.ipip_mode(), EncapMode::Always);
        assert_eq!(p.spec.block_size(), 26);
        let v = r.to_value();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["spec"]["cidr"], "192.168.0.0/16");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {natOutgoing: true}\n")
            .expect_err("cidr missing");
        assert_eq!(e.field, "spec.cidr");
        assert_eq!(e.reason, "required");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, natOutgoin: true}\n")
            .expect_err("typo");
        assert_eq!(e.field, "spec.natOutgoin");
        assert!(
            e.reason
                .starts_with("unknown field 'natOutgoin', expected one of"),
            "{e}"
        );
        let e = parse_yaml(
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: nope}\n",
        )
        .expect_err("bad cidr");
        assert_eq!(e.field, "spec.cidr");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {nodeSelector: 'has(a'}\n")
            .expect_err("bad selector");
        assert_eq!(e.field, "spec.nodeSelector");
        assert!(e.reason.contains("position"), "{e}");
        let e = parse_yaml("apiVersion: v1\nkind: IPPool\nmetadata: {name: p}\n").expect_err("api");
        assert_eq!(e.field, "apiVersion");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: Pod\nmetadata: {name: p}\n")
            .expect_err("kind");
        assert_eq!(e.field, "kind");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: BGPFilter\nmetadata: {name: f}\nspec:\n  exportV4:\n    - action: Accept\n    - action: Maybe\n")
            .expect_err("bad action");
        assert_eq!(e.field, "spec.exportV4[1].action");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: on}\nspec: {cidr: 10.0.0.0/8}\n")
            .expect_err("a boolean name");
        assert_eq!(e.field, "metadata.name");
        assert!(e.reason.ends_with("as booleans: quote the value)"), "{e}");
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerSelector: y}\n")
            .expect_err("a boolean selector");
        assert_eq!(e.field, "spec.peerSelector");
        assert!(e.reason.contains("quote the value"), "{e}");
    }

    #[test]
    fn secrets_round_trip_and_never_debug_print() {
        let r = parse_yaml("apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\ndata: {other: c2VjcmV0}\n")
            .expect("secret");
        let Resource::Secret(s) = &r else {
            panic!("not a secret")
        };
        assert_eq!(s.spec["password"].expose(), "hunter2");
        assert_eq!(s.spec["other"].expose(), "secret");
        assert!(!format!("{r:?}").contains("hunter2"));
        let back = Resource::from_value(r.to_value()).expect("round trip");
        assert_eq!(back, r);
    }

    #[test]
    fn kubernetes_secrets_apply_unchanged() {
        let r = parse_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: bgp-secrets, namespace: calico-system}\ntype: Opaque\nstringData: {rr-password: very-secret}\n")
            .expect("a Kubernetes Secret");
        let Resource::Secret(s) = &r else {
            panic!("not a secret")
        };
        assert_eq!(s.spec["rr-password"].expose(), "very-secret");
        assert_eq!(r.to_value()["apiVersion"], API_VERSION);
        assert!(r.to_value().get("type").is_none());
        // v1 is Kubernetes' Secret, not anything else.
        let e = parse_yaml("apiVersion: v1\nkind: BGPPeer\nmetadata: {name: p}\n")
            .expect_err("v1 peer");
        assert_eq!(e.field, "apiVersion");
        assert_eq!(
            e.reason,
            "\"v1\" is not supported for BGPPeer (use tern.dev/v1 or projectcalico.org/v3; v1 \
             only for a Secret)"
        );
        let e = parse_yaml("apiVersion: v2\nkind: Secret\nmetadata: {name: s}\n").expect_err("v2");
        assert_eq!(e.field, "apiVersion");
        let e = parse_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: [x]\n")
            .expect_err("type");
        assert_eq!(e.to_string(), "type: must be a string");
        let e = parse_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nimmutable: true\n")
            .expect_err("immutable");
        assert_eq!(e.field, "immutable");
        let e = parse_yaml(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: true}\n",
        )
        .expect_err("a boolean");
        assert_eq!(e.field, "stringData.a");
        assert!(e.reason.starts_with("must be a string (quote it"), "{e}");
    }

    #[test]
    fn calico_node_exports_drop_status() {
        let r = parse_yaml("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec:\n  bgp: {ipv4Address: 10.0.0.2/24}\nstatus:\n  podCIDRs: [192.168.1.0/24]\n")
            .expect("node with status");
        assert!(r.to_value().get("status").is_none());
        // The whole of a `calicoctl get node -o yaml`: addresses and orchRefs are kept.
        let export = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: kube-master\n  labels: {kubernetes.io/hostname: kube-master}\n  resourceVersion: '1234'\n  uid: 5c0e4f0a\n  creationTimestamp: '2024-01-01T00:00:00Z'\nspec:\n  addresses:\n  - address: 10.0.0.2/24\n    type: CalicoNodeIP\n  - address: 10.0.0.2\n    type: InternalIP\n  bgp:\n    ipv4Address: 10.0.0.2/24\n    ipv4IPIPTunnelAddr: 192.168.0.1\n  orchRefs:\n  - nodeName: kube-master\n    orchestrator: k8s\nstatus:\n  podCIDRs:\n  - 192.168.0.0/24\n";
        let r = parse_yaml(export).expect("calicoctl export");
        let Resource::Node(n) = &r else {
            panic!("not a node")
        };
        assert_eq!(n.spec.addresses.len(), 2);
        assert_eq!(n.spec.addresses[1].address, "10.0.0.2");
        assert_eq!(
            n.spec.addresses[0].address_type,
            Some(NodeAddressType::CalicoNodeIP)
        );
        assert_eq!(n.spec.orch_refs[0].orchestrator, "k8s");
        let v = r.to_value();
        assert_eq!(
            v["spec"]["addresses"],
            serde_json::json!([
                {"address": "10.0.0.2/24", "type": "CalicoNodeIP"},
                {"address": "10.0.0.2", "type": "InternalIP"},
            ])
        );
        assert_eq!(
            v["spec"]["orchRefs"],
            serde_json::json!([{"nodeName": "kube-master", "orchestrator": "k8s"}])
        );
        assert_eq!(Resource::from_value(v).expect("round trip"), r);
        let e = parse_yaml("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {addresses: [{address: 10.0.0.2, type: Public}]}\n")
            .expect_err("unknown type");
        assert_eq!(e.field, "spec.addresses[0].type");
        let r = parse_yaml("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\nstatus: {conditions: []}\n")
            .expect("a pool's status is Calico's, dropped");
        assert!(r.to_value().get("status").is_none());
    }

    #[test]
    fn normalize_fills_calico_defaults() {
        let mut r = parse_yaml("apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 'fd00::/48'}\n")
            .expect("pool");
        r.normalize();
        let v = r.to_value();
        assert_eq!(v["spec"]["blockSize"], 122);
        assert_eq!(v["spec"]["nodeSelector"], "all()");
        assert_eq!(v["spec"]["ipipMode"], "Never");
        assert_eq!(
            v["spec"]["allowedUses"],
            serde_json::json!(["Workload", "Tunnel"])
        );
        let mut c = parse_yaml(
            "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n",
        )
        .expect("config");
        c.normalize();
        let v = c.to_value();
        assert_eq!(v["spec"]["asNumber"], 64512);
        assert_eq!(v["spec"]["nodeToNodeMeshEnabled"], true);
        assert_eq!(v["spec"]["listenPort"], 179);
    }

    #[test]
    fn kinds_parse_short_forms() {
        for (s, k) in [
            ("ippool", Kind::IPPool),
            ("IPPools", Kind::IPPool),
            ("pool", Kind::IPPool),
            ("bgppeer", Kind::BGPPeer),
            ("bgpconfig", Kind::BGPConfiguration),
            ("nodes", Kind::Node),
            ("secret", Kind::Secret),
        ] {
            assert_eq!(Kind::parse(s), Some(k), "{s}");
        }
        assert!("pods".parse::<Kind>().is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("node.kube-master").is_ok());
        assert!(check_name("a").is_ok());
        for bad in ["", "Upper", "-a", "a-", "a_b", &"x".repeat(254)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
