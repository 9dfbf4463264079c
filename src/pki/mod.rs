//! The cluster's PKI, offline and reproducible: a CA and one certificate per node (SANs: its IP,
//! hostname and FQDN), made with openssl on the first build in the recipe's secrets directory
//! (`recipes/cluster.secrets/`, beside the lock file; git-ignored by a `.gitignore` of its own,
//! 0700, keys 0600) and reused after, so rebuilds stay bit-identical. The operator's CA can be
//! used instead (`pki: {ca_cert, ca_key}`). The CA key never enters an image; a node's key is
//! only in that node's image, owned by the service that uses it, 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::layout::{CA_CERT, FileSpec, KAFKA_KEYSTORE, NODE_CERT, STORM_KEYSTORE, ZK_KEYSTORE};
use crate::plan::security::STORM_USER;
use crate::plan::{Plan, Role};
use crate::util::run::Cmd;

pub mod scram;
pub mod ssh;

/// How long a generated certificate is valid: the CA ten years, a node's five.
const CA_DAYS: &str = "3650";
const NODE_DAYS: &str = "1825";

/// Where the CA is: generated in the secrets directory, or the operator's.
struct Ca {
    cert: PathBuf,
    key: PathBuf,
}

fn ca_of(plan: &Plan) -> Ca {
    match &plan.pki.operator_ca {
        Some((cert, key)) => Ca {
            cert: cert.clone(),
            key: key.clone(),
        },
        None => Ca {
            cert: plan.pki.dir.join("ca.crt"),
            key: plan.pki.dir.join("ca.key"),
        },
    }
}

/// A certificate imgbuild issues from the cluster's CA, and its key: a node's own (server and
/// client: its listeners and its peers), a node's Storm topologies' (client, CN=storm), or a
/// recipe user's (client; handed to the user, in no image).
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    cn: String,
    /// The subjectAltName a server certificate carries (None: a client certificate).
    san: Option<String>,
    what: String,
}

impl Leaf {
    fn node(plan: &Plan) -> Leaf {
        let d = &plan.pki.dir;
        Leaf {
            cert: d.join(format!("{}.crt", plan.node.name)),
            key: d.join(format!("{}.key", plan.node.name)),
            cn: plan.node.hostname.clone(),
            san: Some(san(plan)),
            what: format!("{}'s certificate", plan.node.name),
        }
    }
    fn storm(plan: &Plan) -> Leaf {
        let d = plan.pki.dir.join("storm");
        Leaf {
            cert: d.join(format!("{}.crt", plan.node.name)),
            key: d.join(format!("{}.key", plan.node.name)),
            cn: STORM_USER.into(),
            san: None,
            what: format!(
                "{}'s Storm client certificate (User:{STORM_USER})",
                plan.node.name
            ),
        }
    }
    fn user(plan: &Plan, name: &str) -> Leaf {
        let d = plan.pki.dir.join("users");
        Leaf {
            cert: d.join(format!("{name}.crt")),
            key: d.join(format!("{name}.key")),
            cn: name.into(),
            san: None,
            what: format!("user {name}'s client certificate"),
        }
    }
}

/// Every certificate a node's build needs: its own, and its Storm one when it runs Storm (Storm's
/// daemons and workers show it to ZooKeeper, its topologies to Kafka).
fn node_leaves(plan: &Plan) -> Vec<Leaf> {
    let mut v = vec![Leaf::node(plan)];
    if plan.storm.is_some() {
        v.push(Leaf::storm(plan));
    }
    v
}

/// The subjectAltName a node's certificate must carry.
fn san(plan: &Plan) -> String {
    let n = &plan.node;
    let mut s = format!("IP:{},DNS:{}", n.ip, n.hostname);
    if let Some(f) = &n.fqdn {
        s.push_str(&format!(",DNS:{f}"));
    }
    s
}

