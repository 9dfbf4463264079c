//! `imgbuild boot`, `up`, `down` and `ssh`: running the images.

use super::*;

/// `imgbuild boot NODE`: the node's qcow2 (or raw) in QEMU with UEFI firmware (`vm::boot`).
pub fn boot(cli: &Cli, o: &BootArgs) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let plan = node_plan(&cluster, &cli.recipe, &o.node)?;
    let disk_size = match &o.disk_size {
        None => None,
        Some(text) => Some(
            crate::plan::parse_size(text)
                .with_context(|| format!("--disk-size {text}: not a size (write it like 16GiB)"))?,
        ),
    };
    crate::vm::boot::boot(
        plan,
        &cli.images,
        &cli.build_dir,
        &crate::vm::boot::Options {
            memory: o.memory,
            cpus: o.cpus,
            check: o.check,
            timeout: o.timeout,
            serial_log: o.serial_log.clone(),
            secure_boot: o.secure_boot,
            disk_size,
            nic: o.nic.clone(),
        },
    )
}

/// `imgbuild ssh NODE [-- CMD...]`: the user and key, then `vm::hostlink::ssh` (the node's host
/// key pinned).
pub fn ssh(
    cli: &Cli,
    node: &str,
    identity: Option<&std::path::Path>,
    user: Option<&str>,
    command: &[String],
) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let plans = select(&cluster, &cli.recipe, &[node.to_string()])?;
    let p = plans.first().context("no such node")?;
    let user = match user {
        Some(u) => u.to_string(),
        None => p
            .users
            .iter()
            .find(|u| !u.ssh_authorized_keys.is_empty())
            .map(|u| u.name.clone())
            .with_context(|| {
                format!(
                    "{}: no user with an SSH key, so nobody can log into {node}\n\nhint: add `users:` with `ssh_authorized_keys`, or name one with -l",
                    cli.recipe.display()
                )
            })?,
    };
    let default_key = cli.build_dir.join("ssh").join("id_ed25519");
    let key = identity
        .map(std::path::Path::to_path_buf)
        .or_else(|| default_key.is_file().then_some(default_key));
    Err(crate::vm::hostlink::ssh(
        &cli.build_dir,
        p,
        &user,
        key.as_deref(),
        command,
    ))
}

/// `imgbuild up [NODE...]`
pub fn up(cli: &Cli, args: &crate::cli::UpArgs) -> Result<()> {
    let (names, o) = (&args.nodes, &args.options());
    let cluster = resolve(&cli.recipe)?;
    let all = vec!["all".to_string()];
    let plans = select(
        &cluster,
        &cli.recipe,
        if names.is_empty() { &all } else { names },
    )?;
    crate::vm::cluster::preflight(&plans, o)?;
    crate::util::fs::require_root("imgbuild up (a private network namespace)")?;
    let Some(r) = crate::vm::cluster::up(&cluster, &plans, &cli.images, &cli.build_dir, o)? else {
        anyhow::ensure!(!o.check, "interrupted before the cluster could be judged");
        return Ok(());
    };
    if o.json {
        crate::report::print(&crate::report::Up::of(&plans, o, &r))?;
    }
    let failures = r.failures;
    if !failures.is_empty() {
        anyhow::bail!(
            "cluster check failed ({} problem{}):\n  {}",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" },
            failures.join("\n  ")
        );
    }
    if o.check {
        let msg = crate::vm::cluster::verdict(&r.states, &o.ignore, plans.len());
        if o.json {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }
    Ok(())
}

/// `imgbuild down`
pub fn down(cli: &Cli) -> Result<()> {
    let n = crate::vm::cluster::down(&cli.build_dir.join("up"))?;
    eprintln!("stopped {n} VM{}", if n == 1 { "" } else { "s" });
    Ok(())
}
