//! Throwaway network namespaces for real-kernel tests: uniquely named namespaces, veth
//! pairs between them, addresses, routes, sysctls, and small TCP helpers that run
//! inside a namespace. A [`Netns`] kills every process inside it and deletes itself when
//! dropped, also when the test panics; veth pairs live inside namespaces only and go
//! with them.
//!
//! Processes in a namespace are the test binary itself, re-executed under
//! `ip netns exec` (no python, no netcat needed). Every test binary that uses
//! [`Netns::serve_tcp`] or [`Netns::tcp_probe`] must contain:
//!
//! ```ignore
//! #[test]
//! fn netns_helper() {
//!     tern_testkit::netns::helper_entry();
//! }
//! ```
//!
//! Needs root (`ip netns add`): [`require_root`] fails loudly instead of skipping.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Every namespace the harness creates starts with this.
pub const PREFIX: &str = "tern-t";
/// Set in a re-executed test binary to the helper command.
pub const HELPER_ENV: &str = "TERN_NETNS_HELPER";
/// The name of the test function that calls [`helper_entry`].
pub const HELPER_TEST: &str = "netns_helper";
/// Marks the lines a helper prints (libtest prints its own lines too).
const HELPER_MARK: &str = "TERN-HELPER ";
/// A helper server exits by itself after this long.
const SERVER_LIFETIME: Duration = Duration::from_secs(600);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fail unless running as root: namespace tests must run, never skip silently.
pub fn require_root() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        bail!("network namespace tests need root (effective uid {uid}); run them as root");
    }
    Ok(())
}

/// The prefix of the namespaces this process creates.
pub fn process_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// Names of the namespaces that exist now.
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = run_cmd(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// True when a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    list().map(|l| l.iter().any(|n| n == name)).unwrap_or(false)
}

/// Namespaces created by this process that still exist.
pub fn leftovers() -> anyhow::Result<Vec<String>> {
    let p = process_prefix();
    Ok(list()?.into_iter().filter(|n| n.starts_with(&p)).collect())
}

/// True when a process of that id is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that ends the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that is deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Create `tern-t<pid>-<n>-<role>` with loopback up.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        require_root()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{n}-{role}", process_prefix());
        run_cmd(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `program args` inside the namespace; stdout on success.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &self.name, program])
                .args(args),
        )
    }

    /// Run `program args` inside the namespace with `input` on stdin.
    pub fn run_stdin(&self, program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {program} in {}", self.name))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n <name> args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Set a sysctl under /proc/sys/net (e.g. `net.ipv4.ip_forward`) in the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let ok = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !key.starts_with("net.") || !ok(key) || !ok(value) {
            bail!("sysctl {key}={value}: only plain net.* keys and values");
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run("sh", &["-c", &format!("echo {value} > {path}")])
            .map(|_| ())
    }

    /// Add an address (IPv6 ones without duplicate address detection) and bring the
    /// link up.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// Add a route: `ip route add <dest> via <gw>` (IPv4 or IPv6 by the address).
    pub fn route(&self, dest: &str, via: &str) -> anyhow::Result<()> {
        let fam = if via.contains(':') { "-6" } else { "-4" };
        self.ip(&[fam, "route", "add", dest, "via", via])?;
        Ok(())
    }

    /// Process ids inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        run_cmd(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn helper_command(&self, command: &str) -> anyhow::Result<Command> {
        let exe = std::env::current_exe().context("finding the test binary")?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(exe)
            .args([HELPER_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(HELPER_ENV, command);
        Ok(c)
    }

    /// Start a TCP server in the namespace that answers every connection with the
    /// address and port it sees the client at, then closes. It runs until the namespace
    /// is dropped. Returns once it listens.
    pub fn serve_tcp(&self, addr: SocketAddr) -> anyhow::Result<()> {
        let mut child = self
            .helper_command(&format!("serve {addr}"))?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the helper server")?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let pid = child.id();
        self.children
            .lock()
            .map_err(|_| anyhow::anyhow!("children lock poisoned"))?
            .push(child);
        let rx = helper_messages(stdout);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(msg) if msg.starts_with("READY") => Ok(()),
            Ok(msg) => bail!("helper server {pid} in {} on {addr}: {msg}", self.name),
            Err(_) => bail!(
                "helper server {pid} in {} on {addr} did not start",
                self.name
            ),
        }
    }

    /// Connect from the namespace to a [`Netns::serve_tcp`] server and return the
    /// address the server saw the connection come from.
    pub fn tcp_probe(&self, target: SocketAddr) -> anyhow::Result<SocketAddr> {
        let child = self
            .helper_command(&format!("connect {target}"))?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the helper client")?;
        let out = wait_with_timeout(child, Duration::from_secs(15))?;
        let msg = out
            .lines()
            .find_map(helper_message)
            .with_context(|| format!("probe {} -> {target}: no answer", self.name))?;
        match msg.strip_prefix("SEEN ") {
            Some(seen) => seen
                .trim()
                .parse()
                .with_context(|| format!("probe answer {seen:?}")),
            None => bail!("probe {} -> {target}: {msg}", self.name),
        }
    }

    /// Like [`Netns::tcp_probe`], only the address.
    pub fn tcp_probe_ip(&self, target: SocketAddr) -> anyhow::Result<IpAddr> {
        self.tcp_probe(target).map(|a| a.ip())
    }

    /// Start a UDP receiver on `addr` that counts the numbered datagrams of a
    /// [`Netns::udp_flow`]. Returns once it listens.
    pub fn udp_sink(&self, addr: SocketAddr) -> anyhow::Result<Helper> {
        Helper::start(self, &format!("udp-sink {addr}"))
    }

    /// Start sending numbered UDP datagrams to `target`, one every `interval`, until
    /// [`Helper::finish`]. Returns once the first one is sent.
    pub fn udp_flow(&self, target: SocketAddr, interval: Duration) -> anyhow::Result<Helper> {
        Helper::start(self, &format!("udp-flow {target} {}", interval.as_micros()))
    }
}

