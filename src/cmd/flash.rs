//! `imgbuild flash`: the image onto a device, after the checks.

use super::*;

/// What `flash` writes: the raw image, its bmap if any, and the ranges to write.
pub(super) fn flash_inputs(
    cli: &Cli,
    o: &FlashArgs,
) -> Result<(
    std::path::PathBuf,
    Option<std::path::PathBuf>,
    crate::flash::WritePlan,
)> {
    use crate::flash;
    let node = o.node.as_str();
    let (image, bmap) = match &o.image {
        Some(img) => {
            let sibling = img.with_extension("bmap");
            (
                img.clone(),
                o.bmap.clone().or(sibling.is_file().then_some(sibling)),
            )
        }
        None => {
            let cluster = resolve(&cli.recipe)?;
            node_plan(&cluster, &cli.recipe, node)?;
            let dir = cli.images.join(node);
            let bmap = dir.join(crate::image::bmap_name(node));
            (
                dir.join(crate::image::raw_name(node)),
                o.bmap.clone().or(bmap.is_file().then_some(bmap)),
            )
        }
    };
    let size = std::fs::metadata(&image)
        .with_context(|| {
            format!(
                "{}: no image to flash (build it with `imgbuild {node}`)",
                image.display()
            )
        })?
        .len();
    let plan = match &bmap {
        Some(b) => {
            let text =
                std::fs::read_to_string(b).with_context(|| format!("reading {}", b.display()))?;
            flash::WritePlan::from_bmap(
                &crate::image::bmap::parse(&text).with_context(|| format!("{}", b.display()))?,
            )
        }
        None => {
            eprintln!(
                "note: no bmap for {}: every block is written and read back",
                image.display()
            );
            flash::WritePlan::whole(size)
        }
    };
    Ok((image, bmap, plan))
}

/// `imgbuild flash NODE DEVICE`
pub fn flash(cli: &Cli, o: &FlashArgs) -> Result<()> {
    use crate::flash;
    let device = o.device.as_path();
    let (image, bmap, plan) = flash_inputs(cli, o)?;
    let target = flash::inspect(device, plan.image_size, o.to_file)?;
    eprintln!("target: {}", target.describe());
    eprintln!(
        "image:  {} ({}), {} to write in {} ranges{}; partition tables last",
        image.display(),
        crate::util::fmt::human(plan.image_size),
        crate::util::fmt::human(plan.bytes()),
        plan.ranges.len(),
        bmap.as_ref()
            .map(|b| format!(" from {}", b.display()))
            .unwrap_or_default()
    );
    if target.size > plan.image_size {
        eprintln!(
            "        the target is {} bigger: the backup GPT will be moved to its end",
            crate::util::fmt::human(target.size - plan.image_size)
        );
    }
    let data = crate::flash::keep::for_target(&target, &image, plan.image_size, o.wipe_data)?;
    for l in &data.lines {
        eprintln!("        {l}");
    }
    if o.dry_run {
        let mut out = std::io::stdout().lock();
        for (a, b, _) in &plan.ranges {
            writeln!(
                out,
                "would write bytes {a}..{b} ({})",
                crate::util::fmt::human(b - a)
            )?;
        }
        writeln!(
            out,
            "dry run: nothing written to {} ({} in {} ranges)",
            device.display(),
            crate::util::fmt::human(plan.bytes()),
            plan.ranges.len()
        )?;
        return Ok(());
    }
    if !o.yes {
        flash::confirm(&target)?;
    }
    let f = flash::open(&target)?;
    let rep = flash::write(
        &target,
        &f,
        &flash::Options {
            image: &image,
            plan,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            data,
        },
    )?;
    eprintln!(
        "flashed {} onto {}: {} written in {:.1}s ({:.0} MB/s), every range read back and verified{}",
        image.display(),
        device.display(),
        crate::util::fmt::human(rep.written),
        rep.seconds,
        rep.written as f64 / rep.seconds.max(1e-6) / 1e6,
        if rep.relocated {
            "; backup GPT moved to the end"
        } else {
            ""
        }
    );
    Ok(())
}
