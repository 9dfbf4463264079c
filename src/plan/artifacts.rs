//! Artifacts of a recipe: URLs from templates and upstream defaults, digest sources, signatures.

use indexmap::IndexMap;

use super::{Algorithm, Artifact, Component, Ctx, DigestSource, NodeDraft, Role, SignaturePlan};
use crate::recipe::diag::did_you_mean;
use crate::recipe::srcmap::{index, join};
use crate::recipe::template::{self, TemplateError};
use crate::recipe::{self, BaseKind, OneOrMany, Signs};

/// Which components the cluster's roles need (every node carries all of them: the shared part of
/// the image is built once; roles only decide which units are enabled).
pub(super) fn resolve_artifacts(
    cx: &mut Ctx,
    nodes: &[NodeDraft],
    metrics: bool,
) -> Option<Vec<Artifact>> {
    let any = |f: &dyn Fn(Role) -> bool| nodes.iter().any(|n| n.roles.iter().any(|r| f(*r)));
    let c = &cx.loaded.recipe.components;
    let jmx_users = |r: Role| matches!(r, Role::Kafka | Role::StormNimbus | Role::StormSupervisor);
    if !metrics && c.jmx_exporter.is_some() {
        cx.warn(
            cx.key_at("components.jmx_exporter"),
            "`jmx_exporter` is left out of the images: metrics are off",
        );
    }
    // Metrics on without a jmx_exporter entry: the release imgbuild knows, pinned here.
    let default_jmx = default_jmx_exporter();
    let jmx = match &c.jmx_exporter {
        Some(j) => Some(j),
        None if any(&jmx_users) => Some(&default_jmx),
        None => None,
    };
    let wanted: [(Component, Option<&recipe::Component>, bool, &str); 6] = [
        (
            Component::Java,
            c.java.as_ref(),
            any(&|_| true),
            "ZooKeeper, Kafka and Storm run on Java",
        ),
        (
            Component::Zookeeper,
            c.zookeeper.as_ref(),
            any(&|r| r == Role::Zookeeper),
            "a node has the `zookeeper` role",
        ),
        (
            Component::Kafka,
            c.kafka.as_ref(),
            any(&|r| r == Role::Kafka),
            "a node has the `kafka` role",
        ),
        (
            Component::Storm,
            c.storm.as_ref(),
            any(&|r| r.is_storm()),
            "a node has a `storm-*` role",
        ),
        (Component::Python, c.python.as_ref(), false, ""),
        (
            Component::JmxExporter,
            jmx.filter(|_| metrics),
            metrics && any(&jmx_users),
            "metrics are on and a node runs Kafka or a Storm nimbus or supervisor (its Prometheus endpoint is the JMX exporter's agent)",
        ),
    ];
    let mut out = Vec::new();
    let mut ok = true;
    for (name, comp, needed, why) in wanted {
        match comp {
            Some(comp) => match resolve_component(cx, name, comp) {
                Some(a) => out.push(a),
                None => ok = false,
            },
            None if needed => {
                let d = cx.error(
                    cx.key_at("components"),
                    format!("missing component `{name}`: {why}"),
                );
                let or_off = if name == Component::JmxExporter {
                    ", or turn metrics off (metrics: {enabled: false})"
                } else {
                    ""
                };
                Ctx::hint(
                    d,
                    format!("add components.{name} (see recipes/cluster.yaml){or_off}"),
                );
                ok = false;
            }
            None => {}
        }
    }
    if c.python.is_none() && any(&|r| r == Role::StormSupervisor) {
        cx.warn(
            cx.key_at("components"),
            "no `python` component: Storm topologies written in Python will have no /opt/python",
        );
    }
    if let Some(base) = resolve_base_artifact(cx) {
        out.insert(0, base);
    }
    ok.then_some(out)
}

/// The JMX exporter agent a recipe gets when it says nothing: Maven Central's 1.0.1, whose
/// sha256 is pinned here (Maven Central publishes only SHA-1 and MD5 beside it).
pub const JMX_EXPORTER_VERSION: &str = "1.0.1";
pub const JMX_EXPORTER_SHA256: &str =
    "7d61f737fd661610ccc14aea79764faa1ea94a340cbc8f0029b3d2edea3d80c1";

