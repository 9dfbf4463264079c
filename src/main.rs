//! imgbuild: parse arguments, run one subcommand, report errors, set the exit code.

use std::process::ExitCode;

use clap::Parser;

use imgbuild::cli::{CacheAction, Cli, Command};
use imgbuild::cmd;
use imgbuild::recipe::diag;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Plan { node, json } => cmd::plan(&cli.recipe, node, *json),
        Command::Validate => cmd::validate(&cli.recipe),
        Command::Fetch => cmd::fetch(&cli).map(|_| ()),
        Command::Lock => cmd::lock(&cli),
        Command::Rootfs { node, output } => cmd::rootfs(&cli, node, output.as_deref()),
        Command::Build {
            nodes,
            force,
            dry_run,
            json,
        } => cmd::build(&cli, nodes, *force, *dry_run, *json),
        // `imgbuild node1 node2 [--force] [--dry-run] [--json]`
        Command::Nodes(args) => {
            let flag = |f: &str| args.iter().any(|a| a == f);
            let nodes: Vec<String> = args
                .iter()
                .filter(|a| !matches!(a.as_str(), "--force" | "--dry-run" | "--json"))
                .cloned()
                .collect();
            cmd::build(
                &cli,
                &nodes,
                flag("--force"),
                flag("--dry-run"),
                flag("--json"),
            )
        }
        Command::Verify { nodes, json } => cmd::verify(&cli, nodes, *json),
        Command::Prometheus { output } => cmd::prometheus(&cli, output.as_deref()),
        Command::Up(args) => cmd::up(&cli, args),
        Command::Down => cmd::down(&cli),
        Command::Ssh {
            node,
            identity,
            user,
            command,
        } => cmd::ssh(&cli, node, identity.as_deref(), user.as_deref(), command),
        Command::Completions { shell } => {
            let mut c = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut c, "imgbuild", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(Into::into),
        Command::Flash(args) => cmd::flash(&cli, args),
        Command::Update(args) => cmd::update(&cli, args),
        Command::Roll(args) => cmd::roll(&cli, args),
        Command::Apply(args) => cmd::apply(&cli, args),
        Command::Submit(args) => cmd::submit(&cli, args),
        Command::Topologies { identity, user } => {
            cmd::topologies(&cli, identity.as_ref(), user.as_ref())
        }
        Command::Boot(args) => cmd::boot(&cli, args),
        Command::Cache { action } => match action {
            CacheAction::Import { files } => cmd::cache_import(&cli, files),
            CacheAction::List => cmd::cache_list(&cli),
            CacheAction::Prune => cmd::cache_prune(&cli),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            // Recipe problems are the user's to fix (2); everything else is a failure (1).
            if err.downcast_ref::<diag::RecipeError>().is_some()
                || err.downcast_ref::<diag::UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
