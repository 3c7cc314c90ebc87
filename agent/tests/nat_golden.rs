//! Golden files for the NAT rulesets: for every `tests/golden/nat/<case>/input.yaml`,
//! the nftables script (`expected.nft`) and the iptables-restore input
//! (`expected.iptables`) rendered for node `node-a`, as `tern-agent render --what nat`
//! prints them. `UPDATE_GOLDEN=1 cargo test -p tern-agent --test nat_golden` rewrites
//! the expected files; review the diff like code.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tern::view::View;
use tern_agent::calc::nat::desired;
use tern_agent::render::{RenderDataplane, render_text};

const NODE: &str = "node-a";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/nat")
}

fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Compare `got` with the file, or rewrite it; returns a failure description.
fn check(path: &Path, got: &str) -> anyhow::Result<Option<String>> {
    if update() {
        std::fs::write(path, got).with_context(|| format!("writing {}", path.display()))?;
        return Ok(None);
    }
    let want = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (UPDATE_GOLDEN=1 creates it)", path.display()))?;
    if want == got {
        return Ok(None);
    }
    let first = want
        .lines()
        .zip(got.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
    Ok(Some(format!(
        "{} differs from line {}:\n--- expected\n{}\n--- got\n{}",
        path.display(),
        first + 1,
        want.lines()
            .skip(first)
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
        got.lines()
            .skip(first)
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
    )))
}

#[test]
fn nat_rulesets_match_golden_files() -> anyhow::Result<()> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .context("reading tests/golden/nat")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    cases.sort();
    if cases.len() < 5 {
        bail!("expected the golden cases under {}", golden_dir().display());
    }
    let mut failures = Vec::new();
    for case in &cases {
        let input = std::fs::read_to_string(case.join("input.yaml"))?;
        let view =
            View::from_yaml(&input).with_context(|| format!("{}: input.yaml", case.display()))?;
        let state = desired(&view, NODE);
        for (file, dp) in [
            ("expected.nft", RenderDataplane::Nftables),
            ("expected.iptables", RenderDataplane::Iptables),
        ] {
            if let Some(f) = check(&case.join(file), &render_text(dp, &state))? {
                failures.push(f);
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} golden file(s) differ (UPDATE_GOLDEN=1 rewrites them):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// Every golden nftables script is accepted by `nft --check` when nft is installed
/// (it always is where the namespace tests run).
#[test]
fn golden_nft_scripts_parse() -> anyhow::Result<()> {
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("nft is not installed (apt-get install nftables)");
    }
    for entry in std::fs::read_dir(golden_dir())? {
        let path = entry?.path().join("expected.nft");
        if !path.is_file() {
            continue;
        }
        // --check parses and validates without committing; `delete table` of a table
        // that does not exist would fail the check, so the replace prefix is skipped.
        let script: String = std::fs::read_to_string(&path)?
            .lines()
            .filter(|l| !l.starts_with("delete table"))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = std::process::Command::new("nft")
            .args(["--check", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(script.as_bytes())?;
                }
                c.wait_with_output()
            })?;
        if !out.status.success() {
            bail!(
                "{}: nft --check: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}
