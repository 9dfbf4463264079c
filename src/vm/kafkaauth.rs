//! `up --check` (containers), with `security: tls`: Kafka's listeners refuse whoever they
//! should, tried with Kafka's own tools from a node — a plaintext client, a TLS client without a
//! certificate and one whose certificate claims to be a node but comes from another CA, on the
//! client, inter-broker and controller listeners; and on the client listener a user with a
//! certificate of the cluster's CA but no ACL, on the round trip's topic.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::plan::Plan;
use crate::rootfs::render::CA_CERT;
use crate::vm::container::Container;
use crate::vm::datapath::Phase;

/// Where the check's client files go inside the node (host-written into its overlay; /tmp may
/// be a tmpfs of the container's own).
const DIR: &str = "/var/lib/imgbuild-check";
/// The authenticated user no ACL names.
pub const NO_ACL_USER: &str = "imgbuild-check-no-acl";

/// The clients tried, each a properties file: (file stem, what it is).
const CLIENTS: [(&str, &str); 3] = [
    ("plaintext", "a plaintext client"),
    ("nocert", "a TLS client without a certificate"),
    ("impostor", "a certificate of another CA claiming CN="),
];

fn props(kind: &str) -> String {
    // Short timeouts: a refused client retries until them, and each is a JVM's run.
    let mut s = String::from("request.timeout.ms=5000\ndefault.api.timeout.ms=15000\n");
    match kind {
        "plaintext" => s.push_str("security.protocol=PLAINTEXT\n"),
        _ => {
            s.push_str(&format!(
                "security.protocol=SSL\nssl.truststore.type=PEM\nssl.truststore.location={CA_CERT}\n"
            ));
            if kind != "nocert" {
                s.push_str(&format!(
                    "ssl.keystore.type=PEM\nssl.keystore.location={DIR}/{kind}.pem\n"
                ));
            }
        }
    }
    s
}

/// stdout and stderr of a tool run in `c`, and whether it exited 0.
fn run(c: &Container, cmd: &[&str]) -> Result<(bool, String)> {
    let o = c.exec(cmd, Duration::from_secs(120))?;
    Ok((
        o.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

/// The first of `names` the output shows, the sign of why the client was turned away.
fn sign<'a>(out: &str, names: &[&'a str]) -> Option<&'a str> {
    names.iter().copied().find(|n| out.contains(n))
}

/// A refusal on an authenticating listener: the tool failed, with the TLS handshake refused
/// (no certificate, or not the cluster CA's), or timing out (plaintext: the broker drops it).
fn judge(kind: &str, ok: bool, out: &str) -> Result<String> {
    let want: &[&str] = match kind {
        "plaintext" => &["TimeoutException", "Timed out", "disconnected"],
        _ => &["SslAuthenticationException", "SSL handshake failed"],
    };
    if ok {
        bail!("was let in (the tool succeeded)");
    }
    match sign(out, want) {
        Some(s) => Ok(s.to_string()),
        None => {
            let tail: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
            bail!(
                "failed, but not with {}: {}",
                want.join(" / "),
                tail[tail.len().saturating_sub(3)..].join(" | ")
            )
        }
    }
}

/// The three unauthenticated clients against one listener; a line of what each saw, or a failure.
fn try_listener(
    c: &Container,
    p: &Plan,
    listener: &str,
    addr: &str,
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut seen = Vec::new();
    for (kind, what) in CLIENTS {
        let cfg = format!("{DIR}/{kind}.properties");
        let cmd: Vec<&str> = if listener == "controller" {
            vec![
                "/opt/kafka/bin/kafka-metadata-quorum.sh",
                "--bootstrap-controller",
                addr,
                "--command-config",
                &cfg,
                "describe",
                "--status",
            ]
        } else {
            vec![
                "/opt/kafka/bin/kafka-topics.sh",
                "--bootstrap-server",
                addr,
                "--command-config",
                &cfg,
                "--list",
            ]
        };
        let who = if kind == "impostor" {
            format!("{what}{}", p.node.hostname)
        } else {
            what.to_string()
        };
        let (ok, out) = run(c, &cmd)?;
        match judge(kind, ok, &out) {
            Ok(s) => seen.push(format!("{who} refused ({s})")),
            Err(e) => failures.push(format!("{listener} listener {addr}: {who} {e:#}")),
        }
    }
    lines.push(format!("{listener} listener {addr}: {}", seen.join(", ")));
    Ok(())
}