/// A long-running helper process in a namespace (a UDP sender or receiver): it runs
/// until [`Helper::finish`] closes its stdin, then reports what it counted.
#[derive(Debug)]
pub struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Helper {
    fn start(ns: &Netns, command: &str) -> anyhow::Result<Helper> {
        let mut child = ns
            .helper_command(command)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting helper {command:?}"))?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let lines = helper_messages(stdout);
        let mut h = Helper {
            child,
            lines,
            what: format!("{command} in {}", ns.name),
        };
        match h.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(msg) if msg.starts_with("READY") => Ok(h),
            Ok(msg) => {
                h.kill();
                bail!("helper {}: {msg}", h.what)
            }
            Err(_) => {
                h.kill();
                bail!("helper {} did not start", h.what)
            }
        }
    }

    /// Stop the helper and return its count: datagrams sent (a flow) or distinct ones
    /// received (a sink).
    pub fn finish(mut self) -> anyhow::Result<u64> {
        drop(self.child.stdin.take());
        let msg = self.lines.recv_timeout(Duration::from_secs(10));
        self.kill();
        let msg = msg.with_context(|| format!("helper {} did not report", self.what))?;
        msg.strip_prefix("COUNT ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("helper {}: {msg}", self.what))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The messages a helper prints, as they come.
fn helper_messages(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(msg) = helper_message(&line)
                && tx.send(msg.to_string()).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// The message of a helper output line (libtest may have printed on the same line).
fn helper_message(line: &str) -> Option<&str> {
    line.find(HELPER_MARK)
        .map(|i| &line[i + HELPER_MARK.len()..])
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> anyhow::Result<String> {
    let mut stdout = child.stdout.take().context("helper stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("helper did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("helper output reader panicked"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            children.clear();
        }
        // Anything else still inside (started by a test with `ip netns exec`).
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "tern-testkit: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// A LAN: a bridge in its own namespace, and `attach` to plug hosts into it.
#[derive(Debug)]
pub struct Lan {
    pub ns: Netns,
    ports: std::cell::Cell<usize>,
}

impl Lan {
    pub fn new() -> anyhow::Result<Lan> {
        let ns = Netns::new("lan")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            ns,
            ports: std::cell::Cell::new(0),
        })
    }

    /// Plug `host` in as `ifname` with these addresses (CIDR form). Taking the host's
    /// interface down later leaves the others' links up, as with a switch between.
    pub fn attach(&self, host: &Netns, ifname: &str, addrs: &[&str]) -> anyhow::Result<()> {
        let n = self.ports.get();
        self.ports.set(n + 1);
        let port = format!("p{n}");
        veth(&self.ns, &port, host, ifname)?;
        self.ns.ip(&["link", "set", &port, "master", "br0"])?;
        for a in addrs {
            host.add_addr(ifname, a)?;
        }
        Ok(())
    }
}

/// Forwarding on for both families.
pub fn forwarding(ns: &Netns) -> anyhow::Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")
}

/// Connect `a`'s interface `a_if` to `b`'s interface `b_if` with a veth pair created
/// directly inside the namespaces (nothing appears in the caller's namespace).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// The helper side: call from a test named [`HELPER_TEST`]. In a normal test run it
/// returns at once; in a re-executed binary it does the job and exits the process.
pub fn helper_entry() {
    let Ok(command) = std::env::var(HELPER_ENV) else {
        return;
    };
    let code = match run_helper(&command) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("ERROR {e:#}"));
            1
        }
    };
    std::process::exit(code);
}

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{HELPER_MARK}{msg}");
    let _ = out.flush();
}

