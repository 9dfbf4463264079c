//! What an image is made of, for whoever has to vouch for it: an SPDX 2.3 software bill of
//! materials (`<node>.spdx.json`) and an in-toto statement with a SLSA provenance predicate
//! (`<node>.provenance.json`), both written beside the images and listed in SHA256SUMS.
//!
//! SPDX rather than CycloneDX: SPDX is the ISO/IEC 5962 standard that distribution tooling
//! (Debian's, Yocto's, the kernel's) emits, its package model maps one-to-one onto dpkg
//! packages and downloaded tarballs with several checksums, and `pyspdxtools` from PyPI
//! validates it independently (the tests do). Everything is derived from the build's inputs
//! and SOURCE_DATE_EPOCH, so equal builds give equal documents.

pub use crate::util::tools::SSH_KEYGEN;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// One installed dpkg package of the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// Installed packages of a dpkg status file, by name.
pub fn dpkg_packages(status: &str) -> Vec<DebPackage> {
    let mut out = Vec::new();
    for para in status.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':').map(str::trim))
        };
        if let (Some(name), Some(version), Some(st)) =
            (field("Package"), field("Version"), field("Status"))
            && st.ends_with(" installed")
        {
            out.push(DebPackage {
                name: name.to_string(),
                version: version.to_string(),
                arch: field("Architecture").unwrap_or("all").to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.arch.cmp(&b.arch)));
    out
}

/// One downloaded input of the build.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub version: String,
    pub url: String,
    pub sha256: String,
    pub sha512: String,
    pub signed_by: Option<String>,
    /// Its publisher (`Organization: NAME`) and declared license (an SPDX expression), from the
    /// plan (the known upstreams', or the recipe's).
    pub supplier: Option<String>,
    pub license: Option<String>,
}

/// What the documents describe.
pub struct Image<'a> {
    pub node: &'a str,
    pub build_key: &'a str,
    pub epoch: u64,
    /// os-release ID of the base (`ubuntu`, `debian`): the purl namespace of its packages.
    pub distro: &'a str,
    /// The recipe's file name (not its path: equal builds elsewhere give equal documents).
    pub recipe: &'a str,
    pub recipe_sha256: &'a str,
    pub lock_sha256: Option<String>,
    /// The recipe's `cluster.name`: who supplies the image is whoever runs that cluster.
    pub cluster: &'a str,
}

/// The distribution's publisher: the supplier of its packages and of a base made from them.
fn distro_supplier(distro: &str) -> String {
    format!(
        "Organization: {}",
        match distro {
            "ubuntu" => "Canonical Ltd.",
            "debian" => "Debian",
            other => other,
        }
    )
}

/// Percent-encoding for purl segments: anything but unreserved characters.
fn purl_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An SPDX id from a name: letters, digits, `.` and `-` only, unique within `used`.
fn spdx_id(prefix: &str, name: &str, used: &mut BTreeSet<String>) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut id = format!("SPDXRef-{prefix}-{clean}");
    let mut n = 1;
    while used.contains(&id) {
        n += 1;
        id = format!("SPDXRef-{prefix}-{clean}-{n}");
    }
    used.insert(id.clone());
    id
}

