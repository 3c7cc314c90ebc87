//! The few rtnetlink requests an attachment needs, spoken directly on a netlink socket
//! (no `ip` process per step): create a veth pair with its peer already in the
//! container's namespace, bring a link up, add an address, add or replace a route,
//! delete a link. Each request asks for an acknowledgement and waits for it; the
//! kernel's refusal comes back as its errno.
//!
//! A netlink socket belongs to the network namespace it was opened in, whatever thread
//! later uses it: [`Netlink::open_in`] opens one inside a namespace from a short-lived
//! thread that enters it (`setns`), so the process itself never moves.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::Path;

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
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
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
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
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

    /// The index of link `name` in the socket's namespace.
    pub fn index(&mut self, name: &str) -> io::Result<u32> {
        // RTM_GETLINK by name; the answer is the link's message.
        let mut m = Msg::new(RTM_GETLINK, NLM_F_REQUEST);
        m.ifinfo(0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        let reply = self.request(m, true)?;
        // nlmsghdr (16), then ifinfomsg: family, pad, type (u16), index (i32) at 4.
        reply
            .get(16 + 4..16 + 8)
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
    /// first non-error message answering it is returned (a GET's answer).
    fn request(&mut self, mut m: Msg, want_reply: bool) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        m.finish(seq);
        send(self.fd.as_raw_fd(), &m.buf, MsgFlags::empty())?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32_at(&buf, at) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let mseq = u32_at(&buf, at + 8);
                if len < 16 || at + len > n {
                    return Err(io::Error::other("a malformed netlink answer"));
                }
                if mseq == seq {
                    match kind {
                        NLMSG_ERROR => {
                            let errno = i32::from_ne_bytes(
                                buf[at + 16..at + 20]
                                    .try_into()
                                    .map_err(|_| io::Error::other("a short netlink error"))?,
                            );
                            return if errno == 0 {
                                Ok(Vec::new())
                            } else {
                                Err(io::Error::from_raw_os_error(-errno))
                            };
                        }
                        NLMSG_DONE => return Ok(Vec::new()),
                        _ if want_reply => return Ok(buf[at..at + len].to_vec()),
                        _ => {}
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
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
