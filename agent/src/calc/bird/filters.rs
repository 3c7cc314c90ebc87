//! BGPFilter resources compiled into BIRD functions.
//!
//! Each BGPFilter gives up to four functions, one per direction and family that has
//! rules: `'bgp_<name>_importFilterV4'`, `..._exportFilterV6`, ... (Calico's names).
//! A session's import or export filter calls the functions of its peer's `filters`
//! in order. Inside a function every rule is one `if (...) then { ...; accept; }`
//! statement: the first rule that matches accepts or rejects the route for good (in
//! BIRD, `accept`/`reject` in a function ends the whole filter); a route that no rule
//! matches falls through to the next function, and finally to Calico's defaults
//! (accept on import, the block/pool export rules on export).
//!
//! Priorities follow Calico: a route's priority is its kernel metric, carried over
//! BGP as `bgp_local_pref = 2147483647 - priority`. The export filter of every session
//! sets both before the functions run, so `priority` and `setPriority` work in both
//! directions. Rules with `peerType` make the function take `bool is_same_as` (true for
//! an iBGP session), and such rules only apply to that kind of peer.

use std::fmt;

use tern::model::{
    BGPFilter, BGPFilterRule, Family, FilterAction, MatchOperator, PeerType, RouteSource,
};

use super::RenderError;

/// BIRD's longest symbol (`SYM_MAX_LEN`).
const BIRD_MAX_SYMBOL: usize = 64;
/// The largest route preference value BIRD carries (2^31 - 1); priority P is
/// `bgp_local_pref = BIRD_INT_MAX - P`.
pub(super) const BIRD_INT_MAX: u32 = 2_147_483_647;

/// Import or export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Direction {
    Import,
    Export,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Import => "import",
            Direction::Export => "export",
        }
    }
}

/// One compiled BIRD function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Function {
    /// The BGPFilter it comes from.
    pub filter: String,
    pub family: Family,
    pub direction: Direction,
    /// The quoted BIRD symbol, e.g. `'bgp_my-filter_exportFilterV4'`.
    pub symbol: String,
    /// True when a rule uses `peerType`: the function takes `bool is_same_as`.
    pub peer_type_arg: bool,
    /// One statement per rule, in order.
    pub body: Vec<String>,
}

/// A BGP community: standard `(aa, nn)` or large `(aa, nn, mm)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Community {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

impl Community {
    /// Parse `aa:nn` or `aa:nn:mm` (decimal numbers).
    pub(super) fn parse(s: &str) -> Option<Community> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !parts.iter().all(digits) {
            return None;
        }
        match parts.as_slice() {
            [a, b] => Some(Community::Standard(a.parse().ok()?, b.parse().ok()?)),
            [a, b, c] => Some(Community::Large(
                a.parse().ok()?,
                b.parse().ok()?,
                c.parse().ok()?,
            )),
            _ => None,
        }
    }

    /// True when `s` looks like a community value rather than a community name (the
    /// distinction Calico's prefixAdvertisements make): digits separated by colons.
    pub(super) fn is_literal(s: &str) -> bool {
        let parts: Vec<&str> = s.trim().split(':').collect();
        (parts.len() == 2 || parts.len() == 3)
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The BIRD route attribute holding communities of this kind.
    pub(super) fn attribute(self) -> &'static str {
        match self {
            Community::Standard(..) => "bgp_community",
            Community::Large(..) => "bgp_large_community",
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "({a}, {b})"),
            Community::Large(a, b, c) => write!(f, "({a}, {b}, {c})"),
        }
    }
}

/// The rules of one direction and family, and their field name in the resource.
fn rules(filter: &BGPFilter, family: Family, direction: Direction) -> (&[BGPFilterRule], &str) {
    let s = &filter.spec;
    match (direction, family) {
        (Direction::Import, Family::V4) => (&s.import_v4, "importV4"),
        (Direction::Import, Family::V6) => (&s.import_v6, "importV6"),
        (Direction::Export, Family::V4) => (&s.export_v4, "exportV4"),
        (Direction::Export, Family::V6) => (&s.export_v6, "exportV6"),
    }
}

