//! Parsing of `birdc` replies (pure): `show protocols [all]`, `show status` and
//! `configure`. Tolerant by design: unknown lines are skipped, missing fields stay empty,
//! nothing here panics on input.

use std::net::IpAddr;

use tern::proto::BgpSession;
use time::{Date, Month, PrimitiveDateTime, Time};

/// One protocol of `show protocols [all]`: the table row plus the few detail lines we
/// use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    /// `BGP`, `Device`, `Kernel`, ...
    pub proto: String,
    pub table: String,
    /// BIRD's protocol state: `up`, `start`, `down`, `flush`, ...
    pub state: String,
    pub since: String,
    /// The Info column, runs of blanks collapsed.
    pub info: String,
    /// `BGP state:` (Established, Active, Connect, Idle, Down, ...).
    pub bgp_state: Option<String>,
    /// `Neighbor address:`.
    pub neighbor: Option<String>,
    /// `Last error:`.
    pub last_error: Option<String>,
    /// `Description:`.
    pub description: Option<String>,
    /// `Neighbor range:` (a dynamic BGP protocol that accepts sessions).
    pub neighbor_range: Option<String>,
    /// The hold and keepalive times in force: the number after the `/` of `Hold
    /// timer:` and `Keepalive timer:`.
    pub hold_time: Option<u32>,
    pub keepalive_time: Option<u32>,
    /// `Routes: N imported, [F filtered,] M exported`, summed over the channels.
    pub routes_imported: u64,
    pub routes_exported: u64,
    /// Import updates a filter rejected (the `filtered` column of `Import updates:`),
    /// summed over the channels.
    pub import_filtered: u64,
}

/// Parse the reply of `show protocols` or `show protocols all`.
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    let mut out: Vec<Protocol> = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !in_table {
            in_table = is_heading(line);
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(p) = out.last_mut() {
                detail(p, line.trim());
            }
            continue;
        }
        if is_heading(line) {
            continue;
        }
        if let Some(p) = row(line) {
            out.push(p);
        }
    }
    out
}

fn is_heading(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next() == Some("Name") && words.next() == Some("Proto")
}

fn row(line: &str) -> Option<Protocol> {
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start();
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let (w, r) = s.split_at(end);
        rest = r;
        (!w.is_empty()).then(|| w.to_string())
    };
    let name = field()?;
    let proto = field()?;
    let table = field()?;
    let state = field()?;
    let mut since = field().unwrap_or_default();
    // `timeformat protocol iso long` gives "2026-11-24 19:43:47": two words.
    if is_date(&since) {
        let s = rest.trim_start();
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        if is_time(&s[..end]) {
            since = format!("{since} {}", &s[..end]);
            rest = &s[end..];
        }
    }
    Some(Protocol {
        name,
        proto,
        table,
        state,
        since,
        info: collapse(rest),
        ..Protocol::default()
    })
}

fn detail(p: &mut Protocol, line: &str) {
    let Some((key, value)) = line.split_once(':') else {
        return;
    };
    let value = collapse(value);
    match key.trim() {
        "BGP state" => p.bgp_state = Some(value),
        "Neighbor address" => p.neighbor = Some(value),
        "Neighbor range" => p.neighbor_range = Some(value),
        "Last error" => p.last_error = Some(value),
        "Description" => p.description = Some(value),
        "Hold timer" => p.hold_time = timer_limit(&value),
        "Keepalive timer" => p.keepalive_time = timer_limit(&value),
        "Routes" => {
            // "4 imported, 1 filtered, 0 exported, 4 preferred"
            for part in value.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "imported" => p.routes_imported += n,
                    "exported" => p.routes_exported += n,
                    _ => {}
                }
            }
        }
        "Import updates" => {
            // received rejected filtered ignored accepted
            if let Some(Ok(n)) = value.split_whitespace().nth(2).map(str::parse::<u64>) {
                p.import_filtered += n;
            }
        }
        _ => {}
    }
}

