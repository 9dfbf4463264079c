//! OpenPGP detached signatures, accepted only from keys whose fingerprints the recipe pins.
//!
//! The KEYS file is free text with many armored key blocks (Apache) or a single armored/binary
//! key (keyservers). The signature is armored (`.asc`) or binary (`SHA256SUMS.gpg`), and may hold
//! several signatures (Ubuntu signs with more than one key): one valid signature from a pinned,
//! unexpired, unrevoked key is enough.

use std::io::{Read, Seek, SeekFrom};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "signature made by key {fingerprint}, which the recipe does not pin (pinned: {pinned})"
    )]
    NotPinned { fingerprint: String, pinned: String },
    #[error(
        "bad signature: it does not match the content for key {fingerprint} (tampered file or signature)"
    )]
    Bad { fingerprint: String },
    #[error("signature by key {issuer}, which is not in the KEYS file")]
    UnknownKey { issuer: String },
    #[error("key {fingerprint} has expired")]
    Expired { fingerprint: String },
    #[error("key {fingerprint} has been revoked")]
    Revoked { fingerprint: String },
    #[error("no OpenPGP signature found: {0}")]
    Malformed(String),
    #[error("no usable OpenPGP public key in the KEYS file: {0}")]
    NoKeys(String),
}

fn fpr(key: &impl KeyDetails) -> String {
    format!("{:X}", key.fingerprint())
}

