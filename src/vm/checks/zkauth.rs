//! `up --check` (containers), with `security: tls`: ZooKeeper's client port lets in only a
//! certificate of the cluster's CA — tried from a node with `srvr` as a plaintext client, a TLS
//! client without a certificate and an impostor (a node's name from another CA), beside the node
//! itself, which must be answered (else a refusal proves nothing).

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::layout::CA_CERT;
use crate::plan::Plan;
use crate::vm::checks::Phase;
use crate::vm::member::Member;

/// Where the check's files go inside the node (as kafkaauth's: host-written into its overlay).
const DIR: &str = "/var/lib/imgbuild-check/zookeeper";

/// The clients tried: (kind, what it is). `node` is the control: the node's own keystore.
const CLIENTS: [(&str, &str); 4] = [
    ("plaintext", "a plaintext client"),
    ("nocert", "a TLS client without a certificate"),
    ("impostor", "a certificate of another CA claiming CN="),
    ("node", "the node's own certificate"),
];

/// `srvr` as each client, one line each: `KIND answered: FIRST LINE` or `KIND refused: WHY`.
/// Python's ssl and socket only, as the image has them.
const SCRIPT: &str = r#"
import socket, ssl, sys
ip, port, ca, directory, own = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
for kind in ("plaintext", "nocert", "impostor", "node"):
    try:
        s = socket.create_connection((ip, port), timeout=10)
        if kind != "plaintext":
            ctx = ssl.create_default_context(cafile=ca)
            if kind == "impostor":
                ctx.load_cert_chain(directory + "/impostor.pem")
            elif kind == "node":
                ctx.load_cert_chain(own)
            s = ctx.wrap_socket(s, server_hostname=ip)
        s.sendall(b"srvr")
        b = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            b += d
        s.close()
        text = b.decode(errors="replace")
        if "Zookeeper version" in text:
            print(kind, "answered:", text.splitlines()[0])
        else:
            print(kind, "refused: closed with", repr(text[:40]) if text else "nothing")
    except (OSError, ValueError) as e:
        print(kind, "refused:", type(e).__name__, str(e)[:120].replace("\n", " "))
"#;

/// The judgement of one client's line: Ok(what it saw) when it fared as it should (the node
/// answered, every other refused), else Err(what went wrong).
fn judge(kind: &str, line: Option<&str>) -> Result<String> {
    let Some(line) = line else {
        bail!("no result");
    };
    let (verdict, detail) = line
        .split_once(": ")
        .map_or((line, ""), |(v, d)| (v, d.trim()));
    match (kind, verdict.trim_start_matches(kind).trim()) {
        ("node", "answered") => Ok(detail.to_string()),
        ("node", _) => bail!("was not answered ({detail})"),
        (_, "refused") => Ok(detail.to_string()),
        _ => bail!("was answered ({detail})"),
    }
}

pub fn refusals(nodes: &[&Plan], cs: &[Member], work: &Path) -> Phase {
    Phase::timed("zookeeper refusals", |lines, failures| {
        let p = nodes
            .iter()
            .find(|p| p.zookeeper.as_ref().is_some_and(|z| z.myid.is_some()))
            .context("no ZooKeeper server")?;
        let z = p.zookeeper.as_ref().context("no ZooKeeper")?;
        let own = crate::rootfs::render::zk_client_keystore(p).context("no client keystore")?;
        // From a container: for the mixed runtime's VM a peer, a remote client of its port (the
        // control is then that peer's own certificate, of the same CA).
        let c = crate::vm::checks::via(cs, p)?;
        let (_, impostor) = crate::pki::check_identities(
            p,
            &work.join("check-identities-zookeeper"),
            "imgbuild-check-zookeeper",
            &p.node.hostname,
        )?;
        c.write(&format!("{DIR}/impostor.pem"), &impostor, 0o600)?;
        let (ip, port) = (p.node.ip.to_string(), z.client_port.to_string());
        let (ok, out) = c.attempt(
            &[
                "/usr/bin/python3",
                "-c",
                SCRIPT,
                &ip,
                &port,
                CA_CERT,
                DIR,
                own,
            ],
            120,
        )?;
        let addr = format!("{ip}:{port}");
        let mut seen = Vec::new();
        for (kind, what) in CLIENTS {
            let who = if kind == "impostor" {
                format!("{what}{}", p.node.hostname)
            } else if kind == "node" && c.name() != p.node.name {
                format!("{}'s own certificate (a cluster node's)", c.name())
            } else {
                what.to_string()
            };
            let line = out.lines().find(|l| l.split(' ').next() == Some(kind));
            match judge(kind, line) {
                Ok(s) if kind == "node" => seen.push(format!("{who} answered ({s})")),
                Ok(s) => seen.push(format!("{who} refused ({s})")),
                Err(e) => failures.push(format!(
                    "zookeeper client port {addr}: {who} {e:#}{}",
                    if ok {
                        String::new()
                    } else {
                        format!(" (the probe failed: {})", out.trim())
                    }
                )),
            }
        }
        lines.push(format!("zookeeper client port {addr}: {}", seen.join(", ")));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_may_be_answered() {
        let answered = "Zookeeper version: 3.9.5-293c895, built on 2026-02-11 20:18 UTC";
        let a = format!("node answered: {answered}");
        assert_eq!(judge("node", Some(&a)).unwrap(), answered);
        assert!(judge("nocert", Some(&a.replace("node", "nocert"))).is_err());
        assert!(judge("plaintext", Some(&a.replace("node", "plaintext"))).is_err());
        let r = "impostor refused: SSLError [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]";
        assert!(judge("impostor", Some(r)).unwrap().starts_with("SSLError"));
        assert!(judge("node", Some(&r.replace("impostor", "node"))).is_err());
        assert!(judge("plaintext", None).is_err(), "no line is no refusal");
    }

    /// The script against a server without TLS that answers `srvr` as ZooKeeper would: the
    /// plaintext client is answered (which the judgement calls a failure), the TLS ones cannot
    /// complete a handshake and say so in the lines the judgement reads.
    #[test]
    fn the_script_reports_each_client() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                use std::io::{Read, Write};
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() && &b == b"srvr" {
                    let _ = s.write_all(b"Zookeeper version: test\nMode: standalone\n");
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ok = crate::util::run::Cmd::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=test CA", "-keyout"])
            .arg(dir.path().join("ca.key"))
            .arg("-out")
            .arg(dir.path().join("ca.crt"))
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        let out = crate::util::run::Cmd::new("python3")
            .args(["-c", SCRIPT, "127.0.0.1", &port.to_string()])
            .arg(dir.path().join("ca.crt"))
            .arg(dir.path())
            .arg(dir.path().join("own.pem"))
            .output()
            .unwrap();
        drop(server);
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            judge(
                "plaintext",
                out.lines().find(|l| l.starts_with("plaintext"))
            )
            .is_err(),
            "{out}"
        );
        for kind in ["nocert", "impostor", "node"] {
            let line = out.lines().find(|l| l.starts_with(kind));
            assert!(line.is_some_and(|l| l.contains("refused")), "{kind}: {out}");
        }
    }
}
