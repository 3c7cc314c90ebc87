//! The BIRD driver: installs a rendered configuration and reloads BIRD, supervises the
//! BIRD process (or uses one managed elsewhere), and reads BGP session state back.
//!
//! ```text
//! apply(config)
//!   file = config + marker line `define tern_config_<hash of config> = 1;`
//!   show symbols tern_config_<hash> ──► live file == file and BIRD's running
//!        │                              configuration defines the name? ──yes──► Unchanged
//!        │ no (reason: config changed / BIRD runs another configuration / BIRD reads another file)
//!        ▼
//!   write <live>.staging (0600, fsync) ──► bird -p -c <staging> ──rejected──► error, live file untouched
//!        │ ok
//!        ▼
//!   rename over <live>, fsync dir ──► BIRD running?  yes ──► birdc configure ──► Reloaded
//!                                                    no  ──► supervised: start bird -f ──► Started
//!                                                            external:   NotRunning error
//!
//! Supervisor (supervised mode): child `bird -f -c <live> -s <socket> -P <pid file>` in
//! the Exec's namespace, own process group, log to a file; watcher thread restarts it
//! with backoff; a BIRD found running on the socket is adopted, never restarted.
//! status() ──► show status + show protocols all + show bfd sessions (control socket)
//!              ──► tern::proto::BgpStatus
//! session_marks() ──► show protocols + show bfd sessions: cheap, to notice changes
//! ```
//!
//! "BIRD runs this configuration" is proven, not inferred: the file the manager installs
//! is the rendered configuration followed by a marker, a constant whose name carries a
//! hash of the configuration ([`live_file_text`]), and BIRD's running configuration
//! defines that name exactly when BIRD parsed and committed that file. So an identical
//! configuration costs no reload however BIRD came to run it (our reload, a restart by
//! the supervisor, an agent restart that adopts BIRD), and a BIRD that runs anything else
//! (an older file, another file, a reload that never happened) is reloaded. No clocks
//! are compared: BIRD's printed times cannot identify a BIRD run (it prints its boot
//! time anew for every `show status`, from its real-time clock read at that moment minus
//! its monotonic uptime, so the last digit moves between two answers of one BIRD).
//! Every reload is logged with its reason and counted per reason in [`BirdStats`].
//!
//! The configuration holds BGP passwords: files are 0600, and neither errors nor logs
//! ever carry its contents (secrets quoted back by BIRD are redacted).
//!
//! The methods are synchronous (they run `bird` / `birdc`); the agent calls them on the
//! BGP speaker's own thread (`dataplane::owner`). Every tool call has a deadline.

mod cmd;
mod control;
pub mod parse;
pub mod stale_routes;
mod supervisor;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tern::proto::BgpStatus;

use crate::exec::Exec;

pub use parse::{BirdStatus, Protocol};

use supervisor::{SpawnConfig, Supervisor};

/// Mode of the files tern writes for BIRD: the configuration holds passwords.
pub const FILE_MODE: u32 = 0o600;

/// Who runs the BIRD process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirdMode {
    /// The agent starts BIRD, restarts it when it dies, and stops it on `stop`.
    Supervised,
    /// BIRD is run by someone else (systemd, another container); the agent only writes
    /// the file and reloads through the socket.
    External,
}

/// Where the files are and how to run BIRD.
#[derive(Debug, Clone)]
pub struct BirdOptions {
    /// The live configuration file BIRD reads (`bird -c`).
    pub config_path: PathBuf,
    /// BIRD's control socket (`bird -s`, `birdc -s`).
    pub socket_path: PathBuf,
    /// Runs every tool, in a network namespace if asked.
    pub exec: Exec,
    pub bird_bin: String,
    pub birdc_bin: String,
    pub mode: BirdMode,
    /// `bird -P`: lets a restarted agent find (and watch) the BIRD it adopts.
    pub pid_file: Option<PathBuf>,
    /// BIRD's stdout and stderr (supervised mode); `None` discards them.
    pub log_file: Option<PathBuf>,
    /// Start BIRD with `-R` (graceful restart recovery), as Calico does.
    pub graceful_restart: bool,
    /// Deadline of every `bird -p` / `birdc` call.
    pub command_timeout: Duration,
    /// How long a started BIRD may take to answer on its socket.
    pub start_timeout: Duration,
    /// How long BIRD gets after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// First restart delay after BIRD dies; doubles up to `restart_backoff_max`.
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
}

impl BirdOptions {
    /// Options with tern's file names in `dir`: `bird.conf`, `bird.ctl`, `bird.pid`,
    /// `bird.log`.
    pub fn in_dir(dir: &Path, mode: BirdMode) -> Self {
        let mut o = Self::new(dir.join("bird.conf"), dir.join("bird.ctl"), mode);
        o.log_file = Some(dir.join("bird.log"));
        o
    }