/// "150.835/240" -> 240.
fn timer_limit(value: &str) -> Option<u32> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn is_time(s: &str) -> bool {
    s.len() >= 8 && s.as_bytes().get(2) == Some(&b':') && s.as_bytes().get(5) == Some(&b':')
}

/// Calico's peer type for a session name: `Mesh_` -> "node-to-node mesh", `Global_` ->
/// "global", `Node_` -> "node specific"; tern's `Dynamic_` (route reflector clients
/// taken by range) -> "route reflector client"; any other BGP protocol is "other".
pub fn peer_type(name: &str) -> &'static str {
    if name.starts_with("Mesh_") {
        "node-to-node mesh"
    } else if name.starts_with("Global_") {
        "global"
    } else if name.starts_with("Node_") {
        "node specific"
    } else if name.starts_with("Dynamic_") {
        "route reflector client"
    } else {
        "other"
    }
}

/// One row of `show bfd sessions`: the neighbour's address and the session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSession {
    pub address: String,
    /// Up, Down, Init, AdminDown.
    pub state: String,
}

/// Parse the reply of `show bfd sessions` (every BFD protocol's table).
pub fn parse_bfd_sessions(text: &str) -> Vec<BfdSession> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(a), Some(b)) = (w.next(), w.next()) else {
            continue;
        };
        if a == "IP" && b == "address" {
            in_table = true;
            continue;
        }
        if !in_table || a.ends_with(':') {
            continue;
        }
        // address, interface, state, since (one or two words), interval, timeout
        if let Some(state) = w.next()
            && a.parse::<IpAddr>().is_ok()
        {
            out.push(BfdSession {
                address: a.to_string(),
                state: state.to_string(),
            });
        }
    }
    out
}

/// Seconds from `since` (a protocol's Since column) to `now` (BIRD's current time from
/// `show status`). A Since of a time alone (BIRD's default format for today) is taken
/// on `now`'s day, or the day before when that would lie ahead. `None` when either
/// cannot be read.
pub fn uptime(since: &str, now: &str) -> Option<u64> {
    let now = parse_bird_time(now)?;
    let at = match parse_bird_time(since) {
        Some(t) => t,
        None => {
            let t = parse_bird_time(&format!("{} {}", now.date(), since.trim()))?;
            if t > now { t - time::Duration::DAY } else { t }
        }
    };
    u64::try_from((now - at).whole_seconds()).ok()
}

/// The peer address encoded in a Calico session name (`Mesh_10_0_0_2`,
/// `Global_fd00_1__2`), for output without detail lines.
pub fn address_from_name(name: &str) -> Option<IpAddr> {
    let (_, enc) = name.split_once('_')?;
    let v4 = enc.replace('_', ".");
    if let Ok(a) = v4.parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(a));
    }
    enc.replace('_', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The BGP sessions among the protocols, as the status API reports them.
pub fn sessions(protocols: &[Protocol]) -> Vec<BgpSession> {
    protocols
        .iter()
        .filter(|p| p.proto.eq_ignore_ascii_case("BGP"))
        .map(|p| {
            let peer_address = match (&p.neighbor, &p.neighbor_range) {
                (Some(n), _) if !n.is_empty() => n.clone(),
                // A dynamic protocol waiting for sessions: its range.
                (_, Some(r)) if !r.is_empty() => r.clone(),
                _ => address_from_name(&p.name)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            };
            // "fe80::1%eth0" is a link-local neighbour with its interface; a range
            // has a prefix length.
            let bare = peer_address.split(['%', '/']).next().unwrap_or_default();
            let family = match bare.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 4,
                Ok(IpAddr::V6(_)) => 6,
                Err(_) => 0,
            };
            let mut info = if p.info.is_empty() {
                p.bgp_state.clone().unwrap_or_default()
            } else {
                p.info.clone()
            };
            if let Some(err) = &p.last_error
                && !err.is_empty()
                && !info.contains(err.as_str())
            {
                info = if info.is_empty() {
                    err.clone()
                } else {
                    format!("{info} {err}")
                };
            }
            BgpSession {
                name: p.name.clone(),
                peer_address,
                peer_type: peer_type(&p.name).to_string(),
                state: p.state.clone(),
                since: p.since.clone(),
                info,
                family,
                bgp_state: p.bgp_state.clone().unwrap_or_default(),
                hold_time: p.hold_time.unwrap_or_default(),
                keepalive_time: p.keepalive_time.unwrap_or_default(),
                routes_imported: p.routes_imported,
                routes_exported: p.routes_exported,
                routes_filtered: p.import_filtered,
                last_error: p.last_error.clone().unwrap_or_default(),
                description: p.description.clone().unwrap_or_default(),
                ..BgpSession::default()
            }
        })
        .collect()
}

