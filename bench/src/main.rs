//! tern's benchmark harness (measurements, not tests):
//!
//! - `fanout`: a real etcd, one controller (a separate release process, so its CPU and
//!   memory are its own), N agents in this process over real gRPC/TLS on loopback with
//!   the recording NAT driver. Patches an IP pool at a steady rate and measures, per
//!   update, the time from the API call returning to each agent having applied it.
//!   `--mode etcd-direct` instead gives every agent its own etcd watch (the design
//!   without a fan-out cache). Both print the latency of a bare etcd put to one
//!   watcher as the floor.
//! - `nat`: time to apply the NAT state of N pools, nftables against iptables-restore,
//!   in a throwaway network namespace.
//! - `bird`: render time and reload time of a node's BIRD configuration for meshes of
//!   N nodes and for 1,000 global peers, with a real BIRD in a throwaway namespace.
//! - `cni`: N containers attached at once on one node by `tern-cni` (ADD and DEL
//!   latency, no address given twice), etcd and the controller on the same machine.
//! - `restart`: a controller started (and restarted after kill -9) on an etcd holding
//!   10,000 Nodes, their blocks and status reports and 1,000 BGPPeers: time until the
//!   cache is loaded and Sync is served, and the controller's memory.
//! - `reflector`: a route reflector with N clients, one session each against dynamic
//!   BGP: configuration size, reload time, and what client N+1 joining costs.
//! - `bfd`: how long FRR as the top-of-rack router keeps a dead node's routes, with
//!   BFD and with the hold time alone.
//! - `session`: how soon a BGP session's change reaches the node's status at the
//!   controller (the real agent binary and BIRD, a peer BIRD).
//! - `apply`: `ternctl apply -f` of 10,000 Nodes (a few invalid) against a controller
//!   process on a real etcd: wall time, controller and etcd CPU, and a check that the
//!   report is exact and exactly the valid Nodes are stored.
//! - `chaos`: 3 etcd members, controller replicas and N agents while writers churn the
//!   intent and controllers, etcd members and agents are killed with SIGKILL and
//!   started again; then the time to converge, and every agent's programmed state
//!   against the final intent (the library's `chaos` module; a test runs it small).
//! - `etcd-size`: etcd's database for N nodes (Nodes, blocks, addresses, peers, status
//!   reports), as `etcdctl endpoint status` reports it, before and after compaction
//!   and defragmentation.

mod apply;
mod bfd;
mod bird;
mod cni;
mod etcd_size;
mod fanout;
mod loopback;
mod nat;
mod reflector;
mod restart;
mod session;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tern-bench", about = "tern benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync fan-out latency and controller cost per agent.
    Fanout(fanout::Args),
    /// NAT apply time for N pools, nftables vs iptables-restore.
    Nat(nat::Args),
    /// BIRD render and reload time.
    Bird(bird::Args),
    /// CNI ADD/DEL latency for a burst of containers on one node.
    Cni(cni::Args),
    /// Controller start and restart on a large etcd: cache load and Sync served.
    Restart(restart::Args),
    /// A route reflector with N clients: explicit sessions against dynamic BGP.
    Reflector(reflector::Args),
    /// Time for a router to drop a dead node's routes, with and without BFD.
    Bfd(bfd::Args),
    /// Time for a BGP session change to reach the node's status at the controller.
    Session(session::Args),
    /// Kill -9 controllers, etcd members and agents under churn; check convergence.
    Chaos(tern_bench::chaos::Options),
    /// etcd's database size for N nodes, before and after compaction and defrag.
    EtcdSize(etcd_size::Args),
    /// `ternctl apply -f` of many Nodes: time, controller and etcd CPU, exact report.
    Apply(apply::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Fanout(a) => fanout::run(a),
        Command::Nat(a) => nat::run(a),
        Command::Bird(a) => bird::run(a),
        Command::Cni(a) => cni::run(a),
        Command::Restart(a) => restart::run(a),
        Command::Reflector(a) => reflector::run(a),
        Command::Bfd(a) => bfd::run(a),
        Command::Session(a) => session::run(a),
        Command::Chaos(o) => chaos(o),
        Command::EtcdSize(a) => etcd_size::run(a),
        Command::Apply(a) => apply::run(a),
    }
}

