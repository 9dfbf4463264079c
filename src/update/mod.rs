//! `imgbuild update NODE`: bring a running node to the image `imgbuild build` made, through its
//! other root slot. The node keeps running the current slot while the new root filesystem is
//! streamed into the other one (mapped ranges only) and verified there by SHA-256; then GRUB is
//! told to try the new slot once and the node restarts. The tried system makes itself the
//! default only when its own health passes (`imgbuild-slot.service`); otherwise it restarts, and
//! GRUB, its one try spent, boots the previous slot: the node decides, not this machine.

pub mod image;
pub mod node;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::plan::Plan;

/// What `update` was asked.
pub struct Options {
    /// The node's address when it is not the plan's (metal on another network).
    pub host: Option<String>,
    pub dry_run: bool,
    pub timeout: Duration,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
    /// Run right before the node is restarted into the new slot, once the slot is written and
    /// armed (`roll`: Kafka's controlled shutdown). When it fails, update stops before the
    /// restart; the slot stays armed, so the node's next restart tries it (and judges it).
    pub before_restart: Option<Box<dyn Fn() -> Result<()>>>,
}

/// How an update ended when it did not fail before touching the node.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The node already runs this image.
    Current,
    /// `--dry-run`: what would be done.
    Planned,
    /// The new slot runs and is the default.
    Updated,
}

fn other(slot: &str) -> &'static str {
    if slot == "a" { "b" } else { "a" }
}

/// How `what` (update, roll) logs into `plan`'s node: the recipe's sudo user with an SSH key (or
/// `key`, `user`), its host key pinned; refused when there is no such user or no pinned key.
pub fn login(
    plan: &Plan,
    build_dir: &std::path::Path,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
    what: &str,
) -> Result<crate::vm::member::Login> {
    let name = &plan.node.name;
    let mut login = crate::vm::member::login(plan, build_dir).ok_or_else(|| {
        anyhow::anyhow!(
            "{name}: the recipe has no user with `sudo: true` and an SSH key, so {what} cannot log into the node"
        )
    })?;
    if let Some(k) = key {
        login.key = Some(k.clone());
    }
    if let Some(u) = user {
        login.user = u.clone();
    }
    if login.pin.is_none() {
        bail!(
            "{name}: no SSH host key of it in {}, so the node cannot be told from another machine at its address: its image predates pinned host keys; rebuild and reflash it once",
            crate::pki::ssh::known_hosts(plan).display()
        );
    }
    Ok(login)
}

