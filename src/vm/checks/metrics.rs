//! The metrics check: every node's Prometheus endpoints scraped as a Prometheus in the cluster
//! network would (from `up`'s own address there, over plain HTTP), each answering with samples,
//! and what they say agreeing with what the services say themselves: every ZooKeeper member
//! counts the whole ensemble (`quorum_size`), and exactly one exports the leader's gauge
//! (`synced_followers`, counting every other member): the one whose `srvr` says `Mode: leader`;
//! every broker is RUNNING, exactly one is the active controller and counts every broker; the
//! leader nimbus's summary counts one leader, every nimbus and every supervisor; every node
//! exporter answers as its own host.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use reqwest::blocking::Client;

use super::*;

/// A scrape's budget: Prometheus's own default scrape_timeout.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an endpoint that refuses or fails is asked again (a service just restarted).
const SCRAPE_RETRY_FOR: Duration = Duration::from_secs(60);

/// The scraper's HTTP client (the one downloads use), straight to the nodes: no proxy.
fn scraper() -> Result<Client> {
    Ok(Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .no_proxy()
        .build()?)
}

/// `GET /metrics` of `ip:port`: the body of a 200 answer.
pub fn scrape(client: &Client, ip: Ipv4Addr, port: u16) -> Result<String> {
    let url = format!("http://{ip}:{port}/metrics");
    let resp = client.get(&url).send().with_context(|| url.clone())?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        bail!("{url} answered `{status}`");
    }
    resp.text().with_context(|| format!("{url}: read"))
}

/// The samples of a Prometheus text exposition: each series (name and labels, as written) with
/// its value; comments and unparsable lines left out.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, rest) = match l.find('}') {
                Some(i) => (&l[..=i], &l[i + 1..]),
                None => l.split_once(' ')?,
            };
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((series.trim().to_string(), value))
        })
        .collect()
}

/// A metric's value without labels, if the exposition has it.
fn value(s: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    s.get(name).copied()
}

/// `value` for a line: the number, or `missing`.
fn shown(v: Option<f64>) -> String {
    v.map_or("missing".into(), |v| v.to_string())
}

/// How long a cluster-wide judgement is made again while it fails (a gauge Kafka or Storm
/// refreshes on its own schedule, e.g. nimbus's cluster summary, may lag the services a little).
const SETTLE_FOR: Duration = Duration::from_secs(60);

/// One exporter of one node: who, where, and what it answered.
struct Scraped<'a> {
    plan: &'a Plan,
    name: String,
    port: u16,
    samples: BTreeMap<String, f64>,
}

/// Scrape `port` of every node `port_of` gives one, asking an endpoint that refuses again for
/// SCRAPE_RETRY_FOR; an endpoint that never answers is a failure.
fn scrape_all<'a>(
    client: &Client,
    nodes: &[&'a Plan],
    cs: &[Member],
    what: &str,
    port_of: impl Fn(&Plan) -> Option<u16>,
    failures: &mut Vec<String>,
) -> (usize, Vec<Scraped<'a>>) {
    let mut out = Vec::new();
    let mut wanted = 0;
    for p in nodes {
        let Some(port) = port_of(p) else { continue };
        wanted += 1;
        let name = label(cs, p);
        let t = Instant::now();
        let body = loop {
            match scrape(client, p.node.ip, port) {
                Ok(b) => break Ok(b),
                Err(e) if t.elapsed() >= SCRAPE_RETRY_FOR => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(5)),
            }
        };
        match body {
            Ok(b) => out.push(Scraped {
                plan: p,
                name,
                port,
                samples: samples(&b),
            }),
            Err(e) => failures.push(format!("metrics: {name}: {what}: {e:#}")),
        }
    }
    (wanted, out)
}

