//! How transactions and read-backs reach nft: the long-lived `nft -j -i` session, a
//! private file it includes for long transactions, or one-shot `nft -f -` / `nft -j
//! list`.
//!
//! ```text
//! short (<= 2 KiB as one line)  ─► nft -j -i session: the commands joined with "; "
//! longer (a table of many pools)─► nft -j -i session: include "<private temp dir>/txn.nft"
//! no session (cannot start,     ─► nft -f - (one process per transaction)
//!   paused after failures)
//! read-backs                    ─► the session: list table inet tern (else nft -j list)
//! ```
//!
//! The session ([`NftSession`]) is started on first use and kept: nft -i runs each line
//! as one batch, and a long-lived process skips nft's start-up and the ~15 ms that
//! releasing a netlink socket costs after a transaction that deleted something. A session
//! that breaks (times out, dies, answers nonsense) is killed and the call says
//! [`Failure::Broken`]; the next call starts a new session. After three failures in a
//! row, or one of a session that never answered (an nft built without its interactive
//! CLI), one-shot nft is used for a minute, then longer. Sessions are replaced after
//! 1,000 lines (nft -i keeps a history).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::layout::Txn;
use super::readback::Observed;
use super::session::{NftSession, SessionError};
use super::{DRIVER, TABLE_FAMILY, TABLE_NAME};
use crate::dataplane::DataplaneError;
use crate::exec::{Exec, ExecError};

/// A session is replaced after this many lines or bytes (nft -i keeps a history).
const SESSION_MAX_LINES: u64 = 1000;
const SESSION_MAX_BYTES: u64 = 8 << 20;
/// After this many session failures in a row (or one of a session that never answered:
/// an nft without the interactive CLI, or one that answers in a way this driver does not
/// understand), one-shot nft for [`SESSION_PAUSE`], doubled at each pause in a row up to
/// [`SESSION_MAX_PAUSE`].
const SESSION_MAX_FAILURES: u32 = 3;
const SESSION_PAUSE: Duration = Duration::from_secs(60);
const SESSION_MAX_PAUSE: Duration = Duration::from_secs(3600);
/// How long a session may take for a transaction: this, plus 1 ms per 100 bytes of
/// it; read-backs get three times this.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A private copy of a transaction for the session to `include`; removed on drop.
#[derive(Debug)]
pub(super) struct TempScript {
    pub dir: PathBuf,
    pub file: PathBuf,
    /// The file's path, as nft reads it between quotes.
    pub path: String,
}

impl TempScript {
    /// Write `script` to `<temp dir>/tern-nft-<pid>-<random>/txn.nft`: a directory only
    /// root can enter, made here (never one that existed), a file only root can read.
    pub(super) fn write(script: &str) -> std::io::Result<TempScript> {
        let dir = std::env::temp_dir().join(format!(
            "tern-nft-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let file = dir.join("txn.nft");
        let path = file
            .to_str()
            .filter(|p| {
                p.starts_with('/')
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
            })
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} cannot be written between quotes in an nft include",
                    file.display()
                ))
            })?
            .to_string();
        DirBuilder::new().mode(0o700).create(&dir)?;
        let t = TempScript { dir, file, path };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&t.file)?;
        f.write_all(script.as_bytes())?;
        Ok(t)
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Why a read or a transaction did not go through.
#[derive(Debug)]
pub(super) enum Failure {
    /// nft said no: nothing of the transaction was applied.
    Refused(DataplaneError),
    /// The session broke with the request in flight: whether it was applied is
    /// unknown. The caller reads the kernel back and goes on with one-shot nft.
    Broken(SessionError),
}

impl From<DataplaneError> for Failure {
    fn from(e: DataplaneError) -> Failure {
        Failure::Refused(e)
    }
}

/// An error nft -i reported, in the shape one-shot nft errors have.
pub(super) fn session_error(action: &str, e: SessionError) -> DataplaneError {
    let (status, stderr) = match e {
        SessionError::Refused(msg) => ("refused the line".to_string(), msg),
        other => ("failed".to_string(), other.to_string()),
    };
    DataplaneError::Exec {
        driver: DRIVER,
        action: action.to_string(),
        source: ExecError::Failed {
            program: "nft -i".into(),
            status,
            stderr,
        },
    }
}

