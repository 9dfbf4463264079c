//! The versions check: what the running services say they are (the broker's start line, ZooKeeper's
//! `srvr`, `storm version`, each nimbus's start line).

use super::*;

/// Versions as the running services report them: the broker's "Kafka version" line in server.log,
/// ZooKeeper's `srvr`, `storm version` and each nimbus's start line.
pub fn versions(nodes: &[&Plan], cs: &[Member]) -> Phase {
    Phase::timed("versions", |lines, failures| {
        for p in nodes {
            let c = container(cs, p);
            if let Some(z) = &p.zookeeper
                && z.myid.is_some()
            {
                match srvr(c, p, z.client_port) {
                    Ok(s) => lines.push(format!(
                        "{}: zookeeper {} ({})",
                        p.node.name,
                        field(&s, "Zookeeper version").unwrap_or("?"),
                        field(&s, "Mode").unwrap_or("?")
                    )),
                    Err(e) => failures.push(format!("{}: zookeeper srvr: {e:#}", p.node.name)),
                }
            }
            if p.kafka.is_some() {
                // A broker under emulation logs its start line minutes after its controller has
                // joined the quorum (which is what the health unit checks): give it the time.
                let t = Instant::now();
                let mut v = kafka_version(c);
                while v.is_err() && c.is_vm() && t.elapsed() < Duration::from_secs(600) {
                    std::thread::sleep(Duration::from_secs(10));
                    v = kafka_version(c);
                }
                match v {
                    Ok(v) => lines.push(format!("{}: broker says Kafka version: {v}", p.node.name)),
                    Err(e) => failures.push(format!("{}: kafka: {e:#}", p.node.name)),
                }
            }
        }
        // `storm version` is a JVM: asked on a container (the VM's nimbus says its own below).
        if let Some(p) = nodes
            .iter()
            .find(|p| p.storm.is_some() && !container(cs, p).is_vm())
        {
            match container(cs, p).tool(&storm(&["version"]), 120) {
                Ok(v) => lines.push(format!(
                    "{}: storm version: {}",
                    p.node.name,
                    v.lines().next().unwrap_or("?")
                )),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        for p in nodes
            .iter()
            .filter(|p| p.roles.contains(&Role::StormNimbus))
        {
            let start = [
                "grep",
                "-m1",
                "-o",
                "Starting nimbus server for storm version.*",
                "/var/log/storm/nimbus.log",
            ];
            match container(cs, p).tool(&start, 30) {
                Ok(l) => lines.push(format!("{}: nimbus.log: {}", p.node.name, l.trim())),
                Err(e) => failures.push(format!("{}: nimbus: {e:#}", p.node.name)),
            }
        }
        Ok(())
    })
}

/// The version the broker of `c` logged at its latest start, from server.log in LOG_DIR, which
/// Kafka's log4j2.yaml writes (upstream's and the fixture's): the journal is no witness here, since
/// journald attributes a busy container's lines to the stream late or never (measured: the line
/// missing from `-u kafka`, and in one clean-clone CI run from `-t kafka-server-start.sh`).
fn kafka_version(c: &Member) -> Result<String> {
    let l = c.tool(&["sh", "-c", &kafka_version_script(KAFKA_LOG_DIR)], 30)?;
    match l.trim().strip_prefix("Kafka version: ") {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => {
            bail!("no \"Kafka version\" line in {KAFKA_LOG_DIR}/server.log or its hourly rollovers")
        }
    }
}

const KAFKA_LOG_DIR: &str = "/var/log/kafka";

/// The last "Kafka version" line of server.log and the files log4j2 rolls it over into every hour
/// (`server.log.%d{yyyy-MM-dd-HH}`), oldest first: a broker that started more than an hour's turn
/// ago has its start line only in a rolled-over file (a clean-clone CI run failed on that: the
/// containers' brokers had started before 20:00, the check ran after).
pub(crate) fn kafka_version_script(dir: &str) -> String {
    format!(
        "cd {} || exit 2; for f in $(ls -1 | grep -E '^server\\.log\\.[0-9-]+$' | sort) server.log; do \
         [ -f \"$f\" ] && grep -h -o 'Kafka version: [^ ]*' \"$f\"; done | tail -n 1",
        crate::util::run::shell_quote(dir.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latest start line wins, wherever log4j2 rolled it (run by sh on files made here).
    #[test]
    fn the_kafka_version_is_read_across_hourly_rollovers() {
        let d = tempfile::tempdir().unwrap();
        let run = || {
            let o = crate::util::run::Cmd::new("sh")
                .args(["-c", &kafka_version_script(d.path().to_str().unwrap())])
                .run()
                .unwrap();
            String::from_utf8(o).unwrap()
        };
        std::fs::write(
            d.path().join("server.log"),
            "[x] INFO nothing of the kind\n",
        )
        .unwrap();
        assert_eq!(run(), "");
        let line = |v: &str| {
            format!(
                "[2026] INFO Kafka version: {v} (org.apache.kafka.common.utils.AppInfoParser)\n"
            )
        };
        std::fs::write(d.path().join("server.log.2026-12-05-19"), line("4.1.1")).unwrap();
        std::fs::write(d.path().join("server.log.2026-12-05-20"), line("4.3.1")).unwrap();
        std::fs::write(d.path().join("server.log.2026-12-05-20.bak"), line("9.9.9")).unwrap();
        assert_eq!(run(), "Kafka version: 4.3.1\n");
        std::fs::write(d.path().join("server.log"), line("4.3.2")).unwrap();
        assert_eq!(run(), "Kafka version: 4.3.2\n");
    }
}
