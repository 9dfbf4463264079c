//! `imgbuild NODE...`/`build` and `rootfs`: what is up to date, what is rebuilt, and why.

use super::*;

/// `imgbuild rootfs NODE`: fetch, compose the shared tree (once), the node's tree, and tar it.
pub fn rootfs(cli: &Cli, node: &str, output: Option<&std::path::Path>) -> Result<()> {
    let s = fetch_setup(cli)?;
    let plan = node_plan(&s.cluster, &cli.recipe, node)?.clone();
    let fetched = fetch_with(cli, &s)?;
    crate::pki::ensure(&[&plan])?;
    let common = crate::rootfs::common_tree(&plan, &fetched, &cli.build_dir)?;
    let tls = crate::rootfs::render::secret_files(&plan)?;
    let tree = crate::rootfs::node_tree(&plan, &common, &cli.build_dir, &tls, &plan.overlays)?;
    let out = output.map_or_else(
        || std::path::Path::new("images").join(node).join("rootfs.tar"),
        |p| p.to_path_buf(),
    );
    let epoch = plan
        .source_date_epoch
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok())
        .unwrap_or(0);
    crate::util::stage::stage("tar", || {
        let n = crate::rootfs::write_tar(&tree, &out, epoch)?;
        Ok(((), format!("{}: {n} entries, mtime {epoch}", out.display())))
    })
}

