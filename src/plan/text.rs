//! `imgbuild plan`'s text: a node's resolved plan, section by section.

use super::services::Reach;
use super::*;

/// The readable form of a plan (stdout of `imgbuild plan NODE`).
/// `imgbuild plan NODE` as text: one `key value` line per fact, section by section.
pub fn render_plan(p: &Plan) -> String {
    let mut out = PlanLines(String::new());
    plan_identity(p, &mut out);
    plan_services(p, &mut out);
    plan_base(p, &mut out);
    plan_resources(p, &mut out);
    plan_artifacts(p, &mut out);
    out.0
}

pub(super) struct PlanLines(String);

impl PlanLines {
    fn line(&mut self, k: &str, v: String) {
        self.0.push_str(&format!("  {k:<22} {v}\n"));
    }
}

/// Who the node is: name, address, roles, units, /etc/hosts.
fn plan_identity(p: &Plan, out: &mut PlanLines) {
    let n = &p.node;
    out.line(
        "node",
        format!("{} (id {}) of cluster {}", n.name, n.id, p.cluster),
    );
    out.line(
        "hostname",
        n.fqdn.clone().unwrap_or_else(|| n.hostname.clone()),
    );
    out.line(
        "address",
        format!(
            "{}/{} via {}, dns {}",
            n.ip,
            p.network.prefix_len,
            p.network.gateway,
            join(&p.network.dns)
        ),
    );
    if let Some(mac) = &n.mac {
        out.line("mac", mac.clone());
    }
    out.line("roles", join_with(&p.roles, " "));
    out.line("units", join_with(&p.units, " "));
    for h in &p.hosts {
        out.line("/etc/hosts", format!("{} {}", h.ip, h.names.join(" ")));
    }
    for (reach, what) in [
        (Reach::Cluster, "ports (cluster)"),
        (Reach::Clients, "ports (clients)"),
        (Reach::Metrics, "ports (metrics)"),
    ] {
        let ports: Vec<String> = p
            .ports
            .iter()
            .filter(|b| b.reach == reach)
            .map(|b| format!("{} {}", b.port, b.spec().label))
            .collect();
        if !ports.is_empty() {
            out.line(what, ports.join(", "));
        }
    }
    let fw = &p.firewall;
    out.line(
        "firewall",
        if fw.enabled {
            format!(
                "nftables: cluster ports from the {} nodes only; SSH ({}) and client ports from {}",
                fw.nodes.len(),
                crate::plan::firewall::SSH_PORT,
                fw.clients.join(" ")
            )
        } else {
            "off: every port is open to any host on the network".to_string()
        },
    );
    out.line(
        "metrics",
        match &fw.metrics {
            Some(from) => format!(
                "Prometheus endpoints (ports (metrics)) on the node's address, scraped from {}",
                from.join(" ")
            ),
            None => "off: no exporter, no metrics port".to_string(),
        },
    );
    plan_security(p, out);
}

