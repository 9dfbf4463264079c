//! The metrics check: every node's Prometheus endpoints scraped as a Prometheus in the cluster
//! network would (from `up`'s own address there, over plain HTTP), each answering with samples,
//! and what they say agreeing with what the services say themselves: every ZooKeeper member
//! counts the whole ensemble (`quorum_size`), and exactly one exports the leader's gauge
//! (`synced_followers`, counting every other member): the one whose `srvr` says `Mode: leader`.

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

pub fn metrics(nodes: &[&Plan], cs: &[Member]) -> Phase {
    Phase::timed("metrics", |lines, failures| {
        let client = scraper()?;
        let mut leaders = Vec::new();
        let mut members = 0;
        for p in nodes {
            let Some(z) = &p.zookeeper else { continue };
            let (Some(port), Some(_)) = (z.metrics_port, z.myid) else {
                continue;
            };
            members += 1;
            let name = label(cs, p);
            let t = Instant::now();
            let body = loop {
                match scrape(&client, p.node.ip, port) {
                    Ok(b) => break Ok(b),
                    Err(e) if t.elapsed() >= SCRAPE_RETRY_FOR => break Err(e),
                    Err(_) => std::thread::sleep(Duration::from_secs(5)),
                }
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("metrics: {name}: zookeeper: {e:#}"));
                    continue;
                }
            };
            let s = samples(&body);
            let ensemble = z.servers.len() as f64;
            let quorum = value(&s, "quorum_size");
            let synced = value(&s, "synced_followers");
            lines.push(format!(
                "{name}: zookeeper http://{}:{port}/metrics: {} samples; quorum_size {}{}",
                p.node.ip,
                s.len(),
                quorum.map_or("missing".into(), |q| q.to_string()),
                synced.map_or(String::new(), |f| format!(
                    ", synced_followers {f} (leader)"
                ))
            ));
            if quorum != Some(ensemble) {
                failures.push(format!(
                    "metrics: {name}: zookeeper's quorum_size is {} but the ensemble has {ensemble} members",
                    quorum.map_or("missing".into(), |q| q.to_string())
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
                "zookeeper: {members}/{members} endpoints scraped; the leader's gauges on {}",
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
        Ok(())
    })
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
}
