//! `up --check` (containers), with `security: tls`: Kafka's listeners refuse whoever they
//! should, tried with Kafka's own tools from a node — a plaintext client, a TLS client without a
//! certificate and one whose certificate claims to be a node but comes from another CA, on the
//! client, inter-broker and controller listeners; and on the client listener a user with a
//! certificate of the cluster's CA but no ACL, on the round trip's topic. With `clients: scram`
//! the client listener is tried with a plaintext client, a TLS client without SCRAM credentials,
//! a wrong password, and a user with the right one (made at run time with kafka-configs.sh, as
//! the node) but no ACL.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::layout::CA_CERT;
use crate::plan::Plan;
use crate::plan::security::SCRAM_MECHANISM;
use crate::vm::checks::Phase;
use crate::vm::member::Member;

/// Where the check's client files go inside the node (host-written into its overlay; /tmp may
/// be a tmpfs of the container's own).
const DIR: &str = "/var/lib/imgbuild-check";
/// The authenticated user no ACL names.
pub const NO_ACL_USER: &str = "imgbuild-check-no-acl";

/// A client tried: its properties file's stem, what it is, and the signs of its refusal.
struct Client {
    kind: &'static str,
    what: &'static str,
    signs: &'static [&'static str],
}

/// Plaintext on a TLS listener: the broker drops it (or its TLS alert is read as a response).
const DROPPED: &[&str] = &["TimeoutException", "Timed out", "disconnected"];
const HANDSHAKE: &[&str] = &["SslAuthenticationException", "SSL handshake failed"];

const PLAINTEXT: Client = Client {
    kind: "plaintext",
    what: "a plaintext client",
    signs: DROPPED,
};

/// The clients tried on a listener where everyone shows a certificate.
const MTLS: [Client; 3] = [
    PLAINTEXT,
    Client {
        kind: "nocert",
        what: "a TLS client without a certificate",
        signs: HANDSHAKE,
    },
    Client {
        kind: "impostor",
        what: "a certificate of another CA claiming CN=",
        signs: HANDSHAKE,
    },
];

/// The clients tried on a SCRAM client listener (TLS without a certificate is the normal case
/// there: without the SASL exchange the broker answers nothing).
const SCRAM: [Client; 3] = [
    PLAINTEXT,
    Client {
        kind: "nocert",
        what: "a TLS client without SCRAM credentials",
        signs: DROPPED,
    },
    Client {
        kind: "wrong",
        what: "a wrong SCRAM password for User:",
        signs: &["SaslAuthenticationException", "invalid credentials"],
    },
];

/// A client's properties: `scram` is (user, password) for the SCRAM kinds.
fn props(kind: &str, scram: Option<(&str, &str)>) -> String {
    // Short timeouts: a refused client retries until them, and each is a JVM's run.
    let mut s = String::from("request.timeout.ms=5000\ndefault.api.timeout.ms=15000\n");
    let truststore = format!("ssl.truststore.type=PEM\nssl.truststore.location={CA_CERT}\n");
    match (kind, scram) {
        ("plaintext", _) => s.push_str("security.protocol=PLAINTEXT\n"),
        ("wrong" | "user", Some((user, password))) => {
            s.push_str(&format!(
                "security.protocol=SASL_SSL\nsasl.mechanism={SCRAM_MECHANISM}\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\n{truststore}"
            ));
        }
        _ => {
            s.push_str(&format!("security.protocol=SSL\n{truststore}"));
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
/// The first of `names` the output shows, the sign of why the client was turned away.
fn sign<'a>(out: &str, names: &[&'a str]) -> Option<&'a str> {
    names.iter().copied().find(|n| out.contains(n))
}

