//! Keeping one BIRD process alive: start it as our child (`bird -f`), or adopt one found
//! running on the socket; a watcher thread restarts it with backoff when it dies.
//!
//! ```text
//! BirdManager ── ensure_started / adopt / stop / detach ──► Shared { State } ◄── watcher thread
//!                                                             proc: None | Child | Adopted
//! ```
//!
//! The watcher ticks every 200 ms: it reaps a dead child (or notices an adopted BIRD is
//! gone), waits out the backoff ([`Pacing`]: `tern::backoff`, by default 0.5 s doubling
//! up to 30 s, back to the start after a run of a minute) and starts a new BIRD. BIRD's
//! stdout/stderr go to a log file, never to a pipe, and BIRD runs in its own process
//! group: it survives the agent (no route flap when the agent restarts), and the next
//! agent adopts it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tern::backoff::Backoff;

use crate::exec::Exec;

use super::BirdError;

const TICK: Duration = Duration::from_millis(200);
/// A BIRD that ran this long before dying is restarted after the initial backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How to start BIRD.
#[derive(Debug, Clone)]
pub(crate) struct SpawnConfig {
    pub exec: Exec,
    pub bird_bin: String,
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub graceful_restart: bool,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl SpawnConfig {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "-f".to_string(),
            "-c".to_string(),
            self.config_path.display().to_string(),
            "-s".to_string(),
            self.socket_path.display().to_string(),
        ];
        if let Some(p) = &self.pid_file {
            a.push("-P".into());
            a.push(p.display().to_string());
        }
        if self.graceful_restart {
            a.push("-R".into());
        }
        a
    }

    fn spawn(&self) -> Result<Child, BirdError> {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.exec.command(&self.bird_bin, &args);
        let (out, err) = match &self.log_file {
            Some(path) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| BirdError::Io {
                        op: "opening BIRD's log file",
                        path: path.clone(),
                        source,
                    })?;
                let f2 = f.try_clone().map_err(|source| BirdError::Io {
                    op: "opening BIRD's log file",
                    path: path.clone(),
                    source,
                })?;
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C meant for the agent does not reach BIRD.
            .process_group(0);
        cmd.spawn().map_err(|source| BirdError::Spawn {
            program: self.bird_bin.clone(),
            source,
        })
    }
}

#[derive(Debug)]
enum Proc {
    None,
    Child(Child),
    /// A BIRD we found running; its pid when its pid file names it.
    Adopted(Option<u32>),
}

/// When to start BIRD again after it died: `tern::backoff` from the configured first
/// delay up to the maximum, started over after a healthy run. The clock is passed in,
/// so the pacing is tested without waiting.
#[derive(Debug)]
struct Pacing {
    backoff: Backoff,
    started_at: Option<Instant>,
}

impl Pacing {
    fn new(first: Duration, max: Duration) -> Pacing {
        Pacing {
            backoff: Backoff::new(first, max),
            started_at: None,
        }
    }