/// RFC 3339 UTC time of a Unix timestamp (SPDX's `created`).
pub fn rfc3339(t: u64) -> String {
    let (y, m, d) = crate::util::fmt::civil_from_days((t / 86_400) as i64);
    let secs = t % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The SPDX 2.3 document of one image.
// Long on purpose: the SPDX document as one JSON literal per package kind, in the order the
// standard lists them.
pub fn spdx(
    img: &Image,
    debs: &[DebPackage],
    licenses: &BTreeMap<String, super::dep5::Declared>,
    inputs: &[Input],
) -> Value {
    let mut used = BTreeSet::new();
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let image_id = spdx_id("image", img.node, &mut used);
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": format!("{} disk image", img.node),
        "versionInfo": img.build_key,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": format!("Organization: the operators of cluster {}", img.cluster),
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("Built by imgbuild {} from the recipe {} (sha256 {}); build key {}",
            env!("CARGO_PKG_VERSION"), img.recipe, img.recipe_sha256, img.build_key),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for d in debs {
        let id = spdx_id("deb", &format!("{}-{}", d.name, d.arch), &mut used);
        let declared = licenses.get(&d.name);
        for (r, text) in declared.iter().flat_map(|l| &l.refs) {
            extracted.entry(r.clone()).or_insert_with(|| text.clone());
        }
        packages.push(json!({
            "SPDXID": id,
            "name": d.name,
            "versionInfo": d.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "supplier": distro_supplier(img.distro),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared.map_or("NOASSERTION", |l| l.license.as_str()),
            "copyrightText": declared
                .map(|l| l.copyright.as_str())
                .filter(|c| !c.is_empty())
                .unwrap_or("NOASSERTION"),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:deb/{}/{}@{}?arch={}",
                    purl_escape(img.distro), purl_escape(&d.name), purl_escape(&d.version), purl_escape(&d.arch)
                ),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    for i in inputs {
        let id = spdx_id("input", &i.name, &mut used);
        let mut checksums = vec![json!({"algorithm": "SHA256", "checksumValue": i.sha256})];
        if !i.sha512.is_empty() {
            checksums.push(json!({"algorithm": "SHA512", "checksumValue": i.sha512}));
        }
        let file = i.url.rsplit('/').next().unwrap_or(&i.name);
        packages.push(json!({
            "SPDXID": id,
            "name": i.name,
            "versionInfo": i.version,
            "packageFileName": file,
            "downloadLocation": i.url,
            "filesAnalyzed": false,
            // The base is the distribution's, whatever tarball carried it.
            "supplier": i.supplier.clone().unwrap_or_else(|| if i.name == "base" {
                distro_supplier(img.distro)
            } else {
                "NOASSERTION".to_string()
            }),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": i.license.as_deref().unwrap_or("NOASSERTION"),
            "copyrightText": "NOASSERTION",
            "checksums": checksums,
            "comment": match &i.signed_by {
                Some(fp) => format!("OpenPGP signature verified against key {fp}"),
                None => "no signature; pinned by digest".to_string(),
            },
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:generic/{}@{}?download_url={}&checksum=sha256:{}",
                    purl_escape(&i.name), purl_escape(&i.version), purl_escape(&i.url), i.sha256
                ),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("imgbuild image {}", img.node),
        "documentNamespace": format!("https://imgbuild.invalid/spdx/{}/{}", img.node, img.build_key),
        "creationInfo": {
            "created": rfc3339(img.epoch),
            "creators": [format!("Tool: imgbuild-{}", env!("CARGO_PKG_VERSION"))],
            // SPDX 2.3 has no field for it (SPDX 3's sbomType): CISA's type of this SBOM.
            "comment": "SBOM type: build (written by the build from its inputs and the image's package database)",
        },
        "packages": packages,
        "relationships": relationships,
        "hasExtractedLicensingInfos": extracted.iter().map(|(id, text)| json!({
            "licenseId": id,
            "extractedText": text,
        })).collect::<Vec<_>>(),
    })
}

/// The in-toto statement (v1) with a SLSA provenance (v1) predicate: `subjects` are the output
/// files with their SHA-256, the resolved dependencies every input with its digests.
pub fn provenance(img: &Image, inputs: &[Input], subjects: &[(String, String)]) -> Value {
    let mut external = json!({
        "node": img.node,
        "recipe": {"uri": img.recipe, "digest": {"sha256": img.recipe_sha256}},
    });
    if let Some(l) = &img.lock_sha256 {
        external["lock"] = json!({"digest": {"sha256": l}});
    }
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects.iter().map(|(name, sha)| json!({"name": name, "digest": {"sha256": sha}})).collect::<Vec<_>>(),
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://imgbuild.invalid/image/v1",
                "externalParameters": external,
                "internalParameters": {"source_date_epoch": img.epoch},
                "resolvedDependencies": inputs.iter().map(|i| {
                    let mut digest = BTreeMap::from([("sha256", i.sha256.as_str())]);
                    if !i.sha512.is_empty() {
                        digest.insert("sha512", i.sha512.as_str());
                    }
                    json!({"name": i.name, "uri": i.url, "digest": digest})
                }).collect::<Vec<_>>(),
            },
            "runDetails": {
                "builder": {
                    "id": "https://imgbuild.invalid/builder",
                    "version": {"imgbuild": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {"invocationId": img.build_key},
            },
        },
    })
}

pub fn sbom_name(node: &str) -> String {
    format!("{node}.spdx.json")
}

pub fn provenance_name(node: &str) -> String {
    format!("{node}.provenance.json")
}

/// The signature beside the provenance (`ssh-keygen -Y sign` writes FILE.sig).
pub fn signature_name(node: &str) -> String {
    format!("{}.sig", provenance_name(node))
}

/// The namespace of imgbuild's provenance signatures (ssh-keygen's -n: a signature made for
/// something else, e.g. a git commit, is not one of these).
const SIG_NAMESPACE: &str = "imgbuild-provenance";

/// Sign `dir`'s provenance with the recipe's key: writes `<node>.provenance.json.sig`
/// (Ed25519 signatures are deterministic, so a rebuild gives the same bytes).
pub fn sign_provenance(dir: &Path, node: &str, signer: &crate::plan::Signer) -> Result<String> {
    crate::util::tools::require(&[SSH_KEYGEN])?;
    crate::util::run::Cmd::new(SSH_KEYGEN.command)
        .args(["-q", "-Y", "sign", "-n", SIG_NAMESPACE, "-f"])
        .arg(&signer.key)
        .arg(dir.join(provenance_name(node)))
        .run()
        .with_context(|| format!("signing the provenance with {}", signer.key.display()))?;
    Ok(signature_name(node))
}

/// Check the provenance's signature in `dir` against the recipe's public key. Ok(None): not
/// signed and no key asks for it; a signature nobody can check, or a key without a signature,
/// is an error.
pub fn verify_signature(
    dir: &Path,
    node: &str,
    signer: Option<&crate::plan::Signer>,
) -> Result<Option<String>> {
    let sig = dir.join(signature_name(node));
    match (sig.exists(), signer) {
        (false, None) => Ok(None),
        (false, Some(s)) => bail!(
            "{}: missing, but the recipe signs provenance with {}",
            sig.display(),
            s.key.display()
        ),
        (true, None) => bail!(
            "{}: a signature, but the recipe names no provenance.signing_key to check it with",
            sig.display()
        ),
        (true, Some(s)) => {
            crate::util::tools::require(&[SSH_KEYGEN])?;
            let work = tempfile_dir()?;
            let allowed = work.join("allowed_signers");
            std::fs::write(&allowed, format!("imgbuild {}\n", s.public_key))?;
            let prov = dir.join(provenance_name(node));
            let o = crate::util::run::Cmd::new(SSH_KEYGEN.command)
                .args(["-Y", "verify", "-I", "imgbuild", "-n", SIG_NAMESPACE, "-f"])
                .arg(&allowed)
                .arg("-s")
                .arg(&sig)
                .output_with(
                    std::fs::File::open(&prov)
                        .with_context(|| format!("reading {}", prov.display()))?
                        .into(),
                )?;
            let _ = std::fs::remove_dir_all(&work);
            if !o.status.success() {
                bail!(
                    "{}: does not verify with the recipe's key ({}): {}",
                    sig.display(),
                    s.public_key
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            Ok(Some(format!(
                "signature good ({})",
                s.public_key.split_whitespace().next().unwrap_or("ssh")
            )))
        }
    }
}

/// A private scratch directory for ssh-keygen's allowed-signers file.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("imgbuild-verify-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Check the provenance in `dir` against the files: every subject present with its SHA-256
/// (`sha256_of` computes a file's), every other output of the directory a subject. The number
/// of subjects checked.
pub fn verify_provenance(
    dir: &Path,
    node: &str,
    sha256_of: &dyn Fn(&Path) -> Result<String>,
) -> Result<usize> {
    let path = dir.join(provenance_name(node));
    let v: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    if v["_type"] != "https://in-toto.io/Statement/v1"
        || v["predicateType"] != "https://slsa.dev/provenance/v1"
    {
        bail!(
            "{}: not an in-toto statement of SLSA provenance v1",
            path.display()
        );
    }
    let subjects = v["subject"]
        .as_array()
        .with_context(|| format!("{}: no subjects", path.display()))?;
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for s in subjects {
        let (Some(name), Some(want)) = (s["name"].as_str(), s["digest"]["sha256"].as_str()) else {
            problems.push(format!("a subject without name or sha256: {s}"));
            continue;
        };
        if name.contains('/') || name.starts_with('.') {
            problems.push(format!("subject {name:?} is not a file of this directory"));
            continue;
        }
        named.insert(name.to_string());
        match sha256_of(&dir.join(name)) {
            Ok(got) if got == want => {}
            Ok(got) => problems.push(format!("{name}: sha256 {got}, the provenance says {want}")),
            Err(e) => problems.push(format!("{name}: {e:#}")),
        }
    }
    for e in std::fs::read_dir(dir)? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n != "SHA256SUMS"
            && n != provenance_name(node)
            && n != signature_name(node)
            && !named.contains(&n)
        {
            problems.push(format!("{n}: not a subject of the provenance"));
        }
    }
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(subjects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_provenance_verifies_with_the_recipes_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let keygen = |name: &str| -> crate::plan::Signer {
            let key = dir.path().join(name);
            crate::util::run::Cmd::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key)
                .run()
                .unwrap();
            let public_key = std::fs::read_to_string(key.with_extension("pub"))
                .unwrap()
                .trim()
                .to_string();
            crate::plan::Signer { public_key, key }
        };
        let (ours, theirs) = (keygen("ours"), keygen("theirs"));
        let out = dir.path().join("images");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join(provenance_name("n")), "{\"subject\": []}\n").unwrap();
        assert!(verify_signature(&out, "n", None).unwrap().is_none());
        assert!(
            verify_signature(&out, "n", Some(&ours))
                .unwrap_err()
                .to_string()
                .contains("missing, but the recipe signs provenance")
        );
        assert_eq!(
            sign_provenance(&out, "n", &ours).unwrap(),
            "n.provenance.json.sig"
        );
        let sig = std::fs::read(out.join(signature_name("n"))).unwrap();
        assert!(
            verify_signature(&out, "n", Some(&ours))
                .unwrap()
                .unwrap()
                .contains("signature good")
        );
        // Deterministic: signing again gives the same bytes (rebuilds stay bit-identical).
        std::fs::remove_file(out.join(signature_name("n"))).unwrap();
        sign_provenance(&out, "n", &ours).unwrap();
        assert_eq!(std::fs::read(out.join(signature_name("n"))).unwrap(), sig);
        // Another key, no key, or one changed byte: refused.
        let e = verify_signature(&out, "n", Some(&theirs))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify with the recipe's key"), "{e}");
        let e = verify_signature(&out, "n", None).unwrap_err().to_string();
        assert!(e.contains("names no provenance.signing_key"), "{e}");
        std::fs::write(out.join(provenance_name("n")), "{\"subject\": [1]}\n").unwrap();
        let e = verify_signature(&out, "n", Some(&ours))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify"), "{e}");
        // The private key's bytes are in no output.
        let secret = std::fs::read_to_string(&ours.key).unwrap();
        // (the file's first base64 line is a fixed header; its second holds key material)
        let line = secret.lines().nth(2).unwrap();
        for e in std::fs::read_dir(&out).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(line));
        }
    }

    #[test]
    fn dates_ids_and_purls() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let mut used = BTreeSet::new();
        assert_eq!(
            spdx_id("deb", "libstdc++6", &mut used),
            "SPDXRef-deb-libstdc--6"
        );
        assert_eq!(
            spdx_id("deb", "libstdc++6", &mut used),
            "SPDXRef-deb-libstdc--6-2"
        );
        assert_eq!(purl_escape("1:2.38.1-5+deb12u3"), "1%3A2.38.1-5%2Bdeb12u3");
    }

    #[test]
    fn dpkg_status_gives_installed_packages_with_architecture() {
        let status = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b13\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                      Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2025b\n";
        let p = dpkg_packages(status);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].name.as_str(), p[0].arch.as_str()), ("bash", "amd64"));
        assert_eq!(p[1].version, "2025b");
    }

    #[test]
    fn provenance_fails_on_a_changed_or_unlisted_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.raw"), b"disk").unwrap();
        let sha = |p: &Path| crate::fetch::checksum::sha256_file(p).map_err(Into::into);
        let img = Image {
            node: "n",
            build_key: "k",
            epoch: 0,
            distro: "debian",
            recipe: "r.yaml",
            recipe_sha256: "00",
            lock_sha256: None,
            cluster: "c",
        };
        let subjects = vec![("n.raw".to_string(), sha(&dir.path().join("n.raw")).unwrap())];
        let v = provenance(&img, &[], &subjects);
        std::fs::write(dir.path().join(provenance_name("n")), v.to_string()).unwrap();
        assert_eq!(verify_provenance(dir.path(), "n", &sha).unwrap(), 1);
        std::fs::write(dir.path().join("n.raw"), b"disK").unwrap();
        let e = verify_provenance(dir.path(), "n", &sha)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n.raw: sha256"), "{e}");
        std::fs::write(dir.path().join("n.raw"), b"disk").unwrap();
        std::fs::write(dir.path().join("extra"), b"x").unwrap();
        let e = verify_provenance(dir.path(), "n", &sha)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra: not a subject"), "{e}");
    }
}
