//! The BIRD manager against real BIRD 2 in throwaway network namespaces: no reload for
//! an unchanged configuration (also while BIRD's printed boot time moves, and after an
//! agent restart right after a reload), reload of a changed one and of one BIRD does
//! not run although the live file holds it, a rejected one never installed, 0600
//! files, restart of a BIRD killed by hand, take-over of a running BIRD without a
//! restart, external mode, and session state between two real BIRDs (Established, and
//! not established with mismatched passwords). Every test removes its namespaces,
//! processes and files and checks that nothing is left.
//!
//! Needs root and BIRD 2 (`bird`, `birdc`): fails loudly without them, never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tern::proto::{BgpSession, BgpStatus};
use tern_agent::bird::{
    ApplyOutcome, BirdError, BirdManager, BirdMode, BirdOptions, ReloadReason, cleanup,
    live_file_text, parse,
};
use tern_agent::exec::Exec;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace that is deleted, with every process inside, on drop (also when
/// the test panics).
struct Ns {
    name: String,
}

impl Ns {
    fn new() -> Result<Ns> {
        let uid = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_default();
        ensure!(
            uid == "0",
            "these tests need root (uid {uid}); run them as root"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tern-t-bird{}-{n}", std::process::id());
        sh("ip", &["netns", "add", &name])?;
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    fn exec(&self) -> Exec {
        Exec::in_netns(self.name.clone())
    }

    fn pids(&self) -> Vec<u32> {
        sh("ip", &["netns", "pids", &self.name])
            .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = sh("kill", &["-9", &pid.to_string()]);
        }
        if let Err(e) = sh("ip", &["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e:#}", self.name);
        }
    }
}

fn netns_exists(name: &str) -> bool {
    sh("ip", &["netns", "list"])
        .map(|l| l.lines().any(|x| x.split_whitespace().next() == Some(name)))
        .unwrap_or(false)
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|s| s != "Z" && s != "X")
}

/// Processes whose command line mentions `needle` (our temp dir): none may be left.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn options(ns: &Ns, dir: &Path, mode: BirdMode) -> BirdOptions {
    let mut o = BirdOptions::in_dir(dir, mode);
    o.exec = ns.exec();
    o.restart_backoff = Duration::from_millis(200);
    o.restart_backoff_max = Duration::from_secs(2);
    o
}

/// A small valid configuration: router id, device and kernel protocols (the kernel one
/// exports nothing), a BGP template with short timers, and `sessions`.
fn config(router_id: &str, sessions: &str) -> String {
    format!(
        "router id {router_id};\n\
         log stderr all;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{ ipv4 {{ import none; export none; }}; }}\n\
         template bgp tern_bgp {{\n  local as 64512;\n  ipv4 {{ import all; export none; }};\n  \
         connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n}}\n\
         {sessions}"
    )
}

fn bgp(name: &str, neighbor: &str, extra: &str) -> String {
    format!("protocol bgp {name} from tern_bgp {{\n  neighbor {neighbor} as 64512;\n{extra}}}\n")
}

/// BIRD's own `show status`, read around the manager.
fn bird_status(ns: &Ns, socket: &Path) -> Result<parse::BirdStatus> {
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "birdc",
            "-s",
            socket.to_str().context("socket path")?,
            "show",
            "status",
        ],
    )?;
    Ok(parse::parse_status(&out))
}

fn session<'a>(s: &'a BgpStatus, name: &str) -> Option<&'a BgpSession> {
    s.sessions.iter().find(|x| x.name == name)
}