    /// BIRD started (or was adopted) at `now`.
    fn started(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// BIRD died at `now`, or a start failed then: when to try again, and the wait.
    fn retry(&mut self, now: Instant) -> (Instant, Duration) {
        if self
            .started_at
            .take()
            .is_some_and(|t| now.duration_since(t) >= HEALTHY_RUN)
        {
            self.backoff.reset();
        }
        let wait = self.backoff.next_delay();
        (now + wait, wait)
    }
}

#[derive(Debug)]
struct State {
    proc: Proc,
    pacing: Pacing,
    /// Starts and adoptions; every one after the first is a restart.
    starts: u64,
    stopping: bool,
    next_restart: Option<Instant>,
    last_exit: Option<String>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    cfg: SpawnConfig,
}

/// One supervised BIRD.
#[derive(Debug)]
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(cfg: SpawnConfig) -> Result<Self, BirdError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                proc: Proc::None,
                pacing: Pacing::new(cfg.backoff, cfg.backoff_max),
                starts: 0,
                stopping: false,
                next_restart: None,
                last_exit: None,
            }),
            wake: Condvar::new(),
            cfg,
        });
        let s = Arc::clone(&shared);
        let watcher = std::thread::Builder::new()
            .name("bird-watcher".into())
            .spawn(move || watch(&s))
            .map_err(|source| BirdError::Spawn {
                program: "bird-watcher thread".into(),
                source,
            })?;
        Ok(Supervisor {
            shared,
            watcher: Some(watcher),
        })
    }

    /// Watch a BIRD that was already running (pid from its pid file, if known).
    pub fn adopt(&self, pid: Option<u32>) {
        let mut st = self.shared.state.lock();
        st.proc = Proc::Adopted(pid);
        st.starts += 1;
        st.pacing.started(Instant::now());
        st.next_restart = None;
    }

    /// Start BIRD unless a live one is known. Returns its pid (when known) and whether
    /// it was started by this call.
    pub fn ensure_started(&self) -> Result<(Option<u32>, bool), BirdError> {
        let mut st = self.shared.state.lock();
        if let Some(pid) = alive(&mut st, &self.shared.cfg) {
            return Ok((pid, false));
        }
        let child = self.shared.cfg.spawn()?;
        let pid = child.id();
        st.proc = Proc::Child(child);
        st.starts += 1;
        st.pacing.started(Instant::now());
        st.next_restart = None;
        tracing::info!(pid, restarts = st.starts.saturating_sub(1), "BIRD started");
        Ok((Some(pid), true))
    }

    /// True while the BIRD we hold runs.
    pub fn is_alive(&self) -> bool {
        let mut st = self.shared.state.lock();
        alive(&mut st, &self.shared.cfg).is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.shared.state.lock().proc {
            Proc::Child(c) => Some(c.id()),
            Proc::Adopted(pid) => *pid,
            Proc::None => None,
        }
    }

    /// Starts after the first one (by the watcher or by `ensure_started`).
    pub fn restarts(&self) -> u64 {
        self.shared.state.lock().starts.saturating_sub(1)
    }

    pub fn adopted(&self) -> bool {
        matches!(self.shared.state.lock().proc, Proc::Adopted(_))
    }

    pub fn last_exit(&self) -> Option<String> {
        self.shared.state.lock().last_exit.clone()
    }

    /// Stop watching; BIRD keeps running.
    pub fn detach(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }

    /// Stop watching and terminate BIRD: SIGTERM, then SIGKILL after `grace`. Returns
    /// false when BIRD runs but its pid is unknown (adopted without a pid file): the
    /// caller shuts it down through the socket.
    pub fn stop(&mut self, grace: Duration) -> Result<bool, BirdError> {
        self.detach();
        let proc = std::mem::replace(&mut self.shared.state.lock().proc, Proc::None);
        match proc {
            Proc::None => Ok(true),
            Proc::Child(mut c) => {
                let pid = c.id();
                if c.try_wait().ok().flatten().is_none() {
                    signal(pid, "TERM");
                    let deadline = Instant::now() + grace;
                    while c.try_wait().ok().flatten().is_none() {
                        if Instant::now() >= deadline {
                            tracing::warn!(pid, "BIRD ignored SIGTERM; killing it");
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                tracing::info!(pid, "BIRD stopped");
                Ok(true)
            }
            Proc::Adopted(Some(pid)) => {
                // The pid may have been reused since we adopted it: signal it only while
                // it is still the BIRD serving our socket.
                if still_our_bird(pid, &self.shared.cfg.socket_path) {
                    terminate_pid(pid, grace);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Proc::Adopted(None) => Ok(false),
        }
    }
}

/// True while `pid` is a `bird` whose command line serves `socket`.
fn still_our_bird(pid: u32, socket: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_bird = args
        .first()
        .and_then(|a| a.rsplit(|b| *b == b'/').next())
        .is_some_and(|a| a == b"bird");
    let socket = socket.as_os_str().as_encoded_bytes();
    is_bird && args.windows(2).any(|w| w[0] == b"-s" && w[1] == socket)
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The pid (if known) of the live BIRD we hold; reaps a dead child.
fn alive(st: &mut State, cfg: &SpawnConfig) -> Option<Option<u32>> {
    match &mut st.proc {
        Proc::None => None,
        Proc::Child(c) => match c.try_wait() {
            Ok(None) => Some(Some(c.id())),
            Ok(Some(status)) => {
                let why = status.to_string();
                let pid = c.id();
                died(st, pid.into(), why);
                None
            }
            Err(e) => {
                let pid = c.id();
                died(st, pid.into(), format!("cannot wait for it: {e}"));
                None
            }
        },
        Proc::Adopted(Some(pid)) => {
            let pid = *pid;
            if process_alive(pid) {
                Some(Some(pid))
            } else {
                died(st, Some(pid), "exited".into());
                None
            }
        }
        Proc::Adopted(None) => {
            if UnixStream::connect(&cfg.socket_path).is_ok() {
                Some(None)
            } else {
                died(st, None, "stopped answering on its control socket".into());
                None
            }
        }
    }
}

/// Record a death and schedule the restart.
fn died(st: &mut State, pid: Option<u32>, why: String) {
    let (at, wait) = st.pacing.retry(Instant::now());
    tracing::warn!(
        pid,
        exit = %why,
        restarts = st.starts.saturating_sub(1),
        backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "BIRD exited; restarting it"
    );
    st.proc = Proc::None;
    st.last_exit = Some(why);
    st.next_restart = Some(at);
}

fn watch(shared: &Shared) {
    let cfg = &shared.cfg;
    let mut st = shared.state.lock();
    let mut last_socket_probe = Instant::now();
    loop {
        if st.stopping {
            return;
        }
        // An adopted BIRD without a pid is probed through its socket, once a second.
        let probe_due = last_socket_probe.elapsed() >= Duration::from_secs(1);
        if !matches!(st.proc, Proc::Adopted(None)) || probe_due {
            if probe_due {
                last_socket_probe = Instant::now();
            }
            let _ = alive(&mut st, cfg);
        }
        if matches!(st.proc, Proc::None)
            && let Some(at) = st.next_restart
            && Instant::now() >= at
        {
            match cfg.spawn() {
                Ok(child) => {
                    st.starts += 1;
                    tracing::info!(
                        pid = child.id(),
                        restarts = st.starts.saturating_sub(1),
                        "BIRD restarted"
                    );
                    st.proc = Proc::Child(child);
                    st.pacing.started(Instant::now());
                    st.next_restart = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot restart BIRD");
                    st.next_restart = Some(st.pacing.retry(Instant::now()).0);
                }
            }
        }
        shared.wake.wait_for(&mut st, TICK);
    }
}

/// True when a process of that id exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Send a signal with kill(1) (the workspace has no unsafe code and no nix).
pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM a process that is not our child, SIGKILL it after `grace`.
pub(crate) fn terminate_pid(pid: u32, grace: Duration) {
    if !process_alive(pid) {
        return;
    }
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            tracing::warn!(pid, "BIRD ignored SIGTERM; killing it");
            signal(pid, "KILL");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(pid, "BIRD stopped");
}

/// The pid in BIRD's pid file, if that process is a BIRD serving `socket`.
pub(crate) fn pid_from_file(pid_file: &std::path::Path, socket: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !process_alive(pid) {
        return None;
    }
    still_our_bird(pid, socket).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `d` is a wait the backoff gives for `base_ms`.
    fn around(d: Duration, base_ms: u64) -> bool {
        tern::backoff::jitter_range(Duration::from_millis(base_ms)).contains(&d)
    }

    #[test]
    fn restarts_back_off_and_start_over_after_a_healthy_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Pacing::new(Duration::from_millis(500), s(30));
        p.started(t0);
        // BIRD dies a second after every start: 0.5 s doubling up to 30 s.
        let mut now = t0 + s(1);
        for base in [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000] {
            let (at, wait) = p.retry(now);
            assert_eq!(at - now, wait);
            assert!(around(wait, base), "{wait:?} is not around {base} ms");
            p.started(at);
            now = at + s(1);
        }
        // A start that fails waits longer still (capped): no run in between.
        let (at, _) = p.retry(now);
        let (_, wait) = p.retry(at);
        assert!(around(wait, 30_000));
        // A run of a minute: the next death waits the first delay again.
        p.started(now);
        let (_, wait) = p.retry(now + HEALTHY_RUN);
        assert!(around(wait, 500), "{wait:?}");
        // A shorter run does not.
        p.started(now);
        let (_, wait) = p.retry(now + HEALTHY_RUN - s(1));
        assert!(around(wait, 1000), "{wait:?}");
    }
}
