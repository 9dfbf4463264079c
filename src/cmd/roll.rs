//! `imgbuild roll`: the running cluster to its new images, node by node, gated; `imgbuild
//! apply`: its topics and ACLs to the recipe's.

use super::*;

pub fn roll(cli: &Cli, a: &crate::cli::RollArgs) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let all: Vec<&Plan> = cluster.nodes.iter().collect();
    let selected = if a.nodes.is_empty() {
        all.clone()
    } else {
        select(&cluster, &cli.recipe, &a.nodes)?
    };
    crate::util::tools::require(&[crate::util::tools::SSH])?;
    // The nodes of a running `imgbuild up` or `boot` are on that run's private network: go in.
    if crate::vm::hostlink::pid_file(&cli.build_dir).is_file() {
        crate::vm::hostlink::enter(&cli.build_dir)?;
    }
    let o = crate::roll::Options {
        dry_run: a.dry_run,
        json: a.json,
        gate_timeout: std::time::Duration::from_secs(a.gate_timeout),
        update_timeout: std::time::Duration::from_secs(a.timeout),
        key: a.identity.clone(),
        user: a.user.clone(),
        finalize: a.finalize,
        resubmit_example: a.resubmit_example,
    };
    crate::roll::run(&all, &selected, &cli.images, &cli.build_dir, &o)
}

/// `imgbuild apply`: the running cluster's topics and ACLs to the recipe's.
pub fn apply(cli: &Cli, a: &crate::cli::ApplyArgs) -> Result<()> {
    let cluster = reach(cli)?;
    let all: Vec<&Plan> = cluster.nodes.iter().collect();
    let o = crate::apply::Options {
        dry_run: a.dry_run,
        allow_delete: a.allow_delete,
        key: a.identity.clone(),
        user: a.user.clone(),
    };
    if !crate::apply::run(&all, &cli.build_dir, &o)? {
        anyhow::bail!("apply: refused (above): nothing changed");
    }
    Ok(())
}

/// The cluster's plans, with this process inside a running `up`'s network when there is one.
fn reach(cli: &Cli) -> Result<ClusterPlan> {
    let cluster = resolve(&cli.recipe)?;
    crate::util::tools::require(&[crate::util::tools::SSH])?;
    if crate::vm::hostlink::pid_file(&cli.build_dir).is_file() {
        crate::vm::hostlink::enter(&cli.build_dir)?;
    }
    Ok(cluster)
}

/// `imgbuild submit DIR` / `--kill NAME`.
pub fn submit(cli: &Cli, a: &crate::cli::SubmitArgs) -> Result<()> {
    let cluster = reach(cli)?;
    let all: Vec<&Plan> = cluster.nodes.iter().collect();
    let (key, user) = (a.identity.as_ref(), a.user.as_ref());
    match (&a.kill, &a.dir) {
        (Some(name), _) => crate::apply::submit::kill(&all, name, &cli.build_dir, key, user),
        (None, Some(dir)) => crate::apply::submit::submit(&all, dir, &cli.build_dir, key, user),
        (None, None) => anyhow::bail!("submit: a directory, or --kill NAME"),
    }
}

/// `imgbuild topologies`.
pub fn topologies(
    cli: &Cli,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
) -> Result<()> {
    let cluster = reach(cli)?;
    let all: Vec<&Plan> = cluster.nodes.iter().collect();
    crate::apply::submit::topologies(&all, &cli.build_dir, key, user)
}
