//! One module per command.

pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod dev;
pub(crate) mod produce;
pub(crate) mod topics;

use indicatif::{ProgressBar, ProgressStyle};
use sluice_client::ClientConfig;

use crate::output::Format;

/// What every command gets: where the cluster is and how to print.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub bootstrap: String,
    pub output: Format,
}

impl Context {
    pub(crate) fn client(&self) -> ClientConfig {
        ClientConfig::new(&self.bootstrap)
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal, or for `-o json|yaml`).
pub(crate) fn progress(ctx: &Context, total: Option<u64>, what: &str) -> ProgressBar {
    if ctx.output != Format::Table {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
            )
            .expect("static template is valid")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {human_pos} records ({per_sec})")
                .expect("static template is valid"),
        ),
    };
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Parses `k=v` pairs from `--config`.
pub(crate) fn parse_kv(
    pairs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => anyhow::bail!(
                "--config '{p}' is not key=value (e.g. --config retention.ms=86400000)"
            ),
        })
        .collect()
}

/// Parses a time for `--from-time`: RFC 3339 (`2026-11-21T10:00:00Z`), epoch ms, or a
/// duration ago (`15m`).
pub(crate) fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        return Ok(now - d.as_millis() as i64);
    }
    anyhow::bail!(
        "invalid time '{s}': use RFC 3339 (2026-11-21T10:00:00Z), epoch milliseconds, or a duration ago (15m)"
    )
}
