//! The few rtnetlink requests tern makes, spoken directly on a netlink socket (no `ip`
//! process per step). For a CNI attachment: create a veth pair with its peer already in
//! the container's namespace, bring a link up, add an address, add or replace a route,
//! delete a link. For the stale BIRD routes ([`crate::bird::stale_routes`]): list the
//! routes of a family ([`Netlink::routes`], a dump) and delete one route named exactly
//! ([`Netlink::delete_route`]). Each change asks for an acknowledgement and waits for
//! it; the kernel's refusal comes back as its errno.
//!
//! A netlink socket belongs to the network namespace it was opened in, whatever thread
//! later uses it: [`Netlink::open_in`] opens one inside a namespace from a short-lived
//! thread that enters it (`setns`), so the process itself never moves.
//!
//! Messages are built by `Msg` and read by `parts`, `attrs` and `parse_route`, pure
//! functions tested against byte fixtures below.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::Path;

use ipnet::IpNet;
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

// Message types and flags (linux/netlink.h, linux/rtnetlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

// Link attributes (linux/if_link.h, linux/veth.h).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFF_UP: u32 = 0x1;

// Address and route attributes (linux/if_addr.h, linux/rtnetlink.h).
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
const RTM_F_CLONED: u32 = 0x200;
/// The main routing table (the one `ip route` shows without `table`).
pub const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
/// The protocol of the routes BIRD writes (`proto bird`).
pub const RTPROT_BIRD: u8 = 12;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A netlink route socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A route to add: `dst` (None: default) through `oif`, via `gateway` if any.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// Replace a route to the same destination instead of failing.
    pub replace: bool,
}

/// The address family of a route listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn af(self) -> u8 {
        match self {
            IpFamily::V4 => AF_INET,
            IpFamily::V6 => AF_INET6,
        }
    }
}

/// A kernel route as a dump lists it: the fields tern reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The destination (`/0` for a default route).
    pub dst: IpNet,
    pub table: u32,
    /// Who wrote it (`proto`): [`RTPROT_BIRD`] for BIRD.
    pub protocol: u8,
    /// The route type (`RTN_*`: unicast, blackhole, ...).
    pub kind: u8,
    /// The metric (`RTA_PRIORITY`; 0 when the kernel sends none).
    pub metric: u32,
    /// A cached clone (`RTM_F_CLONED`), not a route of a table.
    pub cloned: bool,
    /// The next hops of a multipath route (`RTA_MULTIPATH`), 0 for a single path. A
    /// multipath route is one entry.
    pub nexthops: usize,
}

/// A route to delete, named exactly: `ip route del DST table TABLE proto PROTOCOL
/// metric METRIC` (any type, scope and next hops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKey {
    pub dst: IpNet,
    pub table: u32,
    pub protocol: u8,
    pub metric: u32,
}

/// A veth pair to create: the first end here, its peer in `peer_netns`.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: &'a File,
    pub mtu: Option<u32>,
    /// Create this end up.
    pub up: bool,
}

