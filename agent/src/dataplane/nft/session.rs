//! A long-running `nft -j -i` process: one input line in, one transaction out, without
//! paying for a process start per change, nor for the release of nft's netlink socket
//! (which, after a transaction that deleted anything, waits for an RCU grace period:
//! ~15 ms on every one-shot `nft -f` that removes a set element).
//!
//! ```text
//!  run(line) ─► writer thread ─► nft stdin   <line>\n<sentinel>\n
//!  answer    ◄─ reader thread ◄─ nft stdout and stderr, one pipe, in order:
//!                                <output of line>Error: syntax error, ...\n<sentinel>\n<carets>\n
//! ```
//!
//! - nft -i runs each input line as one batch, that is one kernel transaction: when any
//!   command of the line fails (in nft or in the kernel), nothing of the line is applied.
//!   Commands are joined with `; ` to form a line; a line may also `include` a file,
//!   whose commands join the line's batch.
//! - After each line the session sends a sentinel, a word nft cannot parse, with a
//!   nonce. nft answers it with a syntax error that echoes it; everything before that
//!   error is the line's own output, and the line failed when that output holds an
//!   `Error:` line. Nothing is sent before the previous answer is complete, so every
//!   answer belongs to exactly one line.
//! - A session that does not answer in time is killed, one that ends is reaped; either
//!   way [`SessionError::is_fatal`] says the caller needs a new session (or `nft -f`).
//!   Whether a line in flight was applied is then unknown: read the kernel back.
//! - nft -i keeps every line in its (libedit) history, so a session grows by roughly
//!   the size of what it was sent; callers replace it after a while
//!   ([`NftSession::lines`], [`NftSession::bytes_sent`]). `HOME` points at /dev/null, so
//!   no history file is read or written.
//! - Dropping the session kills nft and joins both threads.

use std::io::{PipeReader, Read, Write};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::exec::Exec;

/// More output than this for one line is treated as a broken session.
const MAX_ANSWER: usize = 256 << 20;
/// Error text kept from a refused line (nft echoes the whole line under an error).
const MAX_ERROR_LINES: usize = 16;
const MAX_ERROR_LINE_CHARS: usize = 300;

/// Why a line did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// nft refused the line (a syntax error, a missing object, the kernel said no):
    /// nothing of it was applied. The session stays usable.
    #[error("{0}")]
    Refused(String),
    /// The line was not sent: it would not be read as one line.
    #[error("not sent to nft -i: {0}")]
    BadLine(&'static str),
    /// nft -i could not be started.
    #[error("cannot start nft -i: {0}")]
    Start(#[source] std::io::Error),
    /// No complete answer in time; nft was killed.
    #[error("nft -i did not answer within {0:?} and was killed")]
    Timeout(Duration),
    /// nft -i ended (or was stopped before).
    #[error("nft -i ended{0}")]
    Ended(String),
    /// The answer did not look like one; nft was killed.
    #[error("nft -i: unexpected output: {0}")]
    Protocol(String),
}

impl SessionError {
    /// True when the session is gone (killed or ended): the caller needs a new one, and
    /// cannot tell whether the line in flight was applied.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SessionError::Refused(_) | SessionError::BadLine(_))
    }
}

/// A running `nft -j -i` (in the namespace of the [`Exec`] it was started with).
#[derive(Debug)]
pub struct NftSession {
    child: Child,
    pid: u32,
    /// To the writer thread; None once stopped.
    input: Option<Sender<Vec<u8>>>,
    /// From the reader thread: nft's output as it comes.
    output: Receiver<Vec<u8>>,
    threads: Vec<JoinHandle<()>>,
    /// Output received and not yet handed out.
    buf: Vec<u8>,
    /// `buf` before this offset holds no sentinel.
    scanned: usize,
    nonce: u64,
    lines: u64,
    answers: u64,
    bytes_sent: u64,
    stopped: bool,
    status: Option<ExitStatus>,
}