fn chaos(o: tern_bench::chaos::Options) -> anyhow::Result<()> {
    use tern_bench::chaos::Mode;
    if o.mode == Mode::Netns && !o.inside {
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.push("--inside".into());
        return in_fresh_netns(&args);
    }
    fanout::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(tern_bench::chaos::run(&o))?;
    println!("machine: {}", machine());
    report.print();
    if !report.passed() {
        anyhow::bail!("the chaos run found problems (see above)");
    }
    Ok(())
}

/// Run this benchmark binary again, with `args`, inside a fresh network namespace (so the
/// host is never touched and no `ip netns exec` wrapper is timed); the namespace and
/// anything left running in it are removed afterwards.
pub fn in_fresh_netns(args: &[String]) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    use std::process::Command;
    let ns = format!("tern-bench-{}", std::process::id());
    if !Command::new("ip")
        .args(["netns", "add", &ns])
        .status()?
        .success()
    {
        bail!("cannot create network namespace {ns} (run as root)");
    }
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
        .status();
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe()?)
        .args(args)
        .status()
        .context("running the benchmark in its namespace");
    // A namespace outlives `ip netns del` while a process holds it.
    if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    if !status?.success() {
        bail!("the benchmark failed");
    }
    Ok(())
}

/// The directory of the workspace's other binaries: the one given, else this
/// benchmark's own.
pub fn bin_dir(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    match given {
        Some(d) => Ok(d.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .to_path_buf()),
    }
}

/// A comma-separated list.
pub fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Percentile of sorted durations in milliseconds.
pub fn pct(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_ms.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted_ms[idx.min(sorted_ms.len() - 1)]
}

/// A short description of this machine for the results.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    // The machine may be shared: how busy it was when the run started.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into());
    format!("{cpu}, {cores} cores, {mem} GiB, Linux {kernel}, load average {load} (1, 5, 15 min)")
}

/// CPU seconds (user + system) and resident memory (bytes) of a process.
pub fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(((utime + stime) / ticks, rss_kb * 1024))
}

/// Peak resident memory (VmHWM, bytes) of a process since it started, or since its
/// peak was last reset (`reset_peak_rss`).
pub fn proc_peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(kb * 1024)
}

/// Start a process's peak resident memory over from its current one.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the peak RSS")
}

/// A metric's value from a controller's `/metrics` endpoint, if it answers.
pub async fn metric(metrics: &str, name: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(metrics).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as i64)
}

/// The tern-controller binary: the one given, else the one next to this binary.
pub fn controller_bin(given: Option<&std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    tern_bench::chaos::sibling_bin(given, "tern-controller")
}

/// A `tern-controller` release process on a loopback port, over `etcd`, with a
/// throwaway PKI (controller and administrator certificates); killed on drop.
#[derive(Debug)]
pub struct LocalController {
    pub addr: String,
    pub certs: tern_bench::certs::Certs,
    /// Client settings of the administrator.
    pub admin: tern::client::ClientTls,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl LocalController {
    /// Start `bin` with `extra` flags after the etcd, listen and TLS ones.
    pub fn start(
        etcd: &tern_testkit::etcd::Etcd,
        bin: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<LocalController> {
        let dir = tempfile::tempdir()?;
        let certs = tern_bench::certs::Certs::new(dir.path(), &["127.0.0.1"])?;
        let admin = certs.tls(&tern::pki::Role::Admin)?;
        let addr = format!("127.0.0.1:{}", tern_testkit::etcd::free_port());
        let child = Self::spawn(&certs, &addr, etcd, bin, extra)?;
        Ok(LocalController {
            addr,
            admin,
            certs,
            child,
            _dir: dir,
        })
    }

    fn spawn(
        certs: &tern_bench::certs::Certs,
        addr: &str,
        etcd: &tern_testkit::etcd::Etcd,
        bin: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<std::process::Child> {
        use anyhow::Context as _;
        std::process::Command::new(bin)
            .envs(tern_bench::deployed_controller_env())
            .args(["--etcd-endpoints", &etcd.endpoint(), "--listen", addr])
            .args(certs.controller_args())
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting tern-controller")
    }

    /// kill -9 the controller and start `bin` again at once on the same address and
    /// certificates, with `extra` flags (as a supervisor restarts a crashed process).
    pub fn kill_and_restart(
        &mut self,
        etcd: &tern_testkit::etcd::Etcd,
        bin: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.certs, &self.addr, etcd, bin, extra)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
