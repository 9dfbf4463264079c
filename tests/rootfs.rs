//! `imgbuild rootfs NODE` from the fixture mirror with a real Debian base: the node's tree is
//! wired for its IP and roles, its units verify with systemd-analyze, its seed with cloud-init,
//! and the shared part is built once for all nodes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::server::Server;

struct Env {
    server: Server,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
enum Node {
    File { data: Vec<u8>, uid: u64, mode: u32 },
    Dir,
    Link(PathBuf),
    Other,
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMvHBXpnCsuSN1Y5ZUeRz6G1Uxyd5Yx2Qz8CAKeNHmlo ops@test";

impl Env {
    /// The fixture recipe, with node2 given fewer roles and one SSH user.
    fn new() -> Env {
        let mirror = common::mirror_with_debian_base();
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(mirror.join("recipe.yaml"))
            .unwrap()
            .replace(
                "  node2:\n    ip: 192.168.200.152\n",
                "  node2:\n    ip: 192.168.200.152\n    roles: [zookeeper, kafka, storm-supervisor]\n",
            )
            .replace("users: []\n", &format!("users:\n  - name: ops\n    sudo: true\n    ssh_authorized_keys: [\"{KEY}\"]\n"));
        assert!(
            text.contains("storm-supervisor]") && text.contains("name: ops"),
            "recipe edits applied"
        );
        std::fs::write(dir.path().join("recipe.yaml"), text).unwrap();
        Env {
            server: Server::start(mirror),
            dir,
        }
    }
    fn run(&self, args: &[&str]) -> Output {
        let o = self.command(args).output().unwrap();
        assert!(
            o.status.success(),
            "imgbuild {args:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
        c.current_dir(self.dir.path());
        c.args([
            "-r",
            "recipe.yaml",
            "--cache-dir",
            "cache",
            "--build-dir",
            "build",
        ]);
        c.arg("--mirror")
            .arg(format!("https://={}", self.server.url()));
        c.args(args)
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY");
        c
    }
    fn tree(&self, node: &str) -> PathBuf {
        self.dir
            .path()
            .join("build/nodes")
            .join(node)
            .join("rootfs")
    }
}

fn read_tar(path: &Path) -> BTreeMap<PathBuf, Node> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().components().collect::<PathBuf>();
        let h = e.header().clone();
        let node = match h.entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                Node::File {
                    data,
                    uid: h.uid().unwrap(),
                    mode: h.mode().unwrap(),
                }
            }
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Symlink => Node::Link(e.link_name().unwrap().unwrap().into_owned()),
            _ => Node::Other,
        };
        out.insert(p, node);
    }
    out
}

