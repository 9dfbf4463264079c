//! `imgbuild update`: a running node to its new image, through the other root slot.

use super::*;

pub fn update(cli: &Cli, a: &crate::cli::UpdateArgs) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let plan = node_plan(&cluster, &cli.recipe, &a.node)?;
    crate::util::tools::require(&[crate::util::tools::SSH])?;
    // A node of a running `imgbuild up` or `boot` is on that run's private network: go in.
    if a.host.is_none() && crate::vm::hostlink::pid_file(&cli.build_dir).is_file() {
        crate::vm::hostlink::enter(&cli.build_dir)?;
    }
    let o = crate::update::Options {
        host: a.host.clone(),
        dry_run: a.dry_run,
        timeout: std::time::Duration::from_secs(a.timeout),
        key: a.identity.clone(),
        user: a.user.clone(),
        before_restart: None,
    };
    crate::update::run(plan, &cli.images, &cli.build_dir, &o).map(|_| ())
}