fn mode_of(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Stop, clean up, drop the namespace, and check nothing is left.
fn teardown(m: BirdManager, ns: Ns, dir: tempfile::TempDir) -> Result<()> {
    let opts = m.options().clone();
    let pid = m.pid();
    m.stop()?;
    if let Some(pid) = pid {
        ensure!(!alive(pid), "BIRD {pid} still runs after stop");
    }
    ensure!(!opts.socket_path.exists(), "socket left after stop");
    let report = cleanup(&opts)?;
    ensure!(
        files_in(dir.path())?.is_empty(),
        "files left after cleanup: {:?} (removed {:?})",
        files_in(dir.path())?,
        report.removed
    );
    ensure!(ns.pids().is_empty(), "processes left in {}", ns.name);
    let name = ns.name.clone();
    drop(ns);
    ensure!(!netns_exists(&name), "namespace {name} left");
    let needle = dir.path().display().to_string();
    ensure!(
        processes_mentioning(&needle).is_empty(),
        "processes mentioning {needle} left"
    );
    Ok(())
}

#[test]
fn reloads_changes_only_and_never_installs_a_rejected_config() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::Supervised);
    let live = opts.config_path.clone();
    let socket = opts.socket_path.clone();
    let mut m = BirdManager::new(opts.clone())?;
    ensure!(m.pid().is_none() && !m.stats().adopted, "nothing runs yet");

    let cfg1 = config("10.0.0.1", &bgp("Global_192_0_2_1", "192.0.2.1", ""));
    let out = m.apply(&cfg1)?;
    ensure!(
        matches!(out, ApplyOutcome::Started { pid: Some(_), .. }),
        "{out:?}"
    );
    let pid = m.pid().context("pid")?;
    ensure!(
        mode_of(&live)? == 0o600,
        "live file mode {:o}",
        mode_of(&live)?
    );
    ensure!(std::fs::read_to_string(&live)? == live_file_text(&cfg1));
    ensure!(!opts.staging_path().exists(), "staging file left");

    let st = m.status()?;
    ensure!(
        st.state == "running" && !st.bird_version.is_empty(),
        "{st:?}"
    );
    let g = session(&st, "Global_192_0_2_1").context("global session")?;
    ensure!(
        g.peer_address == "192.0.2.1"
            && g.peer_type == "global"
            && g.family == 4
            && g.state == "start",
        "{g:?}"
    );

    // Unchanged: no reload, BIRD's last reconfiguration stays.
    let before = bird_status(&ns, &socket)?;
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..3 {
        let out = m.apply(&cfg1)?;
        ensure!(out == ApplyOutcome::Unchanged, "{out:?}");
    }
    ensure!(m.reloads() == 0);
    let t = Instant::now();
    m.apply(&cfg1)?;
    let unchanged_took = t.elapsed();
    ensure!(
        bird_status(&ns, &socket)?.last_reconfiguration == before.last_reconfiguration,
        "BIRD was reconfigured for an unchanged config"
    );

    // Changed: installed and reloaded, the new session appears.
    let cfg2 = format!("{cfg1}{}", bgp("Node_192_0_2_2", "192.0.2.2", ""));
    let out = m.apply(&cfg2)?;
    let ApplyOutcome::Reloaded { took, reply } = &out else {
        bail!("expected a reload, got {out:?}");
    };
    ensure!(reply == "Reconfigured" || reply == "Reconfiguration in progress");
    eprintln!("reload took {took:?}; unchanged apply took {unchanged_took:?}");
    ensure!(m.reloads() == 1 && m.pid() == Some(pid));
    ensure!(m.stats().reload_reasons == [(ReloadReason::ConfigChanged, 1)].into());
    let st = m.status()?;
    let n = session(&st, "Node_192_0_2_2").context("new session after reload")?;
    ensure!(n.peer_type == "node specific" && n.peer_address == "192.0.2.2");
    let after_reload = bird_status(&ns, &socket)?;
    ensure!(after_reload.last_reconfiguration != before.last_reconfiguration);
    ensure!(m.apply(&cfg2)? == ApplyOutcome::Unchanged);

    // Rejected: error with BIRD's message, no secret; live file and BIRD keep cfg2.
    let cfg3 = format!(
        "{cfg2}protocol bgp Node_192_0_2_3 from tern_bgp {{\n  neighbor 192.0.2.3 as 64512;\n  \
         password \"topsecret-pw\";\n  no_such_option;\n}}\n"
    );
    let err = m
        .apply(&cfg3)
        .err()
        .context("an invalid config was accepted")?;
    let text = err.to_string();
    ensure!(matches!(err, BirdError::Rejected { .. }), "{err:?}");
    ensure!(
        text.contains("syntax error"),
        "BIRD's message missing: {text}"
    );
    ensure!(
        !text.contains("topsecret-pw") && !text.contains("Node_192_0_2_2"),
        "{text}"
    );
    ensure!(
        std::fs::read_to_string(&live)? == live_file_text(&cfg2),
        "live file changed"
    );
    ensure!(!opts.staging_path().exists(), "staging file left");
    ensure!(m.pid() == Some(pid) && alive(pid));
    ensure!(bird_status(&ns, &socket)?.last_reconfiguration == after_reload.last_reconfiguration);
    let st = m.status()?;
    ensure!(session(&st, "Node_192_0_2_3").is_none());
    ensure!(session(&st, "Node_192_0_2_2").is_some());
    ensure!(st.error.contains("rejected") && !st.error.contains("topsecret-pw"));
    ensure!(m.stats().rejected == 1);

    // Back to the good one: nothing to do, and the error clears.
    ensure!(m.apply(&cfg2)? == ApplyOutcome::Unchanged);
    ensure!(m.status()?.error.is_empty());

    // Someone loosened the file mode: repaired without a reload.
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o644))?;
    ensure!(m.apply(&cfg2)? == ApplyOutcome::Unchanged);
    ensure!(mode_of(&live)? == 0o600);
    ensure!(m.reloads() == 1);

    teardown(m, ns, dir)
}

