//! `tern-agent`: the per-host agent of tern.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern_agent::calc::bird::{BirdOptions, RouterId};
use tern_agent::render::{RenderDataplane, What};

#[derive(Debug, Parser)]
#[command(
    name = "tern-agent",
    version,
    about = "tern agent: NAT outgoing and BGP on every host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what the agent would program for a node, from a file of resources.
    Render {
        /// YAML or JSON file of resources (tern or Calico v3 manifests); `-` for stdin.
        #[arg(long, short = 'i')]
        input: PathBuf,
        /// The node to render for.
        #[arg(long)]
        node: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "bird")]
        what: What,
        /// NAT ruleset syntax.
        #[arg(long, value_enum, default_value = "nftables")]
        dataplane: RenderDataplane,
        /// BGP router id: an IPv4 address or "hash" (default: the node's IPv4 address).
        #[arg(long, env = "TERN_ROUTER_ID", default_value = "")]
        router_id: RouterId,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            input,
            node,
            what,
            dataplane,
            router_id,
        } => render(input, &node, what, dataplane, router_id),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(
    input: PathBuf,
    node: &str,
    what: What,
    dataplane: RenderDataplane,
    router_id: RouterId,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = if input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
    };
    let opts = BirdOptions { router_id };
    let out = tern_agent::render::render_offline(&text, node, what, dataplane, &opts)?;
    print!("{out}");
    Ok(())
}