fn default_jmx_exporter() -> recipe::Component {
    recipe::Component {
        version: JMX_EXPORTER_VERSION.to_string(),
        urls: None,
        digest: Some(recipe::Digest {
            sha256: Some(JMX_EXPORTER_SHA256.to_string()),
            sha512: None,
            sha256_url: None,
            sha512_url: None,
        }),
        signature: None,
        vars: IndexMap::new(),
        supplier: None,
        license: None,
    }
}

/// Upstream defaults for a component's URLs and digest, used when the recipe leaves them out.
fn component_defaults(name: Component) -> (Vec<&'static str>, Option<(&'static str, Algorithm)>) {
    match name {
        Component::Zookeeper => (
            vec![
                "https://downloads.apache.org/zookeeper/zookeeper-{version}/apache-zookeeper-{version}-bin.tar.gz",
                "https://archive.apache.org/dist/zookeeper/zookeeper-{version}/apache-zookeeper-{version}-bin.tar.gz",
            ],
            Some(("{url}.sha512", Algorithm::Sha512)),
        ),
        Component::Kafka => (
            vec![
                "https://downloads.apache.org/kafka/{version}/kafka_{scala}-{version}.tgz",
                "https://archive.apache.org/dist/kafka/{version}/kafka_{scala}-{version}.tgz",
            ],
            Some(("{url}.sha512", Algorithm::Sha512)),
        ),
        Component::Storm => (
            vec![
                "https://downloads.apache.org/storm/apache-storm-{version}/apache-storm-{version}.tar.gz",
                "https://archive.apache.org/dist/storm/apache-storm-{version}/apache-storm-{version}.tar.gz",
            ],
            Some(("{url}.sha512", Algorithm::Sha512)),
        ),
        // Maven Central publishes only .sha1 and .md5 beside the jar: the recipe pins its sha256.
        Component::JmxExporter => (
            vec![
                "https://repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/{version}/jmx_prometheus_javaagent-{version}.jar",
            ],
            None,
        ),
        Component::Python => (
            vec![
                "https://github.com/astral-sh/python-build-standalone/releases/download/{release}/cpython-{version}+{release}-{triple}-install_only.tar.gz",
            ],
            Some((
                "https://github.com/astral-sh/python-build-standalone/releases/download/{release}/SHA256SUMS",
                Algorithm::Sha256,
            )),
        ),
        _ => (Vec::new(), None),
    }
}

fn component_vars(
    name: Component,
    version: &str,
    extra: &IndexMap<String, String>,
) -> IndexMap<String, String> {
    let mut vars = IndexMap::new();
    vars.insert("version".to_string(), version.to_string());
    match name {
        Component::Kafka => {
            vars.insert("scala".into(), "2.13".into());
        }
        Component::Python => {
            vars.insert("triple".into(), "x86_64-unknown-linux-gnu".into());
        }
        _ => {}
    }
    for (k, v) in extra {
        vars.insert(k.clone(), v.clone());
    }
    vars
}

fn resolve_component(cx: &mut Ctx, name: Component, comp: &recipe::Component) -> Option<Artifact> {
    let path = join("components", name.name());
    if comp.version.trim().is_empty() || comp.version.contains(['/', ' ']) {
        cx.error(
            cx.at(&join(&path, "version")),
            format!("`{}` is not a version", comp.version),
        );
        return None;
    }
    let vars = component_vars(name, &comp.version, &comp.vars);
    let (default_urls, default_digest) = component_defaults(name);
    let supplier = comp.supplier.as_ref().and_then(|s| {
        let ok = ["Organization: ", "Person: "]
            .iter()
            .any(|p| s.strip_prefix(p).is_some_and(|n| !n.trim().is_empty()));
        if !ok {
            let d = cx.error(
                cx.at(&join(&path, "supplier")),
                format!("`{s}` is not an SPDX supplier"),
            );
            Ctx::hint(d, "write `Organization: NAME` or `Person: NAME`");
        }
        ok.then(|| s.clone())
    });
    let license = comp.license.as_ref().and_then(|l| {
        let ok = !l.trim().is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || " .-+()".contains(c));
        if !ok {
            let d = cx.error(
                cx.at(&join(&path, "license")),
                format!("`{l}` is not an SPDX license expression"),
            );
            Ctx::hint(
                d,
                "an SPDX identifier (Apache-2.0), LicenseRef-NAME, or several joined by AND, OR, WITH",
            );
        }
        ok.then(|| l.clone())
    });
    resolve_artifact(
        cx,
        &ArtifactSpec {
            path: &path,
            name,
            version: &comp.version,
            urls: comp.urls.as_ref(),
            digest: comp.digest.as_ref(),
            signature: comp.signature.as_ref(),
            vars: &vars,
            default_urls,
            default_digest,
        },
    )
    .map(|mut a| {
        a.supplier = supplier.or(a.supplier);
        a.license = license.or(a.license);
        a
    })
}