/// Judge `family` (scrape and compare) until it passes or SETTLE_FOR is over; its last lines and
/// failures are the phase's.
fn settled(
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
    mut family: impl FnMut(&mut Vec<String>, &mut Vec<String>),
) {
    let t = Instant::now();
    loop {
        let (mut l, mut f) = (Vec::new(), Vec::new());
        family(&mut l, &mut f);
        if f.is_empty() || t.elapsed() >= SETTLE_FOR {
            lines.extend(l);
            failures.extend(f);
            return;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// Metrics a rules file names, which an endpoint must export (else the rules match nothing).
fn require(s: &Scraped, what: &str, names: &[&str], failures: &mut Vec<String>) {
    for n in names {
        if value(&s.samples, n).is_none() {
            failures.push(format!(
                "metrics: {}: {what} exports no `{n}` (http://{}:{}/metrics)",
                s.name, s.plan.node.ip, s.port
            ));
        }
    }
}

pub fn metrics(nodes: &[&Plan], cs: &[Member]) -> Phase {
    Phase::timed("metrics", |lines, failures| {
        let client = scraper()?;
        zookeeper(&client, nodes, cs, lines, failures);
        settled(lines, failures, |l, f| kafka(&client, nodes, cs, l, f));
        settled(lines, failures, |l, f| storm(&client, nodes, cs, l, f));
        hosts(&client, nodes, cs, lines, failures);
        Ok(())
    })
}

/// ZooKeeper's own endpoints: every member counts the whole ensemble, and exactly one exports
/// the leader's gauge, the one whose `srvr` says `Mode: leader`.
fn zookeeper(
    client: &Client,
    nodes: &[&Plan],
    cs: &[Member],
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let member_port = |p: &Plan| {
        p.zookeeper
            .as_ref()
            .filter(|z| z.myid.is_some())
            .and_then(|z| z.metrics_port)
    };
    let (members, scraped) = scrape_all(client, nodes, cs, "zookeeper", member_port, failures);
    let mut leaders = Vec::new();
    for s in &scraped {
        let (p, name) = (s.plan, &s.name);
        let Some(z) = &p.zookeeper else { continue };
        let ensemble = z.servers.len() as f64;
        let quorum = value(&s.samples, "quorum_size");
        let synced = value(&s.samples, "synced_followers");
        lines.push(format!(
            "{name}: zookeeper http://{}:{}/metrics: {} samples; quorum_size {}{}",
            p.node.ip,
            s.port,
            s.samples.len(),
            shown(quorum),
            synced.map_or(String::new(), |f| format!(
                ", synced_followers {f} (leader)"
            ))
        ));
        if quorum != Some(ensemble) {
            failures.push(format!(
                "metrics: {name}: zookeeper's quorum_size is {} but the ensemble has {ensemble} members",
                shown(quorum)
            ));
        }
        if let Some(f) = synced {
            leaders.push(p.node.name.clone());
            if f != ensemble - 1.0 {
                failures.push(format!(
                    "metrics: {name}: the leader's synced_followers is {f}, not {}",
                    ensemble - 1.0
                ));
            }
            match srvr(container(cs, p), p, z.client_port) {
                Ok(t) if field(&t, "Mode") == Some("leader") => {}
                Ok(t) => failures.push(format!(
                    "metrics: {name} exports the leader's gauges but srvr says Mode: {}",
                    field(&t, "Mode").unwrap_or("?")
                )),
                Err(e) => failures.push(format!("metrics: {name}: zookeeper srvr: {e:#}")),
            }
        }
    }
    if members > 0 {
        lines.push(format!(
            "zookeeper: {}/{members} endpoints scraped; the leader's gauges on {}",
            scraped.len(),
            if leaders.is_empty() {
                "no node".to_string()
            } else {
                leaders.join(", ")
            }
        ));
        if leaders.len() != 1 {
            failures.push(format!(
                "metrics: {} ZooKeeper members export the leader's gauges ({}), not one",
                leaders.len(),
                leaders.join(", ")
            ));
        }
    }
}

/// The brokers' JMX exporter endpoints: every broker RUNNING (broker state 3) and exporting
/// the partition gauges the alert rules read; exactly one active controller, which counts every
/// broker of the plan as registered.
fn kafka(
    client: &Client,
    nodes: &[&Plan],
    cs: &[Member],
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let port = |p: &Plan| p.kafka.as_ref().and_then(|k| k.metrics_port);
    let (wanted, scraped) = scrape_all(client, nodes, cs, "kafka", port, failures);
    if wanted == 0 {
        return;
    }
    let mut active = Vec::new();
    for s in &scraped {
        let state = value(&s.samples, "kafka_server_kafkaserver_brokerstate");
        let controller = value(
            &s.samples,
            "kafka_controller_kafkacontroller_activecontrollercount",
        );
        lines.push(format!(
            "{}: kafka http://{}:{}/metrics: {} samples; broker state {}, under-replicated {}, offline log dirs {}{}",
            s.name,
            s.plan.node.ip,
            s.port,
            s.samples.len(),
            shown(state),
            shown(value(&s.samples, "kafka_server_replicamanager_underreplicatedpartitions")),
            shown(value(&s.samples, "kafka_log_logmanager_offlinelogdirectorycount")),
            if controller == Some(1.0) { ", active controller" } else { "" }
        ));
        if state != Some(3.0) {
            failures.push(format!(
                "metrics: {}: kafka's broker state is {}, not 3 (RUNNING)",
                s.name,
                shown(state)
            ));
        }
        require(
            s,
            "kafka",
            &[
                "kafka_server_replicamanager_underreplicatedpartitions",
                "kafka_server_replicamanager_underminisrpartitioncount",
                "kafka_log_logmanager_offlinelogdirectorycount",
                "kafka_server_brokertopicmetrics_messagesin_total",
            ],
            failures,
        );
        if controller == Some(1.0) {
            active.push(s);
        }
    }
    let brokers = scraped
        .first()
        .and_then(|s| s.plan.kafka.as_ref())
        .map_or(0, |k| k.brokers);
    let counted = active.first().map(|s| {
        value(
            &s.samples,
            "kafka_controller_kafkacontroller_activebrokercount",
        )
    });
    lines.push(format!(
        "kafka: {}/{wanted} endpoints scraped; the active controller on {}{}",
        scraped.len(),
        if active.is_empty() {
            "no node".to_string()
        } else {
            active
                .iter()
                .map(|s| s.plan.node.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
        counted.map_or(String::new(), |c| format!(" counts {} brokers", shown(c)))
    ));
    if active.len() != 1 {
        failures.push(format!(
            "metrics: {} Kafka nodes say they are the active controller, not one",
            active.len()
        ));
    } else if counted != Some(Some(brokers as f64)) {
        failures.push(format!(
            "metrics: kafka's active controller counts {} active brokers, the cluster has {brokers}",
            shown(counted.flatten())
        ));
    }
}

/// Storm's nimbus and supervisor endpoints: each exports its daemon's metrics, and the leader
/// nimbus's cluster summary agrees with the plan: one leader, every nimbus, every supervisor.
fn storm(
    client: &Client,
    nodes: &[&Plan],
    cs: &[Member],
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let nimbus_port = |p: &Plan| p.storm.as_ref().and_then(|s| s.nimbus_metrics_port);
    let supervisor_port = |p: &Plan| p.storm.as_ref().and_then(|s| s.supervisor_metrics_port);
    let (nimbuses, nimbus) = scrape_all(client, nodes, cs, "storm nimbus", nimbus_port, failures);
    let (supervisors, supervisor) = scrape_all(
        client,
        nodes,
        cs,
        "storm supervisor",
        supervisor_port,
        failures,
    );
    if nimbuses + supervisors == 0 {
        return;
    }
    for s in &supervisor {
        require(
            s,
            "storm supervisor",
            &["storm_supervisor_num_slots_used_gauge"],
            failures,
        );
    }
    let mut summaries = Vec::new();
    for s in &nimbus {
        require(
            s,
            "storm nimbus",
            &["storm_nimbus_num_gained_leadership_total"],
            failures,
        );
        let leaders = value(&s.samples, "storm_cluster_num_nimbus_leaders");
        if leaders.is_some() {
            summaries.push(s);
        }
    }
    let want = nimbus
        .first()
        .and_then(|s| s.plan.storm.as_ref())
        .map(|st| (st.nimbus_seeds.len() as f64, st.supervisors as f64));
    let mut shown_summary = String::new();
    if let (Some(s), Some((want_nimbuses, want_supervisors))) = (summaries.first(), want) {
        let got = |n: &str| value(&s.samples, n);
        let (l, n, v) = (
            got("storm_cluster_num_nimbus_leaders"),
            got("storm_cluster_num_nimbuses"),
            got("storm_cluster_num_supervisors"),
        );
        shown_summary = format!(
            "; the leader's summary ({}): {} leader, {} nimbuses, {} supervisors",
            s.plan.node.name,
            shown(l),
            shown(n),
            shown(v)
        );
        if l != Some(1.0) || n != Some(want_nimbuses) || v != Some(want_supervisors) {
            failures.push(format!(
                "metrics: {}: storm's cluster summary says {} leader, {} nimbuses, {} supervisors; the cluster has 1, {want_nimbuses}, {want_supervisors}",
                s.name,
                shown(l),
                shown(n),
                shown(v)
            ));
        }
    } else if nimbuses > 0 {
        failures.push("metrics: no Storm nimbus exports the cluster summary (no leader?)".into());
    }
    lines.push(format!(
        "storm: {}/{nimbuses} nimbus and {}/{supervisors} supervisor endpoints scraped{shown_summary}",
        nimbus.len(),
        supervisor.len()
    ));
}

/// The Storm workers' own endpoints (one per slot of every supervisor; a slot without a worker
/// refuses, as it should), asked once the example runs: a worker of `topology` answers, its
/// components' emitted tuples are counted, none failed, and its spout's time asleep for an inactive
/// topology does not grow while `storm list` says ACTIVE (two scrapes `gap` apart). The line
/// to show; an error when they disagree.
pub fn workers(nodes: &[&Plan], cs: &[Member], topology: &str, gap: Duration) -> Result<String> {
    let client = scraper()?;
    let mut endpoints: Vec<(&Plan, u16)> = Vec::new();
    for p in nodes {
        for &port in p.storm.iter().flat_map(|s| &s.worker_metrics_ports) {
            endpoints.push((p, port));
        }
    }
    if endpoints.is_empty() {
        return Ok("storm workers: metrics off".into());
    }
    let ours = |all: BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        all.into_iter()
            .filter(|(k, _)| label_value(k, "topology") == Some(topology))
            .collect()
    };
    // Which slots hold a worker of the topology: their endpoints answer with its series.
    let mut first: Vec<(&Plan, u16, BTreeMap<String, f64>)> = Vec::new();
    let mut asked = Vec::new();
    for &(p, port) in &endpoints {
        let at = format!("{}:{port}", label(cs, p));
        match scrape(&client, p.node.ip, port) {
            Ok(body) => {
                let all = samples(&body);
                let n = all.len();
                let s = ours(all);
                asked.push(format!("{at} {n} samples, {} of {topology}", s.len()));
                if !s.is_empty() {
                    first.push((p, port, s));
                }
            }
            Err(e) => asked.push(format!("{at} {}", e.root_cause())),
        }
    }
    if first.is_empty() {
        bail!(
            "no Storm worker endpoint exports {topology}'s tuples ({} slots asked: {})",
            endpoints.len(),
            asked.join("; ")
        );
    }
    std::thread::sleep(gap);
    let sum = |s: &BTreeMap<String, f64>, name: &str, action: Option<&str>| -> f64 {
        series_of(s, name)
            .filter(|(k, _)| action.is_none() || label_value(k, "action") == action)
            .map(|(_, v)| v)
            .sum()
    };
    let (mut emitted, mut failed, mut asleep_ms, mut spouts) = (0.0, 0.0, 0.0, 0);
    let mut at = Vec::new();
    for (p, port, before) in &first {
        let body = scrape(&client, p.node.ip, *port)
            .with_context(|| format!("{}: the worker's endpoint, asked again", label(cs, p)))?;
        let after = ours(samples(&body));
        emitted += sum(&after, "storm_topology_tuples_total", Some("emit"));
        failed += sum(&after, "storm_topology_tuples_total", Some("fail"));
        let inactive = "storm_spout_inactive_milliseconds_total";
        spouts += series_of(&after, inactive).count();
        asleep_ms += sum(&after, inactive, None) - sum(before, inactive, None);
        at.push(format!("{}:{port}", label(cs, p)));
    }
    let line = format!(
        "storm workers: {topology} on {} of {} slot endpoints ({}): {emitted:.0} tuples emitted (sampled), {failed:.0} failed; its spout asleep for an inactive topology {asleep_ms:.0} ms of {:.0} s",
        at.len(),
        endpoints.len(),
        at.join(", "),
        gap.as_secs_f64()
    );
    if emitted <= 0.0 {
        bail!("{line}: no emitted tuple counted, though the word counts came out");
    }
    if failed > 0.0 {
        bail!("{line}: tuples failed");
    }
    if spouts == 0 {
        bail!(
            "{line}: no `storm_spout_inactive_milliseconds_total` (the not-ACTIVE alert reads it)"
        );
    }
    if asleep_ms * 2.0 >= gap.as_secs_f64() * 1000.0 {
        bail!(
            "{line}: the spout sleeps as if the topology were not ACTIVE, which `storm list` says it is"
        );
    }
    Ok(line)
}

/// A labelled series' label value, e.g. `nodename` of `node_uname_info{...,nodename="node2",...}`.
fn label_value<'s>(series: &'s str, label: &str) -> Option<&'s str> {
    ['{', ','].iter().find_map(|sep| {
        let at = series.find(&format!("{sep}{label}=\""))? + label.len() + 3;
        let rest = &series[at..];
        Some(&rest[..rest.find('"')?])
    })
}

/// The series of metric `name`, with any labels.
fn series_of<'s>(
    s: &'s BTreeMap<String, f64>,
    name: &'s str,
) -> impl Iterator<Item = (&'s str, f64)> + 's {
    s.iter()
        .filter(move |(k, _)| {
            k.as_str() == name
                || k.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
        })
        .map(|(k, v)| (k.as_str(), *v))
}

/// The node exporters: each answers as its own host (`node_uname_info`'s nodename is the node's
/// hostname, not another machine's) and exports what the node alert rules read.
fn hosts(
    client: &Client,
    nodes: &[&Plan],
    cs: &[Member],
    lines: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let (wanted, scraped) = scrape_all(
        client,
        nodes,
        cs,
        "node exporter",
        Plan::node_exporter_port,
        failures,
    );
    if wanted == 0 {
        return;
    }
    for s in &scraped {
        let nodename =
            series_of(&s.samples, "node_uname_info").find_map(|(k, _)| label_value(k, "nodename"));
        let mem = value(&s.samples, "node_memory_MemAvailable_bytes")
            .zip(value(&s.samples, "node_memory_MemTotal_bytes"))
            .map(|(a, t)| format!("{:.0}%", 100.0 * a / t));
        let synced = value(&s.samples, "node_timex_sync_status");
        lines.push(format!(
            "{}: node http://{}:{}/metrics: {} samples; nodename {}, memory available {}, clock synchronised {}",
            s.name,
            s.plan.node.ip,
            s.port,
            s.samples.len(),
            nodename.unwrap_or("missing"),
            mem.as_deref().unwrap_or("missing"),
            match synced {
                Some(1.0) => "yes",
                Some(_) => "no",
                None => "missing",
            }
        ));
        if nodename != Some(s.plan.node.hostname.as_str()) {
            failures.push(format!(
                "metrics: {}: the node exporter answers as host {}, not {}",
                s.name,
                nodename.unwrap_or("(no node_uname_info)"),
                s.plan.node.hostname
            ));
        }
        for n in [
            "node_filesystem_avail_bytes",
            "node_filesystem_size_bytes",
            "node_filesystem_readonly",
            "node_memory_MemAvailable_bytes",
            "node_memory_MemTotal_bytes",
            "node_timex_sync_status",
            "node_timex_maxerror_seconds",
            "node_timex_offset_seconds",
            "node_cpu_seconds_total",
            "node_network_receive_bytes_total",
        ] {
            if series_of(&s.samples, n).next().is_none() {
                failures.push(format!(
                    "metrics: {}: the node exporter exports no `{n}` (http://{}:{}/metrics)",
                    s.name, s.plan.node.ip, s.port
                ));
            }
        }
    }
    lines.push(format!(
        "node: {}/{wanted} node exporter endpoints scraped; each answers as its own host",
        scraped.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One HTTP answer on a loopback port, as an exporter would give it.
    fn serve_once(answer: &'static str) -> u16 {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(answer.as_bytes());
        });
        port
    }

    #[test]
    fn scrape_takes_a_200_body_and_refuses_anything_else() {
        let client = scraper().unwrap();
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\nquorum_size 3.0\n");
        let body = scrape(&client, Ipv4Addr::LOCALHOST, ok).unwrap();
        assert_eq!(value(&samples(&body), "quorum_size"), Some(3.0));
        let missing = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let e = scrape(&client, Ipv4Addr::LOCALHOST, missing).unwrap_err();
        assert!(format!("{e:#}").contains("404"), "{e:#}");
    }

    #[test]
    fn samples_of_an_exposition() {
        let body = "# HELP quorum_size quorum_size\n# TYPE quorum_size gauge\nquorum_size 3.0\n\
                    jvm_info{version=\"17.0.13+11\",vendor=\"Debian\",} 1.0\n\
                    synced_followers 2.0\nbroken line\n";
        let s = samples(body);
        assert_eq!(value(&s, "quorum_size"), Some(3.0));
        assert_eq!(value(&s, "synced_followers"), Some(2.0));
        assert_eq!(
            s.get("jvm_info{version=\"17.0.13+11\",vendor=\"Debian\",}"),
            Some(&1.0)
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn labelled_series_and_their_labels() {
        let body = "node_uname_info{domainname=\"(none)\",machine=\"x86_64\",nodename=\"node2\",release=\"6.1.0\"} 1\n\
                    node_filesystem_avail_bytes{device=\"/dev/vda1\",fstype=\"ext4\",mountpoint=\"/\"} 1.5e+09\n\
                    node_filesystem_avail_bytes_extra 1\n";
        let s = samples(body);
        let uname: Vec<_> = series_of(&s, "node_uname_info").collect();
        assert_eq!(uname.len(), 1);
        assert_eq!(label_value(uname[0].0, "nodename"), Some("node2"));
        assert_eq!(label_value(uname[0].0, "name"), None);
        assert_eq!(series_of(&s, "node_filesystem_avail_bytes").count(), 1);
        assert_eq!(series_of(&s, "node_memory_MemTotal_bytes").count(), 0);
    }
}