/// The quoted BIRD symbol of a filter function: `'bgp_<name>_<dir>FilterV<4|6>'`.
/// Names that would make the symbol longer than BIRD allows, or that hold characters
/// other than letters, digits, `-`, `.` and `_`, are cut and given a hash suffix so
/// that two filters never share a function.
pub(super) fn symbol(name: &str, direction: Direction, family: Family) -> String {
    let fixed = format!("bgp__{}FilterV{}", direction.as_str(), family.number());
    let room = BIRD_MAX_SYMBOL - fixed.len();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let part = if clean == name && clean.len() <= room {
        clean
    } else {
        let hash: String = ring::digest::digest(&ring::digest::SHA256, name.as_bytes()).as_ref()
            [..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keep = room - hash.len() - 1;
        let prefix: String = clean.chars().take(keep).collect();
        format!("{prefix}-{hash}")
    };
    format!(
        "'bgp_{part}_{}FilterV{}'",
        direction.as_str(),
        family.number()
    )
}

/// Compile one direction and family of a filter; `None` when it has no rules there.
pub(super) fn compile(
    filter: &BGPFilter,
    family: Family,
    direction: Direction,
) -> Result<Option<Function>, RenderError> {
    let (rules, field) = rules(filter, family, direction);
    if rules.is_empty() {
        return Ok(None);
    }
    let name = filter.name();
    let mut body = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.{field}[{i}]");
        body.push(statement(name, &field, rule, family)?);
    }
    Ok(Some(Function {
        filter: name.to_string(),
        family,
        direction,
        symbol: symbol(name, direction, family),
        peer_type_arg: rules.iter().any(|r| r.peer_type.is_some()),
        body,
    }))
}

fn statement(
    filter: &str,
    field: &str,
    rule: &BGPFilterRule,
    family: Family,
) -> Result<String, RenderError> {
    let err = |sub: &str, reason: String| RenderError::Filter {
        filter: filter.to_string(),
        field: format!("{field}{sub}"),
        reason,
    };
    let mut conditions = Vec::new();

    match (rule.cidr, &rule.prefix_length) {
        (Some(cidr), prefix_length) => {
            if cidr.family() != family {
                return Err(err(
                    ".cidr",
                    format!("{cidr} is not an IPv{} network", family.number()),
                ));
            }
            let op = rule
                .match_operator
                .ok_or_else(|| err(".matchOperator", "required with cidr".into()))?;
            let net = cidr.net().trunc();
            let target = match prefix_length {
                None => net.to_string(),
                Some(pl) => {
                    if matches!(op, MatchOperator::Equal | MatchOperator::NotEqual) {
                        return Err(err(
                            ".prefixLength",
                            "only works with the In and NotIn operators".into(),
                        ));
                    }
                    let lo = pl.min.unwrap_or(0).max(net.prefix_len());
                    let hi = pl
                        .max
                        .unwrap_or(family.max_prefix())
                        .min(family.max_prefix());
                    if lo > hi {
                        return Err(err(
                            ".prefixLength",
                            format!("no prefix length of {net} is between {lo} and {hi}"),
                        ));
                    }
                    format!("[ {net}{{{lo},{hi}}} ]")
                }
            };
            let op = match op {
                MatchOperator::Equal => "=",
                MatchOperator::NotEqual => "!=",
                MatchOperator::In => "~",
                MatchOperator::NotIn => "!~",
            };
            conditions.push(format!("(net {op} {target})"));
        }
        (None, Some(_)) => {
            return Err(err(".prefixLength", "needs a cidr to apply to".into()));
        }
        (None, None) => {}
    }

    if let Some(RouteSource::RemotePeers) = rule.source {
        conditions.push("(source = RTS_BGP)".to_string());
    }

    if let Some(iface) = &rule.interface {
        if iface.is_empty() || iface.contains(['"', '\n', '\\']) {
            return Err(err(
                ".interface",
                format!("{iface:?} is not an interface name pattern BIRD can match"),
            ));
        }
        conditions.push(format!("(ifname ~ \"{iface}\")"));
    }

    if let Some(communities) = &rule.communities {
        for (i, value) in communities.values.iter().enumerate() {
            let c = Community::parse(value).ok_or_else(|| {
                err(
                    &format!(".communities.values[{i}]"),
                    format!("{value:?} is not a community (aa:nn or aa:nn:mm)"),
                )
            })?;
            conditions.push(format!("({c} ~ {})", c.attribute()));
        }
    }

    if !rule.as_path_prefix.is_empty() {
        let path: Vec<String> = rule.as_path_prefix.iter().map(|a| a.to_string()).collect();
        conditions.push(format!("(bgp_path ~ [= {} * =])", path.join(" ")));
    }

    if let Some(priority) = rule.priority {
        let pref = local_pref(priority).ok_or_else(|| {
            err(
                ".priority",
                format!("{priority} is above the largest priority ({BIRD_INT_MAX})"),
            )
        })?;
        conditions.push(format!(
            "(defined(bgp_local_pref) && bgp_local_pref = {pref})"
        ));
    }

    let mut body = Vec::new();
    for (i, op) in rule.operations.iter().enumerate() {
        let sub = format!(".operations[{i}]");
        let mut any = false;
        if let Some(add) = &op.add_community {
            let c = Community::parse(&add.value).ok_or_else(|| {
                err(
                    &format!("{sub}.addCommunity.value"),
                    format!("{:?} is not a community (aa:nn or aa:nn:mm)", add.value),
                )
            })?;
            body.push(format!("{}.add({c});", c.attribute()));
            any = true;
        }
        if let Some(prepend) = &op.prepend_as_path {
            // BIRD prepends one AS at a time: the last one prepended ends up first.
            for asn in prepend.prefix.iter().rev() {
                body.push(format!("bgp_path.prepend({asn});"));
            }
            any = true;
        }
        if let Some(set) = &op.set_priority {
            let pref = local_pref(set.value).ok_or_else(|| {
                err(
                    &format!("{sub}.setPriority.value"),
                    format!(
                        "{} is above the largest priority ({BIRD_INT_MAX})",
                        set.value
                    ),
                )
            })?;
            body.push(format!("bgp_local_pref = {pref};"));
            any = true;
        }
        if !any {
            return Err(err(&sub, "sets no operation".into()));
        }
    }
    body.push(
        match rule.action {
            FilterAction::Accept => "accept;",
            FilterAction::Reject => "reject;",
        }
        .to_string(),
    );

    let body = body.join(" ");
    let stmt = if conditions.is_empty() {
        body
    } else {
        format!("if ({}) then {{ {body} }}", conditions.join(" && "))
    };
    Ok(match rule.peer_type {
        None => stmt,
        Some(PeerType::IBgp) => format!("if (is_same_as) then {{ {stmt} }}"),
        Some(PeerType::EBgp) => format!("if (!is_same_as) then {{ {stmt} }}"),
    })
}

