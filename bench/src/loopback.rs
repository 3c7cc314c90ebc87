//! How much of a process's CPU is the loopback receive path.
//!
//! On loopback, the kernel delivers a segment into the receiving socket in the
//! sender's context: the softirq that runs at the end of the sender's `writev`
//! does the receiver's TCP work (socket lookup, ACK processing, queueing, the
//! receiver's wake-up). A controller writing to 10,000 agents on the same machine
//! is therefore charged for the agents' side of every segment, work that a remote
//! agent's host does in production. `perf record` with kernel call graphs tells that
//! work apart: it is everything under `net_rx_action`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A `perf record` of one process, running until [`Recording::finish`].
#[derive(Debug)]
pub struct Recording {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Start sampling `pid` (499 Hz, call graphs).
pub fn record(pid: u32) -> anyhow::Result<Recording> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("perf.data");
    let child = Command::new("perf")
        .args(["record", "-F", "499", "-g", "-o"])
        .arg(&file)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (apt-get install linux-perf)")?;
    Ok(Recording {
        child,
        file,
        _dir: dir,
    })
}

impl Recording {
    /// Stop sampling; the share (0..1) of the samples under `net_rx_action`, and the
    /// number of samples.
    pub fn finish(mut self) -> anyhow::Result<(f64, u64)> {
        // perf writes its file on SIGINT; the workspace has no unsafe code, so kill(1).
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("cannot stop perf: kill {status}");
        }
        self.child.wait()?;
        let out = Command::new("perf")
            .args([
                "report",
                "--children",
                "--sort",
                "sym",
                "-g",
                "none",
                "--stdio",
            ])
            .arg("-i")
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("perf report failed: {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok((receive_share(&text), samples(&text)))
    }
}

/// The children share of `net_rx_action` in a `perf report --children --sort sym`
/// text (0 when it never ran).
fn receive_share(report: &str) -> f64 {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().last() == Some("net_rx_action"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|pct| pct.trim_end_matches('%').parse::<f64>().ok())
        .map_or(0.0, |p| p / 100.0)
}

/// "# Samples: 5K of event 'cpu-clock:ppp'" -> 5000 (perf rounds).
fn samples(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("# Samples: "))
        .and_then(|l| l.split_whitespace().next())
        .map_or(0, |n| {
            let (digits, scale) = match n.strip_suffix('K') {
                Some(d) => (d, 1000.0),
                None => (n, 1.0),
            };
            digits.parse::<f64>().map_or(0, |v| (v * scale) as u64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# Samples: 4K of event 'cpu-clock:ppp'
# Event count (approx.): 9859859800
#
# Children      Self  Symbol
#
    45.62%     0.00%  [k] entry_SYSCALL_64_after_hwframe
    20.16%     0.24%  [k] handle_softirqs
    19.47%     0.29%  [k] net_rx_action
    18.11%     0.34%  [k] process_backlog
";

    #[test]
    fn the_receive_paths_share_is_read() {
        assert!((receive_share(REPORT) - 0.1947).abs() < 1e-9);
        assert_eq!(samples(REPORT), 4000);
        assert_eq!(receive_share("# nothing\n"), 0.0);
    }
}
