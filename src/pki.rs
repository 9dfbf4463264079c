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

use crate::plan::{Plan, Role};
use crate::rootfs::render::FileSpec;
use crate::util::run::Cmd;

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

fn node_cert(plan: &Plan) -> PathBuf {
    plan.pki.dir.join(format!("{}.crt", plan.node.name))
}
fn node_key(plan: &Plan) -> PathBuf {
    plan.pki.dir.join(format!("{}.key", plan.node.name))
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
    crate::util::tools::require(&[crate::util::tools::OPENSSL])?;
    let dir = &first.pki.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        crate::fetch::cache::write_atomic(
            &ignore,
            b"# Written by imgbuild: private keys, never to be committed.\n*\n",
        )?;
    }
    let ca = ca_of(first);
    if first.pki.operator_ca.is_none() && !(ca.cert.exists() && ca.key.exists()) {
        make_ca(first, &ca)?;
    }
    for p in plans {
        if !node_is_current(p, &ca)? {
            make_node(p, &ca)?;
        }
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

fn make_ca(plan: &Plan, ca: &Ca) -> Result<()> {
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
            &format!("/CN=imgbuild cluster CA {}", plan.cluster),
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        std::fs::rename(&key_tmp, &ca.key)?;
        std::fs::rename(&cert_tmp, &ca.cert)?;
        eprintln!("pki: made the cluster CA {}", ca.cert.display());
        Ok(())
    })();
    let _ = std::fs::remove_file(&key_tmp);
    let _ = std::fs::remove_file(&cert_tmp);
    result
}

/// The node's certificate exists, is signed by the CA and carries the SANs the plan wants.
fn node_is_current(plan: &Plan, ca: &Ca) -> Result<bool> {
    let (cert, key) = (node_cert(plan), node_key(plan));
    if !(cert.exists() && key.exists()) {
        return Ok(false);
    }
    let signed = Cmd::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca.cert)
        .arg(&cert)
        .output()?
        .status
        .success();
    if !signed {
        return Ok(false);
    }
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
    Ok(have == san(plan))
}

fn make_node(plan: &Plan, ca: &Ca) -> Result<()> {
    let (cert, key) = (node_cert(plan), node_key(plan));
    let (key_tmp, csr_tmp, cert_tmp, ext_tmp) = (
        tmp(&key),
        tmp(&cert.with_extension("csr")),
        tmp(&cert),
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
            &format!("/CN={}", plan.node.hostname),
        ])?;
        std::fs::write(
            &ext_tmp,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                san(plan)
            ),
        )?;
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
        std::fs::rename(&key_tmp, &key)?;
        std::fs::rename(&cert_tmp, &cert)?;
        eprintln!("pki: made {}'s certificate ({})", plan.node.name, san(plan));
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
/// certificates (public; a new key means a new certificate).
pub fn key_entries(plan: &Plan) -> Vec<(String, String)> {
    let ca = ca_of(plan);
    [("pki.ca", ca.cert), ("pki.node", node_cert(plan))]
        .into_iter()
        .map(|(what, path)| {
            let digest = std::fs::read(&path)
                .map(|b| hex::encode(Sha256::digest(b)))
                .unwrap_or_else(|_| "absent".into());
            (what.to_string(), digest)
        })
        .collect()
}

/// The node's TLS files: the CA and its certificate for everyone; its key, with the
/// certificate, as a PEM keystore for each service of the node that speaks TLS, owned by it.
pub fn node_files(plan: &Plan) -> Result<Vec<FileSpec>> {
    let ca = ca_of(plan);
    let read = |p: &Path| -> Result<Vec<u8>> {
        std::fs::read(p).with_context(|| format!("reading {} (imgbuild makes it)", p.display()))
    };
    let (ca_pem, cert_pem, key_pem) = (
        read(&ca.cert)?,
        read(&node_cert(plan))?,
        read(&node_key(plan))?,
    );
    if !String::from_utf8_lossy(&key_pem).contains("-----BEGIN PRIVATE KEY-----") {
        bail!(
            "{}: not an unencrypted PKCS#8 key (Kafka's PEM keystores read no other)",
            node_key(plan).display()
        );
    }
    let mut out = vec![
        FileSpec {
            path: "etc/imgbuild/tls/ca.crt".into(),
            content: ca_pem,
            mode: 0o644,
            owner: None,
        },
        FileSpec {
            path: "etc/imgbuild/tls/node.crt".into(),
            content: cert_pem.clone(),
            mode: 0o644,
            owner: None,
        },
    ];
    let keystore = [key_pem, cert_pem].concat();
    for (role, owner, path) in [
        (Role::Kafka, "kafka", "etc/kafka/tls/node.pem"),
        (Role::Zookeeper, "zookeeper", "etc/zookeeper/tls/node.pem"),
    ] {
        if plan.roles.contains(&role) {
            out.push(FileSpec {
                path: path.into(),
                content: keystore.clone(),
                mode: 0o600,
                owner: Some(owner),
            });
        }
    }
    Ok(out)
}