impl Netlink {
    /// A socket in this thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// A socket in the network namespace at `netns` (e.g. /run/netns/NAME), opened by
    /// a thread that enters it; this thread stays where it is.
    pub fn open_in(netns: &Path) -> io::Result<Netlink> {
        let ns = File::open(netns)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
        })
    }

    /// A socket where `exec` runs its commands: this thread's namespace, or the named
    /// one `exec` enters with `ip netns exec`.
    pub fn open_for(exec: &crate::exec::Exec) -> io::Result<Netlink> {
        match exec.netns_path() {
            None => Netlink::open(),
            Some(path) => Netlink::open_in(&path),
        }
    }

    /// Every route of `family` in every table (a dump), one entry per route.
    pub fn routes(&mut self, family: IpFamily) -> io::Result<Vec<RouteEntry>> {
        let mut routes = Vec::new();
        self.exchange(route_dump(family), |p| {
            if p.kind == RTM_NEWROUTE
                && let Some(r) = parse_route(p.payload)?
            {
                routes.push(r);
            }
            Ok(true)
        })?;
        Ok(routes)
    }

    /// Delete the route `key` names (ESRCH when there is none).
    pub fn delete_route(&mut self, key: &RouteKey) -> io::Result<()> {
        self.request(route_delete(key), false).map(|_| ())
    }

    /// The index of link `name` in the socket's namespace.
    pub fn index(&mut self, name: &str) -> io::Result<u32> {
        // RTM_GETLINK by name; the answer is the link's message.
        let mut m = Msg::new(RTM_GETLINK, NLM_F_REQUEST);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        let reply = self.request(m, true)?;
        // ifinfomsg: family, pad, type (u16), index (i32) at 4.
        reply
            .get(4..8)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| io::Error::other(format!("no link message for {name}")))
    }

    /// Create a veth pair (fails with EEXIST when either name is taken).
    pub fn add_veth(&mut self, v: &Veth<'_>) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        let up = if v.up { IFF_UP } else { 0 };
        m.ifinfo(0, up, up);
        m.attr_str(IFLA_IFNAME, v.name);
        m.attr(IFLA_ADDRESS, &v.mac);
        if let Some(mtu) = v.mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        let info = m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        let data = m.begin(IFLA_INFO_DATA);
        let peer = m.begin(VETH_INFO_PEER);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, v.peer_name);
        m.attr(IFLA_ADDRESS, &v.peer_mac);
        if let Some(mtu) = v.mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        let fd = u32::try_from(v.peer_netns.as_raw_fd())
            .map_err(|_| io::Error::other("a negative file descriptor"))?;
        m.attr(IFLA_NET_NS_FD, &fd.to_ne_bytes());
        m.end(peer);
        m.end(data);
        m.end(info);
        self.request(m, false).map(|_| ())
    }

    /// Bring link `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.ifinfo(index, IFF_UP, IFF_UP);
        self.request(m, false).map(|_| ())
    }

    /// Add `addr/len` to link `index` (IPv6 without duplicate address detection).
    pub fn add_address(&mut self, index: u32, addr: IpAddr, len: u8) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        let (family, flags) = match addr {
            IpAddr::V4(_) => (AF_INET, 0),
            IpAddr::V6(_) => (AF_INET6, IFA_F_NODAD),
        };
        // ifaddrmsg: family, prefixlen, flags, scope, index.
        m.push(&[family, len, flags, RT_SCOPE_UNIVERSE]);
        m.push(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &octets(addr));
        m.attr(IFA_ADDRESS, &octets(addr));
        self.request(m, false).map(|_| ())
    }

    /// Add (or replace) a route in the main table.
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        let mut flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
        flags |= if r.replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let mut m = Msg::new(RTM_NEWROUTE, flags);
        let probe = r.dst.map(|(a, _)| a).or(r.gateway);
        let family = match probe {
            Some(IpAddr::V6(_)) => AF_INET6,
            _ => AF_INET,
        };
        let dst_len = r.dst.map_or(0, |(_, l)| l);
        // A route without a gateway is on the link; one through a gateway is global.
        let scope = if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        m.push(&[
            family,
            dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
        ]);
        m.push(&0u32.to_ne_bytes());
        if let Some((a, _)) = r.dst {
            m.attr(RTA_DST, &octets(a));
        }
        if let Some(g) = r.gateway {
            m.attr(RTA_GATEWAY, &octets(g));
        }
        m.attr(RTA_OIF, &r.oif.to_ne_bytes());
        self.request(m, false).map(|_| ())
    }

    /// Delete link `name`; false when there is none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        match self.request(m, false) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send `m` and read until its acknowledgement (or error). With `want_reply`, the
    /// payload of the first non-error message answering it is returned (a GET's answer).
    fn request(&mut self, m: Msg, want_reply: bool) -> io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.exchange(m, |p| {
            if want_reply {
                reply = p.payload.to_vec();
            }
            Ok(!want_reply)
        })?;
        Ok(reply)
    }

    /// Send `m` and hand each message answering it to `each` until the kernel ends the
    /// exchange (an acknowledgement, an error, the end of a dump) or `each` returns
    /// false. An error from the kernel comes back as its errno.
    fn exchange(
        &mut self,
        mut m: Msg,
        mut each: impl FnMut(&Part<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        m.finish(seq);
        send(self.fd.as_raw_fd(), &m.buf, MsgFlags::empty())?;
        // The kernel fills a dump's datagrams up to what the reader asks for, at most
        // 32 KiB; MSG_TRUNC makes recv return a longer one's whole length.
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
                Err(Errno::EINTR) => continue,
                r => r?,
            };
            if n > buf.len() {
                return Err(io::Error::other(format!(
                    "a netlink answer of {n} bytes, longer than the buffer"
                )));
            }
            for p in parts(&buf[..n])? {
                if p.seq != seq {
                    continue;
                }
                match p.kind {
                    NLMSG_ERROR | NLMSG_DONE => return status(&p),
                    _ if !each(&p)? => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

/// One message of a datagram: its type, flags, sequence number and payload.
#[derive(Debug, PartialEq, Eq)]
struct Part<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a malformed netlink {what}"),
    )
}

/// The messages of a datagram.
fn parts(buf: &[u8]) -> io::Result<Vec<Part<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at) as usize;
        if len < 16 || at + len > buf.len() {
            return Err(malformed("answer"));
        }
        out.push(Part {
            kind: u16_at(buf, at + 4),
            flags: u16_at(buf, at + 6),
            seq: u32_at(buf, at + 8),
            payload: &buf[at + 16..at + len],
        });
        at += align(len);
    }
    Ok(out)
}