/// The reply of `show status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BirdStatus {
    /// "2.0.12".
    pub version: String,
    pub router_id: String,
    /// The times as BIRD prints them (its local time, no zone).
    pub server_time: String,
    pub last_reboot: String,
    pub last_reconfiguration: String,
    /// "Daemon is up and running", "Reconfiguration in progress", ...
    pub daemon: String,
}

impl BirdStatus {
    /// How long before `server_time` BIRD was last reconfigured.
    pub fn since_reconfiguration(&self) -> Option<std::time::Duration> {
        let now = parse_bird_time(&self.server_time)?;
        let t = parse_bird_time(&self.last_reconfiguration)?;
        std::time::Duration::try_from(now - t).ok()
    }
}

/// True when the reply of `show symbols <name>` says BIRD's running configuration
/// defines `name` as a constant (`<name>\tconstant`; an unknown name is "undefined").
pub fn defines_constant(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(name) && w.next() == Some("constant") && w.next().is_none()
    })
}

/// Parse the reply of `show status`.
pub fn parse_status(text: &str) -> BirdStatus {
    let mut s = BirdStatus::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("BIRD ") {
            // "BIRD 2.0.12" (the banner "BIRD 2.0.12 ready." carries it too).
            let v = v.trim_end_matches(" ready.").trim();
            if s.version.is_empty() || !line.ends_with("ready.") {
                s.version = v.to_string();
            }
        } else if let Some(v) = line.strip_prefix("Router ID is ") {
            s.router_id = v.to_string();
        } else if let Some(v) = line.strip_prefix("Current server time is ") {
            s.server_time = v.to_string();
        } else if let Some(v) = line.strip_prefix("Last reboot on ") {
            s.last_reboot = v.to_string();
        } else if let Some(v) = line.strip_prefix("Last reconfiguration on ") {
            s.last_reconfiguration = v.to_string();
        } else if line.starts_with("Daemon is ")
            || line.ends_with(" in progress")
            || line.starts_with("Graceful restart recovery")
        {
            s.daemon = line.to_string();
        }
    }
    s
}

/// "2026-11-24 19:43:47.757" or "2026-11-24 19:43:47".
pub fn parse_bird_time(s: &str) -> Option<PrimitiveDateTime> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<u32>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let month = Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut t = hms.split(':').map(|x| x.parse::<u8>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    let time = Time::from_hms_nano(h, mi, sec, nanos).ok()?;
    Some(PrimitiveDateTime::new(date, time))
}

/// What `birdc configure` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigureReply {
    /// The file BIRD read ("Reading configuration from FILE").
    pub file: Option<String>,
    /// "Reconfigured" or "Reconfiguration in progress" when it succeeded.
    pub success: Option<String>,
    /// Everything after the banner, for error messages.
    pub message: String,
}