/// A refusal: the tool failed, with one of `want` in its output (the TLS handshake refused, the
/// SASL exchange failed, or nothing answered).
fn judge(want: &[&str], ok: bool, out: &str) -> Result<String> {
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

/// The unauthenticated clients against one listener; a line of what each saw, or a failure.
fn try_listener(
    c: &Member,
    p: &Plan,
    (listener, addr): (&str, &str),
    clients: &[Client],
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut seen = Vec::new();
    for Client { kind, what, signs } in clients {
        let cfg = format!("{DIR}/{kind}.properties");
        let cmd: Vec<&str> = if listener == "controller" {
            vec![
                crate::layout::kafka_bin::METADATA_QUORUM,
                "--bootstrap-controller",
                addr,
                "--command-config",
                &cfg,
                "describe",
                "--status",
            ]
        } else {
            vec![
                crate::layout::kafka_bin::TOPICS,
                "--bootstrap-server",
                addr,
                "--command-config",
                &cfg,
                "--list",
            ]
        };
        let who = match *kind {
            "impostor" => format!("{what}{}", p.node.hostname),
            "wrong" => format!("{what}{NO_ACL_USER}"),
            _ => what.to_string(),
        };
        let (ok, out) = c.attempt(&cmd, 120)?;
        match judge(signs, ok, &out) {
            Ok(s) => seen.push(format!("{who} refused ({s})")),
            Err(e) => failures.push(format!("{listener} listener {addr}: {who} {e:#}")),
        }
    }
    lines.push(format!("{listener} listener {addr}: {}", seen.join(", ")));
    Ok(())
}

/// Random hex for the check user's passwords (the right one and a wrong one).
fn random_hex() -> Result<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// With `clients: scram`: NO_ACL_USER's SCRAM credential, set as the node (a super user, by its
/// certificate on the inter-broker listener) with kafka-configs.sh, as an operator adds a user.
fn add_scram_user(c: &Member, p: &Plan, password: &str) -> Result<()> {
    let k = p.kafka.as_ref().context("no Kafka")?;
    let (ok, out) = c.attempt(
        &[
            crate::layout::kafka_bin::CONFIGS,
            "--bootstrap-server",
            &format!("{}:{}", p.node.ip, k.own_port(&p.security)),
            "--command-config",
            crate::layout::KAFKA_TLS_CLIENT,
            "--alter",
            "--add-config",
            &format!(
                "{SCRAM_MECHANISM}=[iterations={},password={password}]",
                crate::pki::scram::ITERATIONS
            ),
            "--entity-type",
            "users",
            "--entity-name",
            NO_ACL_USER,
        ],
        120,
    )?;
    if !ok {
        let tail: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        bail!(
            "kafka-configs.sh could not add User:{NO_ACL_USER}'s SCRAM credential: {}",
            tail[tail.len().saturating_sub(3)..].join(" | ")
        );
    }
    Ok(())
}

// Long on purpose: one phase, told in order (the identities, the listeners, the ACL).
pub fn refusals(nodes: &[&Plan], cs: &[Member], work: &Path) -> Phase {
    Phase::timed("kafka refusals", |lines, failures| {
        let p = nodes
            .iter()
            .find(|p| p.kafka.is_some())
            .context("no Kafka node")?;
        let k = p.kafka.as_ref().context("no Kafka")?;
        // The tools run in a container (for the mixed runtime's VM: a peer, over the network).
        let c = crate::vm::checks::via(cs, p)?;
        let (user, impostor) = crate::pki::check_identities(
            p,
            &work.join("check-identities"),
            NO_ACL_USER,
            &p.node.hostname,
        )?;
        c.write(&format!("{DIR}/user.pem"), &user, 0o600)?;
        c.write(&format!("{DIR}/impostor.pem"), &impostor, 0o600)?;
        let scram = p.security.scram();
        let (right, wrong) = (random_hex()?, random_hex()?);
        if scram {
            add_scram_user(c, p, &right)?;
        }
        for (kind, pw) in [("plaintext", ""), ("nocert", ""), ("impostor", "")]
            .into_iter()
            .chain([("wrong", wrong.as_str()), ("user", right.as_str())])
            .filter(|(kind, _)| scram || *kind != "wrong")
        {
            let cred = scram.then_some((NO_ACL_USER, pw));
            c.write(
                &format!("{DIR}/{kind}.properties"),
                props(kind, cred).as_bytes(),
                0o600,
            )?;
        }
        let ip = p.node.ip.to_string();
        let client: &[Client] = if scram { &SCRAM } else { &MTLS };
        let mut listeners = vec![
            ("client", k.port, client),
            ("inter-broker", k.internal_port, &MTLS[..]),
        ];
        if let Some(port) = k.controller_port.filter(|_| {
            k.process_roles
                .as_ref()
                .is_some_and(|r| r.contains(&crate::plan::wiring::ProcessRole::Controller))
        }) {
            listeners.push(("controller", port, &MTLS[..]));
        }
        for (listener, port, clients) in listeners {
            let addr = format!("{ip}:{port}");
            try_listener(c, p, (listener, &addr), clients, lines, failures)?;
        }
        // Authenticated, but no ACL: producing to the round trip's topic must be refused.
        let cfg = format!("{DIR}/user.properties");
        let script = format!(
            "echo refused | {} --bootstrap-server {ip}:{} {} {cfg} --topic {} --producer-property max.block.ms=15000",
            crate::layout::kafka_bin::CONSOLE_PRODUCER,
            k.port,
            crate::vm::checks::config_opt(crate::vm::checks::modern_tools(p), "--producer.config"),
            crate::vm::checks::TOPIC
        );
        let (_, out) = c.attempt(&["sh", "-c", &script], 120)?;
        let topic = crate::vm::checks::TOPIC;
        let how = if scram {
            "its SCRAM password"
        } else {
            "the cluster CA's certificate"
        };
        match sign(
            &out,
            &[
                "TopicAuthorizationException",
                "Not authorized to access topics",
            ],
        ) {
            Some(s) => lines.push(format!(
                "client listener: User:{NO_ACL_USER} ({how}, no ACL) refused on topic {topic} ({s})"
            )),
            None => {
                let tail: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
                failures.push(format!(
                    "client listener: User:{NO_ACL_USER} ({how}), who has no ACL, was not refused on topic {topic}: {}",
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
            judge(HANDSHAKE, false, ssl).unwrap(),
            "SslAuthenticationException"
        );
        assert!(
            judge(HANDSHAKE, true, ssl).is_err(),
            "a success is no refusal"
        );
        assert!(judge(HANDSHAKE, false, "Error: Unknown topic").is_err());
        assert!(judge(DROPPED, false, "TimeoutException: Timed out waiting").is_ok());
        assert!(judge(DROPPED, false, ssl).is_err());
        let sasl = "SaslAuthenticationException: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        assert!(judge(SCRAM[2].signs, false, sasl).is_ok());
        assert!(judge(SCRAM[2].signs, false, "TimeoutException").is_err());
    }

    #[test]
    fn the_clients_properties() {
        assert!(props("plaintext", None).contains("security.protocol=PLAINTEXT\n"));
        let n = props("nocert", None);
        assert!(n.contains("security.protocol=SSL\n") && !n.contains("keystore"));
        assert!(props("impostor", None).contains(&format!("keystore.location={DIR}/impostor.pem")));
        let w = props("wrong", Some(("u", "pw")));
        assert!(w.contains("security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"));
        assert!(w.contains("username=\"u\" password=\"pw\";\n") && !w.contains("keystore"));
        // With mTLS the no-ACL user shows its certificate.
        assert!(props("user", None).contains(&format!("keystore.location={DIR}/user.pem")));
    }
}
