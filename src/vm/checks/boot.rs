//! Booting a cluster member again during the checks (the node loss), shared by the checks and
//! by `up`, which does the booting: a leaf, so that the check table and the checks it lists do
//! not import each other.

use std::time::Instant;

use anyhow::Result;

use crate::vm::member::Member;

/// A member booted already: when, and how long its console log was then.
pub type Booted = (Instant, u64);

/// Boot a stopped member, noting when and where its console log then ended.
pub fn boot_marked(c: &mut Member) -> Result<Booted> {
    let from = std::fs::metadata(c.log()).map_or(0, |m| m.len());
    let at = Instant::now();
    c.boot()?;
    Ok((at, from))
}

/// Boot a member again (unless it was: [`Booted`]) and wait until its health unit says healthy:
/// the seconds from its boot.
pub type Reboot<'a> = dyn FnMut(&mut Member, Option<Booted>) -> Result<f64> + 'a;
