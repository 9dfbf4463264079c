//! `clients: scram`: a password per Kafka user in the secrets directory (`users/NAME.password`,
//! 0600, made on the first build and reused, or the operator's), and what the images get of it:
//! the SCRAM-SHA-512 credentials (salt and salted password, never the password) for
//! `kafka-storage.sh format --add-scram` on the KRaft controllers (KIP-900), and user storm's
//! password in its Kafka client settings on the Storm nodes. No other image holds either.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

use crate::plan::Plan;
use crate::plan::security::SCRAM_MECHANISM;

/// PBKDF2 rounds of every credential (Kafka takes 4096 to 16384 for SCRAM-SHA-512).
pub const ITERATIONS: u32 = 8192;

/// A controller's credentials, as the environment of kafka-format.service (root's, 0600).
pub const CREDENTIALS: &str = "/etc/kafka/scram-credentials";

/// Where user `name`'s password is kept.
pub fn password_path(plan: &Plan, name: &str) -> PathBuf {
    plan.pki.dir.join("users").join(format!("{name}.password"))
}

/// Make the password of every recipe user that has none: 32 random bytes, base64url (43
/// characters), 0600 from the start, written to a temporary name and renamed.
pub fn ensure(plan: &Plan) -> Result<()> {
    for u in &plan.security.users {
        let path = password_path(plan, &u.name);
        if path.exists() {
            continue;
        }
        let dir = path.parent().context("a password's directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut raw = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let pw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let tmp = path.with_file_name(format!(".{}.password.{}.tmp", u.name, std::process::id()));
        std::fs::File::create(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&tmp, format!("{pw}\n"))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "pki: made user {}'s SCRAM password {}",
            u.name,
            path.display()
        );
    }
    Ok(())
}