/// Make what is missing (the CA unless the operator gave one, each node's key and certificate),
/// and remake a node's certificate whose SANs or CA no longer match. Everything is written to a
/// temporary name and renamed when complete.
pub fn ensure(plans: &[&Plan]) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    ssh::ensure(plans)?;
    if !first.security.tls() {
        return Ok(());
    }
    crate::util::tools::require(&[crate::util::tools::OPENSSL])?;
    let dir = &first.pki.dir;
    secrets_dir(dir)?;
    let ca = ca_of(first);
    if first.pki.operator_ca.is_none() && !(ca.cert.exists() && ca.key.exists()) {
        make_ca(&format!("imgbuild cluster CA {}", first.cluster), &ca)?;
    }
    // Users get a certificate, or with `clients: scram` a password.
    let users = first
        .security
        .users
        .iter()
        .filter(|_| !first.security.scram())
        .map(|u| Leaf::user(first, &u.name));
    if first.security.scram() {
        scram::ensure(first)?;
    }
    let leaves: Vec<Leaf> = plans
        .iter()
        .flat_map(|p| node_leaves(p))
        .chain(users)
        .collect();
    for leaf in &leaves {
        if !is_current(leaf, &ca, &dir.join(VERIFIED))? {
            make_leaf(leaf, &ca)?;
        }
    }
    Ok(())
}

/// The secrets directory, made private (0700) and git-ignored by a `.gitignore` of its own.
fn secrets_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        crate::fetch::cache::write_atomic(
            &ignore,
            b"# Written by imgbuild: private keys, never to be committed.\n*\n",
        )?;
    }
    Ok(())
}

fn openssl(args: &[&str]) -> Result<Vec<u8>> {
    Cmd::new("openssl").args(args).run()
}

fn tmp(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// A new EC P-256 key, 0600 from the start (umask-independent: created empty first).
fn new_key(path: &Path) -> Result<()> {
    std::fs::File::create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path.to_string_lossy(),
    ])?;
    Ok(())
}

fn make_ca(cn: &str, ca: &Ca) -> Result<()> {
    let (key_tmp, cert_tmp) = (tmp(&ca.key), tmp(&ca.cert));
    let result = (|| {
        new_key(&key_tmp)?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &key_tmp.to_string_lossy(),
            "-out",
            &cert_tmp.to_string_lossy(),
            "-days",
            CA_DAYS,
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        std::fs::rename(&key_tmp, &ca.key)?;
        std::fs::rename(&cert_tmp, &ca.cert)?;
        eprintln!("pki: made the CA {}", ca.cert.display());
        Ok(())
    })();
    let _ = std::fs::remove_file(&key_tmp);
    let _ = std::fs::remove_file(&cert_tmp);
    result
}

/// How long a certificate found current is taken as current without asking openssl again: it
/// was then valid for at least this long (`openssl x509 -checkend`). A no-op build ran three
/// openssl processes per certificate, 17 for the demo (most of its 0.28 s).
const VERIFIED_FOR_SECS: u64 = 30 * 24 * 3600;

/// The record of certificates found current (`.verified` in the secrets directory): one line per
/// check, `DIGEST SECONDS`, where DIGEST is the SHA-256 of what the check read (the CA's and the
/// certificate's bytes) and asked (CN, SAN), and SECONDS when it passed. Another CA, certificate,
/// CN or SAN is another digest.
const VERIFIED: &str = ".verified";

fn check_digest(leaf: &Leaf, ca: &Ca) -> Result<String> {
    let mut h = Sha256::new();
    for f in [&ca.cert, &leaf.cert] {
        let b = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        h.update((b.len() as u64).to_le_bytes());
        h.update(&b);
    }
    h.update(format!(
        "\0{}\0{}",
        leaf.cn,
        leaf.san.as_deref().unwrap_or("-")
    ));
    Ok(hex::encode(h.finalize()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The record's digests that passed less than VERIFIED_FOR_SECS before `now` (an old, future or
/// garbled line counts for nothing).
fn fresh_digests(record: &Path, now: u64) -> Vec<(String, u64)> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (d, t) = l.split_once(' ')?;
            let t = t.parse::<u64>().ok()?;
            (t <= now && now - t < VERIFIED_FOR_SECS).then(|| (d.to_string(), t))
        })
        .collect()
}