/// Update `plan`'s node from `images` (see the module's text).
// Long on purpose: the update's steps in order (image, node, checks, write, arm, restart, wait),
// each a call and its one-line message.
pub fn run(
    plan: &Plan,
    images: &std::path::Path,
    build_dir: &std::path::Path,
    o: &Options,
) -> Result<Outcome> {
    let name = plan.node.name.as_str();
    let t = Instant::now();
    let img = image::open(images, name, &plan.cluster)?;
    let login = login(plan, build_dir, o.key.as_ref(), o.user.as_ref(), "update")?;
    let node = node::Node {
        name: name.to_string(),
        addr: o.host.clone().unwrap_or_else(|| plan.node.ip.to_string()),
        login,
        known_hosts: crate::pki::ssh::known_hosts(plan),
    };
    let st = node.status()?;
    let Some(running) = st.running.clone() else {
        bail!(
            "{name} ({}): its root is in neither root slot (imgbuild-root-a/-b): not an imgbuild node of this layout",
            node.addr
        );
    };
    if let Some(e) = &st.env_error {
        bail!(
            "{name} ({}): {e}: the node was flashed with an image of the old layout; move it once with `imgbuild flash` (README: migrating)",
            node.addr
        );
    }
    let want = crate::rootfs::render::data_identity(plan);
    match &st.identity {
        Some(have) if *have != want => bail!(
            "{name} ({}): its data partition belongs to {}, this image is for {}: refusing",
            node.addr,
            have.trim().replace('\n', " "),
            want.trim().replace('\n', " ")
        ),
        None => bail!(
            "{name} ({}): no identity record on its data partition (imgbuild-data.service not done?): refusing",
            node.addr
        ),
        _ => {}
    }
    let current = st.running_record();
    if current.is_some_and(|r| r.build_key == img.record.build_key) {
        println!(
            "{name}: already runs this image (root slot {running}, build key {}): nothing to do",
            &img.record.build_key[..12.min(img.record.build_key.len())]
        );
        return Ok(Outcome::Current);
    }
    if !st.tried.is_empty() && st.tried == running && st.default != running {
        bail!(
            "{name} ({}): root slot {running} is on trial (default slot {}): wait for its verdict, then update again",
            node.addr,
            st.default
        );
    }
    let slot = other(&running);
    if st.other_device.is_none() {
        bail!(
            "{name} ({}): its disk has no root slot {slot} (systemd-repart makes it at first boot; an image of the old layout has none): move it once with `imgbuild flash` (README: migrating)",
            node.addr
        );
    }
    let changes = match current {
        Some(r) => crate::image::key::changes(&r.build_inputs, &img.record.build_inputs),
        None => vec![format!("root slot {running} records no image")],
    };
    image::fits(
        &img,
        name,
        slot.chars().next().unwrap_or('b'),
        st.other_bytes,
    )?;
    eprintln!(
        "{name} ({}): runs root slot {running}; {} brings build key {} into slot {slot} ({} MiB of data in a {} MiB root): {}",
        node.addr,
        img.dir.display(),
        &img.record.build_key[..12.min(img.record.build_key.len())],
        img.root_data >> 20,
        img.root.1 >> 20,
        changes.join("; ")
    );
    if o.dry_run {
        println!(
            "{name}: would write root slot {slot}, try it once and keep it when healthy (dry run: nothing written)"
        );
        return Ok(Outcome::Planned);
    }
    let w = Instant::now();
    let (said, sent) = node.receive(&img, slot)?;
    eprintln!(
        "{name}: {said}; {} MiB sent in {:.0}s",
        sent >> 20,
        w.elapsed().as_secs_f64()
    );
    let entry = crate::image::boot::slot_entry(
        slot.chars().next().unwrap_or('b'),
        &img.record.kernel,
        &img.record.root_uuid,
        &img.cmdline,
    );
    eprintln!("{name}: {}", node.arm(slot, &entry, &img.record)?);
    if let Some(f) = &o.before_restart {
        f()?;
    }
    node.reboot()?;
    eprintln!("{name}: restarting into root slot {slot}");
    wait(
        &node,
        &st.boot_id,
        &running,
        slot,
        &img.record.build_key,
        t,
        o.timeout,
    )
}

/// Wait for the node's verdict on the slot it tries.
fn wait(
    node: &node::Node,
    old_boot: &str,
    from: &str,
    slot: &str,
    key: &str,
    t: Instant,
    timeout: Duration,
) -> Result<Outcome> {
    let name = &node.name;
    let mut said = String::new();
    let mut last_err = String::new();
    while t.elapsed() < timeout {
        std::thread::sleep(Duration::from_secs(5));
        let st = match node.status() {
            Ok(st) => st,
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        if st.boot_id == old_boot {
            continue;
        }
        let trial = st.trial.clone().unwrap_or_default();
        let running = st.running.as_deref().unwrap_or("?");
        let now = format!("{running}/{}", trial.state);
        if now != said {
            eprintln!(
                "{name}: up in root slot {running} after {:.0}s (trial of slot {}: {})",
                t.elapsed().as_secs_f64(),
                trial.slot,
                trial.state
            );
            said = now;
        }
        if trial.build_key != key {
            continue;
        }
        match (running == slot, trial.state.as_str()) {
            (true, "committed") if st.default == slot => {
                println!(
                    "{name}: updated: root slot {slot} runs build key {} and is the default (was slot {from}); healthy after {:.0}s",
                    &key[..12.min(key.len())],
                    t.elapsed().as_secs_f64()
                );
                return Ok(Outcome::Updated);
            }
            (false, "failed") if running == from => bail!(
                "{name}: the new image in root slot {slot} was not kept ({}); the node went back to root slot {from} by itself and runs it",
                trial.reason
            ),
            _ => {}
        }
    }
    bail!(
        "{name}: no verdict on root slot {slot} after {}s{}; the node decides by itself (its boot counter falls back to slot {from} unless the new slot proves healthy)",
        timeout.as_secs(),
        if last_err.is_empty() {
            String::new()
        } else {
            format!(" (last: {last_err})")
        }
    )
}