impl NftSession {
    /// Start `nft -j -i` where `exec` runs commands. nft reads its first line only
    /// when it is ready; a build of nft without the interactive CLI shows as
    /// [`SessionError::Ended`] on the first [`run`](Self::run).
    pub fn start(exec: &Exec) -> Result<NftSession, SessionError> {
        let (out_r, out_w) = std::io::pipe().map_err(SessionError::Start)?;
        let err_w = out_w.try_clone().map_err(SessionError::Start)?;
        let mut cmd = exec.command("nft", &["-j", "-i"]);
        cmd.env("HOME", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(out_w)
            .stderr(err_w);
        let spawned = cmd.spawn();
        // The command holds our copies of the pipe's write end: without them the
        // reader sees the end of the output when nft ends.
        drop(cmd);
        let mut child = spawned.map_err(SessionError::Start)?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>();
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
        let mut session = NftSession {
            child,
            pid,
            input: Some(in_tx),
            output: out_rx,
            threads: Vec::with_capacity(2),
            buf: Vec::new(),
            scanned: 0,
            nonce: rand::random::<u64>(),
            lines: 0,
            answers: 0,
            bytes_sent: 0,
            stopped: false,
            status: None,
        };
        // From here on, dropping `session` kills nft and joins what was started.
        let Some(stdin) = stdin else {
            return Err(SessionError::Start(std::io::Error::other(
                "no pipe to nft's input",
            )));
        };
        let writer = thread::Builder::new()
            .name("nft-session-in".into())
            .spawn(move || write_loop(stdin, in_rx))
            .map_err(SessionError::Start)?;
        session.threads.push(writer);
        let reader = thread::Builder::new()
            .name("nft-session-out".into())
            .spawn(move || read_loop(out_r, out_tx))
            .map_err(SessionError::Start)?;
        session.threads.push(reader);
        tracing::debug!(pid, "nft -i session started");
        Ok(session)
    }

    /// The process id of nft (of `ip netns exec`, which becomes nft).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lines sent so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Lines answered so far (run or refused by nft).
    pub fn answers(&self) -> u64 {
        self.answers
    }

    /// Bytes sent so far (lines and sentinels).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// False once the session was killed or has ended.
    pub fn is_running(&self) -> bool {
        !self.stopped
    }

    /// Run one line (one transaction, or one listing) and return its output. Errors:
    /// [`SessionError::Refused`] when nft reported an error for the line (nothing of it
    /// applied); a fatal error when the session broke (see [`SessionError::is_fatal`]).
    pub fn run(&mut self, line: &str, timeout: Duration) -> Result<String, SessionError> {
        check_line(line)?;
        if self.stopped {
            return Err(SessionError::Ended(self.ended_detail("")));
        }
        self.lines += 1;
        let token = format!("tern-sync-{:016x}-{}", self.nonce, self.lines);
        let mut msg = Vec::with_capacity(line.len() + token.len() + 2);
        msg.extend_from_slice(line.as_bytes());
        msg.push(b'\n');
        msg.extend_from_slice(token.as_bytes());
        msg.push(b'\n');
        self.bytes_sent += msg.len() as u64;
        let sent = self.input.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if !sent {
            self.stop();
            return Err(SessionError::Ended(self.ended_detail("")));
        }
        // None: too far to represent, so no deadline.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match find_answer(&self.buf, self.scanned, token.as_bytes()) {
                Scan::Found { output_end, end } => {
                    let out = String::from_utf8_lossy(&self.buf[..output_end]).into_owned();
                    self.buf.drain(..end);
                    self.scanned = 0;
                    self.answers += 1;
                    return if has_error(&out) {
                        Err(SessionError::Refused(summarize(&out)))
                    } else {
                        Ok(out)
                    };
                }
                Scan::Pending { resume } => self.scanned = resume,
                Scan::Bad(why) => {
                    self.stop();
                    return Err(SessionError::Protocol(why));
                }
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                self.stop();
                return Err(SessionError::Timeout(timeout));
            }
            match self.output.recv_timeout(left) {
                Ok(chunk) => {
                    if self.buf.len() + chunk.len() > MAX_ANSWER {
                        self.stop();
                        return Err(SessionError::Protocol(format!(
                            "more than {MAX_ANSWER} bytes for one line"
                        )));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.stop();
                    return Err(SessionError::Timeout(timeout));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let out = String::from_utf8_lossy(&self.buf).into_owned();
                    self.stop();
                    return Err(SessionError::Ended(self.ended_detail(&out)));
                }
            }
        }
    }

    /// Kill nft (if it still runs), reap it and join the threads. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // The writer ends when its channel closes, or when the pipe breaks below.
        self.input = None;
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        // nft is gone, so is the pipe's last writer: the reader sees the end.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::debug!(pid = self.pid, status = ?self.status, "nft -i session stopped");
    }

    fn ended_detail(&self, output: &str) -> String {
        let mut s = match self.status {
            Some(st) => format!(" ({st})"),
            None => String::new(),
        };
        let out = summarize(output);
        if !out.is_empty() {
            s.push_str(": ");
            s.push_str(&out);
        }
        s
    }
}