/// Every public key in a KEYS file (text with many armored blocks) or binary keyring.
pub fn parse_keys(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, SignatureError> {
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
    let mut keys = Vec::new();
    let mut last_err = String::from("no key blocks");
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains(BEGIN) => {
            let mut rest = text;
            while let Some(start) = rest.find(BEGIN) {
                let Some(len) = rest[start..].find(END) else {
                    break;
                };
                let block = &rest[start..start + len + END.len()];
                rest = &rest[start + len + END.len()..];
                match SignedPublicKey::from_armor_many(block.as_bytes()) {
                    Ok((iter, _)) => {
                        for k in iter {
                            match k {
                                Ok(k) => keys.push(k),
                                Err(e) => last_err = e.to_string(),
                            }
                        }
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
        }
        _ => match SignedPublicKey::from_bytes_many(bytes) {
            Ok(iter) => {
                for k in iter {
                    match k {
                        Ok(k) => keys.push(k),
                        Err(e) => last_err = e.to_string(),
                    }
                }
            }
            Err(e) => last_err = e.to_string(),
        },
    }
    if keys.is_empty() {
        return Err(SignatureError::NoKeys(last_err));
    }
    Ok(keys)
}

/// The signatures in an armored or binary detached-signature file.
pub fn parse_signatures(bytes: &[u8]) -> Result<Vec<Signature>, SignatureError> {
    let iter = if bytes.starts_with(b"-----BEGIN")
        || bytes.trim_ascii_start().starts_with(b"-----BEGIN")
    {
        DetachedSignature::from_armor_many(bytes).map(|(i, _)| i)
    } else {
        DetachedSignature::from_bytes_many(bytes)
    }
    .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let sigs: Vec<Signature> = iter.filter_map(|s| s.ok()).map(|s| s.signature).collect();
    if sigs.is_empty() {
        return Err(SignatureError::Malformed(
            "the file holds no signature packet".into(),
        ));
    }
    Ok(sigs)
}

fn is_revoked(key: &SignedPublicKey) -> bool {
    key.details.revocation_signatures.iter().any(|s| {
        s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(&key.primary_key).is_ok()
    })
}

/// When the key stops being valid (seconds since 1970), from its newest valid self-signature.
fn expires_at(key: &SignedPublicKey) -> Option<u64> {
    let created = u64::from(key.primary_key.created_at().as_secs());
    let user_sigs = key.details.users.iter().flat_map(|u| {
        u.signatures.iter().filter(|s| {
            s.verify_certification(&key.primary_key, pgp::types::Tag::UserId, &u.id)
                .is_ok()
        })
    });
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.verify_key(&key.primary_key).is_ok());
    let (_, validity) = user_sigs
        .chain(direct)
        .filter_map(|s| Some((s.created()?.as_secs(), s.key_expiration_time())))
        .max_by_key(|(t, _)| *t)?;
    // A zero or absent validity period means the key does not expire.
    validity
        .filter(|d| d.as_secs() > 0)
        .map(|d| created + u64::from(d.as_secs()))
}

/// A key that may have made a signature: the primary key or a bound subkey.
#[derive(Clone, Copy)]
enum Signer<'a> {
    Primary(&'a SignedPublicKey),
    Sub(&'a pgp::composed::SignedPublicSubKey),
}

/// Check that one of `signatures` is a valid signature over `data` by a key in `keys` whose
/// fingerprint is in `pinned` (upper-case hex). Returns that fingerprint.
pub fn verify<R: Read + Seek>(
    keys: &[SignedPublicKey],
    signatures: &[Signature],
    mut data: R,
    pinned: &[String],
    now: u64,
) -> Result<String, SignatureError> {
    let mut first_error = None;
    for sig in signatures {
        let issuers: Vec<String> = sig
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .chain(
                sig.issuer_key_id()
                    .iter()
                    .map(|k| hex::encode_upper(k.as_ref())),
            )
            .collect();
        let mut matched = false;
        for key in keys {
            let primary = fpr(key);
            // A signature names its issuer by fingerprint or 64-bit key id, of the primary key or a subkey.
            let subkeys = key
                .public_subkeys
                .iter()
                .filter(|sk| sk.verify_bindings(&key.primary_key).is_ok());
            for signer in std::iter::once(Signer::Primary(key)).chain(subkeys.map(Signer::Sub)) {
                let sub_fpr = match signer {
                    Signer::Primary(k) => fpr(k),
                    Signer::Sub(sk) => fpr(&sk.key),
                };
                let named =
                    issuers.is_empty() || issuers.iter().any(|i| sub_fpr.ends_with(i.as_str()));
                if !named {
                    continue;
                }
                matched = true;
                data.seek(SeekFrom::Start(0))
                    .map_err(|e| SignatureError::Malformed(e.to_string()))?;
                let good = match signer {
                    Signer::Primary(k) => sig.verify(k, &mut data).is_ok(),
                    Signer::Sub(sk) => sig.verify(&sk.key, &mut data).is_ok(),
                };
                let error = if !good {
                    SignatureError::Bad {
                        fingerprint: primary.clone(),
                    }
                } else if !pinned.contains(&primary) {
                    SignatureError::NotPinned {
                        fingerprint: primary.clone(),
                        pinned: pinned.join(", "),
                    }
                } else if is_revoked(key) {
                    SignatureError::Revoked {
                        fingerprint: primary.clone(),
                    }
                } else if expires_at(key).is_some_and(|t| t <= now) {
                    SignatureError::Expired {
                        fingerprint: primary.clone(),
                    }
                } else {
                    return Ok(primary);
                };
                first_error.get_or_insert(error);
            }
        }
        if !matched {
            first_error.get_or_insert(SignatureError::UnknownKey {
                issuer: issuers
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "(unnamed)".into()),
            });
        }
    }
    Err(first_error.unwrap_or_else(|| SignatureError::Malformed("no signatures".into())))
}

/// The keys of `bytes` (a KEYS file, armored export or binary keyring) whose primary
/// fingerprints are `pinned`, as a binary keyring (what apt's `Dir::Etc::Trusted` and
/// mmdebstrap's `--keyring` read). Every pinned key must be there, unrevoked and unexpired.
pub fn pinned_keyring(bytes: &[u8], pinned: &[String], now: u64) -> anyhow::Result<Vec<u8>> {
    use pgp::ser::Serialize as _;
    let keys = parse_keys(bytes)?;
    let mut out = Vec::new();
    for want in pinned {
        let Some(key) = keys.iter().find(|k| &fpr(*k) == want) else {
            let found: Vec<String> = keys.iter().map(fpr).collect();
            anyhow::bail!(
                "no key with the pinned fingerprint {want} (the file holds {})",
                found.join(", ")
            );
        };
        if is_revoked(key) {
            anyhow::bail!(
                "{}",
                SignatureError::Revoked {
                    fingerprint: want.clone()
                }
            );
        }
        if expires_at(key).is_some_and(|t| t <= now) {
            anyhow::bail!(
                "{}",
                SignatureError::Expired {
                    fingerprint: want.clone()
                }
            );
        }
        key.to_writer(&mut out)?;
    }
    Ok(out)
}
