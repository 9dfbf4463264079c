//! OpenPGP verification against signatures and KEYS files made by real gpg (fixture mirror).

mod common;

use std::fs::File;

use imgbuild::fetch::pgp::{self, SignatureError};

fn check(sig: &str, keys: &str, data: &str, pinned: &[&str]) -> Result<String, SignatureError> {
    let m = common::mirror();
    let keys = pgp::parse_keys(&std::fs::read(m.join(keys)).unwrap())?;
    let sigs = pgp::parse_signatures(&std::fs::read(m.join(sig)).unwrap())?;
    let pinned: Vec<String> = pinned.iter().map(|s| s.to_string()).collect();
    pgp::verify(
        &keys,
        &sigs,
        File::open(m.join(data)).unwrap(),
        &pinned,
        now(),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ZK: &str = "downloads.apache.org/zookeeper/zookeeper-3.9.5/apache-zookeeper-3.9.5-bin.tar.gz";

#[test]
fn armored_signature_from_pinned_key_in_multi_key_keys_file() {
    let f = common::fingerprints();
    let got = check(
        &format!("{ZK}.asc"),
        "downloads.apache.org/zookeeper/KEYS",
        ZK,
        &[&f["release"]],
    )
    .unwrap();
    assert_eq!(got, f["release"]);
}

#[test]
fn binary_signature_over_checksum_file_with_keyserver_key() {
    let f = common::fingerprints();
    let dir = "cloud-images.ubuntu.com/releases/24.04/release";
    let got = check(
        &format!("{dir}/SHA256SUMS.gpg"),
        "keyserver.ubuntu.com/pks/lookup",
        &format!("{dir}/SHA256SUMS"),
        &[&f["cloud"]],
    );
    assert_eq!(got.unwrap(), f["cloud"]);
}

#[test]
fn key_not_pinned_is_named() {
    let f = common::fingerprints();
    let err = check(
        &format!("{ZK}.asc"),
        "downloads.apache.org/zookeeper/KEYS",
        ZK,
        &[&f["other"]],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::NotPinned {
            fingerprint: f["release"].clone(),
            pinned: f["other"].clone()
        }
    );
    assert!(err.to_string().contains(&f["release"]));
}

#[test]
fn tampered_content_is_a_bad_signature_naming_the_key() {
    let f = common::fingerprints();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(common::mirror().join(ZK)).unwrap();
    bytes[100] ^= 1;
    std::fs::write(dir.path().join("t.tgz"), &bytes).unwrap();
    let keys = pgp::parse_keys(
        &std::fs::read(common::mirror().join("downloads.apache.org/zookeeper/KEYS")).unwrap(),
    )
    .unwrap();
    let sigs =
        pgp::parse_signatures(&std::fs::read(common::mirror().join(format!("{ZK}.asc"))).unwrap())
            .unwrap();
    let err = pgp::verify(
        &keys,
        &sigs,
        File::open(dir.path().join("t.tgz")).unwrap(),
        &[f["release"].clone()],
        now(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::Bad {
            fingerprint: f["release"].clone()
        }
    );
}

#[test]
fn tampered_signature_is_rejected() {
    let f = common::fingerprints();
    let m = common::mirror();
    let mut sig = std::fs::read(m.join(format!("{ZK}.asc"))).unwrap();
    // Flip a character inside the armored body (keeps it parseable base64 most of the time).
    let i = sig.len() / 2;
    sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
    let keys =
        pgp::parse_keys(&std::fs::read(m.join("downloads.apache.org/zookeeper/KEYS")).unwrap())
            .unwrap();
    let result = pgp::parse_signatures(&sig).and_then(|s| {
        pgp::verify(
            &keys,
            &s,
            File::open(m.join(ZK)).unwrap(),
            &[f["release"].clone()],
            now(),
        )
    });
    assert!(result.is_err(), "tampered signature accepted");
}

#[test]
fn expired_key_is_rejected() {
    let f = common::fingerprints();
    let err = check(
        "negative/by-expired.asc",
        "negative/KEYS",
        "negative/artifact.tar.gz",
        &[&f["expired"]],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::Expired {
            fingerprint: f["expired"].clone()
        }
    );
}

#[test]
fn revoked_key_is_rejected() {
    let f = common::fingerprints();
    let err = check(
        "negative/by-revoked.asc",
        "negative/KEYS",
        "negative/artifact.tar.gz",
        &[&f["revoked"]],
    )
    .unwrap_err();
    assert_eq!(
        err,
        SignatureError::Revoked {
            fingerprint: f["revoked"].clone()
        }
    );
}

#[test]
fn signer_missing_from_keys_file() {
    let f = common::fingerprints();
    // by-other.asc checked against the cloud keyserver key only.
    let err = check(
        "negative/by-other.asc",
        "keyserver.ubuntu.com/pks/lookup",
        "negative/artifact.tar.gz",
        &[&f["other"]],
    )
    .unwrap_err();
    assert!(matches!(err, SignatureError::UnknownKey { .. }), "{err:?}");
    assert!(f["other"].ends_with(&match err {
        SignatureError::UnknownKey { issuer } => issuer,
        _ => unreachable!(),
    }));
}

#[test]
fn garbage_inputs_are_errors_not_panics() {
    assert!(pgp::parse_keys(b"no keys here").is_err());
    assert!(
        pgp::parse_signatures(
            b"-----BEGIN PGP SIGNATURE-----\n\nzzzz\n-----END PGP SIGNATURE-----\n"
        )
        .is_err()
    );
    assert!(pgp::parse_signatures(b"\x00\x01\x02").is_err());
}
