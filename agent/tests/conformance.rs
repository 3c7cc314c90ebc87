//! Conformance with Calico's confd: the shared checker
//! (`../shared/conformance/calico-confd/check.py`) runs `tern-agent render` on each of
//! Calico's golden cases and compares the semantics of the output with Calico's
//! (sessions and their attributes, router id, blackhole routes). Every case it runs
//! must pass; the checker itself composes `stepN` cases with their base case and reads
//! `next hop` inside BIRD 2's ipv4/ipv6 channels.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Cases of the corpus that check.py runs (66 minus 3 that need Kubernetes Services).
const RUN_CASES: usize = 63;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/calico-confd")
}

fn render_command() -> String {
    format!(
        "'{}' render --input {{input}} --node {{node}} {{extra}} --what bird",
        env!("CARGO_BIN_EXE_tern-agent")
    )
}

/// `N passed, M failed, K skipped` -> (N, M, K).
fn summary(last: &str) -> Option<(usize, usize, usize)> {
    let nums: Vec<usize> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums[..] {
        [p, f, s] if last.ends_with("skipped") => Some((p, f, s)),
        _ => None,
    }
}

#[test]
fn calico_confd_conformance() {
    let check_py = corpus().join("check.py");
    assert!(
        check_py.is_file(),
        "the conformance checker is missing at {} (the shared corpus sits next to the \
         repository, in ../shared/conformance/calico-confd)",
        check_py.display()
    );
    let out = Command::new("python3")
        .arg(&check_py)
        .arg("--render")
        .arg(render_command())
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 for the conformance checker: {e}"));
    let output = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = output.lines().last().unwrap_or_default();
    let Some((passed, failed, skipped)) = summary(last) else {
        panic!("unexpected last line from check.py: {last:?}\n{output}\n{stderr}");
    };
    let failures: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("FAIL ") || l.starts_with("     "))
        .collect();
    assert!(
        failed == 0 && failures.is_empty(),
        "{failed} conformance case(s) fail:\n{}\n\nchecker output:\n{output}\n{stderr}",
        failures.join("\n")
    );
    assert_eq!(
        passed, RUN_CASES,
        "the checker ran a different number of cases:\n{output}"
    );
    eprintln!("calico-confd conformance: {passed} passed, {failed} failed, {skipped} skipped");
}

#[test]
fn summary_line_is_read() {
    assert_eq!(summary("63 passed, 0 failed, 3 skipped"), Some((63, 0, 3)));
    assert_eq!(summary("63 passed, 0 failed"), None);
}