pub fn refusals(nodes: &[&Plan], cs: &[Container], work: &Path) -> Phase {
    Phase::timed("kafka refusals", |lines, failures| {
        let p = nodes
            .iter()
            .find(|p| p.kafka.is_some())
            .context("no Kafka node")?;
        let k = p.kafka.as_ref().context("no Kafka")?;
        let c = crate::vm::datapath::container_of(cs, p)?;
        let (user, impostor) = crate::pki::check_identities(
            p,
            &work.join("check-identities"),
            NO_ACL_USER,
            &p.node.hostname,
        )?;
        c.write(&format!("{DIR}/user.pem"), &user, 0o600)?;
        c.write(&format!("{DIR}/impostor.pem"), &impostor, 0o600)?;
        for (kind, _) in CLIENTS.iter().chain([&("user", "")]) {
            c.write(
                &format!("{DIR}/{kind}.properties"),
                props(kind).as_bytes(),
                0o644,
            )?;
        }
        let ip = p.node.ip.to_string();
        let mut listeners = vec![("client", k.port), ("inter-broker", k.internal_port)];
        if let Some(port) = k.controller_port.filter(|_| {
            k.process_roles
                .as_ref()
                .is_some_and(|r| r.contains(&crate::plan::wiring::ProcessRole::Controller))
        }) {
            listeners.push(("controller", port));
        }
        for (listener, port) in listeners {
            try_listener(c, p, listener, &format!("{ip}:{port}"), lines, failures)?;
        }
        // Authenticated, but no ACL: producing to the round trip's topic must be refused.
        let cfg = format!("{DIR}/user.properties");
        let script = format!(
            "echo refused | /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server {ip}:{} {} {cfg} --topic {} --producer-property max.block.ms=15000",
            k.port,
            crate::vm::datapath::config_opt(
                crate::vm::datapath::modern_tools(p),
                "--producer.config"
            ),
            crate::vm::datapath::TOPIC
        );
        let (_, out) = run(c, &["sh", "-c", &script])?;
        let topic = crate::vm::datapath::TOPIC;
        match sign(
            &out,
            &["TopicAuthorizationException", "Not authorized to access topics"],
        ) {
            Some(s) => lines.push(format!(
                "client listener: User:{NO_ACL_USER} (the cluster CA's certificate, no ACL) refused on topic {topic} ({s})"
            )),
            None => {
                let tail: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
                failures.push(format!(
                    "client listener: User:{NO_ACL_USER}, who has no ACL, was not refused on topic {topic}: {}",
                    tail[tail.len().saturating_sub(3)..].join(" | ")
                ));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_needs_a_failed_tool_and_the_reason_in_its_output() {
        let ssl =
            "ERROR org.apache.kafka.common.errors.SslAuthenticationException: SSL handshake failed";
        assert_eq!(
            judge("nocert", false, ssl).unwrap(),
            "SslAuthenticationException"
        );
        assert!(
            judge("nocert", true, ssl).is_err(),
            "a success is no refusal"
        );
        let other = "Error: Unknown topic";
        assert!(judge("impostor", false, other).is_err());
        assert!(judge("plaintext", false, "TimeoutException: Timed out waiting").is_ok());
        assert!(judge("plaintext", false, ssl).is_err());
    }

    #[test]
    fn the_clients_properties() {
        assert!(props("plaintext").contains("security.protocol=PLAINTEXT\n"));
        let n = props("nocert");
        assert!(n.contains("security.protocol=SSL\n") && !n.contains("keystore"));
        assert!(props("impostor").contains(&format!("keystore.location={DIR}/impostor.pem")));
    }
}