/// Whether `digest` was found current less than VERIFIED_FOR_SECS ago.
fn recently_verified(record: &Path, digest: &str) -> bool {
    fresh_digests(record, now_secs())
        .iter()
        .any(|(d, _)| d == digest)
}

/// Add `digest` to the record (checks of certificates no longer there age out with it).
fn record_verified(record: &Path, digest: &str) -> Result<()> {
    let now = now_secs();
    let mut lines: Vec<String> = fresh_digests(record, now)
        .into_iter()
        .filter(|(d, _)| d != digest)
        .map(|(d, t)| format!("{d} {t}"))
        .collect();
    lines.push(format!("{digest} {now}"));
    crate::fetch::cache::write_atomic(record, (lines.join("\n") + "\n").as_bytes())
}

/// The certificate exists, is signed by the CA and carries the CN and SANs it should. A check
/// that passed in the last VERIFIED_FOR_SECS on the same bytes, CN and SAN is not run again.
fn is_current(leaf: &Leaf, ca: &Ca, record: &Path) -> Result<bool> {
    let (cert, key) = (&leaf.cert, &leaf.key);
    if !(cert.exists() && key.exists() && ca.cert.exists()) {
        return Ok(false);
    }
    let digest = check_digest(leaf, ca)?;
    if recently_verified(record, &digest) {
        return Ok(true);
    }
    if !checked_by_openssl(leaf, ca)? {
        return Ok(false);
    }
    // Remembered only when it stays valid for the whole time it is remembered.
    let lasts = Cmd::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &VERIFIED_FOR_SECS.to_string(),
            "-in",
        ])
        .arg(cert)
        .output()?
        .status
        .success();
    if lasts {
        record_verified(record, &digest)?;
    }
    Ok(true)
}

/// is_current's checks, each by openssl.
fn checked_by_openssl(leaf: &Leaf, ca: &Ca) -> Result<bool> {
    let cert = &leaf.cert;
    let signed = Cmd::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca.cert)
        .arg(cert)
        .output()?
        .status
        .success();
    if !signed {
        return Ok(false);
    }
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        &cert.to_string_lossy(),
    ])?;
    if String::from_utf8_lossy(&subject).trim() != format!("subject=CN={}", leaf.cn) {
        return Ok(false);
    }
    let Some(want) = &leaf.san else {
        return Ok(true);
    };
    let ext = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &cert.to_string_lossy(),
    ])?;
    let have = String::from_utf8_lossy(&ext).replace("IP Address:", "IP:");
    let have: String = have
        .lines()
        .skip(1)
        .collect::<String>()
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",");
    Ok(&have == want)
}

fn make_leaf(leaf: &Leaf, ca: &Ca) -> Result<()> {
    let (cert, key) = (&leaf.cert, &leaf.key);
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let (key_tmp, csr_tmp, cert_tmp, ext_tmp) = (
        tmp(key),
        tmp(&cert.with_extension("csr")),
        tmp(cert),
        tmp(&cert.with_extension("ext")),
    );
    let result = (|| {
        new_key(&key_tmp)?;
        openssl(&[
            "req",
            "-new",
            "-key",
            &key_tmp.to_string_lossy(),
            "-out",
            &csr_tmp.to_string_lossy(),
            "-subj",
            &format!("/CN={}", leaf.cn),
        ])?;
        let mut ext = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n",
        );
        match &leaf.san {
            Some(san) => ext.push_str(&format!(
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
            )),
            None => ext.push_str("extendedKeyUsage=clientAuth\n"),
        }
        std::fs::write(&ext_tmp, ext)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr_tmp.to_string_lossy(),
            "-CA",
            &ca.cert.to_string_lossy(),
            "-CAkey",
            &ca.key.to_string_lossy(),
            "-set_serial",
            &format!("0x{}", hex::encode(rand_serial()?)),
            "-days",
            NODE_DAYS,
            "-extfile",
            &ext_tmp.to_string_lossy(),
            "-out",
            &cert_tmp.to_string_lossy(),
        ])?;
        std::fs::rename(&key_tmp, key)?;
        std::fs::rename(&cert_tmp, cert)?;
        match &leaf.san {
            Some(san) => eprintln!("pki: made {} ({san})", leaf.what),
            None => eprintln!("pki: made {}", leaf.what),
        }
        Ok(())
    })();
    for t in [&key_tmp, &csr_tmp, &cert_tmp, &ext_tmp] {
        let _ = std::fs::remove_file(t);
    }
    result
}