/// The outcome an error message (an acknowledgement when its errno is 0) or the end of
/// a dump (which may carry an errno too) reports.
fn status(p: &Part<'_>) -> io::Result<()> {
    let errno = match p.payload.get(0..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None if p.kind == NLMSG_DONE => 0,
        None => return Err(malformed("error")),
    };
    if errno < 0 {
        Err(io::Error::from_raw_os_error(-errno))
    } else {
        Ok(())
    }
}

/// The attributes in `b` as (type, value), in order; the type without its flag bits.
fn attrs(b: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= b.len() {
        let len = usize::from(u16_at(b, at));
        if len < 4 || at + len > b.len() {
            return Err(malformed("attribute"));
        }
        out.push((u16_at(b, at + 2) & NLA_TYPE_MASK, &b[at + 4..at + len]));
        at += align(len);
    }
    Ok(out)
}

/// A dump of every route of `family` (the kernel does not filter a plain dump by
/// table or protocol: the reader does).
fn route_dump(family: IpFamily) -> Msg {
    let mut m = Msg::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
    m.push(&[family.af(), 0, 0, 0, 0, 0, 0, 0]);
    m.push(&0u32.to_ne_bytes());
    m
}

/// The delete `ip route del DST table T proto P metric M` sends: no type, scope
/// "nowhere" and no next hop, so any route with that destination, table, protocol and
/// metric matches (a multipath one whole).
fn route_delete(k: &RouteKey) -> Msg {
    let mut m = Msg::new(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK);
    let family = match k.dst {
        IpNet::V4(_) => AF_INET,
        IpNet::V6(_) => AF_INET6,
    };
    // A table past 255 goes in RTA_TABLE, the header then says "unspecified".
    let table = u8::try_from(k.table).unwrap_or(0);
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.push(&[
        family,
        k.dst.prefix_len(),
        0,
        0,
        table,
        k.protocol,
        RT_SCOPE_NOWHERE,
        0,
    ]);
    m.push(&0u32.to_ne_bytes());
    if k.dst.prefix_len() > 0 {
        m.attr(RTA_DST, &octets(k.dst.addr()));
    }
    m.attr(RTA_PRIORITY, &k.metric.to_ne_bytes());
    if table == 0 {
        m.attr(RTA_TABLE, &k.table.to_ne_bytes());
    }
    m
}

