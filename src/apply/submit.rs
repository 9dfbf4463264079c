//! `imgbuild submit DIR`, `imgbuild submit --kill NAME`, `imgbuild topologies`: Storm topologies
//! from the operator's machine, the layout of examples/python-wordcount (Flux's `topology.yaml`,
//! one `.properties` file of values for it, the Python bolts in `multilang/resources/`).
//!
//! The directory goes to a Storm node (SSH, as `apply` and `roll` reach nodes); the jar is built
//! there with what the image holds (its `build-jar.py`: Flux, storm-kafka-client, kafka-clients,
//! Storm's multilang adapter, offline); the properties' `kafka.bootstrap` becomes the cluster's
//! client listeners and `kafka.client.config` the node's settings for User:storm (its certificate
//! or its SCRAM password), every other key as the file says; `storm jar ... Flux --remote`; then
//! `storm list` until the topology is ACTIVE.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::apply::storm as topo;
use crate::plan::Plan;
use crate::roll::gates::Remote;

/// Where the directory goes on the node (not /tmp: a container's may be a tmpfs of its own,
/// which a file written into its tree from the host would sit under).
const STAGE: &str = "/var/lib/imgbuild-submit";

/// What `submit` reads from the directory: its graph, its values, and the name they give it.
pub struct Topology {
    pub name: String,
    /// The properties file's name and its content, as it will be submitted.
    pub properties: (String, String),
    /// Every regular file under the directory: relative path, mode, bytes.
    pub files: Vec<(String, u32, Vec<u8>)>,
}

/// Read DIR: `topology.yaml`, exactly one `*.properties` (with `topology.name`), and every other
/// file; the properties' Kafka settings made the cluster's (`clients`: the brokers' client
/// listeners).
pub fn read(dir: &Path, clients: &str) -> Result<Topology> {
    if !dir.join("topology.yaml").is_file() {
        bail!(
            "{}: no topology.yaml (a Flux topology directory, as examples/python-wordcount)",
            dir.display()
        );
    }
    let mut files = Vec::new();
    crate::util::fs::walk(dir, |rel, m| {
        use std::os::unix::fs::PermissionsExt;
        let ft = m.file_type();
        if ft.is_symlink() {
            bail!(
                "{}: a symbolic link; submit copies regular files only",
                dir.join(rel).display()
            );
        }
        if ft.is_file() {
            files.push((
                rel.to_string_lossy().into_owned(),
                m.permissions().mode() & 0o755 | 0o644,
                std::fs::read(dir.join(rel))
                    .with_context(|| format!("reading {}", dir.join(rel).display()))?,
            ));
        }
        Ok(true)
    })
    .with_context(|| format!("reading {}", dir.display()))?;
    from_files(dir, files, clients)
}

/// The example topology as every Storm image installs it (examples/python-wordcount, the same
/// bytes), as `read` would make it of that directory: what `up --check` and `roll
/// --resubmit-example` submit.
pub(crate) fn example(clients: &str) -> Result<Topology> {
    let files = crate::rootfs::render::EXAMPLE
        .iter()
        .map(|(name, text, mode)| (name.to_string(), *mode, text.as_bytes().to_vec()))
        .collect();
    from_files(Path::new(topo::WC_DIR), files, clients)
}

/// A topology of `files` (paths relative to `dir`, which names them in errors).
fn from_files(
    dir: &Path,
    mut files: Vec<(String, u32, Vec<u8>)>,
    clients: &str,
) -> Result<Topology> {
    let mut props: Vec<String> = files
        .iter()
        .map(|(f, _, _)| f.clone())
        .filter(|f| f.ends_with(".properties") && !f.contains('/'))
        .collect();
    props.sort();
    let [p] = props.as_slice() else {
        bail!(
            "{}: {} .properties files ({}); submit takes exactly one, the values for topology.yaml",
            dir.display(),
            props.len(),
            props.join(", ")
        );
    };
    let text = files
        .iter()
        .find(|(f, _, _)| f == p)
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("topology.name="))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{}: no topology.name=", dir.join(p).display()))?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!(
            "{}: topology.name `{name}`: letters, digits, `-`, `_`, `.` only",
            dir.join(p).display()
        );
    }
    let submitted: String = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some(("kafka.bootstrap", _)) => format!("kafka.bootstrap={clients}\n"),
            Some(("kafka.client.config", _)) => {
                format!(
                    "kafka.client.config={}\n",
                    crate::layout::STORM_KAFKA_CLIENT
                )
            }
            _ => format!("{l}\n"),
        })
        .collect();
    for f in files.iter_mut() {
        if f.0 == *p {
            f.2 = submitted.clone().into_bytes();
        }
    }
    files.sort();
    Ok(Topology {
        name,
        properties: (p.clone(), submitted),
        files,
    })
}

/// Writes a file on a node as root: path, bytes, mode.
pub(crate) type Write<'a> = dyn Fn(&str, &[u8], u32) -> Result<()> + Sync + 'a;