/// 16 random bytes, high bit clear (a positive serial).
fn rand_serial() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[0] &= 0x7f;
    Ok(b)
}

/// What the build key sees of a node's PKI: the digests of the CA's and the node's
/// certificates (public; a new key means a new certificate), and with `clients: scram` one
/// digest of the users' passwords (a changed password rebuilds the nodes that carry it); the
/// node's SSH host key's public half.
pub fn key_entries(plan: &Plan) -> Vec<(String, String)> {
    let ca = ca_of(plan);
    let leaves = node_leaves(plan).into_iter().map(|l| l.cert);
    let digest = |path: &Path| {
        std::fs::read(path)
            .map(|b| hex::encode(Sha256::digest(b)))
            .unwrap_or_else(|_| "absent".into())
    };
    let mut out: Vec<(String, String)> = std::iter::once(ca.cert)
        .chain(leaves)
        .zip(["pki.ca", "pki.node", "pki.storm"])
        .map(|(path, what)| (what.to_string(), digest(&path)))
        .collect();
    if plan.security.scram() {
        let mut h = Sha256::new();
        for u in &plan.security.users {
            h.update(digest(&scram::password_path(plan, &u.name)));
        }
        out.push(("pki.scram".into(), hex::encode(h.finalize())));
    }
    out.push(ssh::key_entry(plan));
    out
}

/// The node's TLS files: the CA and its certificate for everyone; its key, with the
/// certificate, as a PEM keystore for each service of the node that speaks TLS, owned by it;
/// the Storm topologies' client keystore (User:storm), owned by storm; with SCRAM, the
/// controllers' salted credentials. None with `security: plaintext`. (User storm's client
/// settings, which hold its password with SCRAM, are rendered by `render::secret_files` from
/// `storm_password`: the PKI hands out secrets and renders nothing.)
pub fn node_files(plan: &Plan) -> Result<Vec<FileSpec>> {
    if !plan.security.tls() {
        return Ok(Vec::new());
    }
    let ca = ca_of(plan);
    let read = |p: &Path| -> Result<Vec<u8>> {
        std::fs::read(p).with_context(|| format!("reading {} (imgbuild makes it)", p.display()))
    };
    let keystore = |leaf: &Leaf| -> Result<Vec<u8>> {
        let key = read(&leaf.key)?;
        if !String::from_utf8_lossy(&key).contains("-----BEGIN PRIVATE KEY-----") {
            bail!(
                "{}: not an unencrypted PKCS#8 key (Kafka's PEM keystores read no other)",
                leaf.key.display()
            );
        }
        Ok([key, read(&leaf.cert)?].concat())
    };
    let node = Leaf::node(plan);
    let mut out = vec![
        FileSpec {
            path: CA_CERT.trim_start_matches('/').into(),
            content: read(&ca.cert)?,
            mode: 0o644,
            owner: None,
        },
        FileSpec {
            path: NODE_CERT.trim_start_matches('/').into(),
            content: read(&node.cert)?,
            mode: 0o644,
            owner: None,
        },
    ];
    let own = keystore(&node)?;
    for (role, owner, path) in [
        (Role::Kafka, "kafka", KAFKA_KEYSTORE),
        (Role::Zookeeper, "zookeeper", ZK_KEYSTORE),
    ] {
        if plan.roles.contains(&role) {
            out.push(FileSpec {
                path: path.trim_start_matches('/').into(),
                content: own.clone(),
                mode: 0o600,
                owner: Some(owner),
            });
        }
    }
    if let Some(storm) = node_leaves(plan).get(1) {
        out.push(FileSpec {
            path: STORM_KEYSTORE.trim_start_matches('/').into(),
            content: keystore(storm)?,
            mode: 0o600,
            owner: Some("storm"),
        });
    }
    if let Some(env) = scram::credentials_env(plan)? {
        out.push(FileSpec {
            path: scram::CREDENTIALS.trim_start_matches('/').into(),
            content: env.into_bytes(),
            mode: 0o600,
            owner: None,
        });
    }
    Ok(out)
}