fn text(t: &BTreeMap<PathBuf, Node>, p: &str) -> String {
    match t.get(Path::new(p)) {
        Some(Node::File { data, .. }) => String::from_utf8(data.clone()).unwrap(),
        other => panic!("{p}: expected a file, found {other:?}"),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn node2_rootfs_is_wired_for_its_ip_and_roles() {
    if !common::as_root() {
        return;
    }
    let env = Env::new();
    env.run(&["rootfs", "node2"]);
    let t = read_tar(&env.dir.path().join("images/node2/rootfs.tar"));
    assert!(
        matches!(t.get(Path::new("opt/zookeeper")), Some(Node::Link(l)) if l == Path::new("zookeeper-3.9.5"))
    );
    assert!(matches!(
        t.get(Path::new("opt/zookeeper-3.9.5/bin/zkServer.sh")),
        Some(Node::File { .. })
    ));
    assert_eq!(text(&t, "var/lib/zookeeper/myid"), "2\n");
    let props = text(&t, "etc/kafka/server.properties");
    assert!(props.contains("\nnode.id=2\n"), "{props}");
    assert!(
        props.contains(
            "\nlisteners=CLIENT://192.168.200.152:9092,INTERNAL://192.168.200.152:9094,CONTROLLER://192.168.200.152:9093\n"
        ),
        "{props}"
    );
    assert!(props.contains("\ncontroller.quorum.voters=1@192.168.200.151:9093,2@192.168.200.152:9093,3@192.168.200.153:9093\n"));
    let storm = text(&t, "etc/storm/storm.yaml");
    assert!(
        storm.contains("storm.local.hostname: \"192.168.200.152\""),
        "{storm}"
    );
    assert!(
        storm.contains("supervisor.childopts: \"-Xmx384m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 ")
            && storm.contains("\nworker.heap.memory.mb: 512\n")
            && storm.contains("\nsupervisor.memory.capacity.mb: 1024\n"),
        "heaps from the recipe:\n{storm}"
    );
    assert!(
        text(&t, "etc/default/storm").contains("\nPYTHON=/opt/python/bin/python3\n"),
        "Storm's launcher uses /opt/python"
    );
    let zoo = text(&t, "etc/zookeeper/zoo.cfg");
    assert!(zoo.contains("\nadmin.serverPort=8081\n"), "{zoo}");
    // TLS clients only: the client port is the secure one, and there is no plain one.
    assert!(
        zoo.contains("\nsecureClientPort=2181\n") && !zoo.contains("\nclientPort="),
        "{zoo}"
    );
    // Storm's daemons and workers reach that port over TLS, as the node's Storm identity.
    for key in [
        "nimbus.childopts",
        "supervisor.childopts",
        "worker.childopts",
    ] {
        let line = storm
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key}:\n{storm}"));
        assert!(
            line.contains("-Dzookeeper.client.secure=true")
                && line.contains("-Dzookeeper.ssl.keyStore.location=/etc/storm/tls/client.pem"),
            "{line}"
        );
    }
    // Issue 16: the node's keystores are its services' own, 0600; the Storm topologies' Kafka
    // identity (CN=storm) is a key of its own, owned by storm; the recipe's ACLs are applied.
    let keystore = |path: &str| match t.get(Path::new(path)) {
        Some(Node::File { data, uid, mode }) => {
            assert_eq!(mode & 0o7777, 0o600, "{path}");
            assert!(*uid != 0, "{path} owned by root");
            assert!(String::from_utf8_lossy(data).contains("-----BEGIN PRIVATE KEY-----"));
            (*uid, data.clone())
        }
        other => panic!("{path}: {other:?}"),
    };
    let (kafka_uid, kafka_ks) = keystore("etc/kafka/tls/node.pem");
    let (storm_uid, storm_ks) = keystore("etc/storm/tls/client.pem");
    assert!(kafka_uid != storm_uid && kafka_ks != storm_ks);
    assert!(props.contains("\nsuper.users=User:node1;User:node2;User:node3\n"));
    assert!(matches!(
        t.get(Path::new(
            "etc/systemd/system/kafka.service.wants/kafka-acls.service"
        )),
        Some(Node::Link(_))
    ));
    assert_eq!(text(&t, "etc/hostname"), "node2\n");
    let hosts = text(&t, "etc/hosts");
    assert!(
        hosts.contains("192.168.200.152 node2\n") && !hosts.contains("127.0.1.1"),
        "{hosts}"
    );
    assert_eq!(text(&t, "etc/machine-id"), "");
    // Issue 29: the node's own SSH host key (made in the recipe's secrets, pinned by update and
    // ssh), root's and 0600, and no other host key.
    let host_keys: Vec<&PathBuf> = t
        .keys()
        .filter(|p| p.starts_with("etc/ssh") && p.to_string_lossy().contains("ssh_host_"))
        .collect();
    assert_eq!(
        host_keys,
        [
            Path::new("etc/ssh/ssh_host_ed25519_key"),
            Path::new("etc/ssh/ssh_host_ed25519_key.pub")
        ],
        "host keys"
    );
    match t.get(Path::new("etc/ssh/ssh_host_ed25519_key")) {
        Some(Node::File { data, uid, mode }) => {
            assert_eq!((*uid, mode & 0o7777), (0, 0o600));
            let secret = env.dir.path().join("recipe.secrets/ssh/node2_ed25519");
            assert_eq!(
                data,
                &std::fs::read(&secret).unwrap(),
                "{}",
                secret.display()
            );
        }
        other => panic!("host key: {other:?}"),
    }
    assert!(
        text(&t, "etc/ssh/sshd_config.d/imgbuild-host-key.conf")
            .contains("\nHostKey /etc/ssh/ssh_host_ed25519_key\n")
    );
    // Units for node2's roles are enabled, the others installed but not enabled.
    let wants = Path::new("etc/systemd/system/multi-user.target.wants");
    for unit in ["zookeeper", "kafka-format", "kafka", "storm-supervisor"] {
        assert!(
            t.contains_key(&wants.join(format!("{unit}.service"))),
            "{unit} not enabled"
        );
    }
    for unit in ["storm-nimbus", "storm-ui", "storm-logviewer"] {
        assert!(
            !t.contains_key(&wants.join(format!("{unit}.service"))),
            "{unit} enabled but node2 lacks the role"
        );
        assert!(t.contains_key(&Path::new("etc/systemd/system").join(format!("{unit}.service"))));
    }
    // The distribution's node exporter (the base's package, its own unit) enabled on node2's
    // address: the package's unit takes its arguments from the file imgbuild writes.
    let unit = text(
        &t,
        "usr/lib/systemd/system/prometheus-node-exporter.service",
    );
    assert!(
        unit.contains("EnvironmentFile=/etc/default/prometheus-node-exporter")
            && unit.contains("ExecStart=/usr/bin/prometheus-node-exporter $ARGS"),
        "{unit}"
    );
    assert!(
        text(&t, "etc/default/prometheus-node-exporter")
            .contains("ARGS=\"--web.listen-address=192.168.200.152:9100\"")
    );
    assert!(t.contains_key(&wants.join("prometheus-node-exporter.service")));
    assert!(text(&t, "etc/imgbuild/firewall.nft").contains("tcp dport 9100 accept"));
    // Service users exist on first boot, and own their data.
    let passwd = text(&t, "etc/passwd");
    let zk_uid: u64 = passwd
        .lines()
        .find(|l| l.starts_with("zookeeper:"))
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        matches!(t.get(Path::new("var/lib/zookeeper/myid")), Some(Node::File { uid, .. }) if *uid == zk_uid)
    );
    assert!(
        passwd.starts_with("root:x:0:0:"),
        "the base's own users are kept"
    );
    let shadow = text(&t, "etc/shadow");
    assert!(
        shadow.lines().all(|l| {
            let pw = l.split(':').nth(1).unwrap_or("");
            pw.starts_with('!') || pw.starts_with('*')
        }),
        "no passwords:\n{shadow}"
    );
    // The seed is embedded, with the static IP and the SSH key, and cloud-init looks only there.
    let net = text(&t, "var/lib/cloud/seed/nocloud/network-config");
    assert!(net.contains("addresses: [\"192.168.200.152/24\"]"), "{net}");
    assert!(text(&t, "var/lib/cloud/seed/nocloud/user-data").contains(KEY));
    assert!(
        text(&t, "etc/cloud/cloud.cfg.d/90_imgbuild_datasource.cfg")
            .contains("datasource_list: [ NoCloud, None ]")
    );
    assert!(
        matches!(t.get(Path::new("var/lib/cloud/seed/nocloud/user-data")), Some(Node::File { mode, .. }) if mode & 0o077 == 0)
    );
}

