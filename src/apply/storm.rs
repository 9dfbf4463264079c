//! Storm's own commands on a node, as `submit`, `roll` and `up --check` run them: `storm list`,
//! `storm kill`, and the image's example topology's name and place. A leaf: it knows how to run
//! a command on a node only through the `Run` it is given.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The image's example topology (examples/python-wordcount): its name (its wordcount.properties'
/// `topology.name`) and where every Storm image installs it.
pub(crate) const WC_NAME: &str = "python-wordcount";
pub(crate) const WC_DIR: &str = "/usr/share/imgbuild/examples/python-wordcount";

/// `storm ARGS...` with the image's configuration and Python, as root on a node.
pub(crate) fn storm(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "/usr/bin/env",
        "STORM_CONF_DIR=/etc/storm",
        "PYTHON=/opt/python/bin/python3",
        "/opt/storm/bin/storm",
    ]
    .map(String::from)
    .to_vec();
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// Runs a command as root on a node (`secs` at most) and returns its stdout, or an error when it
/// failed: a member's `tool`, or roll's SSH to a node.
pub(crate) type Run<'a> = dyn Fn(&[&str], u64) -> Result<String> + 'a;

/// The example topology's status in `storm list` (None: not listed).
pub(crate) fn example_status(run: &Run) -> Result<Option<String>> {
    status_of(run, WC_NAME)
}

/// `storm list`'s rows: name, status, tasks, workers, uptime (seconds), as Storm prints them.
pub(crate) fn list(run: &Run) -> Result<Vec<Vec<String>>> {
    let cmd = storm(&["list"]);
    let out = run(&cmd.iter().map(String::as_str).collect::<Vec<_>>(), 180)?;
    Ok(parse_list(&out))
}

/// The rows of `storm list`'s table (not its header, its line of dashes, or log lines).
pub(crate) fn parse_list(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|cols| {
            cols.len() >= 5
                && cols[0] != "Topology_name"
                && !cols[0].starts_with("---")
                && cols[2].parse::<u64>().is_ok()
                && cols[3].parse::<u64>().is_ok()
        })
        .collect()
}

/// A topology's status in `storm list` (None: not listed).
pub(crate) fn status_of(run: &Run, name: &str) -> Result<Option<String>> {
    Ok(list(run)?
        .into_iter()
        .find(|cols| cols[0] == name)
        .map(|cols| cols[1].clone()))
}

/// Kill the example topology if it runs, and wait until `storm list` no longer shows it.
pub(crate) fn kill_example(run: &Run) -> Result<bool> {
    kill(run, WC_NAME)
}

/// Kill topology `name` if it runs (its workers given 1 s to finish), and wait until `storm
/// list` no longer shows it. Whether it ran.
pub(crate) fn kill(run: &Run, name: &str) -> Result<bool> {
    if status_of(run, name)?.is_none() {
        return Ok(false);
    }
    let cmd = storm(&["kill", name, "-w", "1"]);
    run(&cmd.iter().map(String::as_str).collect::<Vec<_>>(), 300)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(s) = status_of(run, name)? {
        if Instant::now() > deadline {
            bail!("{name} still listed as {s} 120s after `storm kill`");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    Ok(true)
}