/// The spurious reload of issue 13. BIRD prints its boot time anew for every `show
/// status`, from its real-time clock read at that moment minus its monotonic uptime, so
/// two answers of one BIRD may differ; with microseconds (`timeformat base iso long
/// us`) they nearly always do, which makes the case that the default milliseconds hit
/// now and then (a boot time close below a millisecond boundary) happen on every apply.
/// An identical configuration is still never reloaded: after each reload, and after an
/// agent restart that adopts BIRD right after a reload.
#[test]
fn an_identical_config_is_never_reloaded_while_bird_runs_it() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::Supervised);
    let socket = opts.socket_path.clone();
    let cfg = |revision: u32| {
        format!(
            "timeformat base iso long us;\n{}# revision {revision}\n",
            config("10.0.0.6", &bgp("Global_192_0_2_1", "192.0.2.1", ""))
        )
    };
    let mut m = BirdManager::new(opts.clone())?;
    ensure!(matches!(m.apply(&cfg(0))?, ApplyOutcome::Started { .. }));
    let mut boots = std::collections::BTreeSet::new();
    for revision in 1..=10 {
        let out = m.apply(&cfg(revision))?;
        ensure!(matches!(out, ApplyOutcome::Reloaded { .. }), "{out:?}");
        for again in 0..3 {
            boots.insert(bird_status(&ns, &socket)?.last_reboot);
            let out = m.apply(&cfg(revision))?;
            ensure!(
                out == ApplyOutcome::Unchanged,
                "revision {revision}, apply {again} of the same file: {out:?}"
            );
        }
    }
    eprintln!(
        "BIRD printed {} different boot times: {boots:?}",
        boots.len()
    );
    ensure!(m.reloads() == 10, "reloads {}", m.reloads());

    // The agent restarts right after a reload and adopts BIRD: nothing to reload.
    ensure!(matches!(m.apply(&cfg(11))?, ApplyOutcome::Reloaded { .. }));
    m.detach();
    let mut m2 = BirdManager::new(opts)?;
    ensure!(m2.stats().adopted);
    let out = m2.apply(&cfg(11))?;
    ensure!(out == ApplyOutcome::Unchanged, "after adoption: {out:?}");
    ensure!(m2.reloads() == 0);
    teardown(m2, ns, dir)
}

