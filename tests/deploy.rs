//! The deployment files under `deploy/` against the real product: every example
//! manifest passes tern's own parsing and validation (and renders a BIRD configuration
//! that BIRD accepts), the Kubernetes manifests are valid YAML of the expected shape,
//! and every flag and `TERN_*` variable that the manifests, the systemd units and the
//! environment files use exists in the binaries' `--help`.
//!
//! tern-controller and tern-agent belong to other packages of the workspace: the test
//! runs the ones the workspace build put next to ternctl (`target/debug`), and fails
//! saying how to build them when they are missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use tern::model::Resource;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// The files of a directory under deploy/ whose name ends with `ext`, sorted.
fn files(dir: &str, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(deploy(dir))
        .with_context(|| format!("reading deploy/{dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    out.sort();
    ensure!(!out.is_empty(), "no *{ext} file in deploy/{dir}");
    Ok(out)
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

// ------------------------------------------------------------------ binaries

/// A binary of the workspace: ternctl is this package's; the other two are found in
/// the same target directory.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let ternctl = PathBuf::from(env!("CARGO_BIN_EXE_ternctl"));
    if name == "ternctl" {
        return Ok(ternctl);
    }
    let dir = ternctl.parent().context("ternctl has no directory")?;
    let p = dir.join(name);
    ensure!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build -p tern-controller \
         -p tern-agent`, or run the whole suite: `cargo nextest run --workspace`)",
        p.display()
    );
    Ok(p)
}

/// `binary args... --help`.
fn help(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary(name)?)
        .args(args)
        .arg("--help")
        .output()
        .with_context(|| format!("running {name} {args:?} --help"))?;
    ensure!(
        out.status.success(),
        "{name} {args:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Words of `text` that start with `prefix` and go on with `allowed` characters.
fn words(text: &str, prefix: &str, allowed: fn(char) -> bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i + prefix.len()..];
        let len = tail.find(|c: char| !allowed(c)).unwrap_or(tail.len());
        // A word on its own: not the middle of another word (`X_TERN_Y`, `a--b`), and
        // starting with a letter (not a `-----` ruler).
        let starts_word = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            && tail.starts_with(|c: char| c.is_ascii_alphabetic());
        if starts_word && len > 0 {
            out.insert(
                format!("{prefix}{}", &tail[..len])
                    .trim_end_matches(['-', '_'])
                    .to_string(),
            );
        }
        rest = &tail[len..];
    }
    out
}

fn env_vars(text: &str) -> BTreeSet<String> {
    words(text, "TERN_", |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
    })
}

fn flags(text: &str) -> BTreeSet<String> {
    words(text, "--", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
}

/// What one binary (with its subcommand) accepts.
struct Cli {
    name: String,
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Cli {
    fn of(name: &str, sub: &[&str]) -> anyhow::Result<Cli> {
        let text = help(name, sub)?;
        Ok(Cli {
            name: format!("{name} {}", sub.join(" ")).trim().to_string(),
            flags: flags(&text),
            env: env_vars(&text),
        })
    }

    fn check_env(&self, var: &str, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.env.contains(var),
            "{what}: {var} is not a variable of `{}` (its --help lists {:?})",
            self.name,
            self.env
        );
        Ok(())
    }

    fn check_flag(&self, flag: &str, what: &str) -> anyhow::Result<()> {
        ensure!(
            self.flags.contains(flag),
            "{what}: {flag} is not a flag of `{}` (its --help lists {:?})",
            self.name,
            self.flags
        );
        Ok(())
    }
}

fn controller_cli() -> anyhow::Result<Cli> {
    Cli::of("tern-controller", &[])
}

fn agent_cli() -> anyhow::Result<Cli> {
    Cli::of("tern-agent", &["run"])
}

fn ternctl_cli() -> anyhow::Result<Cli> {
    Cli::of("ternctl", &[])
}

// ------------------------------------------------------------------ examples

/// Nodes added to every example when rendering, so that each renders sessions: two
/// racks, and the egress node of the SNAT example.
const EXTRA_NODES: &str = "
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: example-node-1, labels: {rack: rack1}}
spec: {bgp: {ipv4Address: 10.0.1.10/24}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: example-node-2, labels: {rack: rack2}}
spec: {bgp: {ipv4Address: 10.0.2.10/24}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: egress-1}
spec: {bgp: {ipv4Address: 10.0.3.10/24}}
";

fn parse_and_validate(path: &Path) -> anyhow::Result<Vec<Resource>> {
    let text = read(path)?;
    let docs = tern::manifest::parse_documents(&text)
        .with_context(|| format!("{}: tern does not parse it", path.display()))?;
    ensure!(!docs.is_empty(), "{}: no documents", path.display());
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, mut r) in docs.into_iter().enumerate() {
        r.normalize();
        if let Err(e) = tern::validate::validate(&r) {
            errors.push(format!(
                "document {} ({} {}): {e}",
                i + 1,
                r.kind(),
                r.metadata().name
            ));
        }
        out.push(r);
    }
    // The cross-object rule the API applies on writes: pools do not overlap.
    let pools: Vec<_> = out
        .iter()
        .filter_map(|r| match r {
            Resource::IPPool(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    for p in &pools {
        if let Err(e) = tern::validate::check_pool_overlap(p, &pools) {
            errors.push(format!("IPPool {}: {e}", p.metadata.name));
        }
    }
    ensure!(
        errors.is_empty(),
        "{}: rejected by tern's validation:\n  {}",
        path.display(),
        errors.join("\n  ")
    );
    Ok(out)
}

/// `bird -p -c FILE` on a rendered configuration.
fn bird_accepts(config: &str, what: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("bird.conf");
    std::fs::write(&f, config)?;
    let out = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(&f)
        .output()
        .context("running `bird -p` (install bird2: tests/run does)")?;
    ensure!(
        out.status.success(),
        "{what}: BIRD rejects the rendered configuration: {}{}\n{config}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn every_example_parses_validates_and_renders_a_config_bird_accepts() -> anyhow::Result<()> {
    let examples = files("examples", ".yaml")?;
    let names: BTreeSet<String> = examples
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "full-mesh.yaml",
        "route-reflectors.yaml",
        "rack-tor-peering.yaml",
        "service-advertisement.yaml",
        "nat-fixed-snat.yaml",
    ] {
        ensure!(names.contains(want), "deploy/examples/{want} is missing");
    }
    for path in &examples {
        let resources = parse_and_validate(path)?;
        let text = format!("{}{EXTRA_NODES}", read(path)?);
        let mut nodes: Vec<String> = tern::manifest::parse_documents(&text)?
            .iter()
            .filter(|r| matches!(r, Resource::Node(_)))
            .map(|r| r.metadata().name.clone())
            .collect();
        nodes.dedup();
        let opts = tern_agent::calc::bird::RenderOptions::default();
        for node in &nodes {
            let what = format!("{} for node {node}", path.display());
            let config = tern_agent::render::render_offline(
                &text,
                node,
                tern_agent::render::What::Bird,
                tern_agent::render::RenderDataplane::Nftables,
                &opts,
            )
            .with_context(|| format!("rendering BIRD: {what}"))?;
            bird_accepts(&config, &what)?;
            tern_agent::render::render_offline(
                &text,
                node,
                tern_agent::render::What::Nat,
                tern_agent::render::RenderDataplane::Nftables,
                &opts,
            )
            .with_context(|| format!("rendering NAT: {what}"))?;
        }
        eprintln!(
            "{}: {} resources valid, BIRD accepts the configuration of {nodes:?}",
            path.display(),
            resources.len()
        );
    }
    Ok(())
}

/// Each example does what its name says.
#[test]
fn examples_show_their_topology() -> anyhow::Result<()> {
    let render = |file: &str, node: &str, what| -> anyhow::Result<String> {
        let text = format!(
            "{}{EXTRA_NODES}",
            read(&deploy(&format!("examples/{file}")))?
        );
        tern_agent::render::render_offline(
            &text,
            node,
            what,
            tern_agent::render::RenderDataplane::Nftables,
            &tern_agent::calc::bird::RenderOptions::default(),
        )
    };
    use tern_agent::render::What::{Bird, Nat};

    let mesh = render("full-mesh.yaml", "example-node-1", Bird)?;
    ensure!(
        mesh.contains("protocol bgp Mesh_10_0_2_10"),
        "full mesh:\n{mesh}"
    );

    let client = render("route-reflectors.yaml", "example-node-1", Bird)?;
    ensure!(
        client.contains("Node_10_0_0_5") && client.contains("Node_10_0_0_6"),
        "a client peers with both reflectors:\n{client}"
    );
    ensure!(
        !client.contains("protocol bgp Mesh_"),
        "no mesh with reflectors:\n{client}"
    );
    let rr = render("route-reflectors.yaml", "rr-1", Bird)?;
    ensure!(
        rr.contains("rr client") && rr.contains("rr cluster id 244.0.0.1"),
        "a reflector reflects to its clients:\n{rr}"
    );

    let rack1 = render("rack-tor-peering.yaml", "example-node-1", Bird)?;
    ensure!(
        rack1.contains("neighbor 10.0.1.1 as 65101") && !rack1.contains("neighbor 10.0.2.1 "),
        "rack1 peers with its own switch only:\n{rack1}"
    );
    ensure!(rack1.contains("password \""), "with its password:\n{rack1}");

    let svc = render("service-advertisement.yaml", "example-node-1", Bird)?;
    for cidr in ["10.96.0.0/12", "203.0.113.0/26", "203.0.113.64/26"] {
        ensure!(svc.contains(cidr), "service CIDR {cidr} advertised:\n{svc}");
    }

    let egress = render("nat-fixed-snat.yaml", "egress-1", Nat)?;
    ensure!(
        egress.contains("snat") && egress.contains("198.51.100.7"),
        "egress-1 SNATs to 198.51.100.7:\n{egress}"
    );
    let other = render("nat-fixed-snat.yaml", "example-node-1", Nat)?;
    ensure!(
        other.contains("masquerade") && !other.contains("198.51.100.7"),
        "other nodes masquerade:\n{other}"
    );
    Ok(())
}

// ------------------------------------------------------------------ Kubernetes

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = read(path)?;
    tern::manifest::documents(&text).with_context(|| format!("{}: not valid YAML", path.display()))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(|v| v.as_str())
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(|v| v.as_array())
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// Check a container: its command is one of ours, its flags and TERN_* variables
/// exist, and `$(VAR)` references name variables defined before them.
fn check_container(c: &Value, what: &str, controller: &Cli, agent: &Cli) -> anyhow::Result<String> {
    let command: Vec<&str> = seq(c, &["command"])
        .into_iter()
        .chain(seq(c, &["args"]))
        .filter_map(|v| v.as_str())
        .collect();
    let cli = match command.as_slice() {
        ["tern-controller", ..] => controller,
        ["tern-agent", "run", ..] => agent,
        other => bail!("{what}: unexpected command {other:?}"),
    };
    for arg in &command {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = format!("--{}", flag.split('=').next().unwrap_or(flag));
            cli.check_flag(&flag, what)?;
        }
    }
    let mut defined = BTreeSet::new();
    for e in seq(c, &["env"]) {
        let name = str_at(e, &["name"]).with_context(|| format!("{what}: env without a name"))?;
        if name.starts_with("TERN_") {
            cli.check_env(name, what)?;
        }
        if let Some(value) = str_at(e, &["value"]) {
            let mut rest = value;
            while let Some(i) = rest.find("$(") {
                let tail = &rest[i + 2..];
                let end = tail
                    .find(')')
                    .with_context(|| format!("{what}: unclosed $( in {value}"))?;
                ensure!(
                    defined.contains(&tail[..end]),
                    "{what}: {name} refers to $({}) before it is defined",
                    &tail[..end]
                );
                rest = &tail[end..];
            }
        }
        defined.insert(name.to_string());
    }
    Ok(cli.name.clone())
}

#[test]
fn kubernetes_manifests_parse_and_use_real_flags() -> anyhow::Result<()> {
    let controller = controller_cli()?;
    let agent = agent_cli()?;
    let mut kinds = BTreeSet::new();
    let mut saw = BTreeSet::new();
    for path in files("kubernetes", ".yaml")? {
        for doc in yaml_documents(&path)? {
            let kind = str_at(&doc, &["kind"])
                .with_context(|| format!("{}: a document without kind", path.display()))?;
            let name = str_at(&doc, &["metadata", "name"]).unwrap_or("?");
            ensure!(
                str_at(&doc, &["apiVersion"]).is_some(),
                "{}: {kind} {name} has no apiVersion",
                path.display()
            );
            kinds.insert(format!("{kind}/{name}"));
            let what = format!("{} {kind}/{name}", path.display());
            match kind {
                "Deployment" | "DaemonSet" => {
                    let spec = at(&doc, &["spec", "template", "spec"])
                        .with_context(|| format!("{what}: no pod template"))?;
                    for c in seq(spec, &["containers"]) {
                        saw.insert(check_container(c, &what, &controller, &agent)?);
                    }
                    if kind == "Deployment" {
                        let replicas = at(&doc, &["spec", "replicas"]).and_then(|v| v.as_u64());
                        ensure!(
                            replicas.is_some_and(|r| r >= 2),
                            "{what}: the controller runs several replicas (replicas {replicas:?})"
                        );
                    } else {
                        ensure!(
                            at(spec, &["hostNetwork"]).and_then(|v| v.as_bool()) == Some(true),
                            "{what}: the agent needs hostNetwork"
                        );
                        let caps: Vec<&str> = seq(spec, &["containers"])
                            .into_iter()
                            .flat_map(|c| seq(c, &["securityContext", "capabilities", "add"]))
                            .filter_map(|v| v.as_str())
                            .collect();
                        ensure!(caps.contains(&"NET_ADMIN"), "{what}: NET_ADMIN ({caps:?})");
                    }
                }
                _ => {}
            }
        }
    }
    for want in [
        "Deployment/tern-controller",
        "Service/tern-controller",
        "DaemonSet/tern-agent",
        "Namespace/tern-system",
    ] {
        ensure!(
            kinds.contains(want),
            "deploy/kubernetes has no {want} ({kinds:?})"
        );
    }
    ensure!(
        saw.contains("tern-controller") && saw.contains("tern-agent run"),
        "containers for both binaries ({saw:?})"
    );
    Ok(())
}

// ------------------------------------------------------------------ systemd

/// `KEY=VALUE` lines of a unit (comments left out), in order.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(s: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    s.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_units_and_environment_files_use_real_variables() -> anyhow::Result<()> {
    let controller = controller_cli()?;
    let agent = agent_cli()?;

    // Environment files: every variable, set or commented out, is the binary's.
    for (file, cli) in [("controller.env", &controller), ("agent.env", &agent)] {
        let path = deploy(&format!("systemd/{file}"));
        let text = read(&path)?;
        let mut set = 0;
        for line in text.lines() {
            let l = line.trim().trim_start_matches('#').trim();
            if let Some((k, _)) = l.split_once('=')
                && k.starts_with("TERN_")
                && !k.contains(' ')
            {
                cli.check_env(k, &path.display().to_string())?;
                if !line.trim_start().starts_with('#') {
                    set += 1;
                }
            }
        }
        ensure!(set > 0, "{}: sets no variable", path.display());
    }

    for (unit, cli, env_file) in [
        (
            "tern-controller.service",
            &controller,
            "/etc/tern/controller.env",
        ),
        ("tern-agent.service", &agent, "/etc/tern/agent.env"),
    ] {
        let path = deploy(&format!("systemd/{unit}"));
        let s = unit_settings(&read(&path)?);
        let what = path.display().to_string();
        ensure!(
            setting(&s, "EnvironmentFile") == [env_file],
            "{what}: EnvironmentFile={env_file}"
        );
        let exec = setting(&s, "ExecStart");
        ensure!(exec.len() == 1, "{what}: one ExecStart ({exec:?})");
        let mut words = exec[0].split_whitespace();
        let bin = words.next().unwrap_or_default();
        let expected = cli.name.split(' ').next().unwrap_or_default();
        ensure!(
            bin.ends_with(&format!("/{expected}")),
            "{what}: ExecStart runs {bin}, expected {expected}"
        );
        for w in words {
            if w.starts_with("--") {
                cli.check_flag(w.split('=').next().unwrap_or(w), &what)?;
            }
        }
        for (k, v) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
        ] {
            ensure!(setting(&s, k) == [v], "{what}: {k}={v} (hardening)");
        }
    }
    let c = unit_settings(&read(&deploy("systemd/tern-controller.service"))?);
    ensure!(
        setting(&c, "CapabilityBoundingSet") == [""],
        "the controller needs no capability"
    );
    ensure!(
        setting(&c, "User").first().is_some_and(|u| *u != "root"),
        "the controller runs unprivileged"
    );
    let a = unit_settings(&read(&deploy("systemd/tern-agent.service"))?);
    let caps = setting(&a, "CapabilityBoundingSet").join(" ");
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"] {
        ensure!(caps.contains(cap), "the agent keeps {cap} ({caps})");
    }
    ensure!(
        !caps.contains("CAP_SYS_ADMIN"),
        "the agent is not CAP_SYS_ADMIN"
    );

    // BIRD run as a unit of its own serves the socket and file the agent uses.
    let b = read(&deploy("systemd/tern-bird.service"))?;
    ensure!(
        b.contains("-c /var/lib/tern/bird.conf") && b.contains("TERN_BIRD=external"),
        "tern-bird.service reads the agent's file and says how to use it"
    );
    let agent_env = read(&deploy("systemd/agent.env"))?;
    let bird_socket = setting(&unit_settings(&b), "ExecStart")
        .first()
        .and_then(|e| e.split(" -s ").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_string())
        .context("tern-bird.service: bird -s SOCKET")?;
    ensure!(
        agent_env.contains(&format!("TERN_BIRD_SOCKET={bird_socket}")),
        "agent.env tells how to point the agent at {bird_socket}"
    );
    Ok(())
}

// ------------------------------------------------------------------ everything else

/// Every TERN_* variable and every flag that any file under deploy/ mentions next to
/// a tern binary exists somewhere (READMEs and comments included). The lab's own
/// variables (TERN_LAB_*) are its own.
#[test]
fn every_variable_mentioned_under_deploy_exists() -> anyhow::Result<()> {
    let clis = [
        controller_cli()?,
        agent_cli()?,
        Cli::of("tern-agent", &["cleanup"])?,
        Cli::of("tern-agent", &["render"])?,
        ternctl_cli()?,
    ];
    let known: BTreeSet<&String> = clis.iter().flat_map(|c| c.env.iter()).collect();
    let mut stack = vec![repo().join("deploy")];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            for v in env_vars(&text) {
                if v.starts_with("TERN_LAB_") {
                    continue;
                }
                ensure!(
                    known.contains(&v),
                    "{}: {v} is no variable of tern-controller, tern-agent or ternctl",
                    p.display()
                );
                checked += 1;
            }
        }
    }
    ensure!(checked > 20, "only {checked} variables found under deploy/");
    Ok(())
}

#[test]
fn the_container_image_builds_both_binaries_with_the_agents_tools() -> anyhow::Result<()> {
    let c = read(&deploy("Containerfile"))?;
    for bin in ["tern-controller", "tern-agent", "ternctl", "tern-cni"] {
        ensure!(
            c.contains(&format!("target/release/{bin}")),
            "Containerfile ships {bin}"
        );
    }
    for pkg in ["bird2", "nftables", "iptables", "iproute2"] {
        ensure!(c.contains(pkg), "Containerfile installs {pkg}");
    }
    ensure!(c.contains("--locked"), "the image builds from Cargo.lock");
    // The builder's Rust is at least the workspace's rust-version.
    let cargo = read(&repo().join("Cargo.toml"))?;
    let want = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .context("rust-version in Cargo.toml")?;
    let have = c
        .lines()
        .find_map(|l| l.strip_prefix("FROM docker.io/library/rust:"))
        .and_then(|l| l.split('-').next())
        .context("the builder stage: FROM docker.io/library/rust:<version>-...")?;
    let v = |s: &str| -> Vec<u32> { s.split('.').filter_map(|p| p.parse().ok()).collect() };
    ensure!(
        v(have) >= v(&want),
        "the builder's Rust {have} is older than rust-version {want}"
    );
    let ignore = read(&deploy("Containerfile.dockerignore"))?;
    ensure!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
    Ok(())
}

/// The example conflist: every `tern` plugin in it is a configuration the plugin
/// accepts (with what a runtime adds: the list's version and name).
#[test]
fn the_example_conflist_is_one_the_plugin_accepts() -> anyhow::Result<()> {
    for f in files("cni", ".conflist")? {
        let list: serde_json::Value = serde_json::from_str(&read(&f)?)?;
        let plugins = list["plugins"].as_array().context("plugins")?;
        let mut terns = 0;
        for p in plugins {
            let mut p = p.clone();
            p["cniVersion"] = list["cniVersion"].clone();
            p["name"] = list["name"].clone();
            if p["type"] == "tern" {
                tern_agent::cni::spec::parse_conf(p.to_string().as_bytes())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                terns += 1;
            }
        }
        ensure!(terns == 1, "{}: one tern plugin", f.display());
    }
    Ok(())
}

#[test]
fn the_lab_script_is_executable_and_valid_bash() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = deploy("lab");
    let mode = std::fs::metadata(&lab)?.permissions().mode();
    ensure!(mode & 0o111 != 0, "deploy/lab is executable ({mode:o})");
    let out = Command::new("bash").arg("-n").arg(&lab).output()?;
    ensure!(
        out.status.success(),
        "bash -n deploy/lab: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read(&lab)?;
    ensure!(
        text.contains("set -euo pipefail"),
        "deploy/lab: set -euo pipefail"
    );
    // Every flag the lab gives the binaries exists (in the commands it runs).
    let clis = [
        controller_cli()?,
        agent_cli()?,
        ternctl_cli()?,
        Cli::of("ternctl", &["certs", "init"])?,
        Cli::of("ternctl", &["certs", "issue", "node"])?,
        Cli::of("ternctl", &["get"])?,
        Cli::of("ternctl", &["apply"])?,
        Cli::of("ternctl", &["patch"])?,
        Cli::of("ternctl", &["ipam", "show"])?,
        Cli::of("ternctl", &["ipam", "assign"])?,
    ];
    for f in flags(&text) {
        let known =
            clis.iter().any(|c| c.flags.contains(&f)) || LAB_OTHER_FLAGS.contains(&f.as_str());
        ensure!(known, "deploy/lab uses {f}, which no tern binary knows");
    }
    Ok(())
}

/// Flags in deploy/lab that belong to other programs (etcd, cargo, apt-get, podman,
/// nsenter, busybox).
const LAB_OTHER_FLAGS: &[&str] = &[
    "--name",
    "--data-dir",
    "--listen-client-urls",
    "--advertise-client-urls",
    "--listen-peer-urls",
    "--initial-advertise-peer-urls",
    "--initial-cluster",
    "--logger",
    "--auto-compaction-mode",
    "--auto-compaction-retention",
    "--quota-backend-bytes",
    "--release",
    "--no-install-recommends",
    "--net",
    "--root",
    "--runroot",
    "--storage-driver",
    "--network",
    "--ulimit",
    "--format",
    "--list",
];

// ------------------------------------------------------------------ etcd

/// The flags of an etcd command line, as (flag, value).
type EtcdFlags = Vec<(String, String)>;

/// The flags of an etcd command line: `--flag=value`, `--flag value` or a flag alone.
fn etcd_flags(words: &[&str]) -> EtcdFlags {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if let Some(f) = words[i].strip_prefix("--") {
            match f.split_once('=') {
                Some((k, v)) => out.push((format!("--{k}"), v.to_string())),
                None => {
                    let value = words
                        .get(i + 1)
                        .filter(|w| !w.starts_with("--"))
                        .map(|w| w.to_string());
                    if value.is_some() {
                        i += 1;
                    }
                    out.push((format!("--{f}"), value.unwrap_or_default()));
                }
            }
        }
        i += 1;
    }
    out
}

/// Every way tern's deployment runs etcd: (where, its flags).
fn etcd_command_lines() -> anyhow::Result<Vec<(String, EtcdFlags)>> {
    let mut out = Vec::new();
    // The lab: the etcd command in start_etcd(), backslash continuations joined.
    let lab = read(&deploy("lab"))?;
    let body = lab
        .split("start_etcd() {")
        .nth(1)
        .and_then(|b| b.split("\n}").next())
        .context("deploy/lab: no start_etcd()")?;
    let joined = body.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.contains(" etcd --"))
        .context("deploy/lab: start_etcd() runs no etcd")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let etcd = words
        .iter()
        .position(|w| *w == "etcd")
        .context("deploy/lab: etcd")?;
    out.push(("deploy/lab".to_string(), etcd_flags(&words[etcd + 1..])));

    // systemd: the unit's flags and the member settings of its environment file.
    let unit = deploy("systemd/tern-etcd.service");
    let s = unit_settings(&read(&unit)?);
    ensure!(
        setting(&s, "EnvironmentFile") == ["/etc/tern/etcd.env"],
        "{}: EnvironmentFile=/etc/tern/etcd.env",
        unit.display()
    );
    let exec = setting(&s, "ExecStart");
    ensure!(exec.len() == 1, "{}: one ExecStart", unit.display());
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    ensure!(
        words.first().is_some_and(|w| w.ends_with("/etcd")),
        "{}: ExecStart runs etcd",
        unit.display()
    );
    let mut flags = etcd_flags(&words[1..]);
    let env = read(&deploy("systemd/etcd.env"))?;
    for line in env.lines().map(str::trim) {
        if let Some((k, v)) = line.split_once('=')
            && let Some(name) = k.strip_prefix("ETCD_")
        {
            let flag = format!("--{}", name.to_ascii_lowercase().replace('_', "-"));
            ensure!(
                !flags.iter().any(|(f, _)| *f == flag),
                "deploy/systemd: {flag} is set both in tern-etcd.service and etcd.env (etcd refuses that)"
            );
            flags.push((flag, v.to_string()));
        }
    }
    out.push(("deploy/systemd/tern-etcd.service".to_string(), flags));

    // Kubernetes: the etcd StatefulSet's container.
    let path = deploy("kubernetes/etcd.yaml");
    let sts = yaml_documents(&path)?
        .into_iter()
        .find(|d| str_at(d, &["kind"]) == Some("StatefulSet"))
        .context("deploy/kubernetes/etcd.yaml: no StatefulSet")?;
    let spec = at(&sts, &["spec", "template", "spec"]).context("etcd.yaml: no pod template")?;
    let container = seq(spec, &["containers"])
        .into_iter()
        .next()
        .context("etcd.yaml: no container")?;
    let command: Vec<&str> = seq(container, &["command"])
        .into_iter()
        .filter_map(|v| v.as_str())
        .collect();
    ensure!(
        command.first() == Some(&"etcd"),
        "etcd.yaml: the container runs etcd ({command:?})"
    );
    out.push((path.display().to_string(), etcd_flags(&command[1..])));
    Ok(out)
}

/// The lab, the systemd unit and the Kubernetes manifest run etcd with auto-compaction
/// of its history and a space quota, with flags this etcd knows.
#[test]
fn etcd_runs_with_compaction_and_a_space_quota() -> anyhow::Result<()> {
    let help = Command::new("etcd")
        .arg("--help")
        .output()
        .context("running etcd --help (tests/run installs etcd-server)")?;
    let known = flags(&format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    ));
    ensure!(
        known.contains("--auto-compaction-mode"),
        "etcd --help lists no flags"
    );
    for (what, flags) in etcd_command_lines()? {
        for (f, _) in &flags {
            ensure!(known.contains(f), "{what}: {f} is not a flag of etcd");
        }
        let value = |name: &str| {
            flags
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| v.as_str())
                .with_context(|| format!("{what}: etcd runs without {name}"))
        };
        let mode = value("--auto-compaction-mode")?;
        ensure!(
            mode == "revision" || mode == "periodic",
            "{what}: --auto-compaction-mode {mode:?}"
        );
        let retention = value("--auto-compaction-retention")?;
        ensure!(
            !retention.is_empty() && retention != "0",
            "{what}: --auto-compaction-retention {retention:?} compacts nothing"
        );
        if mode == "revision" {
            retention
                .parse::<u64>()
                .with_context(|| format!("{what}: a revision retention is a number"))?;
        }
        let quota: u64 = value("--quota-backend-bytes")?
            .parse()
            .with_context(|| format!("{what}: --quota-backend-bytes is a number of bytes"))?;
        ensure!(
            quota > 0 && quota <= 8 << 30,
            "{what}: --quota-backend-bytes {quota} (etcd suggests at most 8 GiB)"
        );
    }
    let ops = read(&repo().join("docs/operations.md"))?;
    for want in [
        "--auto-compaction-mode",
        "--auto-compaction-retention",
        "--quota-backend-bytes",
        "etcdctl endpoint status",
        "tern-bench etcd-size",
    ] {
        ensure!(
            ops.contains(want),
            "docs/operations.md does not mention {want}"
        );
    }
    ensure!(
        read(&repo().join("README.md"))?.contains("docs/operations.md"),
        "README.md links docs/operations.md"
    );
    Ok(())
}

/// The controller's malloc setting (docs/operations.md, "Memory") is the same wherever
/// tern deploys it; `tern-bench` takes it from the systemd unit.
#[test]
fn the_controllers_malloc_setting_is_deployed_everywhere() -> anyhow::Result<()> {
    const SETTING: &str = "glibc.malloc.mmap_threshold=8192";
    for f in [
        "systemd/tern-controller.service",
        "kubernetes/tern-controller.yaml",
        "lab",
    ] {
        let text = read(&deploy(f))?;
        ensure!(
            text.contains(SETTING),
            "deploy/{f} does not give the controller GLIBC_TUNABLES={SETTING}"
        );
    }
    Ok(())
}
