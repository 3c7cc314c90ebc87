//! FelixConfiguration: Calico's per-host agent settings, read so that a Calico
//! cluster's configuration applies unchanged.
//!
//! Four of its fields are NAT settings tern acts on, exactly as the AgentConfiguration
//! fields of the same meaning (see [`crate::view::View::agent_config_for`] for how the two
//! kinds combine). Every other field is checked against [`FIELDS`]: its name (matched
//! ignoring case, as calicoctl matches it, and stored in Calico's spelling) and its value
//! (the type and the range Calico accepts). Those are stored and shown, not acted on: tern
//! is not Felix.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::fold::canonical_key;
use super::types::{GoDuration, IfAddr, InterfaceFilter, Ip, MAX_IFNAME_LEN, PortRange};
use super::{FieldError, NatOutgoingExclusions};

/// The kind of value a Felix field holds, with the checks Calico makes on it.
#[derive(Debug, Clone, Copy)]
pub enum FieldType {
    Bool,
    /// An integer in a range.
    Int(i64, i64),
    /// A Go duration (`90s`, `1m30s`).
    Duration,
    /// Free text.
    Text,
    /// One of these words; `true` when Calico compares them ignoring case.
    Enum(&'static [&'static str], bool),
    /// An IP address.
    Address,
    /// A port or a port range (`lo:hi`), as Calico's numorstring.Port.
    Port,
    /// A list of ports or port ranges.
    Ports,
    /// A list of `{protocol, port, net}`.
    ProtoPorts,
    /// A list of CIDRs (or addresses).
    Cidrs,
    /// A list of iptables-style interface matches (`docker+`).
    InterfaceFilters,
    /// An interface name (at most 15 characters of letters, digits, `_`, `.`, `-`).
    Interface,
    /// `key=value,key=value`.
    KeyValueList,
    /// A regular expression.
    Regex,
    /// A map of text to text.
    TextMap,
    /// `[{name, timeout}]`.
    HealthTimeouts,
    /// `{min, max}` route table indexes.
    RouteTableRange,
    /// `[{min, max}]`.
    RouteTableRanges,
    /// `{creationGracePeriod: 10s, tcpEstablished: Auto, ...}`.
    ConntrackTimeouts,
}

use FieldType::*;

const LOG_LEVELS: &[&str] = &["Trace", "Debug", "Info", "Warning", "Error", "Fatal"];
const ENABLED: &[&str] = &["Enabled", "Disabled"];
const ACCEPT_RETURN: &[&str] = &["Accept", "Return"];
const DROP_REJECT: &[&str] = &["Drop", "Reject"];
const U32_MAX: i64 = u32::MAX as i64;
const PRIORITY_MAX: i64 = 2_147_483_646;