/// User `name`'s password: the file's first line. An operator's own must survive the JAAS
/// string and `--add-scram`'s syntax unquoted: printable ASCII without space, `"`, `\`, `,`,
/// `[`, `]`, `=` or `'`, 16 to 128 characters.
pub fn password(plan: &Plan, name: &str) -> Result<String> {
    let path = password_path(plan, name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (imgbuild makes it)", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    let bad = |c: char| !c.is_ascii_graphic() || "\"\\,[]='".contains(c);
    if !(16..=128).contains(&pw.len()) || pw.chars().any(bad) {
        bail!(
            "{}: a password is 16 to 128 printable ASCII characters without space, quotes, \
             backslash, comma, brackets or `=` (delete the file and imgbuild makes one)",
            path.display()
        );
    }
    Ok(pw)
}

fn hmac_sha512(key: &[u8], data: &[u8]) -> [u8; 64] {
    // RFC 2104 with SHA-512's 128-byte block.
    let mut k = [0u8; 128];
    if key.len() > 128 {
        k[..64].copy_from_slice(&Sha512::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.map(|x| x ^ b);
    let inner = Sha512::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha512::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// PBKDF2-HMAC-SHA512 (RFC 8018) of one 64-byte block: SCRAM's SaltedPassword (RFC 5802).
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let mut u = hmac_sha512(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha512(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// The credential of `name` for `kafka-storage.sh format --add-scram`: its salt (derived from
/// the name and password, so rebuilds are bit-identical and a new password gets a new salt) and
/// salted password; base64 without quotes (systemd's environment files would take them away).
pub fn credential(name: &str, password: &str) -> String {
    let salt: [u8; 16] = Sha256::digest(format!("imgbuild scram salt\0{name}\0{password}"))[..16]
        .try_into()
        .unwrap_or_default();
    let salted = pbkdf2_sha512(password.as_bytes(), &salt, ITERATIONS);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{SCRAM_MECHANISM}=[name={name},iterations={ITERATIONS},salt={},saltedpassword={}]",
        b64.encode(salt),
        b64.encode(salted)
    )
}

/// A KRaft controller's kafka-format.service environment with `clients: scram`: every recipe
/// user's credential as `--add-scram` arguments (the controllers write them into the first
/// metadata; a broker-only node is told nothing). None on any other node.
pub fn credentials_env(plan: &Plan) -> Result<Option<String>> {
    let controller = plan.kafka.as_ref().is_some_and(|k| {
        k.process_roles
            .as_ref()
            .is_some_and(|r| r.contains(&crate::plan::wiring::ProcessRole::Controller))
    });
    if !plan.security.scram() || !controller {
        return Ok(None);
    }
    let mut args = Vec::new();
    for u in &plan.security.users {
        let pw = password(plan, &u.name)?;
        args.push(format!("--add-scram {}", credential(&u.name, &pw)));
    }
    Ok(Some(format!(
        "# Written by imgbuild: the recipe users' SCRAM credentials (salted, not the passwords),\n\
         # set by kafka-format.service when the storage is formatted (KIP-900).\n\
         KAFKA_ADD_SCRAM={}\n",
        args.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_known_vectors() {
        // PBKDF2-HMAC-SHA512("password", "salt"), as Python's hashlib.pbkdf2_hmac computes it.
        assert_eq!(
            hex::encode(pbkdf2_sha512(b"password", b"salt", 1)),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        assert_eq!(
            hex::encode(pbkdf2_sha512(b"password", b"salt", 4096)),
            "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5143f30602641b3d55cd335988cb36b84376060ecd532e039b742a239434af2d5"
        );
        // A key longer than SHA-512's block is hashed first.
        let long = [b'k'; 200];
        assert_ne!(hmac_sha512(&long, b"x"), hmac_sha512(&long[..128], b"x"));
    }

    #[test]
    fn a_credential_is_stable_and_changes_with_the_password() {
        let a = credential("storm", "0123456789abcdefXYZ");
        assert_eq!(a, credential("storm", "0123456789abcdefXYZ"));
        assert!(a.starts_with("SCRAM-SHA-512=[name=storm,iterations=8192,salt="));
        assert!(a.contains(",saltedpassword=") && a.ends_with(']'));
        assert!(!a.contains("0123456789abcdefXYZ"), "the password itself");
        let b = credential("storm", "0123456789abcdefXYZ!");
        let salt = |c: &str| c.split(",salt=").nth(1).map(|s| s[..24].to_string());
        assert_ne!(salt(&a), salt(&b));
    }

    /// The reference recipe with `clients: scram`, its secrets in a temporary directory: the
    /// passwords made once and reused, the controllers' credentials salted, user storm's
    /// password only in its Storm client settings, 0600.
    #[test]
    fn the_files_of_a_scram_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/cluster.yaml"),
        )
        .unwrap()
        .replace("    clients: mtls\n", "    clients: scram\n");
        let path = dir.path().join("recipe.yaml");
        let loaded = crate::recipe::parse(&path, text).unwrap();
        let cluster = crate::plan::resolve(&loaded).unwrap();
        let plans: Vec<&Plan> = cluster.nodes.iter().collect();
        crate::pki::ensure(&plans).unwrap();
        let p = plans[0];
        let pw_path = password_path(p, "storm");
        let pw = password(p, "storm").unwrap();
        assert_eq!(pw.len(), 43);
        let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pw_path), 0o600);
        crate::pki::ensure(&plans).unwrap();
        assert_eq!(
            password(p, "storm").unwrap(),
            pw,
            "a rebuild reuses the password"
        );
        // No certificate for a SCRAM user.
        assert!(!p.pki.dir.join("users/storm.crt").exists());
        let files = crate::rootfs::render::secret_files(p).unwrap();
        let find = |path: &str| {
            files
                .iter()
                .find(|f| f.path.to_str() == Some(path))
                .unwrap()
        };
        let creds = find(CREDENTIALS.trim_start_matches('/'));
        let creds_text = String::from_utf8_lossy(&creds.content);
        assert_eq!((creds.mode, creds.owner), (0o600, None));
        assert!(
            creds_text.contains(&format!(
                "KAFKA_ADD_SCRAM=--add-scram {}\n",
                credential("storm", &pw)
            )),
            "{creds_text}"
        );
        assert!(!creds_text.contains(&pw));
        let client = find(crate::layout::STORM_KAFKA_CLIENT.trim_start_matches('/'));
        assert_eq!((client.mode, client.owner), (0o600, Some("storm")));
        let client_text = String::from_utf8_lossy(&client.content);
        assert!(client_text.contains("security.protocol=SASL_SSL\n"));
        assert!(client_text.contains(&format!("username=\"storm\" password=\"{pw}\";")));
        // An operator's password with a character the syntax cannot carry is refused by name.
        std::fs::write(&pw_path, "a,b-0123456789abcdef\n").unwrap();
        let e = password(p, "storm").unwrap_err().to_string();
        assert!(e.contains("storm.password"), "{e}");
    }
}