fn run_helper(command: &str) -> anyhow::Result<()> {
    let (verb, arg) = command.split_once(' ').unwrap_or((command, ""));
    if verb == "udp-flow" {
        let (target, micros) = arg.split_once(' ').context("udp-flow TARGET MICROS")?;
        return udp_flow(
            target.parse().context("udp-flow target")?,
            Duration::from_micros(micros.parse().context("udp-flow interval")?),
        );
    }
    let addr: SocketAddr = arg
        .parse()
        .with_context(|| format!("helper address {arg:?}"))?;
    match verb {
        "serve" => serve(addr),
        "udp-sink" => udp_sink(addr),
        "connect" => {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connect {addr}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)
                .with_context(|| format!("read from {addr}"))?;
            say(&format!("SEEN {}", answer.trim()));
            Ok(())
        }
        other => bail!("unknown helper command {other:?}"),
    }
}

/// Set when the test closes the helper's stdin (or dies).
fn stdin_closed() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });
    done
}

/// Send datagrams numbered 0, 1, ... every `interval` until stdin closes; report how
/// many were sent. A send error (no route for a moment) counts the datagram as sent:
/// it is lost all the same.
fn udp_flow(target: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = std::net::UdpSocket::bind(any)?;
    let done = stdin_closed();
    let mut seq = 0u64;
    let start = Instant::now();
    say("READY");
    while !done.load(Ordering::SeqCst) && start.elapsed() < SERVER_LIFETIME {
        let _ = sock.send_to(&seq.to_be_bytes(), target);
        seq += 1;
        // Paced against the start, so that slow wake-ups do not lower the rate.
        let next = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    say(&format!("COUNT {seq}"));
    Ok(())
}

/// Count the distinct numbered datagrams that arrive until stdin closes.
fn udp_sink(addr: SocketAddr) -> anyhow::Result<()> {
    let sock = std::net::UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let done = stdin_closed();
    let mut seen = std::collections::HashSet::new();
    let start = Instant::now();
    say(&format!("READY {}", sock.local_addr()?));
    let mut buf = [0u8; 64];
    while !done.load(Ordering::SeqCst) && start.elapsed() < SERVER_LIFETIME {
        if let Ok(n) = sock.recv(&mut buf)
            && n == 8
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[..8]);
            seen.insert(u64::from_be_bytes(b));
        }
    }
    say(&format!("COUNT {}", seen.len()));
    Ok(())
}

fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    // Exit when the test closes our stdin (or dies), or after SERVER_LIFETIME.
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(SERVER_LIFETIME);
        std::process::exit(0);
    });
    say(&format!("READY {}", listener.local_addr()?));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if let Ok(peer) = conn.peer_addr() {
            let _ = conn.write_all(format!("{peer}\n").as_bytes());
        }
    }
    Ok(())
}
