//! Golden tests of the BIRD renderer: every `tests/golden/bird/<case>/input.yaml` is
//! rendered (through the same path as `tern-agent render --what bird`) and compared
//! with `expected.cfg` beside it; a case that must fail has `expected.err` instead,
//! holding the error message. Every rendered configuration must also pass
//! `bird -p -c` (BIRD 2 parses it without running): BIRD is required here and in CI.
//!
//! The first lines of an input may set the render options:
//!
//! ```text
//! # node: kube-master        (required)
//! # router-id: hash          (optional: an IPv4 address or "hash")
//! ```
//!
//! `UPDATE_GOLDEN=1 cargo test -p tern-agent --test bird_golden` rewrites the expected
//! files; review the diff like code.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use tern_agent::calc::bird::{RenderOptions, RouterId};
use tern_agent::render::{RenderDataplane, What, render_offline};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/bird")
}

fn update() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `# key: value` lines at the top of an input.
fn directive<'a>(input: &'a str, key: &str) -> Option<&'a str> {
    input
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches('#').trim().split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// Run `bird -p -c` on a configuration; BIRD's complaint on failure.
fn bird_parse(config: &str) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let path = dir.path().join("bird.conf");
    std::fs::write(&path, config).context("writing the configuration")?;
    let out = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(&path)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run `bird` ({e}): BIRD 2 must be installed (Debian/Ubuntu package \
                 bird2) for this test, which checks every rendered configuration with \
                 `bird -p -c`"
            )
        })?;
    if !out.status.success() {
        bail!(
            "bird -p rejects the configuration: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

fn check_case(dir: &Path) -> Result<()> {
    let input = std::fs::read_to_string(dir.join("input.yaml")).context("reading input.yaml")?;
    let node =
        directive(&input, "node").ok_or_else(|| anyhow!("input.yaml has no `# node:` line"))?;
    let router_id: RouterId = match directive(&input, "router-id") {
        Some(r) => r.parse().map_err(|e: String| anyhow!("router-id: {e}"))?,
        None => RouterId::NodeAddress,
    };
    let opts = RenderOptions { router_id };
    let rendered = render_offline(&input, node, What::Bird, RenderDataplane::default(), &opts);

    let (file, actual) = match &rendered {
        Ok(text) => ("expected.cfg", text.clone()),
        Err(e) => ("expected.err", format!("{e:#}\n")),
    };
    let expected_path = dir.join(file);
    let other = dir.join(if rendered.is_ok() {
        "expected.err"
    } else {
        "expected.cfg"
    });
    if update() {
        std::fs::write(&expected_path, &actual).context("writing the golden file")?;
        if other.exists() {
            std::fs::remove_file(&other).context("removing the stale golden file")?;
        }
    } else {
        if other.exists() {
            bail!(
                "expected {} but the renderer gave {file}:\n{actual}",
                other.display()
            );
        }
        let expected = std::fs::read_to_string(&expected_path)
            .with_context(|| format!("reading {file} (UPDATE_GOLDEN=1 creates it)"))?;
        if expected != actual {
            bail!(
                "{file} differs (UPDATE_GOLDEN=1 rewrites it):\n{}",
                diff(&expected, &actual)
            );
        }
    }
    if let Ok(text) = &rendered {
        bird_parse(text)?;
    }
    Ok(())
}

/// The first differing lines, enough to see what changed.
fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let first = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let mut out = format!("first difference at line {}:\n", first + 1);
    for i in first..(first + 8) {
        let x = e.get(i).copied();
        let y = a.get(i).copied();
        if x.is_none() && y.is_none() {
            break;
        }
        out += &format!(
            "  expected: {}\n  actual:   {}\n",
            x.unwrap_or("<end>"),
            y.unwrap_or("<end>")
        );
    }
    out
}

#[test]
fn bird_golden() {
    let root = golden_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no golden cases under {}",
        root.display()
    );

    let failures: Vec<String> = cases
        .iter()
        .filter_map(|dir| {
            check_case(dir).err().map(|e| {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                format!("{}: {e:#}", name.unwrap_or_default())
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden case(s) failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn bird_is_installed() {
    // A separate test with a plain message, so that a machine without BIRD fails loudly.
    bird_parse("router id 192.0.2.1;\nprotocol device {}\n").expect("bird -p works");
}
