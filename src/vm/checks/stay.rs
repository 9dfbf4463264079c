//! The `after the stay` check (`up --check --stay`): the cluster kept up until interrupted while
//! `imgbuild roll` swaps its containers' trees; then every node's own health round as it is now
//! (not as `up` saw it before the stay) and the topology's counts again: of every sentence sent,
//! those fed during the stay (while the roll moved its worker) included.

use std::time::Duration;

use super::{Ctx, HEALTH_ROUND, Phase, parse_health};
use crate::vm::member::Member;

pub fn after_stay(c: &mut Ctx) -> Phase {
    let stay = &mut *c.stay;
    let members = &mut *c.members;
    let mut wc = c.wordcount.as_mut();
    Phase::timed("after the stay", |lines, failures| {
        let (l, f) = stay(members, wc.as_deref_mut());
        lines.extend(l);
        failures.extend(f);
        for m in members.iter() {
            match health_round(m) {
                Ok(l) => lines.push(l),
                Err(e) => failures.push(format!("{}: after the stay: {e}", m.name())),
            }
        }
        if let Some(w) = wc {
            let via = w.via().to_string();
            lines.push(format!(
                "topology after the stay: {}",
                w.more(members, &via, Duration::from_secs(300))?
            ));
        }
        Ok(())
    })
}

/// `m`'s health round now: a line when every check passed, else what failed.
fn health_round(m: &Member) -> Result<String, String> {
    let o = m
        .exec(&HEALTH_ROUND, Duration::from_secs(180))
        .map_err(|e| format!("{e:#}"))?;
    let checks = parse_health(&String::from_utf8_lossy(&o.stdout));
    if checks.is_empty() {
        return Err("no health round".into());
    }
    let bad: Vec<&str> = checks
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(n, _)| n.as_str())
        .collect();
    if bad.is_empty() {
        Ok(format!(
            "{}: health round ok ({} checks)",
            m.name(),
            checks.len()
        ))
    } else {
        Err(format!("health FAIL: {}", bad.join(", ")))
    }
}