const UBUNTU_CLOUD_KEY: &str = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81";

fn resolve_base_artifact(cx: &mut Ctx) -> Option<Artifact> {
    let b = &cx.loaded.recipe.base;
    match b.kind {
        BaseKind::Mmdebstrap => None,
        BaseKind::Tarball | BaseKind::UbuntuCloud => {
            let release = b.release.clone().unwrap_or_else(|| default_release(b.kind));
            let mut vars = IndexMap::new();
            vars.insert("release".to_string(), release.clone());
            for (k, v) in &b.vars {
                vars.insert(k.clone(), v.clone());
            }
            let (default_urls, default_digest) = if b.kind == BaseKind::UbuntuCloud {
                (
                    vec![
                        "https://cloud-images.ubuntu.com/releases/{release}/release/ubuntu-{release}-server-cloudimg-amd64-root.tar.xz",
                    ],
                    Some((
                        "https://cloud-images.ubuntu.com/releases/{release}/release/SHA256SUMS",
                        Algorithm::Sha256,
                    )),
                )
            } else {
                (Vec::new(), None)
            };
            if b.kind == BaseKind::Tarball && b.urls.is_none() {
                cx.error(
                    cx.key_at("base"),
                    "missing required key `urls` in `base` (kind: tarball)",
                );
                return None;
            }
            let mut art = resolve_artifact(
                cx,
                &ArtifactSpec {
                    path: "base",
                    name: Component::Base,
                    version: &release,
                    urls: b.urls.as_ref(),
                    digest: b.digest.as_ref(),
                    signature: b.signature.as_ref(),
                    vars: &vars,
                    default_urls,
                    default_digest,
                },
            )?;
            if b.kind == BaseKind::UbuntuCloud && b.signature.is_none() {
                // Canonical signs SHA256SUMS with the UEC Image Automatic Signing Key.
                if let DigestSource::ChecksumFile { urls, .. } = &art.digest {
                    art.signature = Some(SignaturePlan {
                        urls: urls.iter().map(|u| format!("{u}.gpg")).collect(),
                        keys: format!(
                            "https://keyserver.ubuntu.com/pks/lookup?op=get&search=0x{UBUNTU_CLOUD_KEY}"
                        ),
                        fingerprints: vec![UBUNTU_CLOUD_KEY.into()],
                        signs: Signs::Checksums,
                    });
                }
            }
            Some(art)
        }
    }
}

/// Ubuntu cloud images default to 24.04 LTS; a bare tarball has no release unless the recipe names one.
pub(super) fn default_release(kind: BaseKind) -> String {
    match kind {
        BaseKind::UbuntuCloud => "24.04".into(),
        _ => "unversioned".into(),
    }
}