/// The reloads an equal live file must not hide: a BIRD that the supervisor restarted
/// while an older file was live, and a reload that never happened (the agent stopped
/// between installing the file and `configure`, and the next agent adopts BIRD).
#[test]
fn bird_running_an_older_file_is_reloaded() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::Supervised);
    let live = opts.config_path.clone();
    let socket = opts.socket_path.clone();
    let cfg1 = config("10.0.0.7", &bgp("Global_192_0_2_1", "192.0.2.1", ""));
    let cfg2 = format!("{cfg1}{}", bgp("Node_192_0_2_2", "192.0.2.2", ""));
    let cfg3 = format!("{cfg2}{}", bgp("Node_192_0_2_3", "192.0.2.3", ""));
    let mut m = BirdManager::new(opts.clone())?;
    m.apply(&cfg1)?;
    ensure!(matches!(m.apply(&cfg2)?, ApplyOutcome::Reloaded { .. }));
    let reasons = m.stats().reload_reasons;
    ensure!(
        reasons == [(ReloadReason::ConfigChanged, 1)].into(),
        "{reasons:?}"
    );

    // BIRD dies while the older file is live and the supervisor restarts it from that
    // file; then the file is cfg2's again, as the manager left it.
    let pid = m.pid().context("pid")?;
    std::fs::write(&live, live_file_text(&cfg1))?;
    sh("kill", &["-9", &pid.to_string()])?;
    wait_for("BIRD restarted", Duration::from_secs(5), || {
        m.pid()
            .filter(|p| *p != pid && alive(*p))
            .filter(|_| bird_status(&ns, &socket).is_ok())
    })?;
    std::fs::write(&live, live_file_text(&cfg2))?;
    ensure!(session(&m.status()?, "Node_192_0_2_2").is_none());
    let out = m.apply(&cfg2)?;
    ensure!(matches!(out, ApplyOutcome::Reloaded { .. }), "{out:?}");
    ensure!(session(&m.status()?, "Node_192_0_2_2").is_some());
    ensure!(m.apply(&cfg2)? == ApplyOutcome::Unchanged);

    // cfg3 is installed, but the agent stops before it reloads BIRD.
    std::fs::write(&live, live_file_text(&cfg3))?;
    m.detach();
    let mut m2 = BirdManager::new(opts)?;
    ensure!(m2.stats().adopted);
    let out = m2.apply(&cfg3)?;
    ensure!(matches!(out, ApplyOutcome::Reloaded { .. }), "{out:?}");
    ensure!(session(&m2.status()?, "Node_192_0_2_3").is_some());
    ensure!(m2.apply(&cfg3)? == ApplyOutcome::Unchanged);
    let reasons = m2.stats().reload_reasons;
    ensure!(
        reasons == [(ReloadReason::BirdRunsOtherConfig, 1)].into(),
        "{reasons:?}"
    );
    teardown(m2, ns, dir)
}

#[test]
fn a_config_bird_refuses_to_load_is_rolled_back() -> Result<()> {
    // `bird -p` catches every error we know how to make, so a stand-in birdc refuses
    // `configure` the way BIRD does (banner, file, error, exit 1) and passes the rest on.
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let tools = tempfile::tempdir()?;
    let mut opts = options(&ns, dir.path(), BirdMode::Supervised);
    let fake = tools.path().join("birdc");
    let live = opts.config_path.display().to_string();
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do if [ \"$a\" = configure ]; then\n\
             echo 'BIRD 2.0.12 ready.'; echo 'Reading configuration from {live}'\n\
             echo '{live}:3:1 Cannot reconfigure: test refusal'; exit 1; fi; done\n\
             exec birdc \"$@\"\n"
        ),
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    opts.birdc_bin = fake.display().to_string();
    let mut m = BirdManager::new(opts.clone())?;
    let cfg1 = config("10.0.0.4", &bgp("Global_192_0_2_1", "192.0.2.1", ""));
    ensure!(matches!(m.apply(&cfg1)?, ApplyOutcome::Started { .. }));

    let cfg2 = format!("{cfg1}{}", bgp("Node_192_0_2_2", "192.0.2.2", ""));
    let err = m
        .apply(&cfg2)
        .err()
        .context("the refusal was not reported")?;
    ensure!(
        matches!(err, BirdError::ReloadFailed { answered: true, .. }),
        "{err:?}"
    );
    ensure!(err.to_string().contains("test refusal"), "{err}");
    ensure!(
        std::fs::read_to_string(&opts.config_path)? == live_file_text(&cfg1),
        "the refused file stayed live"
    );
    ensure!(mode_of(&opts.config_path)? == 0o600);
    ensure!(!opts.staging_path().exists());
    ensure!(session(&m.status()?, "Node_192_0_2_2").is_none());
    // BIRD still runs cfg1, and the live file says so again: nothing to do.
    ensure!(m.apply(&cfg1)? == ApplyOutcome::Unchanged);
    ensure!(m.reloads() == 0);

    // cleanup() on a live manager: BIRD stays down (the watcher is stopped first).
    let pid = m.pid().context("pid")?;
    let report = m.cleanup()?;
    ensure!(report.removed.contains(&opts.config_path), "{report:?}");
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !alive(pid) && ns.pids().is_empty(),
        "BIRD came back after cleanup"
    );
    let err = m
        .apply(&cfg1)
        .err()
        .context("a stopped manager started BIRD")?;
    ensure!(matches!(err, BirdError::NotRunning { .. }), "{err:?}");
    ensure!(ns.pids().is_empty());
    std::fs::remove_file(&opts.config_path)?;
    teardown(m, ns, dir)
}