/// Who may talk to the services: TLS or plaintext, Kafka's super users and users with ACLs.
fn plan_security(p: &Plan, out: &mut PlanLines) {
    let sec = &p.security;
    if !sec.tls() {
        out.line(
            "security",
            "plaintext: no TLS, no authentication, no ACLs (labs only)".into(),
        );
        return;
    }
    let line = if sec.scram() {
        "tls: mutual TLS on ZooKeeper's quorum and client port and Kafka's inter-broker and controller listeners; Kafka clients by SCRAM-SHA-512 password over TLS (scram), ACLs on"
    } else {
        "tls: mutual TLS on ZooKeeper's quorum and client port and every Kafka listener; Kafka clients by certificate (mtls), ACLs on"
    };
    out.line("security", line.into());
    if !sec.super_users.is_empty() {
        out.line(
            "kafka super users",
            sec.super_users
                .iter()
                .map(|n| format!("User:{n}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    for u in &sec.users {
        let acls: Vec<String> = u
            .allow
            .iter()
            .map(|a| {
                let what = match a.resource {
                    crate::plan::security::Resource::Cluster => "cluster".to_string(),
                    r => format!(
                        "{} {}{}",
                        r.name(),
                        a.name,
                        if a.prefixed { "*" } else { "" }
                    ),
                };
                format!("{} on {what}", a.ops.join(","))
            })
            .collect();
        out.line(
            "kafka user",
            format!(
                "User:{}: {}",
                u.name,
                if acls.is_empty() {
                    "no ACL".into()
                } else {
                    acls.join("; ")
                }
            ),
        );
    }
}

/// How its services are wired: ZooKeeper, Kafka, Storm.
fn plan_services(p: &Plan, out: &mut PlanLines) {
    if let Some(z) = &p.zookeeper {
        out.line(
            "zookeeper myid",
            z.myid.map_or("- (client only)".into(), |m| m.to_string()),
        );
        out.line("zookeeper connect", z.connect.clone());
        for srv in &z.servers {
            out.line("zookeeper", srv.to_string());
        }
    }
    if let Some(k) = &p.kafka {
        out.line("kafka mode", format!("{:?}", k.mode).to_lowercase());
        if let Some(id) = k.node_id {
            out.line("kafka node.id", id.to_string());
        }
        if let Some(id) = k.broker_id {
            out.line("kafka broker.id", id.to_string());
        }
        if let Some(r) = &k.process_roles {
            out.line("kafka process.roles", crate::plan::wiring::comma(r));
        }
        if let Some(v) = &k.controller_quorum_voters {
            out.line("kafka voters", crate::plan::wiring::comma(v));
        }
        if let Some(c) = &k.zookeeper_connect {
            out.line("kafka zookeeper", c.clone());
        }
        if let Some(c) = &k.cluster_id {
            out.line("kafka cluster id", c.clone());
        }
        out.line("kafka listeners", crate::plan::wiring::comma(&k.listeners));
        // The cluster's content, kept by `imgbuild apply` (not in the image).
        for t in &k.topics {
            out.line("kafka topic", format!("{} (imgbuild apply)", t.describe()));
        }
    }
    if let Some(st) = &p.storm {
        out.line("storm zookeeper", join(&st.zookeeper_servers));
        out.line("storm nimbus seeds", join(&st.nimbus_seeds));
        out.line("storm local hostname", st.local_hostname.clone());
        out.line("storm slots", join_with(&st.slots, " "));
    }
}

/// The base OS and how it boots.
fn plan_base(p: &Plan, out: &mut PlanLines) {
    let b = &p.base;
    match b.kind {
        recipe::BaseKind::Mmdebstrap => out.line(
            "base",
            format!(
                "mmdebstrap {} from {} [{}]",
                b.suite.as_deref().unwrap_or("-"),
                b.mirror.as_deref().unwrap_or("-"),
                b.apt_components.join(" ")
            ),
        ),
        recipe::BaseKind::UbuntuCloud => out.line("base", "ubuntu-cloud root tarball".into()),
        recipe::BaseKind::Tarball => out.line("base", "root filesystem tarball".into()),
    }
    match &b.keyring {
        Some(crate::plan::KeyringPlan::Pinned { url, fingerprints }) => out.line(
            "base keyring",
            format!("{} from {url}", fingerprints.join(" ")),
        ),
        Some(crate::plan::KeyringPlan::File { path }) => out.line("base keyring", path.clone()),
        None => {}
    }
    if !b.packages.is_empty() {
        out.line("base packages", b.packages.join(" "));
    }
    out.line(
        "base boot",
        match (&b.boot, b.boot.missing()) {
            (_, Some(why)) => format!("CANNOT BOOT: {why}"),
            (crate::plan::BaseBoot::Packages { kernel, loader }, None) => format!(
                "{} UEFI chain, kernel package {}",
                loader.as_deref().unwrap_or("-"),
                kernel.as_deref().unwrap_or("-")
            ),
            _ => "kernel and boot chain found when the tarball is extracted".into(),
        },
    );
}

/// Memory budget, OS tuning, disk size, and who signs the provenance.
fn plan_resources(p: &Plan, out: &mut PlanLines) {
    let m = &p.memory;
    out.line(
        "memory",
        format!(
            "{} MiB for the VM: {} MiB of JVM heaps ({}), their overhead{} and the OS",
            m.total_mb,
            m.heap_mb,
            m.jvms
                .iter()
                .map(|(what, h)| format!("{what} {h}"))
                .collect::<Vec<_>>()
                .join(", "),
            match m.exporters {
                0 => String::new(),
                n => format!(
                    ", {n} Prometheus exporters ({} MiB each)",
                    super::nodes::EXPORTER_MB
                ),
            }
        ),
    );
    let os = &p.os;
    out.line(
        "sysctl",
        os.sysctl
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    out.line(
        "service limits",
        format!(
            "LimitNOFILE={} LimitNPROC={}",
            os.limit_nofile, os.limit_nproc
        ),
    );
    out.line(
        "time sync",
        if os.ntp.is_empty() {
            "systemd-timesyncd, the distribution's servers".to_string()
        } else {
            format!("systemd-timesyncd from {}", os.ntp.join(" "))
        },
    );
    out.line(
        "disk size",
        match p.disk.size_bytes {
            Some(n) => crate::util::fmt::human(n),
            None => "auto (the content plus headroom)".into(),
        },
    );
    out.line(
        "disk layout",
        format!(
            "GPT: ESP, root slot A `{}` (the image's root); made at first boot by systemd-repart on the real disk: root slot B `{}` (as big as A, for the next image), data partition `{}` (ext4, the rest of the disk, at least 1 GiB)",
            crate::layout::ROOT_A_LABEL,
            crate::layout::ROOT_B_LABEL,
            crate::layout::DATA_LABEL
        ),
    );
    out.line(
        "node state",
        format!(
            "on the data partition at {}: {}; its identity record checked at every boot before any service starts",
            crate::layout::DATA_MOUNT,
            crate::layout::DATA_DIRS
                .iter()
                .map(|d| format!("/var/lib/{d}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    if let Some(signer) = &p.provenance_signer {
        out.line("provenance signer", signer.public_key.clone());
    }
    out.line(
        "pki",
        match &p.pki.operator_ca {
            Some((cert, _)) => format!(
                "the operator's CA {}; node certificates in {}",
                cert.display(),
                p.pki.dir.display()
            ),
            None => format!(
                "cluster CA and node certificates in {} (made on the first build, then reused)",
                p.pki.dir.display()
            ),
        },
    );
}

/// Every downloaded artifact with its URLs, digest source and signature.
fn plan_artifacts(p: &Plan, out: &mut PlanLines) {
    for a in &p.artifacts {
        out.line("artifact", format!("{} {}", a.name, a.version));
        for u in &a.urls {
            out.line("  url", u.clone());
        }
        match &a.digest {
            DigestSource::Inline { algorithm, value } => {
                out.line("  digest", format!("{algorithm:?} {value}").to_lowercase())
            }
            DigestSource::ChecksumFile { algorithm, urls } => out.line(
                "  digest",
                format!(
                    "{} from {}",
                    format!("{algorithm:?}").to_lowercase(),
                    urls[0]
                ),
            ),
        }
        if let Some(sig) = &a.signature {
            let over = match sig.signs {
                recipe::Signs::Artifact => "the file",
                recipe::Signs::Checksums => "the checksum file",
            };
            out.line(
                "  signature",
                format!(
                    "{} over {over}, key {}",
                    sig.urls[0],
                    sig.fingerprints.join(" ")
                ),
            );
        }
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    join_with(v, ",")
}

fn join_with<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}