/// `bgp_local_pref` for a priority, if the priority is in range.
fn local_pref(priority: u32) -> Option<u32> {
    BIRD_INT_MAX.checked_sub(priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern::model::{
        AsNumber, AsPathPrepend, BGPFilterSpec, CommunityMatch, CommunityValue, FilterOperation,
        Object, PrefixLength, PriorityValue,
    };

    fn rule(action: FilterAction) -> BGPFilterRule {
        BGPFilterRule {
            cidr: None,
            prefix_length: None,
            match_operator: None,
            source: None,
            interface: None,
            peer_type: None,
            communities: None,
            as_path_prefix: vec![],
            priority: None,
            operations: vec![],
            action,
        }
    }

    fn filter(name: &str, export_v4: Vec<BGPFilterRule>) -> BGPFilter {
        Object::new(
            name,
            BGPFilterSpec {
                export_v4,
                ..Default::default()
            },
        )
    }

    fn body(f: &BGPFilter) -> Vec<String> {
        compile(f, Family::V4, Direction::Export)
            .expect("valid filter")
            .expect("has rules")
            .body
    }

    #[test]
    fn every_match_field_becomes_a_condition() {
        let mut r = rule(FilterAction::Accept);
        r.cidr = Some("10.0.0.0/8".parse().expect("cidr"));
        r.match_operator = Some(MatchOperator::In);
        r.prefix_length = Some(PrefixLength {
            min: Some(4),
            max: Some(24),
        });
        r.source = Some(RouteSource::RemotePeers);
        r.interface = Some("eth*".into());
        r.communities = Some(CommunityMatch {
            values: vec!["65000:100".into(), "1:2:3".into()],
        });
        r.as_path_prefix = vec![AsNumber(65000), AsNumber(65001)];
        r.priority = Some(100);
        assert_eq!(
            body(&filter("f", vec![r])),
            [
                "if ((net ~ [ 10.0.0.0/8{8,24} ]) && (source = RTS_BGP) && (ifname ~ \"eth*\") \
              && ((65000, 100) ~ bgp_community) && ((1, 2, 3) ~ bgp_large_community) \
              && (bgp_path ~ [= 65000 65001 * =]) \
              && (defined(bgp_local_pref) && bgp_local_pref = 2147483547)) then { accept; }"
            ]
        );
    }

    #[test]
    fn operators_operations_and_peer_types() {
        let mut ops = rule(FilterAction::Accept);
        ops.peer_type = Some(PeerType::EBgp);
        ops.operations = vec![
            FilterOperation {
                add_community: Some(CommunityValue {
                    value: "65001:200".into(),
                }),
                ..Default::default()
            },
            FilterOperation {
                prepend_as_path: Some(AsPathPrepend {
                    prefix: vec![AsNumber(65000), AsNumber(65001)],
                }),
                ..Default::default()
            },
            FilterOperation {
                set_priority: Some(PriorityValue { value: 256 }),
                ..Default::default()
            },
        ];
        let mut ne = rule(FilterAction::Reject);
        ne.cidr = Some("10.1.0.0/16".parse().expect("cidr"));
        ne.match_operator = Some(MatchOperator::NotEqual);
        ne.peer_type = Some(PeerType::IBgp);
        let f = filter("f", vec![ops, ne, rule(FilterAction::Reject)]);
        let func = compile(&f, Family::V4, Direction::Export)
            .expect("valid")
            .expect("rules");
        assert!(func.peer_type_arg);
        assert_eq!(
            func.body,
            [
                "if (!is_same_as) then { bgp_community.add((65001, 200)); bgp_path.prepend(65001); \
                 bgp_path.prepend(65000); bgp_local_pref = 2147483391; accept; }",
                "if (is_same_as) then { if ((net != 10.1.0.0/16)) then { reject; } }",
                "reject;",
            ]
        );
        // No rules for the other family or direction: no function.
        assert_eq!(compile(&f, Family::V6, Direction::Export), Ok(None));
        assert_eq!(compile(&f, Family::V4, Direction::Import), Ok(None));
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let mut r = rule(FilterAction::Accept);
        r.cidr = Some("10.0.0.0/8".parse().expect("cidr"));
        let e = compile(&filter("f", vec![r.clone()]), Family::V4, Direction::Export)
            .expect_err("no operator");
        assert_eq!(
            e.to_string(),
            "BGPFilter \"f\" spec.exportV4[0].matchOperator: required with cidr"
        );
        r.match_operator = Some(MatchOperator::Equal);
        r.prefix_length = Some(PrefixLength {
            min: None,
            max: Some(24),
        });
        assert!(compile(&filter("f", vec![r.clone()]), Family::V4, Direction::Export).is_err());
        r.match_operator = Some(MatchOperator::In);
        r.prefix_length = Some(PrefixLength {
            min: Some(25),
            max: Some(24),
        });
        assert!(compile(&filter("f", vec![r]), Family::V4, Direction::Export).is_err());
        let mut v6 = rule(FilterAction::Accept);
        v6.cidr = Some("fd00::/8".parse().expect("cidr"));
        v6.match_operator = Some(MatchOperator::In);
        assert!(compile(&filter("f", vec![v6]), Family::V4, Direction::Export).is_err());
        let mut quote = rule(FilterAction::Accept);
        quote.interface = Some("eth\"0".into());
        assert!(compile(&filter("f", vec![quote]), Family::V4, Direction::Export).is_err());
        let mut big = rule(FilterAction::Accept);
        big.communities = Some(CommunityMatch {
            values: vec!["70000:1".into()],
        });
        assert!(compile(&filter("f", vec![big]), Family::V4, Direction::Export).is_err());
        let mut none = rule(FilterAction::Accept);
        none.operations = vec![FilterOperation::default()];
        assert!(compile(&filter("f", vec![none]), Family::V4, Direction::Export).is_err());
    }

    #[test]
    fn symbols_fit_bird_and_stay_distinct() {
        assert_eq!(
            symbol("my-filter", Direction::Import, Family::V4),
            "'bgp_my-filter_importFilterV4'"
        );
        let exactly = "45characters.exactly.so.should.not.truncate-1";
        assert_eq!(exactly.len(), 45);
        assert_eq!(
            symbol(exactly, Direction::Export, Family::V6),
            format!("'bgp_{exactly}_exportFilterV6'")
        );
        let a = symbol(
            "46characters.exactly.so.should.truncate-123456",
            Direction::Export,
            Family::V4,
        );
        let b = symbol(
            "46characters.exactly.so.should.truncate-123457",
            Direction::Export,
            Family::V4,
        );
        assert_ne!(a, b);
        // The suffix is the first four bytes of SHA-256 of the name.
        assert_eq!(
            a,
            "'bgp_46characters.exactly.so.should.trunc-9615cbdc_exportFilterV4'"
        );
        for s in [&a, &b] {
            assert_eq!(s.len() - 2, BIRD_MAX_SYMBOL, "{s}");
        }
        let odd = symbol("it's", Direction::Import, Family::V4);
        assert!(!odd[1..odd.len() - 1].contains('\''), "{odd}");
    }

    #[test]
    fn communities_parse() {
        assert_eq!(
            Community::parse("65000:100"),
            Some(Community::Standard(65000, 100))
        );
        assert_eq!(
            Community::parse("1:2:4294967295"),
            Some(Community::Large(1, 2, u32::MAX))
        );
        for bad in ["65536:1", "1", "1:2:3:4", "a:b", "1:", "-1:2"] {
            assert_eq!(Community::parse(bad), None, "{bad}");
        }
        assert!(Community::is_literal("70000:1"));
        assert!(!Community::is_literal("bgp-comm"));
    }
}