#[test]
fn units_pass_systemd_analyze_and_seed_passes_cloud_init() {
    if !common::as_root() {
        return;
    }
    let env = Env::new();
    env.run(&["rootfs", "node1"]);
    let tree = env.tree("node1");
    let units: Vec<PathBuf> = [
        "zookeeper",
        "kafka-format",
        "kafka",
        "storm-nimbus",
        "storm-supervisor",
        "storm-ui",
        "storm-logviewer",
        "imgbuild-health",
    ]
    .iter()
    .map(|u| tree.join(format!("etc/systemd/system/{u}.service")))
    // The base's node exporter unit, with imgbuild's drop-in.
    .chain([tree.join("usr/lib/systemd/system/prometheus-node-exporter.service")])
    .collect();
    assert!(units.iter().all(|u| u.is_file()), "{units:?}");
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", tree.display()))
        .args(&units)
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(
        o.status.success() && report.trim().is_empty(),
        "systemd-analyze verify:\n{report}"
    );
    let seed = tree.join("var/lib/cloud/seed/nocloud");
    let o = std::process::Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(seed.join("user-data"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cloud-init schema:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Valid cloud-config"));
    let checker =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check-network-config.py");
    let o = std::process::Command::new("/usr/bin/python3")
        .arg(&checker)
        .arg(seed.join("network-config"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "network-config rejected:\n{}",
        stderr(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("192.168.200.151"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn shared_tree_is_built_once_and_output_is_deterministic() {
    if !common::as_root() {
        return;
    }
    let env = Env::new();
    let logs: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| stderr(&env.run(&["rootfs", n])))
        .collect();
    assert!(logs[0].contains("common   built"), "{}", logs[0]);
    for l in &logs[1..] {
        assert!(
            l.contains("common   cached") && !l.contains("common   built"),
            "{l}"
        );
    }
    // The same inputs in a fresh build directory give the same bytes.
    let first =
        imgbuild::fetch::checksum::hash_file(&env.dir.path().join("images/node1/rootfs.tar"))
            .unwrap();
    std::fs::remove_dir_all(env.dir.path().join("build")).unwrap();
    env.run(&["rootfs", "node1"]);
    let second =
        imgbuild::fetch::checksum::hash_file(&env.dir.path().join("images/node1/rootfs.tar"))
            .unwrap();
    assert_eq!(first.sha256, second.sha256);
}

/// The configured Debian mirror (the only package mirror this machine reaches).
fn debian_mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string()))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// Debian's archive keys from the fixture mirror: the whole keyring in one file, of which the
/// recipe pins `fingerprint`.
fn with_mmdebstrap_base(env: &Env, fingerprint: &str) {
    let text = std::fs::read_to_string(env.dir.path().join("recipe.yaml")).unwrap();
    let start = text.find("base:\n").unwrap();
    let end = text.find("components:\n").unwrap();
    let base = format!(
        "base:\n  kind: mmdebstrap\n  suite: bookworm\n  mirror: {}\n  packages: [systemd, systemd-sysv, nftables]\n  keyring:\n    url: https://ftp-master.debian.org/keys/debian-archive-keyring.asc\n    fingerprints: [{fingerprint}]\n",
        debian_mirror()
    );
    std::fs::write(
        env.dir.path().join("recipe.yaml"),
        format!("{}{base}{}", &text[..start], &text[end..]),
    )
    .unwrap();
}

/// Debian Archive Automatic Signing Key (12/bookworm): its subkeys sign bookworm's Release.
const BOOKWORM_KEY: &str = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8";

#[test]
fn mmdebstrap_base_is_built_once_and_cached() {
    if !common::as_root() {
        return;
    }
    let env = Env::new();
    with_mmdebstrap_base(&env, BOOKWORM_KEY);
    // The base lacks the node exporter that `metrics` (on by default) runs: refused, saying so;
    // the base it built is kept.
    let o = env.command(&["rootfs", "node1"]).output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("node1: the base has no /usr/bin/prometheus-node-exporter")
            && err.contains("hint: add prometheus-node-exporter to base.packages"),
        "{err}"
    );
    assert!(err.contains("base     built bookworm from"), "{err}");
    let recipe = env.dir.path().join("recipe.yaml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("{text}metrics:\n  enabled: false\n")).unwrap();
    let first = stderr(&env.run(&["rootfs", "node1"]));
    assert!(
        first.contains(&format!("base keyring: 1 pinned key(s) {BOOKWORM_KEY}")),
        "{first}"
    );
    assert!(first.contains("base     cached"), "{first}");
    let t = read_tar(&env.dir.path().join("images/node1/rootfs.tar"));
    assert!(
        matches!(
            t.get(Path::new("usr/bin/systemctl")),
            Some(Node::File { .. })
        ),
        "systemd installed from the mirror"
    );
    assert!(text_of(&t, "usr/lib/os-release").contains("bookworm"));
    assert_eq!(text_of(&t, "var/lib/zookeeper/myid"), "1\n");
    // Another node reuses both the base tarball and the shared tree.
    let second = stderr(&env.run(&["rootfs", "node2"]));
    assert!(
        second.contains("common   cached") && !second.contains("base     built"),
        "{second}"
    );
}

/// The Release file is checked against the pinned key only: a key the archive does not sign
/// with (bullseye's, from the same file) makes mmdebstrap refuse it; a fingerprint the key
/// file lacks is refused before mmdebstrap runs.
#[test]
fn mmdebstrap_trusts_only_the_pinned_archive_key() {
    if !common::as_root() {
        return;
    }
    let env = Env::new();
    with_mmdebstrap_base(&env, "1F89983E0081FDE018F3CC9673A4F27B8DD47936");
    let o = env.command(&["rootfs", "node1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("building the bookworm base from"), "{err}");
    assert!(
        err.contains("NO_PUBKEY") || err.contains("not signed") || err.contains("signature"),
        "mmdebstrap did not report the signature: {err}"
    );
    let absent = "0000000000000000000000000000000000000000";
    with_mmdebstrap_base(&env, absent);
    let o = env.command(&["rootfs", "node1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("reading the base's archive keys")
            && err.contains(&format!("no key with the pinned fingerprint {absent}")),
        "{err}"
    );
}

fn text_of(t: &BTreeMap<PathBuf, Node>, p: &str) -> String {
    text(t, p)
}
