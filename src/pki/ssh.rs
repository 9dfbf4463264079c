//! Every node's SSH host key, made once with ssh-keygen in the recipe's secrets directory
//! (`ssh/NODE_ed25519`, 0600, and its `.pub`) and reused after, so rebuilds stay bit-identical.
//! The private half goes only into that node's image (`/etc/ssh/ssh_host_ed25519_key`, root,
//! 0600; cloud-init told to neither delete nor make host keys). The operator's side pins it:
//! `ssh/known_hosts` lists every node's public key under the node's name, and the logins of
//! `imgbuild ssh`, `update` and the checks use it with `HostKeyAlias=NODE` and strict checking,
//! so a machine that answers at a node's address without that node's key is refused, whatever
//! address was given.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::layout::{FileSpec, SSH_HOST_KEY, SSH_HOST_KEY_PUB, SSHD_HOST_KEY_CONF};
use crate::plan::Plan;
use crate::util::run::Cmd;
use crate::util::tools::SSH_KEYGEN;

/// The node's host key in the secrets directory (its public half is this plus `.pub`).
pub fn host_key(plan: &Plan) -> PathBuf {
    plan.pki
        .dir
        .join("ssh")
        .join(format!("{}_ed25519", plan.node.name))
}

fn public(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The operator's known_hosts for the cluster: one line per node that has a key, `NODE KEY`.
pub fn known_hosts(plan: &Plan) -> PathBuf {
    plan.pki.dir.join("ssh").join("known_hosts")
}

/// ssh's options that pin `plan`'s node's host key (None when imgbuild made none for it: then
/// nothing can be pinned, and the caller says so rather than trusting blindly).
pub fn pin_options(plan: &Plan) -> Option<Vec<String>> {
    let kh = known_hosts(plan);
    if !public(&host_key(plan)).is_file() || !kh.is_file() {
        return None;
    }
    Some(
        [
            "-o".to_string(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            format!("HostKeyAlias={}", plan.node.name),
            "-o".into(),
            "HostKeyAlgorithms=ssh-ed25519".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
        .into(),
    )
}

/// Make the host keys `plans` lack (written to a temporary name, renamed when complete), then
/// the known_hosts of every key in the directory.
pub fn ensure(plans: &[&Plan]) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    let dir = first.pki.dir.join("ssh");
    super::secrets_dir(&first.pki.dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for p in plans {
        let key = host_key(p);
        if key.is_file() && public(&key).is_file() {
            continue;
        }
        crate::util::tools::require(&[SSH_KEYGEN])?;
        let tmp = dir.join(format!(".{}.{}.tmp", p.node.name, std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(public(&tmp));
        Cmd::new(SSH_KEYGEN.command)
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("root@{} (imgbuild host key)", p.node.hostname))
            .arg("-f")
            .arg(&tmp)
            .run()
            .with_context(|| format!("making {}'s SSH host key", p.node.name))?;
        std::fs::rename(public(&tmp), public(&key))?;
        std::fs::rename(&tmp, &key)?;
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| Some(n.strip_suffix("_ed25519.pub")?.to_string()))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut text = String::from(
        "# Written by imgbuild: every node's SSH host key, by node name (HostKeyAlias).\n",
    );
    for n in names {
        let path = dir.join(format!("{n}_ed25519.pub"));
        let line = std::fs::read_to_string(&path)?;
        let mut f = line.split_whitespace();
        let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
            bail!("{}: not an SSH public key", path.display());
        };
        text.push_str(&format!("{n} {kind} {b64}\n"));
    }
    let kh = dir.join("known_hosts");
    if std::fs::read_to_string(&kh).ok().as_deref() != Some(text.as_str()) {
        crate::fetch::cache::write_atomic(&kh, text.as_bytes())?;
    }
    Ok(())
}

/// The node's host key files for its image: the key (root, 0600), its public half, and the sshd
/// drop-in that makes it the only host key sshd offers.
pub fn node_files(plan: &Plan) -> Result<Vec<FileSpec>> {
    let key = host_key(plan);
    let read = |p: &Path| -> Result<Vec<u8>> {
        std::fs::read(p).with_context(|| format!("reading {} (imgbuild makes it)", p.display()))
    };
    Ok(vec![
        FileSpec {
            path: SSH_HOST_KEY.trim_start_matches('/').into(),
            content: read(&key)?,
            mode: 0o600,
            owner: None,
        },
        FileSpec {
            path: SSH_HOST_KEY_PUB.trim_start_matches('/').into(),
            content: read(&public(&key))?,
            mode: 0o644,
            owner: None,
        },
        FileSpec {
            path: SSHD_HOST_KEY_CONF.trim_start_matches('/').into(),
            content: format!(
                "# Written by imgbuild: the node's own host key, made with its image and pinned by\n# the operator's imgbuild (known_hosts in the recipe's secrets directory).\nHostKey {SSH_HOST_KEY}\n"
            )
            .into_bytes(),
            mode: 0o644,
            owner: None,
        },
    ])
}

/// What the build key sees: the digest of the public half (a new key rebuilds the node).
pub fn key_entry(plan: &Plan) -> (String, String) {
    use sha2::{Digest, Sha256};
    let d = std::fs::read(public(&host_key(plan)))
        .map(|b| hex::encode(Sha256::digest(b)))
        .unwrap_or_else(|_| "absent".into());
    ("ssh.host_key".into(), d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The reference recipe, its secrets in a temporary directory: one ed25519 key per node,
    /// 0600, made once and reused; known_hosts names every node with its key; the image gets the
    /// node's own key and no other's; ssh is told to check it strictly under the node's name.
    #[test]
    fn host_keys_are_made_once_pinned_and_only_in_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml"),
        )
        .unwrap();
        let loaded = crate::recipe::parse(&dir.path().join("recipe.yaml"), text).unwrap();
        let cluster = crate::plan::resolve(&loaded).unwrap();
        let plans: Vec<&Plan> = cluster.nodes.iter().collect();
        assert!(
            pin_options(plans[0]).is_none(),
            "no key yet, nothing to pin"
        );
        ensure(&plans).unwrap();
        let key = host_key(plans[0]);
        let first = std::fs::read(&key).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        ensure(&plans).unwrap();
        assert_eq!(
            std::fs::read(&key).unwrap(),
            first,
            "a rebuild reuses the key"
        );
        let kh = std::fs::read_to_string(known_hosts(plans[0])).unwrap();
        for p in &plans {
            let pubkey = std::fs::read_to_string(public(&host_key(p))).unwrap();
            let b64 = pubkey.split_whitespace().nth(1).unwrap();
            assert!(
                kh.contains(&format!("\n{} ssh-ed25519 {b64}\n", p.node.name)),
                "{kh}"
            );
        }
        let files = node_files(plans[1]).unwrap();
        let own = std::fs::read(host_key(plans[1])).unwrap();
        assert_eq!(files[0].content, own);
        assert_eq!((files[0].mode, files[0].owner), (0o600, None));
        assert!(
            !files.iter().any(|f| f.content == first),
            "node1's key in node2's image"
        );
        let pin = pin_options(plans[1]).unwrap().join(" ");
        assert!(
            pin.contains("StrictHostKeyChecking=yes") && pin.contains("HostKeyAlias=node2"),
            "{pin}"
        );
    }
}
