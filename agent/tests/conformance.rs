//! Conformance with Calico's confd: the shared checker
//! (`../shared/conformance/calico-confd/check.py`) runs `tern-agent render` on each of
//! Calico's golden cases and compares the semantics of the output with Calico's
//! (sessions and their attributes, router id, blackhole routes).
//!
//! A handful of cases cannot pass with a correct BIRD 2 renderer and today's checker
//! and model; they are listed in [`KNOWN`] with the reason, and for each the test
//! checks that the differences are exactly the ones that reason explains:
//!
//! - `NextHopInChannel`: BIRD 2 only accepts `next hop keep|self` inside the
//!   session's `ipv4 { }` / `ipv6 { }` channel (at protocol level it is a syntax
//!   error), and the checker only reads statements at the top of a protocol. The test
//!   renders the case and checks that the channel of that session has the expected
//!   `next hop` statement.
//! - `StepTwo`: a `step2/` case holds only the resources Calico applies on top of the
//!   case above it; on its own it lacks the node being rendered.
//!
//! The list is strict both ways: a case that fails without being listed fails the test,
//! and so does a listed case that passes (take it off the list).
//!
//! A second test runs the same (unmodified) checker on a copy of the corpus whose
//! step-wise inputs are composed with their base case: there only the `next hop` cases
//! may differ, and each of them must.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a case is allowed to fail, see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    NextHopInChannel,
    StepTwo,
}

const KNOWN: &[(&str, Known)] = &[
    ("explicit_peering/keepnexthop", Known::NextHopInChannel),
    (
        "explicit_peering/keepnexthop-global",
        Known::NextHopInChannel,
    ),
    ("next_hop_mode/global_peers", Known::NextHopInChannel),
    ("reachable_by/global_peers", Known::NextHopInChannel),
    ("next_hop_mode/route_reflectors", Known::NextHopInChannel),
    ("reachable_by/route_reflectors", Known::NextHopInChannel),
    ("explicit_peering/selectors/step2", Known::StepTwo),
    ("mesh/communities/step2", Known::StepTwo),
    ("mesh/static-routes/step2", Known::StepTwo),
    ("mesh/static-routes-exclude-node/step2", Known::StepTwo),
];

/// Cases of the corpus that check.py runs (66 minus 3 it skips).
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

/// The outcome of one checker run.
struct Report {
    passed: usize,
    failed: usize,
    skipped: usize,
    /// Failing case -> the FAIL line and its difference lines.
    failures: BTreeMap<String, Vec<String>>,
    output: String,
}

fn run_checker(check_py: &Path) -> Report {
    assert!(
        check_py.is_file(),
        "the conformance checker is missing at {} (the shared corpus sits next to the \
         repository, in ../shared/conformance/calico-confd)",
        check_py.display()
    );
    let out = Command::new("python3")
        .arg(check_py)
        .arg("--render")
        .arg(render_command())
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 for the conformance checker: {e}"));
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = output.lines().last().unwrap_or_default().to_string();
    let nums: Vec<usize> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(
        nums.len() == 3 && last.ends_with("skipped"),
        "unexpected last line from check.py: {last:?}\n{output}\n{stderr}"
    );

    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("FAIL ") {
            let case = rest.split(':').next().unwrap_or(rest).to_string();
            failures.insert(case.clone(), vec![line.to_string()]);
            current = Some(case);
        } else if line.starts_with("     ") {
            if let Some(case) = &current {
                failures
                    .entry(case.clone())
                    .or_default()
                    .push(line.trim().to_string());
            }
        } else {
            current = None;
        }
    }
    Report {
        passed: nums[0],
        failed: nums[1],
        skipped: nums[2],
        failures,
        output,
    }
}

/// Why `case` may fail in this run: on the adapted corpus (`adapted`), steps are
/// composed with their base and are no excuse.
fn known(case: &str, adapted: bool) -> Option<Known> {
    KNOWN
        .iter()
        .find(|(c, _)| *c == case)
        .map(|(_, k)| *k)
        .filter(|k| !(adapted && *k == Known::StepTwo))
}

/// `session <ip> port <port>: next_hop: expected '<mode>', got None` -> (ip, mode).
fn next_hop_diff(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("session ")?;
    let (ip, rest) = rest.split_once(" port ")?;
    let (_, rest) = rest.split_once(": next_hop: expected '")?;
    let (mode, tail) = rest.split_once('\'')?;
    (tail == ", got None" && (mode == "keep" || mode == "self"))
        .then(|| (ip.to_string(), mode.to_string()))
}