/// The plans `names` ask for (`all` = every node), in recipe order, each once.
pub(super) fn select<'a>(
    cluster: &'a ClusterPlan,
    recipe: &std::path::Path,
    names: &[String],
) -> Result<Vec<&'a Plan>> {
    if names.iter().any(|n| n == "all") {
        return Ok(cluster.nodes.iter().collect());
    }
    let mut out: Vec<&Plan> = Vec::new();
    for n in names {
        let p = node_plan(cluster, recipe, n)?;
        if !out.iter().any(|q| q.node.name == p.node.name) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `imgbuild NODE...` / `imgbuild build NODE...`: fetch, compose, emit images/<node>/ for each.
/// `imgbuild build NODE...`: check, fetch, decide per node whether it is up to date and why
/// not, build the shared tree once and each stale node, report.
pub fn build(cli: &Cli, names: &[String], force: bool, dry_run: bool, json: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    let s = fetch_setup(cli)?;
    let plans = select(&s.cluster, &cli.recipe, names)?;
    refuse_unbootable(cli, &plans)?;
    if !dry_run {
        crate::util::tools::require(&crate::image::build_tools(&plans))?;
        crate::util::fs::require_root("building images")?;
        crate::pki::ensure(&plans)?;
    }
    let names: Vec<&str> = plans.iter().map(|p| p.node.name.as_str()).collect();
    eprintln!(
        "building {} from {}",
        names.join(", "),
        cli.recipe.display()
    );
    let t = std::time::Instant::now();
    let fetched = fetch_with(cli, &s)?;
    let fetch_secs = t.elapsed().as_secs_f64();
    let states = crate::image::key::assess(&cli.images, &plans, &fetched, force)?;
    if dry_run {
        return report_dry_run(cli, &plans, &states, json, t0);
    }
    let t = std::time::Instant::now();
    let common = if states.iter().all(|st| st.fresh.is_some()) {
        None
    } else {
        Some(crate::rootfs::common_tree(
            plans[0],
            &fetched,
            &cli.build_dir,
        )?)
    };
    let common_secs = t.elapsed().as_secs_f64();
    let mut built = Vec::new();
    for (plan, st) in plans.iter().zip(states.iter().cloned()) {
        let mut stages = crate::image::Stages::new(&plan.node.name);
        if built.is_empty() {
            stages.times.push(("fetch".into(), fetch_secs));
            stages.times.push(("common".into(), common_secs));
        }
        built.push(build_node(
            cli,
            plan,
            st,
            common.as_deref(),
            &fetched,
            stages,
        )?);
    }
    let why = states.into_iter().map(|st| st.why).collect();
    // The whole cluster's, whichever nodes were built: it follows the recipe, not one image.
    let prom = cli.images.join("prometheus");
    let written = crate::monitor::write(&prom, &s.cluster)?;
    report_built(cli, built, why, json, t0)?;
    if !json {
        println!("{}", super::prometheus_line(&prom, &s.cluster, &written));
    }
    Ok(())
}

/// A disk image needs a kernel and a boot chain: say so before downloading anything.
pub(super) fn refuse_unbootable(cli: &Cli, plans: &[&Plan]) -> Result<()> {
    let Some(why) = plans.first().and_then(|p| p.base.boot.missing()) else {
        return Ok(());
    };
    let b = &plans[0].base;
    let what = plans[0].base_description();
    bail!(
        "{}: base ({what}) cannot boot: {why}\n\nhint: {}",
        cli.recipe.display(),
        match b.kind {
            recipe::BaseKind::UbuntuCloud =>
                "use `kind: mmdebstrap` with suite noble and linux-generic, initramfs-tools, shim-signed, grub-efi-amd64-signed (as recipes/cluster.yaml does), or build only the root filesystem with `imgbuild rootfs NODE`",
            _ =>
                "add them to base.packages, e.g. linux-generic initramfs-tools shim-signed grub-efi-amd64-signed on Ubuntu (linux-image-amd64 on Debian)",
        }
    );
}

/// `build --dry-run`: what would be rebuilt and why, building nothing.
pub(super) fn report_dry_run(
    cli: &Cli,
    plans: &[&Plan],
    states: &[crate::image::key::NodeState],
    json: bool,
    t0: std::time::Instant,
) -> Result<()> {
    if json {
        return crate::report::print(&crate::report::Build {
            schema: 1,
            command: "build",
            recipe: cli.recipe.display().to_string(),
            dry_run: true,
            nodes: plans
                .iter()
                .zip(states)
                .map(|(p, st)| crate::report::BuildNode {
                    node: p.node.name.clone(),
                    dir: cli.images.join(&p.node.name).display().to_string(),
                    rebuild: st.why.is_some(),
                    why: st.why.clone(),
                    outputs: Vec::new(),
                    stages: Vec::new(),
                })
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let mut out = std::io::stdout().lock();
    for (p, st) in plans.iter().zip(states) {
        match &st.why {
            None => writeln!(out, "{}: up to date", p.node.name)?,
            Some(w) => writeln!(out, "{}: would rebuild: {w}", p.node.name)?,
        }
    }
    Ok(())
}

/// One node: left alone when up to date, else its tree over the shared one and its images.
pub(super) fn build_node(
    cli: &Cli,
    plan: &Plan,
    st: crate::image::key::NodeState,
    common: Option<&std::path::Path>,
    fetched: &[Fetched],
    mut stages: crate::image::Stages,
) -> Result<crate::image::Built> {
    let name = &plan.node.name;
    if let Some(outputs) = st.fresh {
        crate::util::fs::remove_stale(&cli.images, &format!(".{name}.tmp-"))?;
        eprintln!(
            "[{name}] up to date: {} matches its inputs (build key {}); nothing rewritten",
            cli.images.join(name).display(),
            &st.key[..12]
        );
        return Ok(crate::image::Built {
            node: name.clone(),
            dir: cli.images.join(name),
            outputs,
            stages: stages.times,
        });
    }
    if let Some(w) = &st.why {
        eprintln!("[{name}] rebuilding: {w}");
    }
    let common = common.expect("built when a node needs it");
    let t = std::time::Instant::now();
    let tls = crate::rootfs::render::secret_files(plan)?;
    let tree = crate::rootfs::node_tree(plan, common, &cli.build_dir, &tls, &plan.overlays)?;
    stages
        .times
        .push(("node".into(), t.elapsed().as_secs_f64()));
    crate::image::build(
        &crate::image::BuildContext {
            plan,
            tree: &tree,
            common: Some(common),
            fetched,
            build_dir: &cli.build_dir,
            epoch: crate::image::key::epoch_of(plan),
            key: &st.key,
        },
        &cli.images,
        &mut stages,
    )
    .with_context(|| format!("{}: node {name}", cli.recipe.display()))
}

/// What was built (or found up to date): each node's outputs with sizes and digests, stage
/// times and the total; or the same as JSON.
pub(super) fn report_built(
    cli: &Cli,
    built: Vec<crate::image::Built>,
    why: Vec<Option<String>>,
    json: bool,
    t0: std::time::Instant,
) -> Result<()> {
    if json {
        return crate::report::print(&crate::report::Build {
            schema: 1,
            command: "build",
            recipe: cli.recipe.display().to_string(),
            dry_run: false,
            nodes: built
                .into_iter()
                .zip(why)
                .map(|(b, w)| crate::report::BuildNode {
                    node: b.node,
                    dir: b.dir.display().to_string(),
                    rebuild: w.is_some(),
                    why: w,
                    outputs: b.outputs,
                    stages: b.stages,
                })
                .collect(),
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let mut out = std::io::stdout().lock();
    for b in &built {
        writeln!(out, "{}: {}", b.node, b.dir.display())?;
        for o in &b.outputs {
            writeln!(
                out,
                "  {:<22} {:>10}  sha256 {}",
                o.file,
                crate::util::fmt::human(o.size),
                o.sha256
            )?;
        }
        let times: Vec<String> = b
            .stages
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}s"))
            .collect();
        writeln!(out, "  time: {}", times.join(", "))?;
    }
    writeln!(
        out,
        "built {} node{} in {:.1}s",
        built.len(),
        if built.len() == 1 { "" } else { "s" },
        t0.elapsed().as_secs_f64()
    )?;
    Ok(())
}