/// The route a RTM_NEWROUTE payload describes; `None` for a family other than IPv4
/// and IPv6.
fn parse_route(payload: &[u8]) -> io::Result<Option<RouteEntry>> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let h = payload.get(..12).ok_or_else(|| malformed("route"))?;
    let (family, dst_len, protocol, kind) = (h[0], h[1], h[5], h[7]);
    let mut table = u32::from(h[4]);
    let flags = u32_at(h, 8);
    let unspecified: IpAddr = match family {
        AF_INET => std::net::Ipv4Addr::UNSPECIFIED.into(),
        AF_INET6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => return Ok(None),
    };
    let mut dst = unspecified;
    let mut metric = 0;
    let mut nexthops = 0;
    for (t, v) in attrs(&payload[12..])? {
        match t {
            RTA_DST => dst = addr(unspecified, v)?,
            RTA_PRIORITY => metric = u32_of(v)?,
            RTA_TABLE => table = u32_of(v)?,
            RTA_MULTIPATH => nexthops = count_nexthops(v)?,
            _ => {}
        }
    }
    let dst = IpNet::new(dst, dst_len).map_err(|_| malformed("route prefix length"))?;
    Ok(Some(RouteEntry {
        dst,
        table,
        protocol,
        kind,
        metric,
        cloned: flags & RTM_F_CLONED != 0,
        nexthops,
    }))
}

/// The address in `v`, of the family of `like`.
fn addr(like: IpAddr, v: &[u8]) -> io::Result<IpAddr> {
    match like {
        IpAddr::V4(_) => <[u8; 4]>::try_from(v).map(IpAddr::from),
        IpAddr::V6(_) => <[u8; 16]>::try_from(v).map(IpAddr::from),
    }
    .map_err(|_| malformed("route address"))
}

fn u32_of(v: &[u8]) -> io::Result<u32> {
    <[u8; 4]>::try_from(v)
        .map(u32::from_ne_bytes)
        .map_err(|_| malformed("u32 attribute"))
}