/// The Felix fields tern reads besides the NAT ones: Calico's spelling and value type.
pub const FIELDS: &[(&str, FieldType)] = &[
    ("allowIPIPPacketsFromWorkloads", Bool),
    ("allowVXLANPacketsFromWorkloads", Bool),
    (
        "awsSrcDstCheck",
        Enum(&["DoNothing", "Enable", "Disable"], false),
    ),
    ("bpfCTLBLogFilter", Text),
    (
        "bpfConnectTimeLoadBalancing",
        Enum(&["TCP", "Enabled", "Disabled"], false),
    ),
    ("bpfConnectTimeLoadBalancingEnabled", Bool),
    ("bpfConntrackLogLevel", Enum(&["Off", "Debug"], false)),
    (
        "bpfConntrackMode",
        Enum(&["Auto", "Userspace", "BPFProgram"], false),
    ),
    ("bpfConntrackTimeouts", ConntrackTimeouts),
    ("bpfDSROptoutCIDRs", Cidrs),
    ("bpfDataIfacePattern", Regex),
    ("bpfDisableGROForIfaces", Regex),
    ("bpfDisableUnprivileged", Bool),
    ("bpfEnabled", Bool),
    (
        "bpfEnforceRPF",
        Enum(&["Disabled", "Strict", "Loose"], true),
    ),
    ("bpfExcludeCIDRsFromNAT", Cidrs),
    ("bpfExportBufferSizeMB", Int(0, U32_MAX)),
    ("bpfExtToServiceConnmark", Int(0, U32_MAX)),
    ("bpfExternalServiceMode", Enum(&["Tunnel", "DSR"], true)),
    ("bpfForceTrackPacketsFromIfaces", InterfaceFilters),
    ("bpfHostConntrackBypass", Bool),
    ("bpfHostNetworkedNATWithoutCTLB", Enum(ENABLED, false)),
    ("bpfKubeProxyEndpointSlicesEnabled", Bool),
    ("bpfKubeProxyHealthzPort", Int(0, 65535)),
    ("bpfKubeProxyIptablesCleanupEnabled", Bool),
    ("bpfKubeProxyMinSyncPeriod", Duration),
    ("bpfL3IfacePattern", Regex),
    ("bpfLogFilters", TextMap),
    ("bpfLogLevel", Enum(&["Off", "Info", "Debug"], true)),
    ("bpfMaglevMaxEndpointsPerService", Int(1, 3000)),
    ("bpfMaglevMaxServices", Int(1, 3000)),
    ("bpfMapSizeConntrack", Int(0, U32_MAX)),
    ("bpfMapSizeConntrackCleanupQueue", Int(1, U32_MAX)),
    (
        "bpfMapSizeConntrackScaling",
        Enum(&["Disabled", "DoubleIfFull"], true),
    ),
    ("bpfMapSizeIPSets", Int(0, U32_MAX)),
    ("bpfMapSizeIfState", Int(0, U32_MAX)),
    ("bpfMapSizeNATAffinity", Int(0, U32_MAX)),
    ("bpfMapSizeNATBackend", Int(0, U32_MAX)),
    ("bpfMapSizeNATFrontend", Int(0, U32_MAX)),
    ("bpfMapSizePerCpuConntrack", Int(0, U32_MAX)),
    ("bpfMapSizeRoute", Int(0, U32_MAX)),
    ("bpfPSNATPorts", Port),
    ("bpfPolicyDebugEnabled", Bool),
    ("bpfProfiling", Enum(ENABLED, false)),
    (
        "bpfRedirectToPeer",
        Enum(&["Enabled", "Disabled", "L2Only"], false),
    ),
    ("chainInsertMode", Enum(&["Insert", "Append"], true)),
    ("dataplaneDriver", Text),
    ("dataplaneWatchdogTimeout", Duration),
    ("debugDisableLogDropping", Bool),
    ("debugHost", Text),
    ("debugMemoryProfilePath", Text),
    ("debugPort", Int(0, 65535)),
    ("debugSimulateCalcGraphHangAfter", Duration),
    ("debugSimulateDataplaneApplyDelay", Duration),
    ("debugSimulateDataplaneHangAfter", Duration),
    (
        "defaultEndpointToHostAction",
        Enum(&["Drop", "Accept", "Return"], true),
    ),
    ("deviceRouteProtocol", Int(0, 255)),
    ("deviceRouteSourceAddress", Address),
    ("deviceRouteSourceAddressIPv6", Address),
    ("disableConntrackInvalidCheck", Bool),
    ("endpointReportingDelay", Duration),
    ("endpointReportingEnabled", Bool),
    ("endpointStatusPathPrefix", Text),
    ("externalNodesList", Cidrs),
    ("failsafeInboundHostPorts", ProtoPorts),
    ("failsafeOutboundHostPorts", ProtoPorts),
    ("featureDetectOverride", KeyValueList),
    ("featureGates", KeyValueList),
    ("floatingIPs", Enum(ENABLED, false)),
    ("flowLogsCollectorDebugTrace", Bool),
    ("flowLogsFlushInterval", Duration),
    ("flowLogsGoldmaneServer", Text),
    ("flowLogsLocalReporter", Enum(ENABLED, false)),
    (
        "flowLogsPolicyEvaluationMode",
        Enum(&["None", "Continuous"], false),
    ),
    ("genericXDPEnabled", Bool),
    ("goGCThreshold", Int(-1, i64::MAX)),
    ("goMaxProcs", Int(-1, i64::MAX)),
    ("goMemoryLimitMB", Int(-1, i64::MAX)),
    ("healthEnabled", Bool),
    ("healthHost", Text),
    ("healthPort", Int(0, 65535)),
    ("healthTimeoutOverrides", HealthTimeouts),
    ("interfaceExclude", Text),
    ("interfacePrefix", Text),
    ("interfaceRefreshInterval", Duration),
    ("ipForwarding", Enum(ENABLED, false)),
    ("ipipEnabled", Bool),
    ("ipipMTU", Int(0, 65535)),
    ("ipsetsRefreshInterval", Duration),
    ("iptablesBackend", Enum(&["Auto", "Legacy", "NFT"], true)),
    ("iptablesFilterAllowAction", Enum(ACCEPT_RETURN, true)),
    ("iptablesFilterDenyAction", Enum(DROP_REJECT, true)),
    ("iptablesLockFilePath", Text),
    ("iptablesLockProbeInterval", Duration),
    ("iptablesLockTimeout", Duration),
    ("iptablesMangleAllowAction", Enum(ACCEPT_RETURN, true)),
    ("iptablesMarkMask", Int(0, U32_MAX)),
    ("iptablesPostWriteCheckInterval", Duration),
    ("iptablesRefreshInterval", Duration),
    ("ipv4ElevatedRoutePriority", Int(1, PRIORITY_MAX)),
    ("ipv4NormalRoutePriority", Int(1, PRIORITY_MAX)),
    ("ipv6ElevatedRoutePriority", Int(1, PRIORITY_MAX)),
    ("ipv6NormalRoutePriority", Int(1, PRIORITY_MAX)),
    ("ipv6Support", Bool),
    ("kubeNodePortRanges", Ports),
    ("liveMigrationRouteConvergenceTime", Duration),
    ("logDebugFilenameRegex", Regex),
    ("logFilePath", Text),
    ("logPrefix", Text),
    ("logSeverityFile", Enum(LOG_LEVELS, true)),
    ("logSeverityScreen", Enum(LOG_LEVELS, true)),
    ("logSeveritySys", Enum(LOG_LEVELS, true)),
    ("maxIpsetSize", Int(0, U32_MAX)),
    ("metadataAddr", Text),
    ("metadataPort", Int(0, 65535)),
    ("mtuIfacePattern", Regex),
    ("netlinkTimeout", Duration),
    ("nftablesFilterAllowAction", Enum(ACCEPT_RETURN, true)),
    ("nftablesFilterDenyAction", Enum(DROP_REJECT, true)),
    ("nftablesMangleAllowAction", Enum(ACCEPT_RETURN, true)),
    ("nftablesMarkMask", Int(0, U32_MAX)),
    (
        "nftablesMode",
        Enum(&["Disabled", "Enabled", "Auto"], false),
    ),
    ("nftablesRefreshInterval", Duration),
    ("openstackRegion", Text),
    ("policySyncPathPrefix", Text),
    ("programClusterRoutes", Enum(ENABLED, false)),
    ("prometheusGoMetricsEnabled", Bool),
    ("prometheusMetricsEnabled", Bool),
    ("prometheusMetricsHost", Text),
    ("prometheusMetricsPort", Int(0, 65535)),
    ("prometheusProcessMetricsEnabled", Bool),
    ("prometheusWireGuardMetricsEnabled", Bool),
    ("removeExternalRoutes", Bool),
    ("reportingInterval", Duration),
    ("reportingTTL", Duration),
    ("requireMTUFile", Bool),
    ("routeRefreshInterval", Duration),
    ("routeSource", Enum(&["WorkloadIPs", "CalicoIPAM"], true)),
    ("routeSyncDisabled", Bool),
    ("routeTableRange", RouteTableRange),
    ("routeTableRanges", RouteTableRanges),
    (
        "serviceLoopPrevention",
        Enum(&["Drop", "Reject", "Disabled"], true),
    ),
    ("sidecarAccelerationEnabled", Bool),
    ("usageReportingEnabled", Bool),
    ("usageReportingInitialDelay", Duration),
    ("usageReportingInterval", Duration),
    ("useInternalDataplaneDriver", Bool),
    ("vxlanEnabled", Bool),
    ("vxlanMTU", Int(0, 65535)),
    ("vxlanMTUV6", Int(0, 65535)),
    ("vxlanPort", Int(0, 65535)),
    ("vxlanVNI", Int(0, 16_777_215)),
    ("windowsManageFirewallRules", Enum(ENABLED, false)),
    ("wireguardEnabled", Bool),
    ("wireguardEnabledV6", Bool),
    ("wireguardHostEncryptionEnabled", Bool),
    ("wireguardInterfaceName", Interface),
    ("wireguardInterfaceNameV6", Interface),
    ("wireguardKeepAlive", Duration),
    ("wireguardListeningPort", Int(1, 65535)),
    ("wireguardListeningPortV6", Int(1, 65535)),
    ("wireguardMTU", Int(0, 65535)),
    ("wireguardMTUV6", Int(0, 65535)),
    ("wireguardRoutingRulePriority", Int(1, 32765)),
    ("wireguardThreadingEnabled", Bool),
    ("workloadSourceSpoofing", Enum(&["Disabled", "Any"], true)),
    ("xdpEnabled", Bool),
    ("xdpRefreshInterval", Duration),
];