#[test]
fn restarts_a_killed_bird_and_takes_over_a_running_one() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::Supervised);
    let socket = opts.socket_path.clone();
    let cfg = config("10.0.0.2", &bgp("Global_192_0_2_1", "192.0.2.1", ""));

    let mut m1 = BirdManager::new(opts.clone())?;
    m1.apply(&cfg)?;
    let pid1 = m1.pid().context("pid")?;

    // Killed by hand: restarted and answering again within seconds.
    let t = Instant::now();
    sh("kill", &["-9", &pid1.to_string()])?;
    let pid2 = wait_for("BIRD restarted", Duration::from_secs(5), || {
        m1.pid()
            .filter(|p| *p != pid1 && alive(*p))
            .filter(|_| bird_status(&ns, &socket).is_ok())
    })?;
    eprintln!("BIRD killed by hand answered again after {:?}", t.elapsed());
    ensure!(m1.restarts() == 1, "restarts {}", m1.restarts());
    ensure!(m1.status()?.state == "running");
    // The restarted BIRD read the live file itself: nothing to reload.
    ensure!(m1.apply(&cfg)? == ApplyOutcome::Unchanged);
    ensure!(m1.reloads() == 0);

    // The agent goes away, BIRD stays; a new manager takes it over as it is.
    m1.detach();
    ensure!(alive(pid2), "BIRD died with its manager");
    let before = bird_status(&ns, &socket)?;
    let mut m2 = BirdManager::new(opts.clone())?;
    ensure!(
        m2.stats().adopted && m2.pid() == Some(pid2),
        "{:?}",
        m2.stats()
    );
    ensure!(m2.apply(&cfg)? == ApplyOutcome::Unchanged);
    ensure!(m2.reloads() == 0 && m2.pid() == Some(pid2) && alive(pid2));
    ensure!(bird_status(&ns, &socket)?.last_reconfiguration == before.last_reconfiguration);
    ensure!(bird_status(&ns, &socket)?.last_reboot == before.last_reboot);

    // A changed config is a reload of the adopted BIRD, not a restart.
    let cfg2 = format!("{cfg}{}", bgp("Mesh_192_0_2_9", "192.0.2.9", ""));
    ensure!(matches!(m2.apply(&cfg2)?, ApplyOutcome::Reloaded { .. }));
    ensure!(m2.pid() == Some(pid2) && m2.restarts() == 0);
    ensure!(session(&m2.status()?, "Mesh_192_0_2_9").is_some());

    // The adopted BIRD is supervised too.
    sh("kill", &["-9", &pid2.to_string()])?;
    let pid3 = wait_for("adopted BIRD restarted", Duration::from_secs(5), || {
        m2.pid()
            .filter(|p| *p != pid2 && alive(*p))
            .filter(|_| bird_status(&ns, &socket).is_ok())
    })?;
    ensure!(m2.restarts() == 1 && pid3 != pid2);
    ensure!(session(&m2.status()?, "Mesh_192_0_2_9").is_some());

    // stop() on an adopted BIRD (found by its pid file) terminates it too.
    m2.detach();
    let m3 = BirdManager::new(opts.clone())?;
    ensure!(
        m3.stats().adopted && m3.pid() == Some(pid3),
        "{:?}",
        m3.stats()
    );
    teardown(m3, ns, dir)
}