/// A node to submit on: its name, and how to run a command there as root and write a file there
/// (a node over SSH for `imgbuild submit`, a cluster member for `up --check`).
pub(crate) struct On<'a> {
    pub node: &'a str,
    pub run: &'a topo::Run<'a>,
    pub write: &'a Write<'a>,
}

/// Copy `t` to STAGE/NAME on the node (replaced whole), build its jar there with what the image
/// holds (the directory's own build-jar.py, else the example's), `storm jar` it with Flux as the
/// node's Storm client, and wait until `storm list` says ACTIVE: what it did, line by line.
pub(crate) fn submit_on(on: &On, t: &Topology) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, bytes) in &t.files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    let tar = tar.into_inner()?;
    let stage = format!("{STAGE}/{}", t.name);
    (on.write)(&format!("{stage}.tar"), &tar, 0o600)
        .with_context(|| format!("{}: copying the topology", on.node))?;
    let q = |s: &str| crate::util::run::shell_quote(s.as_ref());
    let unpack = format!(
        "rm -rf {d} && mkdir -p {d} && tar -x -f {d}.tar -C {d} --no-same-owner && rm -f {d}.tar && chmod -R a+rX {STAGE}",
        d = q(&stage)
    );
    (on.run)(&["sh", "-c", &unpack], 60)?;
    let run = on.run;
    let jar = format!("{STAGE}/{}.jar", t.name);
    // The directory's own build-jar.py, else the image's (the example's: what the image holds).
    let builder = format!("{stage}/build-jar.py");
    if !t.files.iter().any(|(f, _, _)| f == "build-jar.py") {
        run(
            &["cp", &format!("{}/build-jar.py", topo::WC_DIR), &builder],
            30,
        )?;
    }
    let built = run(&["/opt/python/bin/python3", &builder, &jar], 300)?;
    lines.push(format!("{} built on {}: {}", t.name, on.node, built.trim()));
    let started = Instant::now();
    let cmd = topo::storm(&[
        "jar",
        &jar,
        "org.apache.storm.flux.Flux",
        "--remote",
        "--filter",
        &format!("{stage}/{}", t.properties.0),
        &format!("{stage}/topology.yaml"),
    ]);
    run(&cmd.iter().map(String::as_str).collect::<Vec<_>>(), 600)?;
    let mut status = None;
    while started.elapsed() < Duration::from_secs(300) {
        status = topo::status_of(run, &t.name)?;
        if status.as_deref() == Some("ACTIVE") {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    if status.as_deref() != Some("ACTIVE") {
        bail!(
            "{} is {} 300s after `storm jar` on {}",
            t.name,
            status.unwrap_or_else(|| "not listed".into()),
            on.node
        );
    }
    lines.push(format!(
        "{} ACTIVE {:.0}s after `storm jar` on {}",
        t.name,
        started.elapsed().as_secs_f64(),
        on.node
    ));
    Ok(lines)
}

/// A Storm node to submit from: the first of the recipe's with Storm (and Kafka, when one has
/// both) that answers `storm list`, with what it listed.
fn node<'a>(
    plans: &[&'a Plan],
    build_dir: &Path,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
) -> Result<(&'a Plan, Remote, Vec<Vec<String>>)> {
    let mut storm: Vec<&Plan> = plans
        .iter()
        .copied()
        .filter(|p| p.storm.is_some())
        .collect();
    storm.sort_by_key(|p| p.kafka.is_none());
    let mut tried = Vec::new();
    for p in storm {
        let r = Remote {
            name: p.node.name.clone(),
            addr: p.node.ip.to_string(),
            login: crate::update::login(p, build_dir, key, user, "submit")?,
        };
        match topo::list(&|cmd: &[&str], secs: u64| r.tool(cmd, secs)) {
            Ok(l) => return Ok((p, r, l)),
            Err(e) => tried.push(format!(
                "{} ({}): {}",
                p.node.name,
                p.node.ip,
                super::why(&e)
            )),
        }
    }
    if tried.is_empty() {
        bail!("the recipe has no Storm node");
    }
    bail!(
        "the cluster is not running, or no Storm node answered ({})",
        tried.join("; ")
    )
}

/// The brokers' client listeners, as a topology's Kafka clients use them.
pub(crate) fn clients(plans: &[&Plan]) -> String {
    plans
        .iter()
        .filter_map(|k| Some(format!("{}:{}", k.node.ip, k.kafka.as_ref()?.port)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `imgbuild submit DIR`: what it did, line by line.
pub fn submit(
    plans: &[&Plan],
    dir: &Path,
    build_dir: &Path,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
) -> Result<()> {
    let t = read(dir, &clients(plans))?;
    let (p, r, listed) = node(plans, build_dir, key, user)?;
    if let Some(row) = listed.iter().find(|row| row[0] == t.name) {
        bail!(
            "submit: {} already runs ({}) on the cluster: `imgbuild submit --kill {}` first",
            t.name,
            row[1],
            t.name
        );
    }
    let on = On {
        node: &p.node.name,
        run: &|cmd: &[&str], secs: u64| r.tool(cmd, secs),
        write: &|path: &str, bytes: &[u8], mode: u32| r.write(path, bytes, mode),
    };
    let lines = submit_on(&on, &t).map_err(|e| e.context("submit"))?;
    for l in &lines {
        eprintln!("submit: {l}");
    }
    println!("{}", t.name);
    Ok(())
}

/// `imgbuild submit --kill NAME`.
pub fn kill(
    plans: &[&Plan],
    name: &str,
    build_dir: &Path,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
) -> Result<()> {
    let (p, r, listed) = node(plans, build_dir, key, user)?;
    if !listed.iter().any(|row| row[0] == name) {
        bail!("submit --kill: no topology {name} runs on the cluster");
    }
    let t = Instant::now();
    topo::kill(&|cmd: &[&str], secs: u64| r.tool(cmd, secs), name)?;
    eprintln!(
        "submit: {name} killed on {} and gone from `storm list` after {:.0}s",
        p.node.name,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `imgbuild topologies`: what runs, as `storm list` says it.
pub fn topologies(
    plans: &[&Plan],
    build_dir: &Path,
    key: Option<&std::path::PathBuf>,
    user: Option<&String>,
) -> Result<()> {
    let (p, _, listed) = node(plans, build_dir, key, user)?;
    eprintln!("topologies: as nimbus tells {}", p.node.name);
    if listed.is_empty() {
        eprintln!("no topologies running");
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:>7} {:>8} {:>10}",
        "NAME", "STATUS", "TASKS", "WORKERS", "UPTIME"
    );
    for row in listed {
        let up: u64 = row[4].parse().unwrap_or(0);
        println!(
            "{:<24} {:<10} {:>7} {:>8} {:>10}",
            row[0],
            row[1],
            row[2],
            row[3],
            format!("{}m{:02}s", up / 60, up % 60)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_directory_as_submitted() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-wordcount");
        let t = read(&dir, "10.0.0.1:9092,10.0.0.2:9092").unwrap();
        assert_eq!(t.name, "python-wordcount");
        assert_eq!(t.properties.0, "wordcount.properties");
        let props = &t.properties.1;
        assert!(
            props.contains("\nkafka.bootstrap=10.0.0.1:9092,10.0.0.2:9092\n"),
            "{props}"
        );
        assert!(props.contains("\nkafka.client.config=/etc/storm/kafka-client.properties\n"));
        assert!(props.contains("\ninput.topic=sentences\n"));
        let names: Vec<&str> = t.files.iter().map(|(f, _, _)| f.as_str()).collect();
        assert!(
            names.contains(&"topology.yaml") && names.contains(&"build-jar.py"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("multilang/resources/")),
            "{names:?}"
        );
    }

    #[test]
    fn the_images_example_is_the_directory_as_submitted() {
        // What `up --check` and `roll --resubmit-example` submit is what `imgbuild submit
        // examples/python-wordcount` submits: the same files, modes and properties.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-wordcount");
        let clients = "10.0.0.1:9092,10.0.0.2:9092";
        let (a, b) = (read(&dir, clients).unwrap(), example(clients).unwrap());
        assert_eq!(a.name, b.name);
        assert_eq!(a.properties, b.properties);
        assert_eq!(a.files, b.files);
    }

    #[test]
    fn a_directory_that_is_not_a_topology_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = read(d.path(), "x").err().unwrap().to_string();
        assert!(e.contains("no topology.yaml"), "{e}");
        std::fs::write(d.path().join("topology.yaml"), "name: x\n").unwrap();
        std::fs::write(d.path().join("a.properties"), "x=1\n").unwrap();
        std::fs::write(d.path().join("b.properties"), "x=1\n").unwrap();
        let e = read(d.path(), "x").err().unwrap().to_string();
        assert!(
            e.contains("2 .properties files (a.properties, b.properties)"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("b.properties")).unwrap();
        let e = read(d.path(), "x").err().unwrap().to_string();
        assert!(e.contains("no topology.name="), "{e}");
    }

    #[test]
    fn storm_list_rows() {
        let out = "1034 [main] INFO  o.a.s.v.ConfigValidation - Will use [class org.apache.storm.DaemonConfig] for validation\n\
Topology_name        Status     Num_tasks  Num_workers  Uptime_secs  Topology_Id          Owner\n\
----------------------------------------------------------------------------------------\n\
python-wordcount     ACTIVE     9          1            125          python-wordcount-1-1765000000 root\n";
        let rows = topo::parse_list(out);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            rows[0][..5],
            ["python-wordcount", "ACTIVE", "9", "1", "125"]
        );
        assert!(topo::parse_list("No topologies running.\n").is_empty());
    }
}