/// The next hops of RTA_MULTIPATH: rtnexthop (length u16, flags, hops, ifindex i32)
/// records, each followed by its own attributes.
fn count_nexthops(v: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    let mut at = 0;
    while at + 8 <= v.len() {
        let len = usize::from(u16_at(v, at));
        if len < 8 || at + len > v.len() {
            return Err(malformed("next hop"));
        }
        n += 1;
        at += align(len);
    }
    Ok(n)
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

const RTM_GETLINK: u16 = 18;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// A netlink message being built: header, fixed part, attributes (nested ones by
/// their start offset).
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        Msg { buf }
    }

    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// ifinfomsg: family (unspecified), type, index, flags, change mask.
    fn ifinfo(&mut self, index: u32, flags: u32, change: u32) {
        self.push(&[0, 0, 0, 0]);
        self.push(&index.to_ne_bytes());
        self.push(&flags.to_ne_bytes());
        self.push(&change.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).expect("attributes here are small");
        self.push(&len.to_ne_bytes());
        self.push(&kind.to_ne_bytes());
        self.push(value);
        self.pad();
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }

    /// Open a nested attribute; [`Msg::end`] closes it.
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.push(&0u16.to_ne_bytes());
        self.push(&kind.to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("attributes here are small");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(&mut self, seq: u32) {
        let len = u32::try_from(self.buf.len()).expect("messages here are small");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
}

/// Byte fixtures written out by hand from the layouts in linux/netlink.h and
/// linux/rtnetlink.h, in the little-endian order of the machines tern runs on.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn finished(mut m: Msg, seq: u32) -> Vec<u8> {
        m.finish(seq);
        m.buf
    }

    fn key(dst: &str, table: u32, metric: u32) -> RouteKey {
        RouteKey {
            dst: dst.parse().expect("a test prefix"),
            table,
            protocol: RTPROT_BIRD,
            metric,
        }
    }

    #[test]
    fn a_route_dump_asks_for_one_family() {
        #[rustfmt::skip]
        let v4 = [
            28, 0, 0, 0, 26, 0, 0x01, 0x03, 7, 0, 0, 0, 0, 0, 0, 0, // RTM_GETROUTE, REQUEST|DUMP
            2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // rtmsg: AF_INET, nothing else
        ];
        assert_eq!(finished(route_dump(IpFamily::V4), 7), v4);
        let mut v6 = v4;
        v6[16] = 10;
        assert_eq!(finished(route_dump(IpFamily::V6), 7), v6);
    }

    #[test]
    fn a_delete_names_destination_table_protocol_and_metric() {
        // (prefix, table, metric, the message with sequence number 9)
        #[rustfmt::skip]
        let cases: [(&str, u32, u32, &[u8]); 3] = [
            ("10.9.0.0/24", 254, 1024, &[
                44, 0, 0, 0, 25, 0, 0x05, 0, 9, 0, 0, 0, 0, 0, 0, 0, // RTM_DELROUTE, REQUEST|ACK
                2, 24, 0, 0, 254, 12, 255, 0, 0, 0, 0, 0, // main, bird, scope nowhere, any type
                8, 0, 1, 0, 10, 9, 0, 0, // RTA_DST
                8, 0, 6, 0, 0x00, 0x04, 0, 0, // RTA_PRIORITY 1024
            ]),
            ("fd00:9::/64", 254, 1500, &[
                56, 0, 0, 0, 25, 0, 0x05, 0, 9, 0, 0, 0, 0, 0, 0, 0,
                10, 64, 0, 0, 254, 12, 255, 0, 0, 0, 0, 0,
                20, 0, 1, 0, 0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                8, 0, 6, 0, 0xdc, 0x05, 0, 0, // RTA_PRIORITY 1500
            ]),
            // A default route has no RTA_DST (as `ip route del default` sends it); a
            // table past 255 goes in RTA_TABLE, the header's says "unspecified".
            ("0.0.0.0/0", 1000, 0, &[
                44, 0, 0, 0, 25, 0, 0x05, 0, 9, 0, 0, 0, 0, 0, 0, 0,
                2, 0, 0, 0, 0, 12, 255, 0, 0, 0, 0, 0,
                8, 0, 6, 0, 0, 0, 0, 0, // RTA_PRIORITY 0
                8, 0, 15, 0, 0xe8, 0x03, 0, 0, // RTA_TABLE 1000
            ]),
        ];
        for (dst, table, metric, want) in cases {
            let got = finished(route_delete(&key(dst, table, metric)), 9);
            assert_eq!(got, want, "{dst} table {table} metric {metric}");
        }
    }

    fn entry(dst: &str, table: u32, kind: u8, metric: u32) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().expect("a test prefix"),
            table,
            protocol: RTPROT_BIRD,
            kind,
            metric,
            cloned: false,
            nexthops: 0,
        }
    }

    #[test]
    fn route_messages_read_into_entries() {
        // A multipath route: one message, its next hops inside RTA_MULTIPATH.
        #[rustfmt::skip]
        let multipath = [
            2, 24, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0, // AF_INET /24, main, bird, unicast
            8, 0, 15, 0, 254, 0, 0, 0, // RTA_TABLE
            8, 0, 6, 0, 0x00, 0x04, 0, 0, // RTA_PRIORITY 1024
            8, 0, 1, 0, 10, 9, 7, 0, // RTA_DST
            36, 0, 9, 0, // RTA_MULTIPATH: two rtnexthops with their gateways
            16, 0, 0, 1, 2, 0, 0, 0, 8, 0, 5, 0, 10, 1, 0, 2,
            16, 0, 0, 1, 2, 0, 0, 0, 8, 0, 5, 0, 10, 1, 0, 3,
        ];
        assert_eq!(
            parse_route(&multipath).expect("valid"),
            Some(RouteEntry {
                nexthops: 2,
                ..entry("10.9.7.0/24", 254, 1, 1024)
            })
        );

        // IPv4 without RTA_PRIORITY (metric 0) nor RTA_TABLE: a blackhole.
        #[rustfmt::skip]
        let blackhole = [
            2, 26, 0, 0, 254, 12, 0, 6, 0, 0, 0, 0,
            8, 0, 1, 0, 10, 9, 5, 0,
        ];
        assert_eq!(
            parse_route(&blackhole).expect("valid"),
            Some(entry("10.9.5.0/26", 254, 6, 0))
        );

        // An IPv6 default route (no RTA_DST), its table only in RTA_TABLE, a clone.
        #[rustfmt::skip]
        let default6 = [
            10, 0, 0, 0, 252, 12, 0, 1, 0x00, 0x02, 0, 0, // RTM_F_CLONED
            8, 0, 15, 0, 0xe8, 0x03, 0, 0,
            8, 0, 6, 0, 0x00, 0x04, 0, 0,
            20, 0, 5, 0, 0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // RTA_GATEWAY
        ];
        assert_eq!(
            parse_route(&default6).expect("valid"),
            Some(RouteEntry {
                cloned: true,
                ..entry("::/0", 1000, 1, 1024)
            })
        );

        // Another family (AF_MPLS) is none of ours.
        assert_eq!(
            parse_route(&[28, 20, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0]).expect("valid"),
            None
        );
    }

    #[test]
    fn malformed_route_messages_are_errors() {
        let bad = |b: &[u8]| parse_route(b).expect_err("malformed").kind();
        // A short header; an address of the wrong size; a prefix longer than the
        // address; an attribute past the end; a next hop shorter than its header.
        assert_eq!(
            bad(&[2, 24, 0, 0, 254, 12, 0, 1, 0, 0, 0]),
            io::ErrorKind::InvalidData
        );
        #[rustfmt::skip]
        let cases: [&[u8]; 4] = [
            &[2, 24, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0, 7, 0, 1, 0, 10, 9, 0, 0],
            &[2, 33, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0, 8, 0, 1, 0, 10, 9, 0, 0],
            &[2, 24, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0, 12, 0, 1, 0, 10, 9, 0, 0],
            &[2, 24, 0, 0, 254, 12, 0, 1, 0, 0, 0, 0, 12, 0, 9, 0, 4, 0, 0, 0, 2, 0, 0, 0],
        ];
        for c in cases {
            assert_eq!(bad(c), io::ErrorKind::InvalidData, "{c:?}");
        }
    }

    #[test]
    fn attributes_are_read_in_order_without_their_flag_bits() {
        #[rustfmt::skip]
        let b = [
            5, 0, 3, 0, b'x', 0, 0, 0, // 5 bytes, padded to 8
            8, 0, 0x06, 0x80, 1, 2, 3, 4, // NLA_F_NESTED set
        ];
        assert_eq!(
            attrs(&b).expect("valid"),
            vec![(3, &b"x"[..]), (6, &[1u8, 2, 3, 4][..])]
        );
        assert!(attrs(&[3, 0, 1, 0]).is_err());
        assert_eq!(attrs(&[]).expect("none"), vec![]);
    }

    #[test]
    fn a_datagram_splits_into_its_messages() {
        #[rustfmt::skip]
        let dgram = [
            30, 0, 0, 0, 24, 0, 2, 0, 5, 0, 0, 0, 0, 0, 0, 0, // RTM_NEWROUTE, NLM_F_MULTI
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0, // 14 bytes, padded
            20, 0, 0, 0, 3, 0, 2, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // NLMSG_DONE, 0
        ];
        let p = parts(&dgram).expect("valid");
        assert_eq!(
            p,
            vec![
                Part {
                    kind: RTM_NEWROUTE,
                    flags: 2,
                    seq: 5,
                    payload: &dgram[16..30]
                },
                Part {
                    kind: NLMSG_DONE,
                    flags: 2,
                    seq: 5,
                    payload: &[0, 0, 0, 0]
                },
            ]
        );
        assert!(status(&p[1]).is_ok());
        // A length shorter than a header, or past the datagram.
        assert!(parts(&[12, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parts(&dgram[..50]).is_err());
    }

    #[test]
    fn errors_and_dump_ends_carry_the_kernels_errno() {
        let part = |kind, payload| Part {
            kind,
            flags: 0,
            seq: 1,
            payload,
        };
        // An acknowledgement (errno 0, then the request's header) and ESRCH.
        let ack = [0u8; 20];
        assert!(status(&part(NLMSG_ERROR, &ack)).is_ok());
        let esrch = (-3i32).to_le_bytes();
        let e = status(&part(NLMSG_ERROR, &esrch)).expect_err("ESRCH");
        assert_eq!(e.raw_os_error(), Some(3));
        // The end of a dump, bare or with an errno (EBUSY).
        assert!(status(&part(NLMSG_DONE, &[])).is_ok());
        let ebusy = (-16i32).to_le_bytes();
        let e = status(&part(NLMSG_DONE, &ebusy)).expect_err("EBUSY");
        assert_eq!(e.raw_os_error(), Some(16));
        assert!(status(&part(NLMSG_ERROR, &[])).is_err());
    }
}
