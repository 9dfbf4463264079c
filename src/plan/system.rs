//! What every node's operating system gets besides the services: the base, login users, the
//! disk, the PKI's place, the provenance signer and the overlays.

use super::*;

/// `recipes/cluster.yaml` → `recipes/cluster.secrets/` (beside it, like the lock file).
pub fn secrets_dir(recipe: &Path) -> PathBuf {
    crate::util::fs::beside(recipe, "secrets")
}

/// `pki`: the operator's CA certificate and key, both or neither, both existing files.
pub(super) fn resolve_pki(cx: &mut Ctx) -> PkiPlan {
    let dir = cx.loaded.path.parent().unwrap_or(Path::new(""));
    let p = &cx.loaded.recipe.pki;
    let operator_ca = match (&p.ca_cert, &p.ca_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let (c, k) = (dir.join(c), dir.join(k));
            for (path, key) in [(&c, "pki.ca_cert"), (&k, "pki.ca_key")] {
                if !path.is_file() {
                    cx.error(cx.at(key), format!("{}: no such file", path.display()));
                }
            }
            Some((c, k))
        }
        (Some(_), None) | (None, Some(_)) => {
            cx.error(
                cx.key_at("pki"),
                "the operator's CA needs both `ca_cert` and `ca_key`",
            );
            None
        }
    };
    PkiPlan {
        dir: secrets_dir(&cx.loaded.path),
        operator_ca,
    }
}

/// `provenance.signing_key`: the private key must exist and its public half (KEY.pub) be an
/// SSH public key; both named, relative to the recipe.
pub(super) fn resolve_signer(cx: &mut Ctx) -> Option<Signer> {
    let rel = cx.loaded.recipe.provenance.signing_key.as_deref()?;
    let dir = cx.loaded.path.parent().unwrap_or(Path::new(""));
    let key = dir.join(rel);
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let pos = cx.at("provenance.signing_key");
    if !key.is_file() {
        let d = cx.error(pos, format!("{}: no such key file", key.display()));
        Ctx::hint(
            d,
            "make one with `ssh-keygen -t ed25519 -f KEY` (KEY.pub beside it)",
        );
        return None;
    }
    let text = match std::fs::read_to_string(&public) {
        Ok(t) => t,
        Err(e) => {
            let d = cx.error(
                pos,
                format!("{}: {e} (the signing key's public half)", public.display()),
            );
            Ctx::hint(d, "`ssh-keygen -y -f KEY > KEY.pub` writes it");
            return None;
        }
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut fields = line.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(_)) if kind.starts_with("ssh-") || kind.starts_with("ecdsa-") => {}
        _ => {
            cx.error(pos, format!("{}: not an SSH public key", public.display()));
            return None;
        }
    }
    Some(Signer {
        public_key: line.to_string(),
        key,
    })
}

pub(super) fn overlay_dir(loaded: &Loaded) -> PathBuf {
    let dir = loaded.path.parent().unwrap_or(Path::new(""));
    let rel = loaded.recipe.overlays.dir.as_deref().unwrap_or("overlays");
    dir.join(rel)
}

// Long on purpose: the base's kinds (mmdebstrap, tarball, ubuntu-cloud) each need their own keys
// checked at their own recipe paths; one match keeps every kind's checks side by side.
pub(super) fn resolve_base(cx: &mut Ctx) -> Option<BasePlan> {
    let b = &cx.loaded.recipe.base;
    let only = |cx: &mut Ctx, field: &str, set: bool, kinds: &str| {
        if set {
            cx.error(
                cx.key_at(&join("base", field)),
                format!("`{field}` does not apply to this base kind (only to {kinds})"),
            );
        }
    };
    let is_deb = b.kind == BaseKind::Mmdebstrap;
    if is_deb {
        for (f, set) in [
            ("urls", b.urls.is_some()),
            ("digest", b.digest.is_some()),
            ("signature", b.signature.is_some()),
            ("release", b.release.is_some()),
        ] {
            only(cx, f, set, "ubuntu-cloud and tarball");
        }
        if b.suite.is_none() {
            cx.error(
                cx.key_at("base"),
                "missing required key `suite` in `base` (kind: mmdebstrap)",
            );
        }
        if b.mirror.is_none() {
            cx.error(
                cx.key_at("base"),
                "missing required key `mirror` in `base` (kind: mmdebstrap)",
            );
        }
    } else {
        for (f, set) in [
            ("suite", b.suite.is_some()),
            ("mirror", b.mirror.is_some()),
            ("apt_components", b.apt_components.is_some()),
            ("packages", b.packages.is_some()),
            ("keyring", b.keyring.is_some()),
        ] {
            only(cx, f, set, "mmdebstrap");
        }
    }
    if let Some(m) = &b.mirror
        && !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://"))
    {
        cx.error(
            cx.at("base.mirror"),
            format!("`{m}` is not an http(s) or file URL"),
        );
    }
    let keyring = match &b.keyring {
        None => None,
        Some(recipe::Keyring::File(path)) => Some(KeyringPlan::File { path: path.clone() }),
        Some(recipe::Keyring::Pinned(k)) => {
            let url_ok = k.url.starts_with("https://")
                || k.url.starts_with("http://")
                || k.url.starts_with("file://");
            if !url_ok {
                cx.error(
                    cx.at("base.keyring.url"),
                    format!("`{}` is not an http(s) or file URL", k.url),
                );
            }
            artifacts::pinned_fingerprints(
                cx,
                "base.keyring.fingerprints",
                &k.fingerprints,
                "the archive's Release file is trusted only through the keys pinned here",
            )
            .map(|fingerprints| KeyringPlan::Pinned {
                url: k.url.clone(),
                fingerprints,
            })
        }
    };
    let packages = b.packages.clone().unwrap_or_default();
    let boot = match b.kind {
        BaseKind::Mmdebstrap => boot_from_packages(&packages),
        BaseKind::UbuntuCloud => BaseBoot::None,
        BaseKind::Tarball => BaseBoot::Unknown,
    };
    Some(BasePlan {
        kind: b.kind,
        release: (!is_deb).then(|| b.release.clone().unwrap_or_else(|| default_release(b.kind))),
        suite: b.suite.clone(),
        mirror: b.mirror.clone(),
        apt_components: b
            .apt_components
            .clone()
            .unwrap_or_else(|| if is_deb { vec!["main".into()] } else { vec![] }),
        packages,
        keyring,
        boot,
    })
}

