//! `sluice-operator`: for now, `crd` writes the CRDs generated from the types. The
//! reconcilers are planned (docs/DESIGN.md).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-operator",
    version,
    about = "The Sluice Kubernetes operator."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (SluiceCluster, SluiceTopic) as YAML, or write
    /// one file each into --out-dir.
    Crd {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir } => {
            let crds = sluice_operator::crd::crds()?;
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for (name, yaml) in crds {
                        let path = dir.join(name);
                        std::fs::write(&path, yaml)
                            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                        eprintln!("wrote {}", path.display());
                    }
                }
                None => {
                    for (_, yaml) in crds {
                        print!("---\n{yaml}");
                    }
                }
            }
        }
    }
    Ok(())
}