/// The NAT fields tern acts on.
pub const NAT_FIELDS: [&str; 4] = [
    "natOutgoingAddress",
    "natPortRange",
    "natOutgoingExclusions",
    "iptablesNATOutgoingInterfaceFilter",
];

/// The spec of a FelixConfiguration.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixConfigurationSpec {
    /// SNAT to this address instead of MASQUERADE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_address: Option<Ip>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "natPortRange")]
    pub nat_port_range: Option<PortRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_exclusions: Option<NatOutgoingExclusions>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        rename = "iptablesNATOutgoingInterfaceFilter"
    )]
    pub iptables_nat_outgoing_interface_filter: Option<InterfaceFilter>,
    /// Every other field, by Calico's name: stored, not acted on.
    #[serde(flatten)]
    pub stored: BTreeMap<String, Value>,
}

impl FelixConfigurationSpec {
    /// Parse a spec, naming the field (`spec.<name>`) of the first error.
    pub fn parse(spec: Value) -> Result<FelixConfigurationSpec, FieldError> {
        let map = match spec {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            _ => return Err(FieldError::new("spec", "must be an object")),
        };
        let mut out = FelixConfigurationSpec::default();
        let known: Vec<&'static str> = NAT_FIELDS
            .iter()
            .copied()
            .chain(FIELDS.iter().map(|(n, _)| *n))
            .collect();
        for (key, value) in map {
            let name = canonical_key(&key, &known);
            let field = format!("spec.{name}");
            // Go's omitempty: an empty value is an unset field, as Calico stores it.
            if value.is_null() || value.as_str() == Some("") {
                continue;
            }
            fn typed<T: serde::de::DeserializeOwned>(
                field: &str,
                v: Value,
            ) -> Result<T, FieldError> {
                serde_json::from_value(v).map_err(|e| FieldError::new(field, e.to_string()))
            }
            match name {
                "natOutgoingAddress" => out.nat_outgoing_address = Some(typed(&field, value)?),
                "natPortRange" => out.nat_port_range = Some(typed(&field, value)?),
                "natOutgoingExclusions" => {
                    out.nat_outgoing_exclusions = Some(typed(&field, value)?)
                }
                "iptablesNATOutgoingInterfaceFilter" => {
                    out.iptables_nat_outgoing_interface_filter = Some(typed(&field, value)?)
                }
                _ => {
                    let Some((canonical, ty)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                        return Err(FieldError::new(
                            &field,
                            format!(
                                "unknown field {key:?} (not a FelixConfiguration field tern \
                                 knows; docs/api.md lists them)"
                            ),
                        ));
                    };
                    if out.stored.contains_key(*canonical) {
                        return Err(FieldError::new(
                            &field,
                            "given twice (field names match ignoring case)",
                        ));
                    }
                    let value = check(*ty, value).map_err(|r| FieldError::new(&field, r))?;
                    out.stored.insert(canonical.to_string(), value);
                }
            }
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for FelixConfigurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FelixConfigurationSpec::parse(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Check a value against its type; the value to store (canonical where Calico's is
/// case-insensitive: the word as Calico spells it).
fn check(ty: FieldType, v: Value) -> Result<Value, String> {
    let ok = |v: Value| Ok(v);
    match ty {
        Bool => match v {
            Value::Bool(_) => ok(v),
            other => Err(format!("must be true or false, not {other}")),
        },
        Int(min, max) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => ok(v),
            Some(n) => Err(format!("{n} is out of range: use {min}-{max}")),
            None => Err(format!("must be a whole number, not {v}")),
        },
        Duration => {
            let s = text(&v)?;
            s.parse::<GoDuration>()?;
            ok(v)
        }
        Text => {
            text(&v)?;
            ok(v)
        }
        Enum(words, ignore_case) => {
            let s = text(&v)?;
            let found = words
                .iter()
                .find(|w| **w == s || (ignore_case && w.eq_ignore_ascii_case(s)));
            match found {
                Some(w) => ok(Value::String((*w).to_string())),
                None => Err(format!("{s:?} is not one of {}", words.join(", "))),
            }
        }
        Address => {
            text(&v)?.parse::<Ip>()?;
            ok(v)
        }
        Port => port(&v).map(|_| v),
        Ports => {
            for item in list(&v)? {
                port(item)?;
            }
            ok(v)
        }
        ProtoPorts => {
            for (i, item) in list(&v)?.iter().enumerate() {
                proto_port(item).map_err(|r| format!("[{i}]: {r}"))?;
            }
            ok(v)
        }
        Cidrs => {
            for item in list(&v)? {
                let s = text(item)?;
                s.parse::<IfAddr>()?;
            }
            ok(v)
        }
        InterfaceFilters => {
            for item in list(&v)? {
                text(item)?.parse::<InterfaceFilter>()?;
            }
            ok(v)
        }
        Interface => {
            let s = text(&v)?;
            let valid = !s.is_empty()
                && s.len() <= MAX_IFNAME_LEN
                && s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
            if valid {
                ok(v)
            } else {
                Err(format!(
                    "{s:?} is not an interface name (1-15 letters, digits, '_', '.', '-')"
                ))
            }
        }
        KeyValueList => {
            let s = text(&v)?;
            for pair in s.split(',').filter(|p| !p.is_empty()) {
                let (k, _) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not key=value"))?;
                if k.is_empty()
                    || !k
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
                {
                    return Err(format!("{k:?} is not a key (letters, digits, '-', '_')"));
                }
            }
            ok(v)
        }
        Regex => {
            let s = text(&v)?;
            regex::Regex::new(s).map_err(|e| format!("not a regular expression: {e}"))?;
            ok(v)
        }
        TextMap => match &v {
            Value::Object(m) if m.values().all(Value::is_string) => ok(v),
            _ => Err("must be a map of text to text".into()),
        },
        HealthTimeouts => {
            for (i, item) in list(&v)?.iter().enumerate() {
                let m = item
                    .as_object()
                    .ok_or_else(|| format!("[{i}]: must be {{name, timeout}}"))?;
                for k in m.keys() {
                    if k != "name" && k != "timeout" {
                        return Err(format!("[{i}].{k}: unknown field (name, timeout)"));
                    }
                }
                text(m.get("name").unwrap_or(&Value::Null))
                    .map_err(|r| format!("[{i}].name: {r}"))?;
                text(m.get("timeout").unwrap_or(&Value::Null))
                    .and_then(|t| t.parse::<GoDuration>().map(|_| ()))
                    .map_err(|r| format!("[{i}].timeout: {r}"))?;
            }
            ok(v)
        }
        RouteTableRange => table_range(&v).map(|_| v),
        RouteTableRanges => {
            for (i, item) in list(&v)?.iter().enumerate() {
                table_range(item).map_err(|r| format!("[{i}]: {r}"))?;
            }
            ok(v)
        }
        ConntrackTimeouts => {
            const TIMERS: &[&str] = &[
                "creationGracePeriod",
                "tcpSynSent",
                "tcpEstablished",
                "tcpFinsSeen",
                "tcpResetSeen",
                "udpTimeout",
                "genericTimeout",
                "icmpTimeout",
            ];
            let Value::Object(m) = v else {
                return Err("must be a map of timer to duration or Auto".into());
            };
            let mut out = Map::new();
            for (k, t) in m {
                let name = canonical_key(&k, TIMERS);
                if !TIMERS.contains(&name) {
                    return Err(format!("{k}: unknown timer ({})", TIMERS.join(", ")));
                }
                let s = text(&t).map_err(|r| format!("{name}: {r}"))?;
                if s != "Auto" {
                    s.parse::<GoDuration>()
                        .map_err(|r| format!("{name}: {r} (or Auto)"))?;
                }
                out.insert(name.to_string(), t);
            }
            ok(Value::Object(out))
        }
    }
}

fn text(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("must be text, not {v} (quote it)"))
}

fn list(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| "must be a list".to_string())
}

fn port(v: &Value) -> Result<(), String> {
    serde_json::from_value::<PortRange>(v.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn proto_port(v: &Value) -> Result<(), String> {
    let m = v
        .as_object()
        .ok_or("must be {protocol, port, net}".to_string())?;
    for (k, val) in m {
        match k.as_str() {
            "protocol" => {
                let p = text(val)?;
                if !["tcp", "udp", "sctp"].contains(&p.to_ascii_lowercase().as_str()) {
                    return Err(format!("protocol {p:?} is not tcp, udp or sctp"));
                }
            }
            "port" => match val.as_u64() {
                Some(p) if p <= 65535 => {}
                _ => return Err(format!("port {val} is not 0-65535")),
            },
            "net" => {
                text(val)?.parse::<IfAddr>()?;
            }
            other => return Err(format!("{other}: unknown field (protocol, port, net)")),
        }
    }
    if !m.contains_key("port") {
        return Err("port: required".into());
    }
    Ok(())
}

fn table_range(v: &Value) -> Result<(), String> {
    let m = v.as_object().ok_or("must be {min, max}".to_string())?;
    let get = |k: &str| -> Result<i64, String> {
        m.get(k)
            .and_then(Value::as_i64)
            .filter(|n| (1..=0xffff_ffff).contains(n))
            .ok_or_else(|| format!("{k}: required, a route table index 1-4294967295"))
    };
    let (min, max) = (get("min")?, get("max")?);
    if let Some(k) = m.keys().find(|k| *k != "min" && *k != "max") {
        return Err(format!("{k}: unknown field (min, max)"));
    }
    if min > max {
        return Err(format!("min ({min}) must not be greater than max ({max})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<FelixConfigurationSpec, FieldError> {
        FelixConfigurationSpec::parse(v)
    }

    #[test]
    fn names_are_unique_ignoring_case() {
        let mut seen = std::collections::BTreeSet::new();
        for name in NAT_FIELDS.iter().chain(FIELDS.iter().map(|(n, _)| n)) {
            assert!(seen.insert(name.to_ascii_lowercase()), "{name} twice");
        }
    }

    /// A value Calico accepts for a field of this type.
    fn sample(ty: FieldType) -> Value {
        use serde_json::json;
        match ty {
            Bool => json!(true),
            Int(min, _) => json!(min),
            Duration => json!("10s"),
            Text => json!("text"),
            Enum(words, _) => json!(words[0]),
            Address => json!("10.0.0.1"),
            Port => json!("100:200"),
            Ports => json!(["30000:32767", 8080]),
            ProtoPorts => {
                json!([{"protocol": "tcp", "port": 22}, {"port": 53, "net": "10.0.0.0/8"}])
            }
            Cidrs => json!(["10.0.0.0/8", "fd00::1"]),
            InterfaceFilters => json!(["docker+", "eth0"]),
            Interface => json!("wg-v6.cali"),
            KeyValueList => json!("SNATFullyRandom=true,RestoreSupportsLock="),
            Regex => json!("^(eth|ens)[0-9]+$"),
            TextMap => json!({"all": "tcp port 80"}),
            HealthTimeouts => json!([{"name": "InternalDataplaneMainLoop", "timeout": "90s"}]),
            RouteTableRange => json!({"min": 1, "max": 250}),
            RouteTableRanges => json!([{"min": 1, "max": 250}, {"min": 300, "max": 400}]),
            ConntrackTimeouts => json!({"creationGracePeriod": "10s", "tcpEstablished": "Auto"}),
        }
    }

    /// Every field of the table, at once, in lower case: parsed, stored in Calico's
    /// spelling, and reported (one warning each) as stored without effect.
    #[test]
    fn every_field_of_the_table_parses_and_is_stored() {
        let spec: Map<String, Value> = FIELDS
            .iter()
            .map(|(name, ty)| (name.to_ascii_lowercase(), sample(*ty)))
            .collect();
        let s = parse(Value::Object(spec)).expect("every field");
        assert_eq!(s.stored.len(), FIELDS.len());
        for (name, _) in FIELDS {
            assert!(s.stored.contains_key(*name), "{name}");
        }
        let r = super::super::Resource::FelixConfiguration(super::super::Object::new("default", s));
        assert_eq!(super::super::stored_only(&r).len(), FIELDS.len());
        // And each field refuses a value of the wrong type, naming itself.
        for (name, ty) in FIELDS {
            let wrong = match ty {
                Bool => serde_json::json!("maybe"),
                _ => serde_json::json!({"not": ["this"]}),
            };
            let e = parse(serde_json::json!({ *name: wrong })).expect_err(name);
            assert_eq!(e.field, format!("spec.{name}"), "{e}");
        }
    }

    #[test]
    fn nat_fields_are_typed_and_the_rest_stored_canonically() {
        let s = parse(serde_json::json!({
            "natOutgoingAddress": "203.0.113.9",
            "natportrange": 8080,
            "IPTABLESNATOUTGOINGINTERFACEFILTER": "eth+",
            "logseverityscreen": "info",
            "bpfConntrackTimeouts": {"tcpestablished": "Auto", "udpTimeout": "30s"},
            "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}],
            "iptablesMarkMask": 4278190080u64,
        }))
        .expect("valid");
        assert_eq!(
            s.nat_port_range.map(|p| p.to_string()).as_deref(),
            Some("8080:8080")
        );
        assert_eq!(
            s.iptables_nat_outgoing_interface_filter
                .as_ref()
                .map(|f| f.nft())
                .as_deref(),
            Some("eth*")
        );
        assert_eq!(s.stored["logSeverityScreen"], "Info");
        assert_eq!(
            s.stored["bpfConntrackTimeouts"],
            serde_json::json!({"tcpEstablished": "Auto", "udpTimeout": "30s"})
        );
        let back = serde_json::to_value(&s).expect("serializes");
        assert_eq!(back["natPortRange"], "8080:8080");
        assert_eq!(back["logSeverityScreen"], "Info");
        assert_eq!(parse(back.clone()).expect("round trip"), s);
    }

    #[test]
    fn errors_name_the_field() {
        for (spec, field, reason) in [
            (
                serde_json::json!({"bpfLogLevel": "Loud"}),
                "spec.bpfLogLevel",
                "is not one of",
            ),
            (
                serde_json::json!({"wireguardListeningPort": 0}),
                "spec.wireguardListeningPort",
                "out of range",
            ),
            (
                serde_json::json!({"reportingInterval": "often"}),
                "spec.reportingInterval",
                "not a duration",
            ),
            (
                serde_json::json!({"ipv6Support": "yes"}),
                "spec.ipv6Support",
                "true or false",
            ),
            (
                serde_json::json!({"noSuchSetting": 1}),
                "spec.noSuchSetting",
                "unknown field",
            ),
            (
                serde_json::json!({"natOutgoingAddress": "nope"}),
                "spec.natOutgoingAddress",
                "not an IP",
            ),
            (
                serde_json::json!({"iptablesNATOutgoingInterfaceFilter": "e+th"}),
                "spec.iptablesNATOutgoingInterfaceFilter",
                "only allowed once",
            ),
            (
                serde_json::json!({"logDebugFilenameRegex": "("}),
                "spec.logDebugFilenameRegex",
                "regular expression",
            ),
            (
                serde_json::json!({"featureGates": "a"}),
                "spec.featureGates",
                "key=value",
            ),
            (
                serde_json::json!({"routeTableRange": {"min": 10, "max": 2}}),
                "spec.routeTableRange",
                "greater than",
            ),
            (
                serde_json::json!({"failsafeInboundHostPorts": [{"protocol": "icmp", "port": 1}]}),
                "spec.failsafeInboundHostPorts",
                "not tcp",
            ),
            (
                serde_json::json!({"logSeverityScreen": "Info", "LogSeverityScreen": "Debug"}),
                "spec.logSeverityScreen",
                "given twice",
            ),
        ] {
            let e = parse(spec.clone()).expect_err(&spec.to_string());
            assert_eq!(e.field, field, "{spec}: {e}");
            assert!(e.reason.contains(reason), "{spec}: {e}");
        }
    }
}