pub(super) fn resolve_users(cx: &mut Ctx) -> Vec<UserPlan> {
    let users = &cx.loaded.recipe.users;
    if users.is_empty() {
        let at = if cx.loaded.map.has("users") {
            cx.key_at("users")
        } else {
            Pos::START
        };
        let d = cx.warn(
            at,
            "no users: images have no passwords, so without an SSH key nobody can log in",
        );
        Ctx::hint(d, "add `users:` with `ssh_authorized_keys`");
    }
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let p = index("users", i);
        let valid = !u.name.is_empty()
            && u.name.len() <= 32
            && u.name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && u.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            cx.error(
                cx.at(&join(&p, "name")),
                format!("`{}` is not a valid user name", u.name),
            );
        } else if u.name == "root" {
            let d = cx.error(
                cx.at(&join(&p, "name")),
                "the user `root` cannot be created",
            );
            Ctx::hint(d, "add a normal user with `sudo: true`");
        } else if let Some(j) = seen.insert(u.name.clone(), i) {
            cx.error(
                cx.at(&join(&p, "name")),
                format!("user `{}` is defined twice (also users[{j}])", u.name),
            );
        }
        if u.ssh_authorized_keys.is_empty() {
            cx.warn(
                cx.at(&join(&p, "ssh_authorized_keys")),
                format!(
                    "user `{}` has no SSH key and no password: it cannot log in",
                    u.name
                ),
            );
        }
        for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
            let kind = key.split_whitespace().next().unwrap_or("");
            let known = [
                "ssh-ed25519",
                "ssh-rsa",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
            ]
            .contains(&kind)
                || kind.starts_with("sk-");
            if !known || key.split_whitespace().nth(1).is_none() {
                let d = cx.error(
                    cx.at(&index(&join(&p, "ssh_authorized_keys"), k)),
                    "not an SSH public key (expected `ssh-ed25519 AAAA… comment`)",
                );
                Ctx::hint(d, "paste the contents of ~/.ssh/id_ed25519.pub");
            }
        }
        out.push(UserPlan {
            name: u.name.clone(),
            ssh_authorized_keys: u.ssh_authorized_keys.clone(),
            sudo: u.sudo,
        });
    }
    out
}

/// `8GiB`, `512MiB`, `10G`, `2048M` or a plain number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

pub(super) fn resolve_disk(cx: &mut Ctx) -> DiskPlan {
    let d = &cx.loaded.recipe.disk;
    let size_bytes = match d.size.as_deref() {
        None | Some("auto") => None,
        Some(s) => {
            match parse_size(s) {
                Some(n) if n >= 1 << 30 && n % 512 == 0 => Some(n),
                Some(_) => {
                    cx.error(cx.at("disk.size"), format!("disk size `{s}` is too small or not a multiple of 512 bytes (minimum 1GiB)"));
                    None
                }
                None => {
                    let diag = cx.error(cx.at("disk.size"), format!("`{s}` is not a size"));
                    Ctx::hint(diag, "write it like 8GiB or 4096MiB, or `auto`");
                    None
                }
            }
        }
    };
    let names: Vec<&str> = DiskFormat::ALL.iter().map(|f| f.name()).collect();
    let mut formats = Vec::new();
    let asked = d
        .formats
        .clone()
        .unwrap_or_else(|| vec!["raw".into(), "qcow2".into(), "seed-iso".into()]);
    for (i, f) in asked.iter().enumerate() {
        match DiskFormat::parse(f) {
            Some(x) => formats.push(x),
            None => {
                let mut msg = format!("unknown disk format `{f}`");
                if let Some(m) = did_you_mean(f, names.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{m}`?)"));
                }
                let diag = cx.error(cx.at(&index("disk.formats", i)), msg);
                Ctx::hint(diag, format!("formats are: {}", names.join(", ")));
            }
        }
    }
    DiskPlan {
        size_bytes,
        formats,
    }
}
