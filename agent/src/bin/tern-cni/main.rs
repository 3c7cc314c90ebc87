//! `tern-cni`: tern's CNI plugin, installed as `/opt/cni/bin/tern`. A thin shell over
//! [`tern_agent::cni::run`]: the runtime's `CNI_*` variables and the configuration on
//! stdin in, a result or an error document on stdout. Logs go to stderr (filter:
//! `TERN_CNI_LOG`, default `warn`).

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = std::env::var("TERN_CNI_LOG").unwrap_or_else(|_| "warn".into());
    // A bad filter only costs the logs; the protocol still answers.
    let _ = tern::logging::init(&filter, tern::logging::Format::Plain);
    let out = tern_agent::cni::run(|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(out.stdout.as_bytes()).is_err() || stdout.flush().is_err() {
        return ExitCode::from(1);
    }
    ExitCode::from(out.exit)
}
