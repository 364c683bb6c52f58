//! One module per command.

pub(crate) mod apply;
pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod dev;
pub(crate) mod groups;
pub(crate) mod produce;
pub(crate) mod schema;
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

/// Whether to draw a progress bar: for people (table output) watching a terminal, and
/// never while they type the input on that terminal: every redraw would erase the line
/// being typed.
pub(crate) fn shows_progress(
    output: Format,
    stderr_is_terminal: bool,
    input_is_typed_on_terminal: bool,
) -> bool {
    output == Format::Table && stderr_is_terminal && !input_is_typed_on_terminal
}

/// A progress bar on stderr, or a hidden one where [`shows_progress`] says no.
/// `input_is_typed` is whether the command reads a terminal's stdin.
pub(crate) fn progress(
    ctx: &Context,
    total: Option<u64>,
    what: &str,
    input_is_typed: bool,
) -> ProgressBar {
    use std::io::IsTerminal;
    if !shows_progress(ctx.output, std::io::stderr().is_terminal(), input_is_typed) {
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

pub(crate) use crate::output::invalid;

/// Checks `--bootstrap`: comma-separated `host:port` entries, each optionally written as
/// `http://host:port` (the scheme is dropped: brokers speak plain HTTP/2). Returns the
/// list as `host:port,host:port`.
pub(crate) fn parse_bootstrap(value: &str) -> Result<String, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("no broker given: use host:port, e.g. 127.0.0.1:9092".into());
    }
    entries
        .iter()
        .map(|e| parse_broker_address(e))
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join(","))
}

fn parse_broker_address(entry: &str) -> Result<String, String> {
    let example = "e.g. 127.0.0.1:9092 or broker1.example.com:9092";
    let rest = match entry.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "broker '{entry}': scheme '{scheme}://' is not supported; use host:port ({example})"
            ));
        }
        None => entry,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!(
            "broker '{entry}' has no port: use host:port ({example})"
        ));
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !host_ok {
        // `::1` without brackets, `host:port:port`, a path or a space.
        return Err(format!(
            "broker '{entry}' is not host:port ({example}; an IPv6 address goes in brackets: [::1]:9092)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("{host}:{p}")),
        _ => Err(format!(
            "broker '{entry}' has an invalid port '{port}': use host:port with a port from 1 to 65535 ({example})"
        )),
    }
}

/// Parses a `--header KEY=VALUE`.
pub(crate) fn parse_header(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!(
            "header '{value}' has no name before '=': use KEY=VALUE (e.g. --header source=web)"
        )),
        None => Err(format!(
            "header '{value}' has no '=': use KEY=VALUE (e.g. --header source=web)"
        )),
    }
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
            _ => Err(invalid(format!(
                "--config '{p}' is not key=value (e.g. --config retention.ms=86400000)"
            ))),
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
    Err(invalid(format!(
        "invalid time '{s}': use RFC 3339 (2026-11-21T10:00:00Z), epoch milliseconds, or a duration ago (15m)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_progress_while_the_user_types_on_the_terminal() {
        // Typed input: a redraw would erase what is being typed.
        assert!(!shows_progress(Format::Table, true, true));
        // Piped input watched on a terminal.
        assert!(shows_progress(Format::Table, true, false));
        // Not a terminal, or output for scripts.
        assert!(!shows_progress(Format::Table, false, false));
        assert!(!shows_progress(Format::Json, true, false));
        assert!(!shows_progress(Format::Yaml, true, false));
    }

    #[test]
    fn bootstrap_takes_host_port_and_http_urls() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:9092").as_deref(),
            Ok("127.0.0.1:9092")
        );
        assert_eq!(
            parse_bootstrap(" http://a:1/ , HTTP://b.example.com:2,[::1]:3").as_deref(),
            Ok("a:1,b.example.com:2,[::1]:3")
        );
    }

    #[test]
    fn bootstrap_refuses_what_is_not_host_port_and_names_it() {
        for (value, says) in [
            ("localhost", "broker 'localhost' has no port"),
            ("http://localhost", "broker 'http://localhost' has no port"),
            ("a:1,b:x", "broker 'b:x' has an invalid port 'x'"),
            ("a:0", "invalid port '0'"),
            ("a:70000", "invalid port '70000'"),
            ("::1:9092", "broker '::1:9092' is not host:port"),
            ("my host:1", "broker 'my host:1' is not host:port"),
            ("https://a:1", "scheme 'https://' is not supported"),
            (" , ", "no broker given"),
        ] {
            let err = parse_bootstrap(value).expect_err(value);
            assert!(err.contains(says), "{value}: {err}");
            assert!(err.contains("9092"), "{value}: no example in {err}");
        }
    }

    #[test]
    fn a_header_is_key_equals_value() {
        assert_eq!(
            parse_header("trace=a=b"),
            Ok(("trace".to_string(), "a=b".to_string()))
        );
        assert_eq!(
            parse_header("empty="),
            Ok(("empty".to_string(), String::new()))
        );
        assert!(parse_header("novalue").unwrap_err().contains("'novalue'"));
        assert!(parse_header("=v").unwrap_err().contains("'=v'"));
    }
}
