//! Command-line definitions; doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Build verified, bootable Ubuntu images for a ZooKeeper/Kafka/Storm cluster from one YAML recipe.
///
/// Exit codes: 0 success, 1 a build or runtime failure, 2 a usage or recipe error.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, propagate_version = true)]
pub struct Cli {
    /// The recipe describing the cluster.
    #[arg(
        short,
        long,
        global = true,
        env = "IMGBUILD_RECIPE",
        default_value = "recipes/cluster.yaml"
    )]
    pub recipe: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what imgbuild would build for one node: identity, wiring, units and artifacts.
    Plan {
        /// The node, as named under `nodes:` in the recipe.
        node: String,
        /// Print the plan as JSON (schema documented in docs/plan-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Check a recipe without building anything; prints warnings and errors.
    Validate,
}
