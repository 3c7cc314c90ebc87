//! Structured logs for every tern binary: one filter (`--log-level`, `TERN_LOG`, in
//! `tracing-subscriber`'s EnvFilter syntax) and plain or JSON output on stderr.

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Plain,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" | "text" => Ok(Format::Plain),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown log format {other:?} (plain or json)")),
        }
    }
}

/// Install the global subscriber. `filter` is e.g. `info` or `info,tern_agent=debug`.
pub fn init(filter: &str, format: Format) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("bad log filter {filter:?}: {e}"))?;
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal, not for files or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match format {
        Format::Plain => builder.try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|e| format!("installing the log subscriber: {e}"))
}