/// Render one URL template at `path`, reporting a bad variable at its exact column.
fn render_url(
    cx: &mut Ctx,
    path: &str,
    template: &str,
    vars: &IndexMap<String, String>,
    defaulted: bool,
) -> Option<String> {
    let where_ = if defaulted {
        format!("the default URL `{template}`")
    } else {
        "URL".to_string()
    };
    match template::render(template, vars) {
        Ok(u) => {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                let d = cx.error(cx.at(path), format!("`{u}` is not an http(s) URL"));
                Ctx::hint(
                    d,
                    "URLs start with https:// (or http:// with an inline digest)",
                );
                return None;
            }
            Some(u)
        }
        Err(TemplateError::Unknown { name, offset }) => {
            let pos = if defaulted {
                cx.key_at(path)
            } else {
                cx.loaded.map.within(path, offset, &cx.loaded.text)
            };
            let mut msg = format!("unknown variable `{{{name}}}` in {where_}");
            if let Some(m) = did_you_mean(&name, vars.keys().map(String::as_str)) {
                msg.push_str(&format!(" (did you mean `{{{m}}}`?)"));
            }
            let known: Vec<String> = vars.keys().map(|k| format!("{{{k}}}")).collect();
            let d = cx.error(pos, msg);
            Ctx::hint(
                d,
                format!(
                    "variables here: {}; add more under `vars`",
                    known.join(", ")
                ),
            );
            None
        }
        Err(TemplateError::Unclosed { offset }) => {
            let pos = if defaulted {
                cx.key_at(path)
            } else {
                cx.loaded.map.within(path, offset, &cx.loaded.text)
            };
            cx.error(pos, format!("unclosed `{{` in {where_}"));
            None
        }
    }
}

/// What a recipe says about one downloaded artifact (a component or the base), at `path`, with
/// imgbuild's defaults for what it leaves out.
struct ArtifactSpec<'a> {
    path: &'a str,
    name: Component,
    version: &'a str,
    urls: Option<&'a OneOrMany>,
    digest: Option<&'a recipe::Digest>,
    signature: Option<&'a recipe::Signature>,
    vars: &'a IndexMap<String, String>,
    default_urls: Vec<&'a str>,
    default_digest: Option<(&'a str, Algorithm)>,
}

/// Resolve one artifact: its URLs rendered, its digest and signature sources, and plain http
/// refused unless the content is pinned.
fn resolve_artifact(cx: &mut Ctx, a: &ArtifactSpec) -> Option<Artifact> {
    let (templates, defaulted) = url_templates(cx, a)?;
    let mut rendered = Vec::new();
    for (p, t) in &templates {
        if t.contains("{url}") {
            cx.error(
                cx.at(p),
                "`{url}` can only be used in checksum and signature URLs".to_string(),
            );
            continue;
        }
        rendered.push(render_url(cx, p, t, a.vars, defaulted)?);
    }
    if rendered.len() != templates.len() {
        return None;
    }
    let digest = resolve_digest(cx, a, &rendered)?;
    let signature = match a.signature {
        None => None,
        Some(s) => {
            let sig_path = join(a.path, "signature");
            let urls = per_url(
                cx,
                a.vars,
                &rendered,
                &join(&sig_path, "url"),
                &s.url,
                false,
            )?;
            let keys = render_url(cx, &join(&sig_path, "keys"), &s.keys, a.vars, false)?;
            let fingerprints = pinned_fingerprints(
                cx,
                &join(&sig_path, "fingerprints"),
                &s.fingerprints,
                "without a pinned key, anyone who can change the KEYS file can sign",
            )?;
            Some(SignaturePlan {
                urls,
                keys,
                fingerprints,
                signs: s.signs.unwrap_or(Signs::Artifact),
            })
        }
    };
    // Plain http is only safe when nothing downloaded over it decides what is trusted.
    let digest_pinned = matches!(digest, DigestSource::Inline { .. })
        || signature
            .as_ref()
            .is_some_and(|s| s.signs == Signs::Checksums);
    for (i, u) in rendered.iter().enumerate() {
        if u.starts_with("http://") && !digest_pinned {
            let p = templates[i].0.clone();
            let d = cx.error(
                cx.at(&p),
                format!("plain http URL `{u}` without a pinned digest"),
            );
            Ctx::hint(
                d,
                "use https, or write the digest inline (sha256/sha512) so the content is pinned",
            );
            return None;
        }
    }
    let publisher = a.name.publisher();
    Some(Artifact {
        name: a.name,
        version: a.version.to_string(),
        urls: rendered,
        digest,
        signature,
        supplier: publisher.map(|(s, _)| s.to_string()),
        license: publisher.map(|(_, l)| l.to_string()),
    })
}