#[test]
fn external_bird_is_only_written_and_reloaded() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::External);
    let live = opts.config_path.clone();
    let socket = opts.socket_path.clone();
    let cfg = config("10.0.0.3", &bgp("Global_192_0_2_1", "192.0.2.1", ""));

    let mut m = BirdManager::new(opts.clone())?;
    // Nobody runs BIRD: the checked file is installed, the error says so, nothing starts.
    let err = m.apply(&cfg).err().context("external mode started BIRD")?;
    ensure!(matches!(err, BirdError::NotRunning { .. }), "{err:?}");
    ensure!(std::fs::read_to_string(&live)? == live_file_text(&cfg) && mode_of(&live)? == 0o600);
    ensure!(ns.pids().is_empty(), "external mode started a process");
    ensure!(m.status()?.state == "not running");

    // "Someone else" starts BIRD on our file.
    let mut bird = external_bird(&ns, &live, &socket)?;
    // It read the installed file at start: nothing to reload.
    ensure!(m.apply(&cfg)? == ApplyOutcome::Unchanged);
    let cfg2 = format!("{cfg}{}", bgp("Node_192_0_2_2", "192.0.2.2", ""));
    ensure!(matches!(m.apply(&cfg2)?, ApplyOutcome::Reloaded { .. }));
    ensure!(session(&m.status()?, "Node_192_0_2_2").is_some());
    ensure!(m.pid().is_none() && m.restarts() == 0);

    // stop() leaves someone else's BIRD alone, cleanup leaves its file alone.
    m.stop()?;
    ensure!(bird.try_wait()?.is_none(), "external BIRD was stopped");
    let report = cleanup(&opts)?;
    ensure!(report.removed.is_empty() && !report.stopped, "{report:?}");
    ensure!(std::fs::read_to_string(&live)? == live_file_text(&cfg2));

    sh("kill", &["-TERM", &bird.id().to_string()])?;
    bird.wait()?;
    std::fs::remove_file(&live)?;
    ensure!(
        files_in(dir.path())?.is_empty(),
        "{:?}",
        files_in(dir.path())?
    );
    let name = ns.name.clone();
    drop(ns);
    ensure!(!netns_exists(&name));
    Ok(())
}

/// An external BIRD that reads another file than ours: every apply says so, also once
/// our live file already holds the config (it is not what BIRD runs).
#[test]
fn external_bird_on_another_file_stays_an_error() -> Result<()> {
    let ns = Ns::new()?;
    let dir = tempfile::tempdir()?;
    let opts = options(&ns, dir.path(), BirdMode::External);
    let socket = opts.socket_path.clone();
    let other = dir.path().join("other.conf");
    std::fs::write(&other, config("10.0.0.4", ""))?;
    let mut bird = external_bird(&ns, &other, &socket)?;
    let cfg = config("10.0.0.3", &bgp("Global_192_0_2_1", "192.0.2.1", ""));
    let mut m = BirdManager::new(opts)?;
    for attempt in 0..3 {
        let err = m.apply(&cfg).err();
        ensure!(
            matches!(err, Some(BirdError::WrongConfigFile { .. })),
            "attempt {attempt}: {err:?}"
        );
    }
    sh("kill", &["-TERM", &bird.id().to_string()])?;
    bird.wait()?;
    Ok(())
}

/// A BIRD that "someone else" runs in `ns` on `config`, answering on `socket`.
fn external_bird(ns: &Ns, config: &std::path::Path, socket: &std::path::Path) -> Result<Child> {
    let bird = Command::new("ip")
        .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
        .arg(config)
        .arg("-s")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for("external BIRD", Duration::from_secs(5), || {
        bird_status(ns, socket).ok()
    })?;
    Ok(bird)
}

fn wait_session(
    m: &BirdManager,
    name: &str,
    timeout: Duration,
    want: impl Fn(&BgpSession) -> bool,
) -> Result<BgpSession> {
    let mut last = None;
    wait_for(&format!("session {name}"), timeout, || {
        let st = m.status().ok()?;
        let s = session(&st, name)?.clone();
        last = Some(s.clone());
        want(&s).then_some(s)
    })
    .with_context(|| format!("last seen: {last:?}"))
}