/// The way to nft, and the state of its session.
#[derive(Debug)]
pub(super) struct Transport {
    exec: Exec,
    /// The nft -i session, started on first use.
    session: Option<NftSession>,
    /// False: one-shot nft only.
    use_session: bool,
    pub timeout: Duration,
    /// Session failures in a row, and until when the session is not used after too many.
    failures: u32,
    paused_until: Option<Instant>,
    /// Pauses since a session last answered.
    pauses: u32,
    /// False once nft -i could not include a temporary file that nft -f could run.
    pub include_ok: bool,
    /// Set while a call is retried after its session broke.
    pub oneshot_only: bool,
}

impl Transport {
    /// With a session (started on first use) or without (`use_session` false).
    pub fn new(exec: Exec, use_session: bool) -> Transport {
        Transport {
            exec,
            session: None,
            use_session,
            timeout: DEFAULT_SESSION_TIMEOUT,
            failures: 0,
            paused_until: None,
            pauses: 0,
            include_ok: true,
            oneshot_only: false,
        }
    }

    /// The process id of the running nft -i session, if any.
    pub fn session_pid(&self) -> Option<u32> {
        self.session
            .as_ref()
            .filter(|s| s.is_running())
            .map(NftSession::pid)
    }

    /// The session to use now, started if needed; None for one-shot nft.
    pub(super) fn session(&mut self) -> Option<&mut NftSession> {
        if !self.use_session || self.oneshot_only {
            return None;
        }
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return None;
            }
            self.paused_until = None;
        }
        let worn = self.session.as_ref().is_some_and(|s| {
            !s.is_running() || s.lines() >= SESSION_MAX_LINES || s.bytes_sent() >= SESSION_MAX_BYTES
        });
        if worn {
            self.session = None;
        }
        if self.session.is_none() {
            match NftSession::start(&self.exec) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    self.session_failed(&e, true);
                    return None;
                }
            }
        }
        self.session.as_mut()
    }

    /// Run `line` in the session, if there is one to use (None: use one-shot nft).
    fn session_run(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Option<Result<String, SessionError>> {
        let session = self.session()?;
        let r = session.run(line, timeout);
        let never_answered = session.answers() == 0;
        match &r {
            Err(e) if e.is_fatal() => self.session_failed(e, never_answered),
            _ => {
                self.failures = 0;
                self.pauses = 0;
            }
        }
        Some(r)
    }

    /// Drop the session after `e`; pause sessions after too many failures in a row, or
    /// at once (`at_once`) when the session never answered.
    fn session_failed(&mut self, e: &SessionError, at_once: bool) {
        self.session = None;
        self.failures += 1;
        if !at_once && self.failures < SESSION_MAX_FAILURES {
            tracing::warn!(driver = DRIVER, error = %e, "nft -i session failed");
            return;
        }
        let pause = SESSION_PAUSE
            .saturating_mul(1 << self.pauses.min(6))
            .min(SESSION_MAX_PAUSE);
        self.pauses = self.pauses.saturating_add(1);
        self.failures = 0;
        self.paused_until = Some(Instant::now() + pause);
        tracing::warn!(
            driver = DRIVER,
            error = %e,
            "nft -i does not work here; using one-shot nft for {pause:?}"
        );
    }

    fn timeout_for(&self, bytes: usize) -> Duration {
        let extra = u64::try_from(bytes / 100).unwrap_or(u64::MAX);
        self.timeout.saturating_add(Duration::from_millis(extra))
    }

    /// One `nft -f -` run of `script`.
    pub(super) fn oneshot(&self, action: &str, script: &str) -> Result<(), DataplaneError> {
        self.exec
            .run("nft", &["-f", "-"], Some(script))
            .map(|_| ())
            .map_err(|source| DataplaneError::Exec {
                driver: DRIVER,
                action: action.to_string(),
                source,
            })
    }

    /// Run one transaction: in the session (as a line, or by including a file), else
    /// with one-shot `nft -f -`.
    pub(super) fn transact(&mut self, action: &str, txn: Txn<'_>) -> Result<(), Failure> {
        if let Some(line) = txn.short_line() {
            let timeout = self.timeout_for(line.len());
            match self.session_run(&line, timeout) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(e)) if e.is_fatal() => return Err(Failure::Broken(e)),
                Some(Err(e @ SessionError::Refused(_))) => {
                    return Err(Failure::Refused(session_error(action, e)));
                }
                // Not sent (the lines made here are always fit to send): nft -f then.
                Some(Err(_)) | None => {}
            }
            return Ok(self.oneshot(action, &txn.script())?);
        }
        let script = txn.script();
        if !self.include_ok || self.session().is_none() {
            return Ok(self.oneshot(action, &script)?);
        }
        let tmp = match TempScript::write(&script) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(driver = DRIVER, error = %e, "no temporary script; nft -f instead");
                return Ok(self.oneshot(action, &script)?);
            }
        };
        let line = format!("include \"{}\"", tmp.path);
        let timeout = self.timeout_for(script.len());
        match self.session_run(&line, timeout) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) if e.is_fatal() => Err(Failure::Broken(e)),
            Some(Err(SessionError::Refused(msg))) if msg.contains(&line) => {
                // The error is about the include itself (an error inside the file names
                // the file, not the include line): nft may not see our temporary
                // directory. Nothing was applied; nft -f reads the script from stdin.
                self.oneshot(action, &script)?;
                tracing::warn!(
                    driver = DRIVER,
                    error = %msg,
                    "nft -i cannot include a temporary file, nft -f works: long transactions use nft -f from now on"
                );
                self.include_ok = false;
                Ok(())
            }
            Some(Err(e @ SessionError::Refused(_))) => {
                Err(Failure::Refused(session_error(action, e)))
            }
            Some(Err(_)) | None => Ok(self.oneshot(action, &script)?),
        }
    }

    /// Read the table back; an absent table is an empty observation.
    pub(super) fn read_back(&mut self) -> Result<Observed, Failure> {
        const ACTION: &str = "read back table inet tern";
        let line = format!("list table {TABLE_FAMILY} {TABLE_NAME}");
        let timeout = self.timeout.saturating_mul(3);
        match self.session_run(&line, timeout) {
            // The listing is one line of JSON (a CLI built with readline may echo the
            // command before it).
            Some(Ok(out)) => {
                let json = out.lines().find(|l| l.starts_with('{')).unwrap_or(&out);
                return Ok(Observed::parse(json)?);
            }
            Some(Err(SessionError::Refused(msg))) if msg.contains("No such file or directory") => {
                return Ok(Observed::default());
            }
            Some(Err(e)) if e.is_fatal() => return Err(Failure::Broken(e)),
            Some(Err(e @ SessionError::Refused(_))) => {
                return Err(Failure::Refused(session_error(ACTION, e)));
            }
            Some(Err(_)) | None => {}
        }
        match self.exec.run(
            "nft",
            &["-j", "list", "table", TABLE_FAMILY, TABLE_NAME],
            None,
        ) {
            Ok(out) => Ok(Observed::parse(&out.stdout)?),
            Err(ExecError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(Observed::default())
            }
            Err(source) => Err(Failure::Refused(DataplaneError::Exec {
                driver: DRIVER,
                action: ACTION.into(),
                source,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_scripts_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempScript::write("add table inet x\n").expect("temp dir is writable");
        let dir_mode = std::fs::metadata(&t.dir).expect("dir").permissions().mode();
        let file_mode = std::fs::metadata(&t.file)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!((dir_mode & 0o777, file_mode & 0o777), (0o700, 0o600));
        assert_eq!(
            std::fs::read_to_string(&t.path).expect("readable"),
            "add table inet x\n"
        );
        let dir = t.dir.clone();
        drop(t);
        assert!(!dir.exists());
    }
}
