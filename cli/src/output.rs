//! Output for people (tables) and scripts (`-o json`, `-o yaml`).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Yaml,
}

/// Writes to stdout; a closed stdout (the reader went away) ends the program quietly, as
/// Unix tools do.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args)
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Prints `value` as JSON or YAML, or calls `table` for the human form.
pub(crate) fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T),
) -> anyhow::Result<()> {
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => out!("{}", serde_yaml::to_string(value)?),
        Format::Table => table(value),
    }
    Ok(())
}

/// A mistake in what the user asked for (a flag's value, an input line), as opposed to a
/// failure of the cluster: `-o json` reports it as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub(crate) struct InvalidInput(pub(crate) String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// An [`InvalidInput`] error.
pub(crate) fn invalid(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InvalidInput(message.into()))
}

/// Ends the program with this exit status and no message (`sluice diff`: 1 when there
/// are changes).
#[derive(Debug)]
pub(crate) struct Exit(pub(crate) i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The code of an error that is neither a broker's nor one of the kinds below.
pub(crate) const GENERIC_ERROR: &str = "ERROR";

/// The machine-readable code of a failure, for `-o json|yaml`: the Kafka error name when
/// the broker or the client gave one (`UNKNOWN_TOPIC_OR_PARTITION`), else a stable generic
/// code: `CONNECTION_FAILED` (no broker reached), `INVALID_ARGUMENT` (a mistake in what was
/// asked), or [`GENERIC_ERROR`].
pub(crate) fn error_code(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if cause.is::<InvalidInput>() {
            return "INVALID_ARGUMENT";
        }
        if cause.is::<sluice_manifest::Problems>() {
            return "INVALID_MANIFEST";
        }
        if let Some(e) = cause.downcast_ref::<sluice_client::Error>() {
            if let Some(code) = e.code() {
                return code.name();
            }
            return match e {
                sluice_client::Error::Connect { .. } | sluice_client::Error::Rpc { .. } => {
                    "CONNECTION_FAILED"
                }
                sluice_client::Error::InvalidArgument(_) => "INVALID_ARGUMENT",
                _ => GENERIC_ERROR,
            };
        }
    }
    GENERIC_ERROR
}

#[derive(Debug, Serialize)]
struct ErrorReport<'a> {
    error: ErrorBody<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    /// Each problem of a manifest, with its file, document, field and line.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    problems: &'a [sluice_manifest::Problem],
}

/// Reports a failure on stderr: `error: MESSAGE` for people, `{"error": {"code", "message"}}`
/// (one line of JSON, or YAML) for scripts.
pub(crate) fn print_error(format: Format, code: &str, message: &str) {
    print_error_with(format, code, message, &[]);
}

/// [`print_error`] with the problems of the manifests, listed one by one for scripts.
pub(crate) fn print_error_with(
    format: Format,
    code: &str,
    message: &str,
    problems: &[sluice_manifest::Problem],
) {
    let report = ErrorReport {
        error: ErrorBody {
            code,
            message,
            problems,
        },
    };
    let text = match format {
        Format::Table => Ok(format!("error: {message}\n")),
        Format::Json => serde_json::to_string(&report)
            .map(|j| j + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::to_string(&report).map_err(|e| e.to_string()),
    };
    // Serialising two strings cannot fail; should it, the plain text still gets out.
    eprint!(
        "{}",
        text.unwrap_or_else(|_| format!("error: {code}: {message}\n"))
    );
}

/// The `-o`/`--output` format named in raw arguments, for reporting an error in them
/// before they could be parsed.
pub(crate) fn format_in_args(args: impl IntoIterator<Item = String>) -> Option<Format> {
    use clap::ValueEnum;
    let mut found = None;
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--" => break,
            "-o" | "--output" => args.next(),
            a => a
                .strip_prefix("--output=")
                .or_else(|| a.strip_prefix("-o"))
                .map(|v| v.trim_start_matches('=').to_string()),
        };
        if let Some(f) = value.and_then(|v| Format::from_str(&v, true).ok()) {
            found = Some(f);
        }
    }
    found
}

/// A borderless, left-aligned table with upper-case headers, like kubectl's.
pub(crate) fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_uppercase()).collect()];
    all.extend(rows);
    let mut widths = vec![0; headers.len()];
    for row in &all {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    all.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            line.join("   ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 1536 -> "1.5 KiB".
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        std::iter::once("sluice")
            .chain(s.split_whitespace())
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_output_format_is_found_in_unparsed_arguments() {
        assert_eq!(
            format_in_args(args("topics list -o json")),
            Some(Format::Json)
        );
        assert_eq!(
            format_in_args(args("--output yaml topics")),
            Some(Format::Yaml)
        );
        assert_eq!(format_in_args(args("--output=json x")), Some(Format::Json));
        assert_eq!(format_in_args(args("-ojson x")), Some(Format::Json));
        assert_eq!(format_in_args(args("topics list")), None);
        assert_eq!(format_in_args(args("produce t -- -o json")), None);
    }

    #[test]
    fn a_client_error_is_coded_by_its_kafka_name_or_its_kind() {
        let broker = sluice_client::Error::Broker {
            detail: Box::new(
                <sluice_client::pb::ErrorDetail as sluice_proto::ErrorDetailExt>::new(
                    sluice_client::ErrorCode::UnknownTopicOrPartition,
                    "no such topic",
                ),
            ),
        };
        let e = anyhow::Error::new(broker).context("describing topic 't'");
        assert_eq!(error_code(&e), "UNKNOWN_TOPIC_OR_PARTITION");
        let e = anyhow::Error::new(sluice_client::Error::Closed);
        assert_eq!(error_code(&e), GENERIC_ERROR);
        let e = crate::commands::invalid("bad").context("parsing");
        assert_eq!(error_code(&e), "INVALID_ARGUMENT");
        assert_eq!(error_code(&anyhow::anyhow!("plain")), GENERIC_ERROR);
    }
}