#[test]
fn sessions_between_two_real_birds() -> Result<()> {
    let a = Ns::new()?;
    let b = Ns::new()?;
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"])?;
    a.ip(&["addr", "add", "fd00:77::1/64", "dev", "va", "nodad"])?;
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "vb"])?;
    b.ip(&["addr", "add", "fd00:77::2/64", "dev", "vb", "nodad"])?;
    a.ip(&["link", "set", "va", "up"])?;
    b.ip(&["link", "set", "vb", "up"])?;
    let da = tempfile::tempdir()?;
    let db = tempfile::tempdir()?;

    let v6 = |name: &str, neighbor: &str, local_as: u32, peer_as: u32| {
        format!(
            "protocol bgp {name} {{\n  local as {local_as};\n  neighbor {neighbor} as {peer_as};\n  \
             ipv6 {{ import all; export none; }};\n  connect delay time 1;\n  connect retry time 2;\n}}\n"
        )
    };
    let cfg_a = |pw: &str| {
        config(
            "10.77.0.1",
            &format!(
                "{}{}",
                bgp("Mesh_10_77_0_2", "10.77.0.2", pw),
                v6("Global_fd00_77__2", "fd00:77::2", 64512, 65002)
            ),
        )
    };
    let cfg_b = |pw: &str| {
        config(
            "10.77.0.2",
            &format!(
                "{}{}",
                bgp(
                    "Mesh_10_77_0_1",
                    "10.77.0.1",
                    &format!("  passive on;\n{pw}")
                ),
                v6("Global_fd00_77__1", "fd00:77::1", 65002, 64512)
            ),
        )
    };

    let mut ma = BirdManager::new(options(&a, da.path(), BirdMode::Supervised))?;
    let mut mb = BirdManager::new(options(&b, db.path(), BirdMode::Supervised))?;
    ma.apply(&cfg_a(""))?;
    mb.apply(&cfg_b(""))?;

    let t = Instant::now();
    let mesh = wait_session(&ma, "Mesh_10_77_0_2", Duration::from_secs(30), |s| {
        s.info == "Established"
    })?;
    eprintln!("mesh session Established after {:?}", t.elapsed());
    ensure!(
        mesh.peer_address == "10.77.0.2"
            && mesh.peer_type == "node-to-node mesh"
            && mesh.state == "up"
            && mesh.family == 4
            && !mesh.since.is_empty(),
        "{mesh:?}"
    );
    let global = wait_session(&ma, "Global_fd00_77__2", Duration::from_secs(30), |s| {
        s.info == "Established"
    })?;
    ensure!(
        global.peer_address == "fd00:77::2" && global.peer_type == "global" && global.family == 6,
        "{global:?}"
    );
    let from_b = wait_session(&mb, "Mesh_10_77_0_1", Duration::from_secs(10), |s| {
        s.info == "Established"
    })?;
    ensure!(from_b.peer_address == "10.77.0.1");

    // Mismatched TCP-MD5 passwords: the session goes down and stays down.
    mb.apply(&cfg_b("  password \"right-pw\";\n"))?;
    ma.apply(&cfg_a("  password \"wrong-pw\";\n"))?;
    let down = wait_session(&ma, "Mesh_10_77_0_2", Duration::from_secs(15), |s| {
        s.info != "Established"
    })?;
    let watch_until = Instant::now() + Duration::from_secs(6);
    let mut seen = Vec::new();
    while Instant::now() < watch_until {
        let st = ma.status()?;
        let s = session(&st, "Mesh_10_77_0_2").context("mesh session")?;
        ensure!(
            s.info != "Established",
            "established with a wrong password: {s:?}"
        );
        ensure!(!s.info.is_empty() && s.state != "up", "{s:?}");
        seen.push(s.info.clone());
        std::thread::sleep(Duration::from_millis(300));
    }
    seen.dedup();
    eprintln!("wrong password: {down:?}; info seen: {seen:?}");
    // The IPv6 session is untouched by the reload of the other one.
    ensure!(session(&ma.status()?, "Global_fd00_77__2").is_some_and(|s| s.info == "Established"));
    let st = format!("{:?}{:?}", ma.status()?, mb.status()?);
    ensure!(
        !st.contains("right-pw") && !st.contains("wrong-pw"),
        "secret in status"
    );

    // The right password brings it back: it was the password.
    ma.apply(&cfg_a("  password \"right-pw\";\n"))?;
    wait_session(&ma, "Mesh_10_77_0_2", Duration::from_secs(30), |s| {
        s.info == "Established"
    })?;

    let (name_b, pid_b) = (b.name.clone(), mb.pid());
    teardown(ma, a, da)?;
    if let Some(p) = pid_b {
        ensure!(alive(p), "B's BIRD died with A");
    }
    teardown(mb, b, db)?;
    ensure!(!netns_exists(&name_b));
    Ok(())
}