/// User storm's SCRAM password on a Storm node, for its topologies' client settings: None without
/// SCRAM, or when the recipe declares no user storm (then it has none).
pub fn storm_password(plan: &Plan) -> Result<Option<String>> {
    let declared = plan.security.users.iter().any(|u| u.name == STORM_USER);
    if plan.storm.is_none() || !plan.security.scram() || !declared {
        return Ok(None);
    }
    scram::password(plan, STORM_USER).map(Some)
}

/// The identities `up --check` tries on Kafka's listeners, made in `dir` (a check's scratch
/// directory, never the secrets directory): a PEM keystore signed by the cluster's CA for
/// `user` (authenticated, and no ACL allows it anything), and one claiming to be `impersonate`
/// signed by a CA made for the purpose (whose key is deleted at once). (user's, impostor's).
pub fn check_identities(
    plan: &Plan,
    dir: &Path,
    user: &str,
    impersonate: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let leaf = |stem: &str, cn: &str| Leaf {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        cn: cn.into(),
        san: None,
        what: format!("a check identity (CN={cn})"),
    };
    let pem = |l: &Leaf| -> Result<Vec<u8>> {
        Ok([std::fs::read(&l.key)?, std::fs::read(&l.cert)?].concat())
    };
    let ours = leaf("user", user);
    make_leaf(&ours, &ca_of(plan))?;
    let other = Ca {
        cert: dir.join("other-ca.crt"),
        key: dir.join("other-ca.key"),
    };
    make_ca("not the cluster's CA", &other)?;
    let impostor = leaf("impostor", impersonate);
    let made = make_leaf(&impostor, &other);
    let _ = std::fs::remove_file(&other.key);
    made?;
    Ok((pem(&ours)?, pem(&impostor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_check_is_remembered_for_its_digest_and_for_a_limited_time() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(VERIFIED);
        assert!(!recently_verified(&record, "aa"), "no record yet");
        record_verified(&record, "aa").unwrap();
        record_verified(&record, "bb").unwrap();
        assert!(recently_verified(&record, "aa"));
        assert!(recently_verified(&record, "bb"));
        assert!(!recently_verified(&record, "cc"), "another digest");
        // A check older than VERIFIED_FOR_SECS, or dated in the future, counts for nothing, and
        // the next write drops it.
        let old = now_secs() - VERIFIED_FOR_SECS - 1;
        let future = now_secs() + 3600;
        std::fs::write(&record, format!("aa {old}\ndd {future}\nbb garbage\n")).unwrap();
        assert!(!recently_verified(&record, "aa"));
        assert!(!recently_verified(&record, "dd"));
        assert!(!recently_verified(&record, "bb"));
        record_verified(&record, "cc").unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        assert!(
            !text.contains("aa ") && !text.contains("bb ") && !text.contains("dd "),
            "{text}"
        );
        assert!(recently_verified(&record, "cc"));
    }
}