/// Render a case of the corpus (with check.py's blocks added) through the binary.
fn render_case(corpus: &Path, case: &str) -> String {
    let script = format!(
        "import sys; sys.path.insert(0, {dir:?}); import check, os; \
         print(check.input_with_blocks(os.path.join(check.CASES, {case:?})), end='')",
        dir = corpus.display().to_string(),
    );
    let input = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(input.status.success(), "building the input of {case}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("input.yaml");
    std::fs::write(&path, &input.stdout).expect("write input");
    let out = Command::new(env!("CARGO_BIN_EXE_tern-agent"))
        .args([
            "render",
            "--node",
            "kube-master",
            "--what",
            "bird",
            "--input",
        ])
        .arg(&path)
        .output()
        .expect("tern-agent runs");
    assert!(
        out.status.success(),
        "rendering {case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `next hop` statement inside the channel of the session to `ip`.
fn channel_next_hop(config: &str, ip: &str) -> Option<String> {
    let neighbor = format!("  neighbor {ip} ");
    let block = config
        .split("\nprotocol bgp ")
        .skip(1)
        .find(|b| b.contains(&neighbor))?;
    let block = block.split("\n}\n").next()?;
    let channel = block
        .split_once("\n  ipv4 {\n")
        .or_else(|| block.split_once("\n  ipv6 {\n"))?
        .1;
    channel
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("next hop ")?.strip_suffix(';'))
        .map(str::to_string)
}

/// Check that the failures of a run are exactly the known ones, each explained by its
/// reason; returns the number of failing cases. On the adapted corpus (`adapted`),
/// steps are no excuse.
fn check_failures(report: &Report, corpus_dir: &Path, adapted: bool) -> usize {
    let mut problems = Vec::new();
    for (case, _) in KNOWN {
        if known(case, adapted).is_some() && !report.failures.contains_key(*case) {
            problems.push(format!(
                "{case} is listed as a known failure but did not fail: take it off KNOWN"
            ));
        }
    }
    for (case, lines) in &report.failures {
        let Some(reason) = known(case, adapted) else {
            problems.push(format!("unexpected failure:\n  {}", lines.join("\n  ")));
            continue;
        };
        let head = &lines[0];
        let diffs = &lines[1..];
        match reason {
            Known::StepTwo => {
                if !head.contains("is not in the view") {
                    problems.push(format!("{case}: expected a missing node, got: {head}"));
                }
            }
            Known::NextHopInChannel => {
                let mut config = None;
                for d in diffs {
                    let Some((ip, mode)) = next_hop_diff(d) else {
                        problems.push(format!("{case}: difference not explained: {d}"));
                        continue;
                    };
                    let cfg = config.get_or_insert_with(|| render_case(corpus_dir, case));
                    let got = channel_next_hop(cfg, &ip);
                    if got.as_deref() != Some(mode.as_str()) {
                        problems.push(format!(
                            "{case}: session to {ip} should have `next hop {mode}` in its \
                             channel, has {got:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "conformance problems:\n{}\n\nchecker output:\n{}",
        problems.join("\n"),
        report.output
    );
    report.failures.len()
}

#[test]
fn calico_confd_conformance() {
    let corpus = corpus();
    let report = run_checker(&corpus.join("check.py"));
    let failing = check_failures(&report, &corpus, false);
    assert_eq!(report.failed, failing);
    assert_eq!(
        report.passed + report.failed,
        RUN_CASES,
        "{}",
        report.output
    );
    eprintln!(
        "calico-confd conformance: {} passed, {} failed (all explained), {} skipped",
        report.passed, report.failed, report.skipped
    );
}

/// Copy a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy file");
        }
    }
}

/// Kind and name of a YAML document, to tell which documents a later step replaces.
fn kind_and_name(doc: &str) -> Option<(String, String)> {
    let v: serde_yaml::Value = serde_yaml::from_str(doc).ok()?;
    let kind = v.get("kind")?.as_str()?.to_string();
    let name = v.get("metadata")?.get("name")?.as_str()?.to_string();
    Some((kind, name))
}

fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// A step's input as Calico's test sees it: the base case's resources, with those the
/// step applies replaced.
fn compose(base: &str, step: &str) -> String {
    let step_docs = documents(step);
    let replaced: Vec<(String, String)> =
        step_docs.iter().filter_map(|d| kind_and_name(d)).collect();
    let mut out: Vec<String> = documents(base)
        .into_iter()
        .filter(|d| kind_and_name(d).is_none_or(|k| !replaced.contains(&k)))
        .collect();
    out.extend(step_docs);
    out.join("---\n")
}

#[test]
fn calico_confd_conformance_stepwise() {
    let original = corpus();
    let dir = tempfile::tempdir().expect("temporary directory");
    let copy = dir.path().join("calico-confd");
    copy_tree(&original, &copy);
    // Each step is composed with its base case, which is left as it is.
    adapt_cases_bases_last(&copy.join("cases"));
    let report = run_checker(&copy.join("check.py"));
    let failing = check_failures(&report, &copy, true);
    assert_eq!(report.failed, failing);
    assert_eq!(
        report.passed + report.failed,
        RUN_CASES,
        "{}",
        report.output
    );
    eprintln!(
        "calico-confd conformance (steps composed): {} passed, {} failed (next hop in the \
         channel), {} skipped",
        report.passed, report.failed, report.skipped
    );
}

/// Adapt every case below `dir`: compose each step with its base.
fn adapt_cases_bases_last(dir: &Path) {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in &subdirs {
        adapt_cases_bases_last(sub);
    }
    let input = dir.join("input.yaml");
    if input.is_file() && dir.file_name().is_some_and(|n| n == "step2") {
        let text = std::fs::read_to_string(&input).expect("read input");
        let parent = dir.parent().expect("step2 has a base case");
        let base = std::fs::read_to_string(parent.join("input.yaml")).expect("base input");
        std::fs::write(&input, compose(&base, &text)).expect("write input");
    }
}