/// Parse the reply of `configure`. Only "Reconfigured" and "Reconfiguration in
/// progress" count as success.
pub fn parse_configure(text: &str) -> ConfigureReply {
    let mut file = None;
    let mut success = None;
    let mut message = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("BIRD ") && line.ends_with(" ready.") {
            continue;
        }
        if let Some(f) = line.strip_prefix("Reading configuration from ") {
            file = Some(f.to_string());
            continue;
        }
        // Accepted: done, under way, or (BIRD busy with the previous one) parsed and
        // queued, to be committed when the previous reconfiguration ends. The live file
        // then holds what BIRD will run, so it stays.
        if line == "Reconfigured"
            || line == "Reconfiguration in progress"
            || line == "Reconfiguration already in progress, queueing new config"
        {
            success = Some(line.to_string());
        }
        message.push(line);
    }
    ConfigureReply {
        file,
        success,
        message: message.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_A: &str = include_str!("testdata/show_protocols_all_node_a.txt");
    const NODE_A_SHORT: &str = include_str!("testdata/show_protocols_node_a.txt");
    const NODE_B: &str = include_str!("testdata/show_protocols_all_node_b.txt");
    const BAD_AS: &str = include_str!("testdata/show_protocols_all_bad_as.txt");
    const ISO_LONG: &str = include_str!("testdata/show_protocols_all_iso_long.txt");
    const PASSWORD: &str = include_str!("testdata/show_protocols_all_password.txt");
    const STATUS: &str = include_str!("testdata/show_status.txt");

    fn session<'a>(s: &'a [BgpSession], name: &str) -> &'a BgpSession {
        s.iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("no session {name} in {s:#?}"))
    }

    #[test]
    fn protocols_all_of_node_a() {
        let protos = parse_protocols(NODE_A);
        let names: Vec<_> = protos.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "device1",
                "direct1",
                "kernel1",
                "Mesh_10_99_0_2",
                "Node_10_99_1_4",
                "Global_10_99_2_5",
                "Global_10_98_0_7",
                "Global_10_97_0_9",
                "Mesh_fd00__99__2",
                "Node_10_99_3_3",
            ]
        );
        let s = sessions(&protos);
        assert_eq!(s.len(), 7, "only BGP protocols");

        let mesh = session(&s, "Mesh_10_99_0_2");
        assert_eq!(
            mesh,
            &BgpSession {
                name: "Mesh_10_99_0_2".into(),
                peer_address: "10.99.0.2".into(),
                peer_type: "node-to-node mesh".into(),
                state: "up".into(),
                since: "19:43:51.666".into(),
                info: "Established".into(),
                family: 4,
                bgp_state: "Established".into(),
                hold_time: 240,
                keepalive_time: 80,
                ..BgpSession::default()
            }
        );
        let v6 = session(&s, "Mesh_fd00__99__2");
        assert_eq!(
            (v6.peer_address.as_str(), v6.family, v6.info.as_str()),
            ("fd00:99::2", 6, "Established")
        );
        let pw = session(&s, "Node_10_99_1_4");
        assert_eq!(
            (pw.peer_type.as_str(), pw.state.as_str(), pw.info.as_str()),
            ("node specific", "start", "Connect")
        );
        let refused = session(&s, "Global_10_98_0_7");
        assert_eq!(refused.peer_type, "global");
        assert_eq!(refused.info, "Active Socket: Connection refused");
        assert_eq!(
            session(&s, "Global_10_97_0_9").info,
            "Active Socket: Network is unreachable"
        );
        assert_eq!(
            session(&s, "Global_10_99_2_5").info,
            "Active Socket: Connection reset by peer"
        );
        let disabled = session(&s, "Node_10_99_3_3");
        assert_eq!(
            (disabled.state.as_str(), disabled.info.as_str()),
            ("down", "Down")
        );
    }

    #[test]
    fn short_table_takes_addresses_from_names() {
        let s = sessions(&parse_protocols(NODE_A_SHORT));
        assert_eq!(s.len(), 7);
        let mesh = session(&s, "Mesh_10_99_0_2");
        assert_eq!((mesh.peer_address.as_str(), mesh.family), ("10.99.0.2", 4));
        // Not Calico's encoding of fd00:99::2 (that is fd00_99__2): left empty, no guess.
        let v6 = session(&s, "Mesh_fd00__99__2");
        assert_eq!((v6.peer_address.as_str(), v6.family), ("", 0));
        assert_eq!(
            session(&s, "Global_10_98_0_7").info,
            "Active Socket: Connection refused"
        );
    }

    #[test]
    fn dynamic_reflector_detail() {
        let s = sessions(&parse_protocols(include_str!(
            "testdata/show_protocols_all_dynamic_rr.txt"
        )));
        let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["Dynamic_10_9_0_0_24", "Dynamic_10_9_0_0_24_1"]);
        // The listening protocol stands for its range.
        let range = &s[0];
        assert_eq!(
            (
                range.peer_address.as_str(),
                range.family,
                range.bgp_state.as_str()
            ),
            ("10.9.0.0/24", 4, "Passive")
        );
        assert_eq!(range.peer_type, "route reflector client");
        let client = &s[1];
        assert_eq!(client.peer_address, "10.9.0.2");
        assert_eq!(client.since, "2026-12-05 05:43:48");
        assert_eq!(client.description, "route reflector clients in 10.9.0.0/24");
        assert_eq!((client.hold_time, client.keepalive_time), (9, 3));
        // Two routes received, one filtered on import.
        assert_eq!(
            (
                client.routes_imported,
                client.routes_exported,
                client.routes_filtered
            ),
            (1, 0, 1)
        );
        let status = parse_status(include_str!("testdata/show_status_dynamic_rr.txt"));
        assert_eq!(uptime(&client.since, &status.server_time), Some(3));

        let c = sessions(&parse_protocols(include_str!(
            "testdata/show_protocols_all_rr_client.txt"
        )));
        assert_eq!(
            (
                c[0].description.as_str(),
                c[0].routes_exported,
                c[0].hold_time
            ),
            ("BGPPeer to-rr (node rr)", 2, 9)
        );
    }

    #[test]
    fn bfd_sessions_and_uptimes() {
        assert_eq!(
            parse_bfd_sessions(include_str!("testdata/show_bfd_sessions.txt")),
            [BfdSession {
                address: "10.9.0.2".into(),
                state: "Up".into()
            }]
        );
        // Without a BFD protocol BIRD says so: no sessions.
        assert!(parse_bfd_sessions("There is no BFD protocol running\n").is_empty());
        let now = "2026-12-05 00:00:10.500";
        assert_eq!(uptime("2026-12-04 23:59:00", now), Some(70));
        // A time alone is today's, or yesterday's when it would lie ahead.
        assert_eq!(uptime("00:00:05.000", now), Some(5));
        assert_eq!(uptime("23:59:59.000", now), Some(11));
        assert_eq!(uptime("nonsense", now), None);
        assert_eq!(uptime("00:00:05", "nonsense"), None);
    }

    #[test]
    fn bad_peer_as_shows_birds_error() {
        let s = sessions(&parse_protocols(BAD_AS));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].info, "Idle Received: Bad peer AS");
        assert_eq!(s[0].peer_address, "10.99.2.1");
        assert_eq!(s[0].peer_type, "other");
    }

    #[test]
    fn iso_long_since_has_two_words() {
        let p = parse_protocols(ISO_LONG);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].since, "2026-11-24 19:43:47");
        assert_eq!(p[0].info, "");
        assert_eq!(p[1].since, "2026-11-24 19:44:45");
        assert_eq!(p[1].info, "Idle Received: Bad peer AS");
        assert_eq!(p[1].last_error.as_deref(), Some("Received: Bad peer AS"));
    }

    #[test]
    fn password_mismatch_stays_in_connect() {
        let s = sessions(&parse_protocols(PASSWORD));
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].state.as_str(), s[0].info.as_str()),
            ("start", "Connect")
        );
    }

    #[test]
    fn node_b_both_families_established() {
        let s = sessions(&parse_protocols(NODE_B));
        let fams: Vec<_> = s.iter().map(|x| (x.family, x.info.as_str())).collect();
        assert_eq!(fams, [(4, "Established"), (6, "Established")]);
    }

    #[test]
    fn last_error_is_appended_when_the_row_lacks_it() {
        let text = "Name       Proto      Table      State  Since         Info\n\
                    Global_10_0_0_9 BGP        ---        start  10:00:00.000  Active\n  \
                    BGP state:          Active\n    Neighbor address: 10.0.0.9\n    \
                    Last error:       Socket: Connection refused\n";
        let s = sessions(&parse_protocols(text));
        assert_eq!(s[0].info, "Active Socket: Connection refused");
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in [
            "",
            "\n\n",
            "Name Proto\n",
            "Name Proto Table\nx\n  y\n   :\n",
            "  Neighbor address: 1.2.3.4\n",
            "Name Proto Table State Since Info\nMesh_1 BGP --- up 2026-01-01\n",
            "Name Proto Table State Since Info\nMesh_1_2_3_4 BGP\n",
            "\u{0}\u{1}ü Name Proto\nMesh_\u{fffd} BGP - up 2026-13-45 99:99:99 x\n",
        ] {
            let p = parse_protocols(text);
            let _ = sessions(&p);
            let st = parse_status(text);
            let _ = st.since_reconfiguration();
            let _ = defines_constant(text, "Mesh_1");
            let _ = parse_configure(text);
        }
        assert_eq!(parse_bird_time("2026-13-45 99:99:99"), None);
        assert_eq!(parse_bird_time("2026-01-01 10:00:00.12x"), None);
        assert_eq!(parse_bird_time("nonsense"), None);
    }

    #[test]
    fn names_to_addresses() {
        assert_eq!(
            address_from_name("Mesh_10_0_0_2"),
            Some("10.0.0.2".parse().expect("literal"))
        );
        assert_eq!(
            address_from_name("Global_fd00_1__2"),
            Some("fd00:1::2".parse().expect("literal"))
        );
        assert_eq!(address_from_name("Node_router"), None);
        assert_eq!(address_from_name("Mesh"), None);
        assert_eq!(peer_type("Node_10_0_0_1"), "node specific");
        assert_eq!(peer_type("bgp1"), "other");
    }

    #[test]
    fn show_status() {
        let s = parse_status(STATUS);
        assert_eq!(s.version, "2.0.12");
        assert_eq!(s.router_id, "10.99.0.1");
        assert_eq!(s.server_time, "2026-11-24 19:44:38.126");
        assert_eq!(s.last_reboot, "2026-11-24 19:43:47.757");
        assert_eq!(s.last_reconfiguration, "2026-11-24 19:43:47.757");
        assert_eq!(s.daemon, "Daemon is up and running");
        assert_eq!(
            s.since_reconfiguration(),
            Some(std::time::Duration::from_millis(50_369))
        );
    }

    #[test]
    fn show_symbols() {
        let name = "tern_config_0123456789abcdef0123456789abcdef";
        assert!(defines_constant(&format!("{name}\tconstant\n"), name));
        assert!(!defines_constant(&format!("{name}\tundefined\n"), name));
        assert!(!defines_constant(&format!("{name}x\tconstant\n"), name));
        assert!(!defines_constant("syntax error, unexpected END\n", name));
        assert!(!defines_constant("", name));
    }

    #[test]
    fn configure_replies() {
        let ok = parse_configure(include_str!("testdata/configure_ok.txt"));
        assert_eq!(ok.success.as_deref(), Some("Reconfigured"));
        assert_eq!(ok.file.as_deref(), Some("a.conf"));
        let busy = parse_configure(include_str!("testdata/configure_in_progress.txt"));
        assert_eq!(busy.success.as_deref(), Some("Reconfiguration in progress"));
        let bad = parse_configure(include_str!("testdata/configure_syntax_error.txt"));
        assert_eq!(bad.success, None);
        assert_eq!(
            bad.message,
            "a.conf:23:59 syntax error, unexpected CF_SYM_UNDEFINED"
        );
        let queued = parse_configure(
            "BIRD 2.0.12 ready.\nReading configuration from x\n\
             Reconfiguration already in progress, queueing new config\n",
        );
        assert_eq!(
            queued.success.as_deref(),
            Some("Reconfiguration already in progress, queueing new config")
        );
        let shutting_down = parse_configure(
            "BIRD 2.0.12 ready.\nReading configuration from x\n\
             Reconfiguration ignored, shutting down\n",
        );
        assert_eq!(shutting_down.success, None);
    }
}
