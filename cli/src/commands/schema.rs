//! `sluice schema topic`: the JSON Schema of a manifest kind, generated from the types
//! `sluice apply` reads, for editors (yaml-language-server) and CI checks.

use clap::{Args, ValueEnum};

use super::Context;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// SluiceTopic.
    Topic,
}

#[derive(Debug, Args)]
pub(crate) struct SchemaArgs {
    kind: Kind,
}

pub(crate) fn run(ctx: &Context, args: SchemaArgs) -> anyhow::Result<()> {
    let schema = match args.kind {
        Kind::Topic => sluice_manifest::topic_schema(),
    };
    match ctx.output {
        crate::output::Format::Yaml => out!("{}", serde_yaml::to_string(&schema)?),
        _ => outln!("{}", serde_json::to_string_pretty(&schema)?),
    }
    Ok(())
}