impl Drop for NftSession {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(mut stdin: ChildStdin, input: Receiver<Vec<u8>>) {
    for msg in input {
        if stdin.write_all(&msg).and_then(|()| stdin.flush()).is_err() {
            break;
        }
    }
}

fn read_loop(mut out: PipeReader, tx: Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// A line nft -i reads as exactly one line and runs.
fn check_line(line: &str) -> Result<(), SessionError> {
    if line.trim().is_empty() {
        return Err(SessionError::BadLine("the line is empty"));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SessionError::BadLine(
            "the line holds a line break or another control character",
        ));
    }
    if line.trim_end().ends_with('\\') {
        return Err(SessionError::BadLine(
            "the line ends with a backslash, which nft -i reads as a continuation",
        ));
    }
    if matches!(line.trim(), "quit" | "exit") {
        return Err(SessionError::BadLine("the line would end the session"));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The line's output is `buf[..output_end]`; its answer ends at `end`.
    Found {
        output_end: usize,
        end: usize,
    },
    /// Not complete yet; scan again from `resume`.
    Pending {
        resume: usize,
    },
    Bad(String),
}

/// Find the end of the answer to the line followed by sentinel `token` in `buf`
/// (searching from `from`): nft's error about the sentinel, that is an `Error:` line,
/// the sentinel echoed on a line of its own, and a line of carets under it.
fn find_answer(buf: &[u8], from: usize, token: &[u8]) -> Scan {
    // Only line starts can hold the echo: walk from one to the next.
    let mut at = line_start_from(buf, from.min(buf.len()));
    while let Some(p) = at {
        let rest = &buf[p..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            // The last line is not complete yet.
            return Scan::Pending { resume: p };
        };
        if &rest[..len] != token {
            at = line_start_from(buf, p + len + 1);
            continue;
        }
        let after = p + len + 1;
        let Some(nl) = buf[after..].iter().position(|&b| b == b'\n') else {
            return Scan::Pending { resume: p };
        };
        let end = after + nl + 1;
        if p == 0 {
            return Scan::Bad("the sentinel was echoed without an error".into());
        }
        // The line before the echo: `Error: syntax error, ...` (perhaps glued to the
        // end of an output that did not end its last line).
        let line_start = buf[..p - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |k| k + 1);
        let err_line = &buf[line_start..p - 1];
        let Some(e) = rfind(err_line, b"Error:") else {
            return Scan::Bad(format!(
                "no error before the sentinel: {}",
                String::from_utf8_lossy(err_line)
            ));
        };
        let prefix = &err_line[..e];
        // A location prefix (`<cmdline>:1:1-20: `) belongs to the error; anything
        // else is output of the line that did not end with a line break.
        let glued = prefix
            .iter()
            .any(|b| matches!(b, b'{' | b'}' | b'"' | b']'));
        let output_end = if glued { line_start + e } else { line_start };
        return Scan::Found { output_end, end };
    }
    Scan::Pending { resume: buf.len() }
}

/// The first line start at or after `from` (0, or just after a line break), if the
/// buffer reaches it.
fn line_start_from(buf: &[u8], from: usize) -> Option<usize> {
    if from == 0 {
        return Some(0);
    }
    let k = buf.get(from - 1..)?.iter().position(|&b| b == b'\n')?;
    Some(from + k).filter(|&q| q <= buf.len())
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// True when nft reported an error: a line `Error: ...`, or `<where>: Error: ...` for
/// an error in an included file. JSON output is one line starting with `{`.
fn has_error(out: &str) -> bool {
    out.lines()
        .any(|l| !l.starts_with('{') && (l.starts_with("Error:") || l.contains(": Error:")))
}

/// nft's error text, bounded: nft echoes the offending line (which may be long) with a
/// line of carets under it.
fn summarize(out: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for l in out.trim_end().lines().take(MAX_ERROR_LINES) {
        if l.chars().count() > MAX_ERROR_LINE_CHARS {
            let cut: String = l.chars().take(MAX_ERROR_LINE_CHARS).collect();
            lines.push(format!("{cut}..."));
        } else {
            lines.push(l.to_string());
        }
    }
    if out.trim_end().lines().count() > MAX_ERROR_LINES {
        lines.push("...".into());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"tern-sync-00000000000000ab-7";

    fn answer(output: &str) -> Vec<u8> {
        let mut b = output.as_bytes().to_vec();
        b.extend_from_slice(b"Error: syntax error, unexpected newline, expecting string\n");
        b.extend_from_slice(TOKEN);
        b.extend_from_slice(b"\n                               ^\n");
        b
    }

    #[test]
    fn finds_the_answer_after_any_output() {
        for out in [
            "",
            "{\"nftables\": []}\n",
            "Error: No such file or directory\nlist table inet tern\n                ^^^^\n",
        ] {
            let mut b = answer(out);
            b.extend_from_slice(b"next");
            let n = b.len() - 4;
            assert_eq!(
                find_answer(&b, 0, TOKEN),
                Scan::Found {
                    output_end: out.len(),
                    end: n
                },
                "{out:?}"
            );
        }
        // Output without a final line break.
        let b = answer("{\"nftables\": []}");
        assert_eq!(
            find_answer(&b, 0, TOKEN),
            Scan::Found {
                output_end: "{\"nftables\": []}".len(),
                end: b.len()
            }
        );
        // A location prefix belongs to the error.
        let mut b = b"<cmdline>:1:1-28: Error: syntax error\n".to_vec();
        b.extend_from_slice(TOKEN);
        b.extend_from_slice(b"\n^^^\n");
        assert_eq!(
            find_answer(&b, 0, TOKEN),
            Scan::Found {
                output_end: 0,
                end: b.len()
            }
        );
    }

    #[test]
    fn waits_for_a_complete_answer() {
        let b = answer("some output\n");
        for cut in 0..b.len() {
            match find_answer(&b[..cut], 0, TOKEN) {
                Scan::Pending { resume } => assert!(resume <= cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Resuming from where the last scan stopped finds the same answer.
        let cut = b.len() - 3;
        let Scan::Pending { resume } = find_answer(&b[..cut], 0, TOKEN) else {
            panic!("pending expected");
        };
        assert!(matches!(
            find_answer(&b, resume, TOKEN),
            Scan::Found { end, .. } if end == b.len()
        ));
    }

    #[test]
    fn answers_arriving_in_pieces_are_found_once_whole() {
        let out = "{\"nftables\": []}\nWarning: x\n";
        let b = answer(out);
        for piece in [1, 2, 7, 64] {
            let mut resume = 0;
            let mut found = None;
            for end in (piece..b.len() + piece).step_by(piece) {
                let end = end.min(b.len());
                match find_answer(&b[..end], resume, TOKEN) {
                    Scan::Pending { resume: r } => {
                        assert!(r >= resume && r <= end, "{r} {resume} {end}");
                        resume = r;
                    }
                    Scan::Found { output_end, end: e } => {
                        assert_eq!(end, b.len(), "found before the answer was whole");
                        found = Some((output_end, e));
                    }
                    Scan::Bad(why) => panic!("{why}"),
                }
            }
            assert_eq!(found, Some((out.len(), b.len())), "pieces of {piece}");
        }
    }

    #[test]
    fn the_token_elsewhere_is_not_an_answer() {
        // Inside a longer word, or echoed inside an error about another line.
        let mut b = b"xtern-sync-00000000000000ab-7\n".to_vec();
        b.extend_from_slice(b"list tern-sync-00000000000000ab-7 x\n");
        b.extend_from_slice(b"tern-sync-00000000000000ab-71\n");
        assert!(matches!(find_answer(&b, 0, TOKEN), Scan::Pending { .. }));
        // Echoed without an error before it: the session is not speaking our protocol.
        let mut b = b"some output\n".to_vec();
        b.extend_from_slice(TOKEN);
        b.extend_from_slice(b"\n^\n");
        assert!(matches!(find_answer(&b, 0, TOKEN), Scan::Bad(_)));
    }

    #[test]
    fn errors_are_recognised_and_bounded() {
        assert!(has_error("Error: No such file or directory\n"));
        assert!(has_error(
            "/tmp/x/txn.nft:3:1-5: Error: Could not process rule\n"
        ));
        assert!(!has_error("{\"comment\": \"Error: not ours\"}\n"));
        assert!(!has_error(""));
        let long = format!("Error: x\n{}\n{}\n", "a".repeat(5000), "^".repeat(5000));
        let s = summarize(&long);
        assert!(s.len() < 1000, "{}", s.len());
        assert!(s.starts_with("Error: x\n"));
        let many = "Error: y\n".repeat(100);
        assert_eq!(summarize(&many).lines().count(), MAX_ERROR_LINES + 1);
    }

    #[test]
    fn lines_that_would_not_be_one_line_are_refused() {
        for bad in ["", "  ", "a\nb", "a\rb", "add x \\", "quit", " exit "] {
            assert!(
                matches!(check_line(bad), Err(SessionError::BadLine(_))),
                "{bad:?}"
            );
        }
        assert!(check_line("add table inet t; add set inet t s { type ipv4_addr; }").is_ok());
        assert!(check_line("add\ttable inet t").is_ok());
    }
}
