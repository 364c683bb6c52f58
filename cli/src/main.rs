//! `sluice`: one command line for topics, producing, consuming, a local cluster and
//! benchmarks. Tables for people, `-o json|yaml` for scripts.
//!
//! # Layout
//! - [`commands`]: one file per command.
//! - [`output`]: tables, JSON and YAML.

/// `println!` that ends the program quietly when stdout is closed (`sluice ... | head`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with the same handling as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

mod commands;
mod output;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a replicated, partitioned commit log.",
    propagate_version = true
)]
struct Cli {
    /// Broker(s) to connect to, host:port (or http://host:port), comma-separated.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BOOTSTRAP",
        default_value = commands::dev::DEFAULT_BOOTSTRAP,
        value_parser = commands::parse_bootstrap
    )]
    bootstrap: String,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(commands::topics::TopicsCommand),
    /// Write records from stdin (one per line) or a file.
    Produce(commands::produce::ProduceArgs),
    /// Read records and print them.
    Consume(commands::consume::ConsumeArgs),
    /// Consumer groups: committed offsets and lag.
    #[command(subcommand)]
    Groups(commands::groups::GroupsCommand),
    /// Cluster health: brokers, controller leader, partitions.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Create and change topics to match manifests (SluiceTopic YAML, as for kubectl).
    Apply(commands::apply::ApplyArgs),
    /// Show what `apply` would change. Exit status 0: nothing, 1: changes, 2: an error.
    Diff(commands::apply::DiffArgs),
    /// Print the JSON Schema of a manifest kind, for editors and CI checks.
    Schema(commands::schema::SchemaArgs),
    /// Run a local cluster in this process, with an example topic.
    Dev(commands::dev::DevArgs),
    /// Measure produce and consume throughput and latency.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout as clap prints them; a mistake in the arguments
            // is an error like any other, in JSON or YAML when the command line asked for it.
            if e.use_stderr()
                && let Some(format) = output::format_in_args(std::env::args())
                && format != Format::Table
            {
                let text = e.render().to_string();
                let message = text.split("\n\n").next().unwrap_or_default();
                let message = message.trim().trim_start_matches("error: ");
                output::print_error(format, "INVALID_ARGUMENT", message);
                std::process::exit(e.exit_code());
            }
            e.exit()
        }
    };
    let format = cli.output;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            output::print_error(
                format,
                output::GENERIC_ERROR,
                &format!("cannot start the async runtime: {e}"),
            );
            std::process::exit(1);
        }
    };
    let ctx = commands::Context {
        bootstrap: cli.bootstrap,
        output: cli.output,
    };
    // `diff` says "changes" with 1, so its errors are 2 (as `kubectl diff`'s).
    let error_status = if matches!(cli.command, Command::Diff(_)) {
        2
    } else {
        1
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Topics(cmd) => commands::topics::run(&ctx, cmd).await,
            Command::Produce(args) => commands::produce::run(&ctx, args).await,
            Command::Consume(args) => commands::consume::run(&ctx, args).await,
            Command::Cluster(cmd) => commands::cluster::run(&ctx, cmd).await,
            Command::Groups(cmd) => commands::groups::run(&ctx, cmd).await,
            Command::Apply(args) => commands::apply::apply(&ctx, args).await,
            Command::Diff(args) => commands::apply::diff(&ctx, args).await,
            Command::Schema(args) => commands::schema::run(&ctx, args),
            Command::Dev(args) => commands::dev::run(&ctx, args).await,
            Command::Bench(cmd) => commands::bench::run(&ctx, cmd).await,
        }
    });
    // Without waiting for what is still running: a read of stdin blocks on its thread until
    // a line comes (`produce` stopped by Ctrl-C), and answers nobody waits for any more.
    runtime.shutdown_background();
    if let Err(e) = result {
        let closed_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if closed_pipe {
            std::process::exit(0);
        }
        if let Some(output::Exit(status)) = e.downcast_ref::<output::Exit>() {
            std::process::exit(*status);
        }
        let problems = e
            .chain()
            .find_map(|c| c.downcast_ref::<sluice_manifest::Problems>())
            .map_or(&[][..], |p| &p.0[..]);
        output::print_error_with(format, output::error_code(&e), &format!("{e:#}"), problems);
        std::process::exit(error_status);
    }
}