    /// Options for a live file and a socket; the pid file goes next to the live file
    /// (`bird.conf` -> `bird.pid`), no log file.
    pub fn new(config_path: PathBuf, socket_path: PathBuf, mode: BirdMode) -> Self {
        let pid_file = Some(config_path.with_extension("pid"));
        BirdOptions {
            config_path,
            socket_path,
            exec: Exec::host(),
            bird_bin: "bird".into(),
            birdc_bin: "birdc".into(),
            mode,
            pid_file,
            log_file: None,
            graceful_restart: false,
            command_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            restart_backoff: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(30),
        }
    }

    /// The staging file next to the live one (`bird.conf.staging`).
    pub fn staging_path(&self) -> PathBuf {
        let mut name = self
            .config_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".staging");
        self.config_path.with_file_name(name)
    }

    fn spawn_config(&self) -> SpawnConfig {
        SpawnConfig {
            exec: self.exec.clone(),
            bird_bin: self.bird_bin.clone(),
            config_path: self.config_path.clone(),
            socket_path: self.socket_path.clone(),
            pid_file: self.pid_file.clone(),
            log_file: self.log_file.clone(),
            graceful_restart: self.graceful_restart,
            backoff: self.restart_backoff,
            backoff_max: self.restart_backoff_max.max(self.restart_backoff),
        }
    }

    fn validate(&self) -> Result<(), BirdError> {
        if self.config_path.file_name().is_none() {
            return Err(BirdError::Options(format!(
                "configuration path {} has no file name",
                self.config_path.display()
            )));
        }
        if self.socket_path.as_os_str().is_empty() {
            return Err(BirdError::Options("empty control socket path".into()));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket_path.as_os_str().len() > 107 {
            return Err(BirdError::Options(format!(
                "control socket path {} is longer than 107 bytes",
                self.socket_path.display()
            )));
        }
        for p in [&self.config_path, &self.socket_path] {
            if p.to_str().is_none() {
                return Err(BirdError::Options(format!(
                    "{} is not valid UTF-8",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// Why the driver could not do its job. Never carries the configuration's contents.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    /// `bird -p` refused the new configuration; the last good one stays in place.
    #[error("BIRD rejected the configuration (the last good one stays in place): {message}")]
    Rejected { message: String },
    /// `birdc configure` answered neither "Reconfigured", "Reconfiguration in progress" nor
    /// that it queued the configuration behind a reconfiguration under way.
    /// When BIRD itself answered (`answered`), the previous live file is put back.
    #[error("BIRD did not reload its configuration: {reply}")]
    ReloadFailed { reply: String, answered: bool },
    /// The BIRD on our socket reads another file, so reloading it cannot apply ours.
    #[error(
        "BIRD on {socket} reads its configuration from {bird_reads}, not from {ours}; start it with -c {ours}"
    )]
    WrongConfigFile {
        socket: PathBuf,
        bird_reads: String,
        ours: PathBuf,
    },
    /// Nobody answers on the control socket and we do not supervise BIRD. The new
    /// configuration is installed: BIRD reads it when it starts.
    #[error("BIRD is not running ({socket}): {message}")]
    NotRunning { socket: PathBuf, message: String },
    #[error("BIRD did not start: {message}")]
    StartFailed { message: String },
    #[error("birdc {command}: {message}")]
    Command { command: String, message: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid BIRD options: {0}")]
    Options(String),
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The live file already holds this configuration and BIRD runs it: nothing done.
    Unchanged,
    /// Installed and reloaded through the socket (`reply`: BIRD's answer).
    Reloaded { took: Duration, reply: String },
    /// Installed, and BIRD (which was not running) started with it.
    Started { pid: Option<u32>, took: Duration },
}

/// Why the manager reloaded BIRD (or had to load a configuration into a BIRD it found
/// starting): the `reason` field of the "BIRD reconfigured" log line, and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReloadReason {
    /// The live file did not hold the configuration: a new configuration (or a file
    /// someone else changed).
    ConfigChanged,
    /// The live file held the configuration but BIRD's running configuration lacks its
    /// marker: BIRD started from an older file, a reload never happened or was refused,
    /// or the file was written by an agent that did not mark its files.
    BirdRunsOtherConfig,
    /// BIRD's last `configure` read another file than ours.
    BirdReadsOtherFile,
    /// BIRD was found starting (not by this apply) without this configuration.
    StartedWithOtherConfig,
}

impl ReloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::ConfigChanged => "config changed",
            ReloadReason::BirdRunsOtherConfig => "BIRD runs another configuration",
            ReloadReason::BirdReadsOtherFile => "BIRD reads another file",
            ReloadReason::StartedWithOtherConfig => "BIRD was starting with another configuration",
        }
    }
}

impl std::fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters for metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BirdStats {
    /// Successful `configure` calls by this manager.
    pub reloads: u64,
    /// The same reloads by reason.
    pub reload_reasons: BTreeMap<ReloadReason, u64>,
    /// BIRD starts after the first one (supervised mode).
    pub restarts: u64,
    /// Configurations BIRD rejected.
    pub rejected: u64,
    pub pid: Option<u32>,
    /// The BIRD was found running, not started by this manager.
    pub adopted: bool,
    pub last_reload: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// What the socket said.
#[derive(Debug)]
enum Probe {
    Running(BirdStatus),
    NotRunning(String),
}

/// Does the running BIRD run the configuration of a marker?
#[derive(Debug)]
enum Runs {
    Yes,
    No,
    NotRunning(String),
}

/// Installs configurations into BIRD and reads its sessions. See the module docs.
#[derive(Debug)]
pub struct BirdManager {
    opts: BirdOptions,
    sup: Option<Supervisor>,
    adopted: bool,
    /// BIRD's last `configure` named another file than ours: until one names ours, an
    /// equal live file proves nothing, so every apply asks BIRD again.
    wrong_file: bool,
    stats: BirdStats,
}

impl BirdManager {
    /// Check the options, create the live file's directory, and look for a BIRD on the
    /// socket: one found running is taken over as it is (supervised mode: watched and
    /// restarted from now on), never restarted. Starts nothing: BIRD is started by the
    /// first `apply`, so no routes are advertised before the agent's first apply.
    pub fn new(opts: BirdOptions) -> Result<Self, BirdError> {
        opts.validate()?;
        if let Some(dir) = opts
            .config_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            fs::create_dir_all(dir).map_err(|source| BirdError::Io {
                op: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let sup = match opts.mode {
            BirdMode::Supervised => Some(Supervisor::new(opts.spawn_config())?),
            BirdMode::External => None,
        };
        let mut m = BirdManager {
            opts,
            sup,
            adopted: false,
            wrong_file: false,
            stats: BirdStats::default(),
        };
        if let Probe::Running(st) = m.probe()? {
            let pid = m
                .opts
                .pid_file
                .as_deref()
                .and_then(|f| supervisor::pid_from_file(f, &m.opts.socket_path));
            if let Some(sup) = &m.sup {
                sup.adopt(pid);
            }
            m.adopted = true;
            tracing::info!(
                pid,
                version = %st.version,
                socket = %m.opts.socket_path.display(),
                "BIRD already running; taking it over"
            );
        }
        Ok(m)
    }

    pub fn options(&self) -> &BirdOptions {
        &self.opts
    }

    /// BIRD's pid when known (our child, or an adopted BIRD with a pid file).
    pub fn pid(&self) -> Option<u32> {
        match &self.sup {
            Some(s) => s.pid(),
            None => self
                .opts
                .pid_file
                .as_deref()
                .and_then(|f| supervisor::pid_from_file(f, &self.opts.socket_path)),
        }
    }

    /// Successful reloads by this manager.
    pub fn reloads(&self) -> u64 {
        self.stats.reloads
    }

    /// BIRD starts after the first one.
    pub fn restarts(&self) -> u64 {
        self.sup.as_ref().map_or(0, Supervisor::restarts)
    }

    pub fn stats(&self) -> BirdStats {
        BirdStats {
            restarts: self.restarts(),
            pid: self.pid(),
            adopted: self.sup.as_ref().map_or(self.adopted, Supervisor::adopted),
            ..self.stats.clone()
        }
    }

    /// Make BIRD run `config`: stage, compare, check, rename, reload (or start). A
    /// configuration BIRD rejects is never installed. See the module docs.
    pub fn apply(&mut self, config: &str) -> Result<ApplyOutcome, BirdError> {
        let r = self.apply_inner(config);
        match &r {
            Ok(_) => self.stats.last_error = None,
            Err(e) => {
                if matches!(e, BirdError::Rejected { .. }) {
                    self.stats.rejected += 1;
                }
                tracing::warn!(error = %e, "BIRD configuration not applied");
                self.stats.last_error = Some(e.to_string());
            }
        }
        r
    }

    fn apply_inner(&mut self, config: &str) -> Result<ApplyOutcome, BirdError> {
        let t0 = Instant::now();
        let marker = marker_name(config);
        let file = live_file(config, &marker);
        let runs = self.runs(&marker)?;
        let live_holds_it = self.live_holds(&file)?;
        let reason = match &runs {
            Runs::Yes if live_holds_it && !self.wrong_file => {
                self.ensure_live_mode()?;
                tracing::debug!("BIRD configuration unchanged");
                return Ok(ApplyOutcome::Unchanged);
            }
            _ if self.wrong_file => ReloadReason::BirdReadsOtherFile,
            _ if !live_holds_it => ReloadReason::ConfigChanged,
            _ => ReloadReason::BirdRunsOtherConfig,
        };
        let previous = self.install(config, &file)?;
        match runs {
            Runs::Yes | Runs::No => {
                let r = self.reload(config, reason, t0);
                if let Err(BirdError::ReloadFailed { answered: true, .. }) = &r
                    && let Some(prev) = &previous
                {
                    self.restore(prev);
                }
                r
            }
            Runs::NotRunning(mut message) => {
                if self.sup.is_none() {
                    if self.opts.mode == BirdMode::Supervised {
                        message.push_str(" (this manager was stopped)");
                    }
                    return Err(BirdError::NotRunning {
                        socket: self.opts.socket_path.clone(),
                        message,
                    });
                }
                self.start(config, &marker, t0)
            }
        }
    }

    /// True when the live file holds exactly `file`.
    fn live_holds(&self, file: &str) -> Result<bool, BirdError> {
        let path = &self.opts.config_path;
        let io = |source| BirdError::Io {
            op: "reading",
            path: path.clone(),
            source,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        if meta.len() != file.len() as u64 {
            return Ok(false);
        }
        Ok(fs::read(path).map_err(io)? == file.as_bytes())
    }

    fn ensure_live_mode(&self) -> Result<(), BirdError> {
        let path = &self.opts.config_path;
        let meta = fs::metadata(path).map_err(|source| BirdError::Io {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o7777 != FILE_MODE {
            tracing::warn!(path = %path.display(), "BIRD configuration had the wrong mode; set to 0600");
            fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE)).map_err(|source| {
                BirdError::Io {
                    op: "setting the mode of",
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Write the staging file, have BIRD check it, rename it over the live file.
    /// Returns what the live file held before (to put back if BIRD refuses to load the
    /// new one).
    fn install(&self, config: &str, file: &str) -> Result<Option<Vec<u8>>, BirdError> {
        let live = &self.opts.config_path;
        let previous = match fs::read(live) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(BirdError::Io {
                    op: "reading",
                    path: live.clone(),
                    source,
                });
            }
        };
        let staging = self.stage(file.as_bytes())?;
        let checked = cmd::run(
            &self.opts.exec,
            &self.opts.bird_bin,
            &["-p", "-c", staging.to_str().unwrap_or_default()],
            self.opts.command_timeout,
        )
        .and_then(|out| {
            if out.status.success() {
                Ok(())
            } else {
                Err(BirdError::Rejected {
                    message: redact(&out.message(), config),
                })
            }
        });
        if let Err(e) = checked {
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        self.commit(&staging)?;
        Ok(previous)
    }

    /// Write `bytes` to a fresh staging file (0600, fsynced).
    fn stage(&self, bytes: &[u8]) -> Result<PathBuf, BirdError> {
        let staging = self.opts.staging_path();
        let io = |op| {
            let path = staging.clone();
            move |source| BirdError::Io { op, path, source }
        };
        match fs::remove_file(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing")(e)),
        }
        let written = (|| {
            // create_new: never follows a planted symlink; 0600 from the first byte.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&staging)
                .map_err(io("creating"))?;
            f.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                .map_err(io("setting the mode of"))?;
            f.write_all(bytes).map_err(io("writing"))?;
            f.sync_all().map_err(io("syncing"))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        Ok(staging)
    }

    /// Rename the staging file over the live one and make the rename durable.
    fn commit(&self, staging: &Path) -> Result<(), BirdError> {
        let live = &self.opts.config_path;
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| BirdError::Io { op, path, source }
        };
        if let Err(e) = fs::rename(staging, live) {
            let _ = fs::remove_file(staging);
            return Err(io("renaming the staging file to", live)(e));
        }
        if let Some(dir) = live.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        Ok(())
    }

    /// BIRD refused to load a file `bird -p` accepted: put the previous file back, so
    /// that the live file is again what BIRD runs (and reads when it restarts).
    fn restore(&self, previous: &[u8]) {
        match self.stage(previous).and_then(|s| self.commit(&s)) {
            Ok(()) => tracing::warn!("BIRD refused the new configuration; previous file restored"),
            Err(e) => tracing::error!(error = %e, "cannot restore the previous BIRD configuration"),
        }
    }

    fn reload(
        &mut self,
        config: &str,
        reason: ReloadReason,
        t0: Instant,
    ) -> Result<ApplyOutcome, BirdError> {
        let out = self.birdc(&["configure"])?;
        let reply = parse::parse_configure(&out.stdout);
        let Some(success) = reply.success.clone().filter(|_| out.status.success()) else {
            let msg = if reply.message.is_empty() {
                out.message()
            } else {
                reply.message
            };
            return Err(BirdError::ReloadFailed {
                reply: redact(&msg, config),
                // BIRD's banner: BIRD itself answered (and refused).
                answered: out.stdout.contains(" ready."),
            });
        };
        if let Some(file) = &reply.file
            && !same_file(file, &self.opts.config_path)
        {
            self.wrong_file = true;
            return Err(BirdError::WrongConfigFile {
                socket: self.opts.socket_path.clone(),
                bird_reads: file.clone(),
                ours: self.opts.config_path.clone(),
            });
        }
        self.wrong_file = false;
        self.stats.reloads += 1;
        *self.stats.reload_reasons.entry(reason).or_default() += 1;
        self.stats.last_reload = Some(SystemTime::now());
        let took = t0.elapsed();
        tracing::info!(
            reason = reason.as_str(),
            reloads = self.stats.reloads,
            took_ms = millis(took),
            reply = %success,
            "BIRD reconfigured"
        );
        Ok(ApplyOutcome::Reloaded {
            took,
            reply: success,
        })
    }

    fn start(
        &mut self,
        config: &str,
        marker: &str,
        t0: Instant,
    ) -> Result<ApplyOutcome, BirdError> {
        let sup = self.sup.as_ref().ok_or_else(|| BirdError::NotRunning {
            socket: self.opts.socket_path.clone(),
            message: "not supervised".into(),
        })?;
        let (pid, spawned) = sup.ensure_started()?;
        let deadline = Instant::now() + self.opts.start_timeout;
        let runs_it = loop {
            match self.runs(marker)? {
                Runs::Yes => break true,
                Runs::No => break false,
                Runs::NotRunning(msg) => {
                    let sup = self.sup.as_ref().ok_or_else(|| BirdError::StartFailed {
                        message: "not supervised".into(),
                    })?;
                    if !sup.is_alive() {
                        let exit = sup.last_exit().unwrap_or_else(|| "exited".into());
                        return Err(BirdError::StartFailed {
                            // BIRD's log may quote the configuration.
                            message: redact(&format!("{exit}{}", self.log_tail()), config),
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(BirdError::StartFailed {
                            message: format!(
                                "no answer on {} within {:?}: {msg}",
                                self.opts.socket_path.display(),
                                self.opts.start_timeout
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        if !runs_it {
            // A BIRD that was already starting (or restarted by the watcher) read the
            // file before this one was installed.
            tracing::info!(pid, spawned, "BIRD answered without this configuration");
            return self.reload(config, ReloadReason::StartedWithOtherConfig, t0);
        }
        let took = t0.elapsed();
        tracing::info!(
            pid,
            took_ms = millis(took),
            "BIRD started with the new configuration"
        );
        Ok(ApplyOutcome::Started { pid, took })
    }

    /// The last lines of BIRD's log file, for start failures.
    fn log_tail(&self) -> String {
        let Some(log) = &self.opts.log_file else {
            return String::new();
        };
        let Ok(text) = fs::read_to_string(log) else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        format!(" (BIRD log: {})", tail.join("; "))
    }

    fn birdc(&self, args: &[&str]) -> Result<cmd::CmdOutput, BirdError> {
        let socket = self.opts.socket_path.to_str().unwrap_or_default();
        let mut all = vec!["-s", socket];
        all.extend_from_slice(args);
        cmd::run(
            &self.opts.exec,
            &self.opts.birdc_bin,
            &all,
            self.opts.command_timeout,
        )
    }

    /// `show status`, or why nobody answers.
    fn probe(&self) -> Result<Probe, BirdError> {
        if !self.opts.socket_path.exists() {
            return Ok(Probe::NotRunning(format!(
                "no control socket at {}",
                self.opts.socket_path.display()
            )));
        }
        let out = self.birdc(&["show", "status"])?;
        if out.status.success() {
            return Ok(Probe::Running(parse::parse_status(&out.stdout)));
        }
        let msg = out.message();
        if msg.contains("Unable to connect to server control socket") {
            return Ok(Probe::NotRunning(msg));
        }
        Err(BirdError::Command {
            command: "show status".into(),
            message: truncate(&msg),
        })
    }

    /// A read-only `show` command on the control socket (no birdc process).
    fn show(&self, command: &str) -> Result<String, BirdError> {
        control::query(&self.opts.socket_path, command, self.opts.command_timeout)
    }

    /// A `show` command on the control socket: `Ok(Err(why))` when nobody answers.
    fn ask(&self, command: &str) -> Result<Result<String, String>, BirdError> {
        match self.show(command) {
            Ok(text) => Ok(Ok(text)),
            Err(BirdError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(Err(format!(
                    "nobody answers on {}: {source}",
                    self.opts.socket_path.display()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// `show status` on the control socket, or why nobody answers.
    fn probe_socket(&self) -> Result<Probe, BirdError> {
        Ok(match self.ask("show status")? {
            Ok(text) => Probe::Running(parse::parse_status(&text)),
            Err(why) => Probe::NotRunning(why),
        })
    }

    /// Does the BIRD on the socket run the configuration of `marker` (its running
    /// configuration defines that constant)?
    fn runs(&self, marker: &str) -> Result<Runs, BirdError> {
        Ok(match self.ask(&format!("show symbols {marker}"))? {
            Ok(text) if parse::defines_constant(&text, marker) => Runs::Yes,
            Ok(_) => Runs::No,
            Err(why) => Runs::NotRunning(why),
        })
    }

    /// BGP state as the status API reports it: BIRD's version and every BGP protocol
    /// (peer address, type from the name, state, since, info, and the detail of
    /// `show protocols all`: uptime, hold and keepalive times, routes, last error; the
    /// BFD state from `show bfd sessions`). BIRD not answering is a status ("not
    /// running"), not an error; errors are for tools that cannot run.
    pub fn status(&self) -> Result<BgpStatus, BirdError> {
        let mut s = BgpStatus {
            error: self.stats.last_error.clone().unwrap_or_default(),
            last_reload: self.stats.last_reload.map(rfc3339).unwrap_or_default(),
            ..BgpStatus::default()
        };
        let now = SystemTime::now();
        match self.probe_socket()? {
            Probe::NotRunning(msg) => {
                s.state = "not running".into();
                if s.error.is_empty() {
                    s.error = msg;
                }
            }
            Probe::Running(st) => {
                s.state = "running".into();
                s.bird_version = st.version.clone();
                if s.last_reload.is_empty() {
                    // Not reloaded by us: when BIRD last read its file, in RFC 3339.
                    s.last_reload = st
                        .since_reconfiguration()
                        .and_then(|ago| now.checked_sub(ago))
                        .map(rfc3339)
                        .unwrap_or(st.last_reconfiguration.clone());
                }
                match self.show("show protocols all") {
                    Ok(text) => {
                        s.sessions = parse::sessions(&parse::parse_protocols(&text));
                        // No BFD protocol is an error reply, not a failure.
                        let bfd = self
                            .show("show bfd sessions")
                            .map(|t| parse::parse_bfd_sessions(&t))
                            .unwrap_or_default();
                        for x in &mut s.sessions {
                            x.uptime_seconds =
                                parse::uptime(&x.since, &st.server_time).unwrap_or_default();
                            if let Some(b) = bfd.iter().find(|b| b.address == x.peer_address) {
                                x.bfd_state = b.state.clone();
                            }
                        }
                    }
                    Err(e) => {
                        s.state = "error".into();
                        s.error = truncate(&format!("show protocols all: {e}"));
                    }
                }
            }
        }
        Ok(s)
    }

    /// A cheap mark of every protocol's state (`show protocols`: name, state, since,
    /// info) and every BFD session's: it changes whenever a session changes state, so
    /// the agent can poll it often and read the full [`status`](Self::status) only then.
    /// `None` when BIRD does not answer.
    pub fn session_marks(&self) -> Option<String> {
        let mut text = self.show("show protocols").ok()?;
        if let Ok(bfd) = self.show("show bfd sessions") {
            text.push_str(&bfd);
        }
        Some(text)
    }

    /// Stop supervising and stop BIRD (supervised mode: SIGTERM, then SIGKILL after
    /// `stop_timeout`). External mode: BIRD is left alone.
    pub fn stop(mut self) -> Result<(), BirdError> {
        self.stop_supervised()
    }

    /// For `tern-agent cleanup` on a live manager: stop supervising first (so that the
    /// watcher cannot restart BIRD), then [`cleanup`] with this manager's options.
    /// Afterwards the manager supervises nothing: `apply` only installs and reloads.
    pub fn cleanup(&mut self) -> Result<CleanupReport, CleanupError> {
        let mut errors = Vec::new();
        if let Err(e) = self.stop_supervised() {
            errors.push(e);
        }
        match cleanup(&self.opts) {
            Ok(report) if errors.is_empty() => Ok(report),
            Ok(_) => Err(CleanupError(errors)),
            Err(CleanupError(more)) => {
                errors.extend(more);
                Err(CleanupError(errors))
            }
        }
    }

    fn stop_supervised(&mut self) -> Result<(), BirdError> {
        let Some(mut sup) = self.sup.take() else {
            return Ok(());
        };
        if !sup.stop(self.opts.stop_timeout)? {
            // Adopted without a pid file: ask BIRD itself.
            self.shutdown_via_socket()?;
        }
        Ok(())
    }

    /// Stop supervising, leave BIRD running (an agent restart or upgrade keeps its
    /// sessions: the next agent adopts it). Dropping the manager does the same.
    pub fn detach(mut self) {
        if let Some(mut sup) = self.sup.take() {
            sup.detach();
        }
    }

    fn shutdown_via_socket(&self) -> Result<(), BirdError> {
        if let Probe::NotRunning(_) = self.probe()? {
            return Ok(());
        }
        let out = self.birdc(&["down"])?;
        if !out.status.success() {
            return Err(BirdError::Command {
                command: "down".into(),
                message: truncate(&out.message()),
            });
        }
        let deadline = Instant::now() + self.opts.stop_timeout;
        while matches!(self.probe()?, Probe::Running(_)) {
            if Instant::now() >= deadline {
                return Err(BirdError::Command {
                    command: "down".into(),
                    message: format!("BIRD still answers after {:?}", self.opts.stop_timeout),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

fn same_file(bird_reads: &str, ours: &Path) -> bool {
    let theirs = Path::new(bird_reads);
    if theirs == ours {
        return true;
    }
    if theirs.is_relative() {
        // Relative to BIRD's working directory, which we do not know: trust it.
        return true;
    }
    match (fs::canonicalize(theirs), fs::canonicalize(ours)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The first line of the marker the manager appends to every file it installs.
const MARKER_COMMENT: &str =
    "# Added by tern's agent: BIRD runs this file while it defines the name below.\n";
const MARKER_PREFIX: &str = "tern_config_";
/// Hex digits of the configuration's SHA-256 in the marker's name (128 bits).
const MARKER_HEX: usize = 32;

/// The name of the constant that marks `config`: `tern_config_` and the first 128 bits
/// of its SHA-256 in hex (44 characters; BIRD allows 64).
fn marker_name(config: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, config.as_bytes());
    let mut name = String::with_capacity(MARKER_PREFIX.len() + MARKER_HEX);
    name.push_str(MARKER_PREFIX);
    for b in &digest.as_ref()[..MARKER_HEX / 2] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

/// The exact text the manager installs as the live file for `config`: the
/// configuration, a newline, and the marker (a comment and `define <marker> = 1;`).
/// Rendered configurations stay the renderer's; this is what BIRD reads.
pub fn live_file_text(config: &str) -> String {
    live_file(config, &marker_name(config))
}

/// [`live_file_text`] with the marker already worked out.
fn live_file(config: &str, marker: &str) -> String {
    format!("{config}\n{MARKER_COMMENT}define {marker} = 1;\n")
}

/// The configuration a live file was installed for, when it is exactly
/// [`live_file_text`] of it; `None` for any other file.
pub fn installed_config(file: &str) -> Option<&str> {
    // The marker has the same length for every configuration.
    let marker_len = live_file_text("").len();
    let cut = file.len().checked_sub(marker_len)?;
    let config = file.get(..cut)?;
    (live_file_text(config) == file).then_some(config)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn rfc3339(t: SystemTime) -> String {
    tern::util::rfc3339(time::OffsetDateTime::from(t))
}

const MAX_MESSAGE: usize = 2000;

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The quoted values of `password "..."` statements in a configuration.
fn secrets(config: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = config;
    while let Some(i) = rest.find("password") {
        rest = &rest[i + "password".len()..];
        let after = rest.trim_start();
        if let Some(q) = after.strip_prefix('"')
            && let Some(end) = q.find('"')
        {
            if end > 0 {
                out.push(&q[..end]);
            }
            rest = &q[end..];
        }
    }
    out
}

/// A tool's message with any password of `config` blanked out, cut to a sane length.
fn redact(message: &str, config: &str) -> String {
    let mut m = message.to_string();
    for s in secrets(config) {
        m = m.replace(s, "<redacted>");
    }
    truncate(&m)
}

/// True when `bird --version` runs (through `exec`).
pub fn bird_available(exec: &Exec, bird_bin: &str) -> bool {
    bird_version(exec, bird_bin).is_ok()
}

/// The version `bird --version` prints ("2.0.12").
pub fn bird_version(exec: &Exec, bird_bin: &str) -> Result<String, BirdError> {
    let out = cmd::run(exec, bird_bin, &["--version"], Duration::from_secs(5))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if !out.status.success() {
        return Err(BirdError::Command {
            command: format!("{bird_bin} --version"),
            message: truncate(text.trim()),
        });
    }
    Ok(text
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string())
}

/// What `cleanup` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// The BIRD that was stopped (supervised mode), when its pid was known.
    pub stopped_pid: Option<u32>,
    /// BIRD was running and was stopped.
    pub stopped: bool,
    pub removed: Vec<PathBuf>,
}

/// Every failure `cleanup` met (it carries on past each).
#[derive(Debug, thiserror::Error)]
#[error("BIRD cleanup: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct CleanupError(pub Vec<BirdError>);

/// For `tern-agent cleanup`. Supervised mode: stop the BIRD on our socket (found by our
/// pid file, else through the socket) and remove our files (live and staging
/// configuration, pid file, log file, a stale socket). External mode: BIRD and the live
/// file it reads belong to someone else; only the staging file goes.
pub fn cleanup(opts: &BirdOptions) -> Result<CleanupReport, CleanupError> {
    let mut report = CleanupReport::default();
    let mut errors = Vec::new();
    let mut files = vec![opts.staging_path()];
    if opts.mode == BirdMode::Supervised {
        let pid = opts
            .pid_file
            .as_deref()
            .and_then(|f| supervisor::pid_from_file(f, &opts.socket_path));
        if let Some(pid) = pid {
            supervisor::terminate_pid(pid, opts.stop_timeout);
            report.stopped_pid = Some(pid);
            report.stopped = true;
        } else {
            // No pid file: ask whatever answers on our socket to shut down.
            let probe = BirdManager {
                opts: opts.clone(),
                sup: None,
                adopted: false,
                wrong_file: false,
                stats: BirdStats::default(),
            };
            match probe.probe() {
                Ok(Probe::Running(_)) => match probe.shutdown_via_socket() {
                    Ok(()) => report.stopped = true,
                    Err(e) => errors.push(e),
                },
                Ok(Probe::NotRunning(_)) => {}
                Err(e) => errors.push(e),
            }
        }
        files.push(opts.config_path.clone());
        files.extend(opts.pid_file.clone());
        files.extend(opts.log_file.clone());
        // BIRD removes its socket on a clean exit; a killed one leaves it behind.
        if std::os::unix::net::UnixStream::connect(&opts.socket_path).is_err() {
            files.push(opts.socket_path.clone());
        }
    }
    for f in files {
        match fs::remove_file(&f) {
            Ok(()) => report.removed.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => errors.push(BirdError::Io {
                op: "removing",
                path: f,
                source,
            }),
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(CleanupError(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_and_redacted() {
        let cfg = "protocol bgp Node_1 { password \"s3cret\"; }\n\
                   protocol bgp Node_2 { password   \"other pw\"; }\n\
                   # password without quotes\nprotocol bgp X { password \"\"; }";
        assert_eq!(secrets(cfg), ["s3cret", "other pw"]);
        assert_eq!(
            redact("bird: x:1:3 unexpected s3cret near other pw", cfg),
            "bird: x:1:3 unexpected <redacted> near <redacted>"
        );
        // Unterminated quote: nothing to find, no panic.
        assert!(secrets("password \"abc").is_empty());
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let t = truncate(&long);
        assert!(t.len() <= MAX_MESSAGE + 3);
        assert!(t.ends_with("..."));
    }

    #[test]
    fn staging_file_is_next_to_the_live_one() {
        let o = BirdOptions::in_dir(Path::new("/var/lib/tern"), BirdMode::Supervised);
        assert_eq!(
            o.staging_path(),
            Path::new("/var/lib/tern/bird.conf.staging")
        );
        assert_eq!(
            o.pid_file.as_deref(),
            Some(Path::new("/var/lib/tern/bird.pid"))
        );
        assert_eq!(o.socket_path, Path::new("/var/lib/tern/bird.ctl"));
    }

    #[test]
    fn options_are_validated() {
        let mut o = BirdOptions::in_dir(Path::new("/tmp/x"), BirdMode::External);
        o.socket_path = PathBuf::from(format!("/tmp/{}", "s".repeat(120)));
        assert!(matches!(o.validate(), Err(BirdError::Options(_))));
    }

    #[test]
    fn the_live_file_is_the_config_and_its_marker() {
        let cfg = "router id 10.0.0.1;\nprotocol device {}\n";
        let file = live_file_text(cfg);
        let name = marker_name(cfg);
        assert!(file.starts_with(cfg));
        assert!(file.ends_with(&format!("define {name} = 1;\n")));
        assert_eq!(name.len(), MARKER_PREFIX.len() + MARKER_HEX);
        assert!(name.len() <= 64, "BIRD's symbols are at most 64 characters");
        assert!(
            name[MARKER_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        // One byte more or less is another marker.
        assert_ne!(
            marker_name("router id 10.0.0.1;"),
            marker_name("router id 10.0.0.1; ")
        );
        assert_eq!(
            name,
            marker_name(cfg),
            "the same configuration, the same marker"
        );
        // A configuration whose last line is a comment without a newline does not
        // swallow the marker.
        assert!(live_file_text("# no newline").contains("\ndefine tern_config_"));
        // The way back.
        for c in [cfg, "", "# no newline", "ü"] {
            assert_eq!(installed_config(&live_file_text(c)), Some(c));
        }
        assert_eq!(installed_config(cfg), None);
        assert_eq!(installed_config(""), None);
        let tampered = live_file_text(cfg).replace("10.0.0.1", "10.0.0.2");
        assert_eq!(installed_config(&tampered), None);
    }
}