/// The URL templates with the recipe path each came from, and whether they are imgbuild's
/// defaults (errors in those point at the artifact's key, not into a template).
fn url_templates(cx: &mut Ctx, a: &ArtifactSpec) -> Option<(Vec<(String, String)>, bool)> {
    let (path, urls_path) = (a.path, join(a.path, "urls"));
    let found = match a.urls {
        Some(u) => {
            let list = u.to_vec();
            let paths = (0..list.len()).map(|i| {
                if u.is_list() {
                    index(&urls_path, i)
                } else {
                    urls_path.clone()
                }
            });
            (paths.zip(list).collect::<Vec<_>>(), false)
        }
        None if !a.default_urls.is_empty() => (
            a.default_urls
                .iter()
                .map(|t| (path.to_string(), t.to_string()))
                .collect(),
            true,
        ),
        None => {
            cx.error(
                cx.key_at(path),
                format!("missing required key `urls` in `{path}`"),
            );
            return None;
        }
    };
    if found.0.is_empty() {
        cx.error(
            cx.at(&urls_path),
            format!("`{path}.urls` is empty: give at least one URL"),
        );
        return None;
    }
    Some(found)
}

/// A checksum or signature URL template rendered once per artifact URL (it may use `{url}`).
fn per_url(
    cx: &mut Ctx,
    vars: &IndexMap<String, String>,
    rendered: &[String],
    p: &str,
    t: &str,
    is_default: bool,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for u in rendered {
        let mut v = vars.clone();
        v.insert("url".into(), u.clone());
        out.push(render_url(cx, p, t, &v, is_default)?);
    }
    Some(out)
}

/// `digest`: exactly one of an inline sha256/sha512 or a publisher's checksum file (sha*_url);
/// imgbuild's default checksum file when the recipe gives none and there is one.
fn resolve_digest(cx: &mut Ctx, a: &ArtifactSpec, rendered: &[String]) -> Option<DigestSource> {
    let (path, digest_path) = (a.path, join(a.path, "digest"));
    let Some(d) = a.digest else {
        let Some((t, algorithm)) = a.default_digest else {
            cx.error(
                cx.key_at(path),
                format!("missing required key `digest` in `{path}`"),
            );
            return None;
        };
        return Some(DigestSource::ChecksumFile {
            algorithm,
            urls: per_url(cx, a.vars, rendered, path, t, true)?,
        });
    };
    let set: Vec<(&str, &String)> = [
        ("sha256", d.sha256.as_ref()),
        ("sha512", d.sha512.as_ref()),
        ("sha256_url", d.sha256_url.as_ref()),
        ("sha512_url", d.sha512_url.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let [(key, value)] = set[..] else {
        let d = cx.error(
            cx.at(&digest_path),
            format!("`{path}.digest` needs exactly one of sha256, sha512, sha256_url, sha512_url (found {})", set.len()),
        );
        Ctx::hint(
            d,
            "an inline digest pins the content; a *_url names the publisher's checksum file",
        );
        return None;
    };
    let key_path = join(&digest_path, key);
    let algorithm = if key.starts_with("sha256") {
        Algorithm::Sha256
    } else {
        Algorithm::Sha512
    };
    if key.ends_with("_url") {
        return Some(DigestSource::ChecksumFile {
            algorithm,
            urls: per_url(cx, a.vars, rendered, &key_path, value, false)?,
        });
    }
    let len = if algorithm == Algorithm::Sha256 {
        64
    } else {
        128
    };
    let v: String = value
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        cx.error(
            cx.at(&key_path),
            format!("{key} digest must be {len} hex characters, got {}", v.len()),
        );
        return None;
    }
    Some(DigestSource::Inline {
        algorithm,
        value: v,
    })
}

/// Full OpenPGP fingerprints at `path` (upper-case, spaces removed); at least one.
pub(super) fn pinned_fingerprints(
    cx: &mut Ctx,
    path: &str,
    list: &[String],
    why_pin: &str,
) -> Option<Vec<String>> {
    let mut fingerprints = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let v: String = f
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        if !(v.len() == 40 || v.len() == 64) || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            let d = cx.error(
                cx.at(&index(path, i)),
                format!("`{f}` is not an OpenPGP fingerprint (40 or 64 hex characters)"),
            );
            Ctx::hint(d, "pin full fingerprints, never short key ids");
            return None;
        }
        fingerprints.push(v);
    }
    if fingerprints.is_empty() {
        let d = cx.error(cx.at(path), "at least one pinned fingerprint is needed");
        Ctx::hint(d, why_pin);
        return None;
    }
    Some(fingerprints)
}
