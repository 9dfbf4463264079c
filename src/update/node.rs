//! The node's side of an update, reached over SSH as the recipe's sudo user: `slot status`,
//! `receive`, `arm`, and the reboot.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::image::SlotRecord;
use crate::util::run::Cmd;
use crate::vm::member::Login;

/// How to reach the node.
pub struct Node {
    pub name: String,
    pub addr: String,
    pub login: Login,
    /// Where the node's pinned host key is (for the refusal's words).
    pub known_hosts: std::path::PathBuf,
}

/// `slot status` as the node reports it.
#[derive(serde::Deserialize, Debug)]
pub struct Status {
    pub running: Option<String>,
    pub other: Option<String>,
    pub other_device: Option<String>,
    #[serde(default)]
    pub other_bytes: u64,
    #[serde(default)]
    pub default: String,
    #[serde(default, rename = "try")]
    pub tried: String,
    pub env_error: Option<String>,
    #[serde(default)]
    pub records: BTreeMap<String, Option<SlotRecord>>,
    pub trial: Option<Trial>,
    pub identity: Option<String>,
    pub boot_id: String,
}

/// The record of the last slot tried (`EFI/imgbuild/trial.json`).
#[derive(serde::Deserialize, Debug, Clone, Default)]
pub struct Trial {
    #[serde(default)]
    pub slot: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub build_key: String,
}

impl Status {
    pub fn running_record(&self) -> Option<&SlotRecord> {
        self.records.get(self.running.as_deref()?)?.as_ref()
    }
}

const SLOT: &str = "/usr/lib/imgbuild/slot";

impl Node {
    fn ssh(&self, timeout: Duration) -> Cmd {
        crate::vm::member::ssh_command(&self.login, &self.addr, timeout)
    }

    /// Run `sudo -n ARGS` on the node: (exit status, stdout, stderr's last line).
    fn sudo(&self, args: &[&str], timeout: Duration) -> Result<(i32, String, String)> {
        let o = self
            .ssh(timeout)
            .arg("sudo")
            .arg("-n")
            .args(args)
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            last.trim().to_string(),
        ))
    }

    /// The node's slot state; Err when it cannot be reached (ssh's own words) or has no slot tool.
    pub fn status(&self) -> Result<Status> {
        let (code, out, err) = self.sudo(&[SLOT, "status"], Duration::from_secs(60))?;
        match code {
            0 => serde_json::from_str(&out)
                .with_context(|| format!("{}: `slot status` answered {out:?}", self.name)),
            255 if err.contains("Host key verification failed") => bail!(
                "{} ({}): the machine that answers does not hold {}'s SSH host key (pinned from its image, {}): refused, nothing written",
                self.name,
                self.addr,
                self.name,
                self.known_hosts.display()
            ),
            255 | 124 => bail!(
                "{} ({}): unreachable over SSH as {}: {}",
                self.name,
                self.addr,
                self.login.user,
                if err.is_empty() {
                    "no answer"
                } else {
                    err.as_str()
                }
            ),
            _ if err.contains("No such file") || err.contains("command not found") => bail!(
                "{} ({}): runs an image without A/B root slots (no {SLOT}): it was built by an older imgbuild; move it to the new layout once with `imgbuild flash` (see the README: it needs the node's state backed up, an old-layout disk has no data partition to keep)",
                self.name,
                self.addr
            ),
            _ => bail!(
                "{} ({}): `sudo {SLOT} status` failed: {err}",
                self.name,
                self.addr
            ),
        }
    }

    /// Write the root partition into `slot`: the node is told every piece with its SHA-256,
    /// names the data pieces its running slot does not hold at the same place, copies the others
    /// from there, receives those, zeroes the holes, and reads the whole slot back against the
    /// digests. Returns the node's last line and the bytes sent.
    pub fn receive(&self, img: &super::image::NewImage, slot: &str) -> Result<(String, u64)> {
        use std::io::BufRead;
        let pieces = super::image::pieces(img)?;
        let bytes = super::image::root_bytes(img).to_string();
        let mut child = self
            .ssh(Duration::from_secs(6 * 3600))
            .arg("sudo")
            .arg("-n")
            .args([SLOT, "receive", slot, &bytes])
            .spawn(Stdio::piped(), Stdio::piped(), Stdio::piped())?;
        let mut stdin = std::io::BufWriter::new(child.stdin.take().context("ssh's stdin")?);
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("ssh's stdout")?);
        let sent = (|| -> Result<u64> {
            super::image::write_plan(&pieces, &mut stdin)?;
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let need: Vec<usize> = line
                .strip_prefix("need")
                .with_context(|| format!("the node answered {line:?} to the plan"))?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("the node answered {line:?} to the plan"))?;
            super::image::write_pieces(img, &pieces, &need, &mut stdin)
        })();
        drop(stdin);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let o = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        if !o.status.success() {
            bail!(
                "{}: writing root slot {slot} failed: {}",
                self.name,
                if last.is_empty() {
                    format!("ssh exited with {}", o.status)
                } else {
                    last
                }
            );
        }
        let sent = sent.with_context(|| format!("{}: sending the root filesystem", self.name))?;
        Ok((rest.trim().to_string(), sent))
    }

    /// Install the slot's boot entry and record, and have GRUB try it once.
    pub fn arm(&self, slot: &str, entry: &str, record: &SlotRecord) -> Result<String> {
        let doc = serde_json::json!({"entry": entry, "record": record});
        let mut child = self
            .ssh(Duration::from_secs(120))
            .arg("sudo")
            .arg("-n")
            .args([SLOT, "arm", slot])
            .spawn(Stdio::piped(), Stdio::piped(), Stdio::piped())?;
        child
            .stdin
            .take()
            .context("ssh's stdin")?
            .write_all(&serde_json::to_vec(&doc)?)?;
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "{}: arming root slot {slot} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Ask the node to restart (the connection may drop before ssh reports anything).
    pub fn reboot(&self) -> Result<()> {
        let (code, _, err) = self.sudo(&["systemctl", "reboot"], Duration::from_secs(60))?;
        if code != 0 && code != 255 {
            bail!("{}: `systemctl reboot` failed: {err}", self.name);
        }
        Ok(())
    }
}
