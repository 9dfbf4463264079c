//! `imgbuild verify`: a node's outputs against SHA256SUMS, the manifest, the bmap and the provenance.

use super::*;

/// `imgbuild verify NODE...`: SHA256SUMS, the bmap and the manifest of images/<node>/.
pub fn verify(cli: &Cli, names: &[String], json: bool) -> Result<()> {
    let cluster = resolve(&cli.recipe)?;
    let plans = select(&cluster, &cli.recipe, names)?;
    let mut failed = Vec::new();
    let mut report = Vec::new();
    for p in plans {
        let dir = cli.images.join(&p.node.name);
        let (ok, detail) = match crate::image::verify::verify_dir(&dir, p) {
            Ok(note) => {
                eprintln!("{}: ok ({note})", dir.display());
                (true, note)
            }
            Err(e) => {
                eprintln!("{}: FAILED\n  {e:#}", dir.display());
                failed.push(p.node.name.clone());
                (false, format!("{e:#}"))
            }
        };
        report.push(crate::report::VerifyNode {
            node: p.node.name.clone(),
            dir: dir.display().to_string(),
            ok,
            detail,
        });
    }
    if json {
        crate::report::print(&crate::report::Verify {
            schema: 1,
            command: "verify",
            ok: failed.is_empty(),
            nodes: report,
        })?;
    }
    if !failed.is_empty() {
        anyhow::bail!("verification failed for {}", failed.join(", "));
    }
    Ok(())
}
