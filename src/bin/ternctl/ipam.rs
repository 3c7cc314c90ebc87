//! `ternctl ipam`: pools and blocks, one address, assignment and release as a CNI
//! plugin does them, and calicoctl's administrator habits (`show --ip`,
//! `--show-borrowed`, `--show-configuration`, `check`, `release --ip`,
//! `release --from-report`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use tern::proto;

use crate::table::{Align, boxed};
use crate::{Ctx, status_msg};

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Pools and their usage; with --show-blocks every block and its node; --ip ADDR
    /// for one address; --show-borrowed for addresses held outside their node's blocks;
    /// --show-configuration for IPAM's settings.
    Show {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        show_blocks: bool,
        /// What IPAM knows of this address: pool, block, node, holder, reservations.
        #[arg(long, conflicts_with_all = ["node", "show_blocks", "show_borrowed", "show_configuration"])]
        ip: Option<String>,
        /// Addresses held by a handle of another node than the block's.
        #[arg(long, conflicts_with_all = ["node", "show_blocks", "show_configuration"])]
        show_borrowed: bool,
        /// IPAM's settings as the controller runs them.
        #[arg(long, conflicts_with_all = ["node", "show_blocks"])]
        show_configuration: bool,
    },
    /// Assign one address to HANDLE from NODE's blocks (claiming a block when they are
    /// full), as a CNI plugin does; prints the address. Idempotent per node, handle and
    /// family.
    Assign {
        #[arg(long)]
        node: String,
        /// The owner of the address, e.g. a container ID.
        #[arg(long)]
        handle: String,
        /// Take the address from this pool.
        #[arg(long)]
        pool: Option<String>,
        /// 4 or 6: any pool of the family that selects the node (default 4 without
        /// --pool).
        #[arg(long)]
        family: Option<u32>,
    },
    /// Release every address HANDLE holds on NODE (--node and --handle), one address
    /// whatever holds it (--ip), or what a report of `ipam check` found and a fresh
    /// check still finds (--from-report).
    Release {
        #[arg(long, requires = "handle", conflicts_with_all = ["ip", "from_report"])]
        node: Option<String>,
        #[arg(long, requires = "node")]
        handle: Option<String>,
        #[arg(long, conflicts_with = "from_report")]
        ip: Option<String>,
        #[arg(long)]
        from_report: Option<PathBuf>,
    },
    /// Claim one more block for NODE from a pool that selects it; prints the block.
    ClaimBlock {
        #[arg(long)]
        node: String,
        #[arg(long)]
        pool: Option<String>,
        /// 4 or 6: the first pool of the family that selects the node (default 4
        /// without --pool).
        #[arg(long)]
        family: Option<u32>,
    },
    /// Look for inconsistencies in IPAM's records: leaked addresses, handles with no
    /// owner, blocks of deleted nodes or pools, borrowed and reserved addresses in use.
    Check {
        /// List every address or handle found, not only the counts.
        #[arg(long)]
        show_problem_ips: bool,
        /// Write the report as JSON (for `ipam release --from-report`).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// `ternctl ipam ...`.
pub async fn run(ctx: &Ctx, command: IpamCommand) -> anyhow::Result<ExitCode> {
    match command {
        IpamCommand::Show {
            node,
            show_blocks,
            ip,
            show_borrowed,
            show_configuration,
        } => {
            if let Some(ip) = ip {
                show_ip(ctx, &ip).await
            } else if show_borrowed {
                show_borrowed_ips(ctx).await
            } else if show_configuration {
                show_config(ctx).await
            } else {
                show(ctx, node, show_blocks).await
            }
        }
        IpamCommand::Assign {
            node,
            handle,
            pool,
            family,
        } => assign(ctx, node, handle, pool, family).await,
        IpamCommand::Release {
            node,
            handle,
            ip,
            from_report,
        } => match (node, handle, ip, from_report) {
            (Some(node), Some(handle), None, None) => release(ctx, node, handle).await,
            (None, None, Some(ip), None) => release_ip(ctx, &ip).await,
            (None, None, None, Some(file)) => release_from_report(ctx, &file).await,
            _ => bail!("give --node and --handle, or --ip ADDR, or --from-report FILE"),
        },
        IpamCommand::ClaimBlock { node, pool, family } => {
            claim_block(ctx, node, pool, family).await
        }
        IpamCommand::Check {
            show_problem_ips,
            output,
        } => check(ctx, show_problem_ips, output.as_deref()).await,
    }
}

async fn show_ip(ctx: &Ctx, ip: &str) -> anyhow::Result<ExitCode> {
    let r = ctx
        .ipam()
        .await?
        .show_address(proto::ShowAddressRequest {
            address: ip.to_string(),
        })
        .await
        .map_err(|e| anyhow!("Failed to show {ip}: {}", status_msg(&e)))?
        .into_inner();
    let a = &r.address;
    if !r.handle.is_empty() {
        println!("IP {a} is in use");
        println!("  handle: {}", r.handle);
    } else if r.pool.is_empty() {
        println!("IP {a} is not in any IP pool");
    } else {
        println!("IP {a} is not assigned");
    }
    if !r.pool.is_empty() {
        println!("  pool:   {}", r.pool);
    }
    if !r.block.is_empty() {
        println!("  block:  {} (node {})", r.block, r.node);
    }
    for name in &r.reservations {
        println!("  reserved by IPReservation {name}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_check(ctx: &Ctx) -> anyhow::Result<proto::IpamCheckReport> {
    Ok(ctx
        .ipam()
        .await?
        .check(proto::IpamCheckRequest {})
        .await
        .map_err(|e| anyhow!("Failed to check IPAM: {}", status_msg(&e)))?
        .into_inner())
}

async fn show_borrowed_ips(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let r = run_check(ctx).await?;
    let rows: Vec<Vec<String>> = r
        .borrowed
        .iter()
        .map(|p| {
            vec![
                p.address.clone(),
                p.node.clone(),
                p.block.clone(),
                p.block_node.clone(),
                p.handle.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        boxed(
            &["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "HANDLE"],
            &rows,
            &[Align::Left; 5]
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn show_config(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let c = ctx
        .ipam()
        .await?
        .show_configuration(proto::IpamConfigurationRequest {})
        .await
        .map_err(|e| anyhow!("Failed to show IPAM's configuration: {}", status_msg(&e)))?
        .into_inner();
    let rows = vec![
        vec!["StrictAffinity".to_string(), c.strict_affinity.to_string()],
        vec![
            "AutoAllocateBlocks".to_string(),
            c.auto_allocate_blocks.to_string(),
        ],
        vec![
            "MaxBlocksPerHost".to_string(),
            c.max_blocks_per_host.to_string(),
        ],
    ];
    print!(
        "{}",
        boxed(&["PROPERTY", "VALUE"], &rows, &[Align::Left, Align::Left])
    );
    Ok(ExitCode::SUCCESS)
}

/// One finding of `ipam check`, as the JSON report holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Finding {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    block: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    block_node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    handle: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pool: String,
    reason: String,
}

impl Finding {
    /// The same address, block, node and handle (the reason may be worded otherwise).
    fn same(&self, other: &Finding) -> bool {
        (&self.address, &self.block, &self.node, &self.handle)
            == (&other.address, &other.block, &other.node, &other.handle)
    }
}

impl From<&proto::IpamProblem> for Finding {
    fn from(p: &proto::IpamProblem) -> Self {
        Finding {
            address: p.address.clone(),
            block: p.block.clone(),
            node: p.node.clone(),
            block_node: p.block_node.clone(),
            handle: p.handle.clone(),
            pool: p.pool.clone(),
            reason: p.reason.clone(),
        }
    }
}

/// The JSON report `ipam check -o FILE` writes and `ipam release --from-report` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    revision: i64,
    blocks: u64,
    addresses_in_use: u64,
    handles: u64,
    #[serde(default)]
    leaked: Vec<Finding>,
    #[serde(default)]
    orphan_handles: Vec<Finding>,
    #[serde(default)]
    stale_blocks: Vec<Finding>,
    #[serde(default)]
    borrowed: Vec<Finding>,
    #[serde(default)]
    reserved_in_use: Vec<Finding>,
}

impl From<&proto::IpamCheckReport> for Report {
    fn from(r: &proto::IpamCheckReport) -> Self {
        let f = |v: &[proto::IpamProblem]| v.iter().map(Finding::from).collect();
        Report {
            revision: r.revision,
            blocks: r.blocks,
            addresses_in_use: r.addresses_in_use,
            handles: r.handles,
            leaked: f(&r.leaked),
            orphan_handles: f(&r.orphan_handles),
            stale_blocks: f(&r.stale_blocks),
            borrowed: f(&r.borrowed),
            reserved_in_use: f(&r.reserved_in_use),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn finding_line(f: &Finding) -> String {
    let mut s = String::from("  ");
    if !f.address.is_empty() {
        s.push_str(&f.address);
        s.push(' ');
    }
    if !f.block.is_empty() {
        s.push_str(&format!("block {} ", f.block));
    }
    if !f.node.is_empty() {
        s.push_str(&format!("node {} ", f.node));
    }
    if !f.handle.is_empty() {
        s.push_str(&format!("handle {} ", f.handle));
    }
    format!("{}: {}", s.trim_end(), f.reason)
}

async fn check(
    ctx: &Ctx,
    show_problem_ips: bool,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let report = Report::from(&run_check(ctx).await?);
    println!(
        "Checked IPAM at etcd revision {}: {}, {} in use, {}.",
        report.revision,
        plural(report.blocks as usize, "block", "blocks"),
        plural(report.addresses_in_use as usize, "address", "addresses"),
        plural(report.handles as usize, "handle", "handles"),
    );
    let sections: [(&[Finding], &str, &str); 5] = [
        (&report.leaked, "leaked address", "leaked addresses"),
        (
            &report.orphan_handles,
            "handle with no owner",
            "handles with no owner",
        ),
        (
            &report.stale_blocks,
            "block of a deleted node or pool",
            "blocks of deleted nodes or pools",
        ),
        (&report.borrowed, "borrowed address", "borrowed addresses"),
        (
            &report.reserved_in_use,
            "reserved address in use",
            "reserved addresses in use",
        ),
    ];
    let mut problems = 0;
    for (found, one, many) in sections {
        problems += found.len();
        println!("Found {}.", plural(found.len(), one, many));
        if show_problem_ips {
            for f in found {
                println!("{}", finding_line(f));
            }
        }
    }
    println!(
        "Check complete; found {}.",
        plural(problems, "problem", "problems")
    );
    if let Some(path) = output {
        let json = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("write the report to {}", path.display()))?;
        println!("Report written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn release_ip(ctx: &Ctx, ip: &str) -> anyhow::Result<ExitCode> {
    let r = ctx
        .ipam()
        .await?
        .release_ip(proto::ReleaseIpRequest {
            address: ip.to_string(),
            handle: String::new(),
            node: String::new(),
        })
        .await
        .map_err(|e| anyhow!("Failed to release {ip}: {}", status_msg(&e)))?
        .into_inner();
    if r.allocation || r.handle_record {
        println!(
            "Released {ip} (handle {}, block {}, node {})",
            r.handle, r.block, r.node
        );
    } else {
        println!("IP {ip} is not assigned");
    }
    Ok(ExitCode::SUCCESS)
}

/// Release what a report of `ipam check` found, when a fresh check still finds it:
/// leaked addresses (only while the same handle holds them) and handles with no owner
/// (only while their record still points at the address). Blocks of deleted nodes and
/// pools are the reconcile loop's to release; borrowed and reserved addresses are in use
/// and are left alone.
async fn release_from_report(ctx: &Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read the report {}", file.display()))?;
    let old: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report of ternctl ipam check", file.display()))?;
    let now = Report::from(&run_check(ctx).await?);
    let mut ipam = ctx.ipam().await?;
    let (mut released, mut skipped) = (0usize, 0usize);
    let todo = old
        .leaked
        .iter()
        .map(|f| (f, now.leaked.iter().any(|n| n.same(f)), String::new()))
        .chain(old.orphan_handles.iter().map(|f| {
            (
                f,
                now.orphan_handles.iter().any(|n| n.same(f)),
                f.node.clone(),
            )
        }));
    for (f, still, node) in todo {
        if !still {
            println!("Skipped {}: no longer found", finding_line(f).trim_start());
            skipped += 1;
            continue;
        }
        let r = ipam
            .release_ip(proto::ReleaseIpRequest {
                address: f.address.clone(),
                handle: f.handle.clone(),
                node,
            })
            .await
            .map_err(|e| anyhow!("Failed to release {}: {}", f.address, status_msg(&e)))?
            .into_inner();
        if r.allocation || r.handle_record {
            println!("Released {}", finding_line(f).trim_start());
            released += 1;
        } else {
            println!(
                "Skipped {}: changed meanwhile",
                finding_line(f).trim_start()
            );
            skipped += 1;
        }
    }
    if !old.stale_blocks.is_empty() {
        println!(
            "{} of deleted nodes or pools: the controller's reconcile loop releases them",
            plural(old.stale_blocks.len(), "block", "blocks")
        );
    }
    println!(
        "Released {}; skipped {}.",
        plural(released, "problem", "problems"),
        skipped
    );
    Ok(ExitCode::SUCCESS)
}

fn pct(part: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    // In u128: an IPv6 pool's size is near u64::MAX, and part * 100 + total / 2 would
    // overflow.
    let (part, total) = (u128::from(part), u128::from(total));
    format!("{}%", (part * 100 + total / 2) / total)
}

async fn show(ctx: &Ctx, node: Option<String>, show_blocks: bool) -> anyhow::Result<ExitCode> {
    let mut ipam = ctx.ipam().await?;
    let r = ipam
        .show(proto::IpamShowRequest {
            node: node.clone().unwrap_or_default(),
        })
        .await
        .map_err(|e| anyhow!("Failed to show IPAM: {}", status_msg(&e)))?
        .into_inner();
    let mut header = vec!["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"];
    let with_nodes = show_blocks || node.is_some();
    if with_nodes {
        header.push("NODE");
    }
    let mut rows = Vec::new();
    for p in &r.pools {
        let free = p.addresses_total.saturating_sub(p.addresses_in_use);
        let mut row = vec![
            "IP Pool".to_string(),
            p.cidr.clone(),
            p.addresses_total.to_string(),
            format!(
                "{} ({})",
                p.addresses_in_use,
                pct(p.addresses_in_use, p.addresses_total)
            ),
            format!("{} ({})", free, pct(free, p.addresses_total)),
        ];
        if with_nodes {
            row.push(String::new());
        }
        rows.push(row);
        if with_nodes {
            for bl in r.blocks.iter().filter(|bl| bl.pool == p.name) {
                let free = bl.addresses_total.saturating_sub(bl.addresses_in_use);
                rows.push(vec![
                    "Block".to_string(),
                    bl.cidr.clone(),
                    bl.addresses_total.to_string(),
                    format!(
                        "{} ({})",
                        bl.addresses_in_use,
                        pct(bl.addresses_in_use, bl.addresses_total)
                    ),
                    format!("{} ({})", free, pct(free, bl.addresses_total)),
                    bl.node.clone(),
                ]);
            }
        }
    }
    let align = [
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Left,
        Align::Left,
        Align::Left,
    ];
    print!("{}", boxed(&header, &rows, &align));
    Ok(ExitCode::SUCCESS)
}

/// The family sent with a request: as given (the controller checks it); else 4 when no
/// pool is named (with a pool, 0 lets the controller take the pool's family).
fn family_of(pool: &Option<String>, family: Option<u32>) -> u32 {
    match family {
        Some(f) => f,
        None if pool.is_some() => 0,
        None => 4,
    }
}

async fn assign(
    ctx: &Ctx,
    node: String,
    handle: String,
    pool: Option<String>,
    family: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let family = family_of(&pool, family);
    let mut ipam = ctx.ipam().await?;
    let r = ipam
        .assign_address(proto::AssignAddressRequest {
            node,
            handle,
            family,
            pool: pool.unwrap_or_default(),
        })
        .await
        .map_err(|e| anyhow!("Failed to assign an address: {}", status_msg(&e)))?
        .into_inner();
    println!("{} (block {})", r.address, r.block);
    Ok(ExitCode::SUCCESS)
}

async fn release(ctx: &Ctx, node: String, handle: String) -> anyhow::Result<ExitCode> {
    let mut ipam = ctx.ipam().await?;
    let r = ipam
        .release_address(proto::ReleaseAddressRequest {
            node,
            handle: handle.clone(),
        })
        .await
        .map_err(|e| anyhow!("Failed to release addresses: {}", status_msg(&e)))?
        .into_inner();
    if r.addresses.is_empty() {
        println!("Handle {handle} holds no address");
    } else {
        for a in &r.addresses {
            println!("Released {a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn claim_block(
    ctx: &Ctx,
    node: String,
    pool: Option<String>,
    family: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let family = family_of(&pool, family);
    let mut ipam = ctx.ipam().await?;
    let b = ipam
        .claim_block(proto::ClaimBlockRequest {
            node,
            pool: pool.unwrap_or_default(),
            family,
        })
        .await
        .map_err(|e| anyhow!("Failed to claim a block: {}", status_msg(&e)))?
        .into_inner();
    println!(
        "Claimed block {} of pool {} for node {} ({})",
        b.cidr, b.pool, b.node, b.state
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentages_of_ipv6_pools_do_not_overflow() {
        assert_eq!(super::pct(1, 4), "25%");
        assert_eq!(super::pct(0, 0), "0%");
        // A /48 pool's addresses are counted up to u64::MAX.
        assert_eq!(super::pct(6, u64::MAX), "0%");
        assert_eq!(super::pct(u64::MAX - 6, u64::MAX), "100%");
    }
}
