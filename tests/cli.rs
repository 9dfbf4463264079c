//! Runs the built `imgbuild` binary on recipes and pins what users see (stderr snapshots, exit codes).

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

const BASE: &str = include_str!("recipes/base.yaml");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run imgbuild with `recipe.yaml` (holding `text`) in a fresh directory, so messages name `recipe.yaml`.
fn run(text: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("recipe.yaml"), text).unwrap();
    run_in(dir.path(), "recipe.yaml", args)
}

fn run_in(dir: &Path, recipe: &str, args: &[&str]) -> Run {
    let out = Command::cargo_bin("imgbuild")
        .unwrap()
        .current_dir(dir)
        .env_remove("IMGBUILD_RECIPE")
        .arg("-r")
        .arg(recipe)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The base recipe with each `from` replaced by `to` (each must occur exactly once).
fn mutate(edits: &[(&str, &str)]) -> String {
    let mut text = BASE.to_string();
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` must occur once in base.yaml"
        );
        text = text.replacen(from, to, 1);
    }
    text
}

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

fn plan_json(recipe: &str, node: &str) -> Value {
    let out = Command::cargo_bin("imgbuild")
        .unwrap()
        .args(["-r", recipe, "plan", node, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every recipe error must exit 2 and point at `recipe.yaml:LINE:COL`.
fn recipe_error(text: &str) -> String {
    let r = run(text, &["validate"]);
    assert_eq!(r.code, 2, "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains("error: recipe.yaml:"),
        "no file:line:col in:\n{}",
        r.stderr
    );
    r.stderr
}

#[test]
fn reference_recipe_plan_node2() {
    let p = plan_json(&repo_file("recipes/cluster.yaml"), "node2");
    assert_eq!(p["schema"], 2);
    assert_eq!(p["node"]["hostname"], "node2");
    assert_eq!(p["node"]["ip"], "192.168.200.152");
    assert_eq!(p["zookeeper"]["myid"], 2);
    assert_eq!(
        p["zookeeper"]["connect"],
        "192.168.200.151:2181,192.168.200.152:2181,192.168.200.153:2181"
    );
    assert_eq!(p["kafka"]["node_id"], 2);
    assert_eq!(p["kafka"]["mode"], "kraft");
    assert_eq!(
        p["kafka"]["controller_quorum_voters"],
        "1@192.168.200.151:9093,2@192.168.200.152:9093,3@192.168.200.153:9093"
    );
    assert_eq!(
        p["kafka"]["listeners"],
        "CLIENT://192.168.200.152:9092,INTERNAL://192.168.200.152:9094,CONTROLLER://192.168.200.152:9093"
    );
    assert_eq!(p["storm"]["local_hostname"], "192.168.200.152");
    assert_eq!(p["storm"]["nimbus_seeds"].as_array().unwrap().len(), 3);
    // No 127.0.1.1 line: the node's name maps to its real address.
    let hosts = p["hosts"].as_array().unwrap();
    assert!(hosts.iter().all(|h| h["ip"] != "127.0.1.1"));
    assert!(
        hosts
            .iter()
            .any(|h| h["ip"] == "192.168.200.152" && h["names"][0] == "node2")
    );
    let names: Vec<&str> = p["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    // The base is built by mmdebstrap from the Ubuntu archive, not downloaded as one file.
    assert_eq!(
        names,
        [
            "java",
            "zookeeper",
            "kafka",
            "storm",
            "python",
            "jmx_exporter"
        ]
    );
    assert_eq!(p["kafka"]["metrics_port"], 7071);
    assert_eq!(p["storm"]["nimbus_metrics_port"], 7072);
    assert_eq!(p["storm"]["supervisor_metrics_port"], 7073);
    let b = &p["base"];
    assert_eq!(b["kind"], "mmdebstrap");
    assert_eq!(b["suite"], "noble");
    assert_eq!(b["mirror"], "http://archive.ubuntu.com/ubuntu");
    assert_eq!(b["keyring"]["kind"], "pinned");
    assert_eq!(
        b["keyring"]["fingerprints"][0],
        "F6ECB3762474EDA9D21B7022871920D1991BC93C"
    );
    // It will carry the generic kernel and the shim + signed GRUB chain.
    assert_eq!(b["boot"]["kind"], "packages");
    assert_eq!(b["boot"]["kernel"], "linux-generic");
    assert_eq!(b["boot"]["loader"], "shim+grub");
    assert!(p["disk"]["size_bytes"].is_null(), "automatic disk size");
    // Memory for real JVMs: the VM gets more than the heaps of everything the node runs.
    let m = &p["memory"];
    assert!(m["total_mb"].as_u64().unwrap() > m["heap_mb"].as_u64().unwrap() + 512);
    let zk = &p["artifacts"][1];
    assert_eq!(
        zk["urls"][1],
        "https://archive.apache.org/dist/zookeeper/zookeeper-3.9.5/apache-zookeeper-3.9.5-bin.tar.gz"
    );
    assert_eq!(zk["digest"]["source"], "checksum-file");
    assert_eq!(
        zk["digest"]["urls"][1],
        "https://archive.apache.org/dist/zookeeper/zookeeper-3.9.5/apache-zookeeper-3.9.5-bin.tar.gz.sha512"
    );
    assert_eq!(
        zk["signature"]["fingerprints"][0],
        "3F7A1D16FA4217B1DC75E1C9FFE35B7F15DFA1BA"
    );
}

#[test]
fn reference_recipe_validates_with_its_documented_warning() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = run_in(dir, "recipes/cluster.yaml", &["validate"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("recipes/cluster.yaml: ok (3 nodes: node1, node2, node3; 1 warning)")
    );
    assert!(r.stderr.contains("no users"));
}

#[test]
fn readable_plan_matches_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = run_in(dir, "recipes/cluster.yaml", &["plan", "node3"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("kafka node.id          3\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("zookeeper myid         3\n"));
    assert!(
        r.stdout
            .contains("storm local hostname   192.168.200.153\n")
    );
}

#[test]
fn five_nodes_with_three_zookeepers() {
    let recipe = repo_file("tests/recipes/five-nodes.yaml");
    let connect = "10.9.1.1:2181,10.9.1.3:2181,10.9.1.5:2181";
    let servers = [
        "server.11=10.9.1.1:2888:3888",
        "server.13=10.9.1.3:2888:3888",
        "server.15=10.9.1.5:2888:3888",
    ];
    let voters = "11@10.9.1.1:9093,13@10.9.1.3:9093,15@10.9.1.5:9093";
    for (node, id, myid, roles) in [
        ("a1", 11, Some(11), "broker,controller"),
        ("a2", 12, None, "broker"),
        ("a3", 13, Some(13), "broker,controller"),
        ("a4", 14, None, "broker"),
        ("a5", 15, Some(15), "broker,controller"),
    ] {
        let p = plan_json(&recipe, node);
        assert_eq!(p["node"]["id"], id, "{node}");
        assert_eq!(
            p["zookeeper"]["myid"],
            myid.map_or(Value::Null, Value::from),
            "{node}"
        );
        assert_eq!(p["zookeeper"]["connect"], connect, "{node}");
        assert_eq!(
            p["zookeeper"]["servers"],
            serde_json::json!(servers),
            "{node}"
        );
        assert_eq!(p["kafka"]["node_id"], id, "{node}");
        assert_eq!(p["kafka"]["process_roles"], roles, "{node}");
        assert_eq!(p["kafka"]["controller_quorum_voters"], voters, "{node}");
        assert_eq!(
            p["storm"]["zookeeper_servers"],
            serde_json::json!(["10.9.1.1", "10.9.1.3", "10.9.1.5"])
        );
        assert_eq!(p["storm"]["nimbus_seeds"], serde_json::json!(["10.9.1.1"]));
    }
    let a2 = plan_json(&recipe, "a2");
    assert_eq!(
        a2["units"],
        serde_json::json!([
            "kafka-format.service",
            "kafka.service",
            "storm-supervisor.service"
        ])
    );
    // A broker-only node listens for clients and brokers, not for controllers.
    assert_eq!(
        a2["kafka"]["listeners"],
        "CLIENT://10.9.1.2:9092,INTERNAL://10.9.1.2:9094"
    );
    assert_eq!(plan_json(&recipe, "a4")["kafka"]["heap_mb"], 4096);
    assert_eq!(plan_json(&recipe, "a3")["kafka"]["heap_mb"], 1024);
}

#[test]
fn kafka_zookeeper_mode_resolves() {
    let p = plan_json(
        &repo_file("tests/recipes/kafka-zookeeper-mode.yaml"),
        "node3",
    );
    assert_eq!(p["kafka"]["mode"], "zookeeper");
    assert_eq!(p["kafka"]["broker_id"], 3);
    assert_eq!(p["kafka"]["node_id"], Value::Null);
    assert_eq!(
        p["kafka"]["zookeeper_connect"],
        "192.168.200.151:2181,192.168.200.152:2181,192.168.200.153:2181/kafka"
    );
    assert_eq!(
        p["kafka"]["listeners"],
        "CLIENT://192.168.200.153:9092,INTERNAL://192.168.200.153:9094"
    );
    assert_eq!(
        p["units"][1], "kafka.service",
        "no kafka-format unit outside KRaft"
    );
}

#[test]
fn scram_clients_need_kraft_and_say_so_in_the_plan() {
    let zk = std::fs::read_to_string(repo_file("tests/recipes/kafka-zookeeper-mode.yaml"))
        .unwrap()
        .replace(
            "    mode: zookeeper\n",
            "    mode: zookeeper\n    clients: scram\n",
        );
    let r = run(&zk, &["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("recipe.yaml:23:14: SCRAM clients need KRaft"),
        "{}",
        r.stderr
    );
    let kraft = mutate(&[(
        "    admin_port: 8081\n",
        "    admin_port: 8081\n  kafka:\n    clients: scram\n",
    )]);
    let r = run(&kraft, &["plan", "node1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Kafka clients by SCRAM-SHA-512 password over TLS (scram)"),
        "{}",
        r.stdout
    );
}

#[test]
fn derived_cluster_id_is_stable_and_well_formed() {
    let a = run(BASE, &["plan", "node1", "--json"]);
    let b = run(BASE, &["plan", "node3", "--json"]);
    let ida = serde_json::from_str::<Value>(&a.stdout).unwrap()["kafka"]["cluster_id"].clone();
    let idb = serde_json::from_str::<Value>(&b.stdout).unwrap()["kafka"]["cluster_id"].clone();
    assert_eq!(ida, idb);
    let id = ida.as_str().unwrap();
    assert_eq!(id.len(), 22);
    assert!(!id.starts_with('-'));
}

#[test]
fn base_recipe_is_valid() {
    let r = run(BASE, &["validate"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "recipe.yaml: ok (3 nodes: node1, node2, node3; 0 warnings)\n"
    );
}

// ---- every bad-input class: exit code 2 and a pinned message with file:line:col ----

macro_rules! bad {
    ($name:ident, $edits:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(recipe_error(&mutate(&$edits)));
        }
    };
}

bad!(
    unknown_key_suggests,
    [("    ip: 10.20.0.12", "    ipp: 10.20.0.12")]
);
bad!(unknown_top_level_key, [("network:", "netwrok:")]);
bad!(
    password_key_gets_hint,
    [("  - name: ops\n", "  - name: ops\n    password: hunter2\n")]
);
bad!(
    duplicate_node_name,
    [(
        "  node3:\n    ip: 10.20.0.13",
        "  node1:\n    ip: 10.20.0.13"
    )]
);
bad!(duplicate_ip, [("ip: 10.20.0.13", "ip: 10.20.0.11")]);
bad!(
    duplicate_id,
    [("    ip: 10.20.0.13", "    ip: 10.20.0.13\n    id: 2")]
);
bad!(ip_outside_network, [("ip: 10.20.0.12", "ip: 10.21.0.12")]);
bad!(ip_not_an_address, [("ip: 10.20.0.12", "ip: 10.20.0.312")]);
bad!(node_name_not_hostname, [("  node2:", "  Node_2:")]);
bad!(node_name_is_subcommand, [("  node2:", "  plan:")]);
bad!(missing_required_field, [("  cidr: 10.20.0.0/24\n", "")]);
bad!(missing_component, [("  storm:\n    version: 2.8.3\n", "")]);
bad!(
    port_clash_admin_server_vs_storm_ui,
    [("admin_port: 8081", "admin_port: 8080")]
);
bad!(
    component_bad_supplier_and_license,
    [(
        "    version: 4.3.1\n",
        "    version: 4.3.1\n    supplier: Apache\n    license: \"Apache-2.0; rm -rf\"\n"
    )]
);
bad!(
    firewall_bad_clients,
    [(
        "users:\n",
        "firewall:\n  clients: [10.20.0.0/24, 10.20.0.5/24, nowhere]\nusers:\n"
    )]
);
bad!(
    metrics_bad_clients,
    [(
        "users:\n",
        "metrics:\n  clients: [10.20.0.0/24, 10.20.0.7/24]\nusers:\n"
    )]
);
bad!(
    port_clash_zookeeper_metrics_vs_storm_slot,
    [(
        "    admin_port: 8081\n",
        "    admin_port: 8081\n    metrics_port: 6700\n"
    )]
);
bad!(
    worker_metrics_need_four_digit_slots,
    [(
        "    admin_port: 8081\n",
        "    admin_port: 8081\n  storm:\n    slots: [700, 6701]\n"
    )]
);
bad!(
    kafka_users_bad,
    [(
        "    admin_port: 8081\n",
        "    admin_port: 8081\n  kafka:\n    clients: scram\n    users:\n      - name: node1\n      - name: app\n        allow:\n          - {topic: orders, group: g, ops: [read]}\n          - {topic: \"a b\", ops: [read]}\n          - {topic: orders, ops: [reed]}\n          - {group: \"app-*\", ops: []}\n      - name: app\n"
    )]
);
bad!(
    os_tuning_bad_values,
    [(
        "users:\n",
        "os:\n  sysctl:\n    vm.swappiness: 1\n    \"../etc/x\": 1\n    vm.dirty_ratio: \"60\\n# no\"\n  limits: {nofile: 512}\n  ntp: [pool.ntp.org, -bad-.example]\nusers:\n"
    )]
);
bad!(
    port_clash_per_node_override,
    [(
        "    ip: 10.20.0.13",
        "    ip: 10.20.0.13\n    services:\n      kafka: {port: 2181}"
    )]
);
bad!(
    zookeeper_ensemble_empty,
    [
        (
            "  node1:\n    ip: 10.20.0.11",
            "  node1:\n    ip: 10.20.0.11\n    roles: [kafka, storm-nimbus]"
        ),
        (
            "  node2:\n    ip: 10.20.0.12",
            "  node2:\n    ip: 10.20.0.12\n    roles: [kafka, storm-supervisor]"
        ),
        (
            "  node3:\n    ip: 10.20.0.13",
            "  node3:\n    ip: 10.20.0.13\n    roles: [kafka, storm-supervisor]"
        )
    ]
);
bad!(
    kraft_voters_empty,
    [(
        "  zookeeper:\n    admin_port",
        "  kafka:\n    controllers: []\n  zookeeper:\n    admin_port"
    )]
);
bad!(unknown_url_variable, [("jre-{version}", "jre-{vesion}")]);
bad!(unclosed_url_brace, [("jre-{version}", "jre-{version")]);
bad!(
    unknown_role_suggests,
    [(
        "    ip: 10.20.0.12",
        "    ip: 10.20.0.12\n    roles: [zookeeper, storm-supervisr]"
    )]
);
bad!(
    kafka4_in_zookeeper_mode,
    [(
        "  zookeeper:\n    admin_port",
        "  kafka:\n    mode: zookeeper\n  zookeeper:\n    admin_port"
    )]
);
bad!(
    bad_fingerprint,
    [(
        "  zookeeper:\n    version: 3.9.5\n",
        "  zookeeper:\n    version: 3.9.5\n    signature:\n      url: \"{url}.asc\"\n      keys: https://x.example/KEYS\n      fingerprints: [BB E7 23 2D]\n"
    )]
);
bad!(
    plain_http_needs_pinned_digest,
    [(
        "  storm:\n    version: 2.8.3\n",
        "  storm:\n    version: 2.8.3\n    urls: http://mirror.example/storm-{version}.tgz\n"
    )]
);
bad!(
    yaml_syntax_error,
    [("  cidr: 10.20.0.0/24", "  cidr: \"10.20.0.0/24")]
);
bad!(
    yaml_bad_indentation,
    [("  gateway: 10.20.0.1", "    gateway: 10.20.0.1")]
);
bad!(wrong_type, [("ip: 10.20.0.12", "ip: [10, 20]")]);
bad!(
    gateway_outside_network,
    [("gateway: 10.20.0.1", "gateway: 10.30.0.1")]
);
bad!(
    bad_ssh_key,
    [(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyForParsing test@imgbuild",
        "hunter2"
    )]
);
bad!(
    kafka_cluster_id_malformed,
    [(
        "  zookeeper:\n    admin_port",
        "  kafka:\n    cluster_id: not-a-real-id\n  zookeeper:\n    admin_port"
    )]
);
bad!(
    kafka_topics_checked_against_the_cluster,
    [(
        "  zookeeper:\n    admin_port",
        "  kafka:\n    topics:\n      - {name: sentences, partitions: 3, replication_factor: 4}\n      - name: counts\n        partitions: 3\n        configs: {min.insync.replicas: 3}\n      - name: logs\n        partitions: 1\n        configs: {retention.msec: 1000, cleanup.policy: shred}\n  zookeeper:\n    admin_port"
    )]
);
bad!(
    several_errors_reported_together,
    [
        ("ip: 10.20.0.12", "ip: 10.21.0.12"),
        ("ip: 10.20.0.13", "ip: 10.20.0.11")
    ]
);

#[test]
fn even_zookeeper_ensemble_is_a_warning() {
    let text = mutate(&[(
        "  node3:\n    ip: 10.20.0.13",
        "  node3:\n    ip: 10.20.0.13\n    roles: [kafka, storm-supervisor]",
    )]);
    let r = run(&text, &["validate"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(r.stderr);
}

#[test]
fn even_kraft_voter_set_is_a_warning() {
    let text = mutate(&[(
        "  zookeeper:\n    admin_port",
        "  kafka:\n    controllers: [node1, node2]\n  zookeeper:\n    admin_port",
    )]);
    let r = run(&text, &["validate"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(r.stderr);
}

#[test]
fn unknown_node_is_a_usage_error() {
    let r = run(BASE, &["plan", "nod2"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr);
}

#[test]
fn missing_recipe_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_in(dir.path(), "nope.yaml", &["validate"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with("error: recipe nope.yaml does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_command_line_exits_2() {
    let r = run(BASE, &["plan"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("<NODE>"), "{}", r.stderr);
}

#[test]
fn non_utf8_recipe_points_at_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("recipe.yaml"),
        b"cluster:\n  name: t\xffst\n",
    )
    .unwrap();
    let r = run_in(dir.path(), "recipe.yaml", &["validate"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with("error: recipe.yaml:2:10: the recipe is not valid UTF-8"),
        "{}",
        r.stderr
    );
}

/// Shell completions come from the clap definitions; bash's completes the subcommands (and so
/// `imgbuild fl<TAB>` to `flash`, which was also checked by hand in bash).
#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let r = run("", &["completions", "bash"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("complete -F") && r.stdout.contains("flash"),
        "{}",
        r.stdout
    );
    for shell in ["zsh", "fish"] {
        let r = run("", &["completions", shell]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.contains("flash"), "{shell}");
    }
    let man = run("", &["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH imgbuild"),
        "{}",
        man.stdout
    );
    assert!(man.stdout.contains("flash"), "{}", man.stdout);
}

/// On a terminal, errors are coloured; with NO_COLOR set (https://no-color.org), not at all.
/// `script` gives the binary a pseudo-terminal, as a user's shell would.
#[test]
fn no_color_is_honoured_on_a_terminal() {
    let bin = assert_cmd::cargo::cargo_bin("imgbuild");
    let on_tty = |no_color: bool| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &format!("{} --bogus", bin.display()), "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let o = c.output().expect("running script(1)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("--bogus"), "{coloured}");
    assert!(
        coloured.contains('\x1b'),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_tty(true);
    assert!(plain.contains("unexpected argument '--bogus'"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

#[test]
fn a_provenance_signing_key_must_exist_with_its_public_half() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{BASE}provenance:\n  signing_key: keys/provenance\n");
    std::fs::write(dir.path().join("recipe.yaml"), &text).unwrap();
    let r = run_in(dir.path(), "recipe.yaml", &["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("recipe.yaml:42:16: ")
            && r.stderr.contains("keys/provenance: no such key file"),
        "{}",
        r.stderr
    );
    // The private key alone: its public half is named.
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/provenance"), "not read by imgbuild").unwrap();
    let r = run_in(dir.path(), "recipe.yaml", &["validate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("keys/provenance.pub"), "{}", r.stderr);
    // With both, the plan shows the public key (never the private one's path or bytes).
    std::fs::write(
        dir.path().join("keys/provenance.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzqOXyO8mWOBjxP0tVhVQh1hc0KfCfHHVO6rU9DxTm0 ops@site\n",
    )
    .unwrap();
    let r = run_in(dir.path(), "recipe.yaml", &["plan", "node1", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        p["provenance_signer"]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 AAAAC3"),
        "{p}"
    );
    assert!(!r.stdout.contains("not read by imgbuild"));
}

/// Metrics on by default: ZooKeeper's Prometheus endpoint on a member's own address, its port
/// open to `metrics.clients` only; `metrics: {enabled: false}` leaves no endpoint and no port.
#[test]
fn metrics_endpoints_on_by_default_and_gone_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let on = dir.path().join("on.yaml");
    std::fs::write(
        &on,
        mutate(&[("users:\n", "metrics:\n  clients: [10.20.0.99]\nusers:\n")]),
    )
    .unwrap();
    let p = plan_json(on.to_str().unwrap(), "node2");
    assert_eq!(p["zookeeper"]["metrics_port"], 7000);
    // The recipe names no jmx_exporter: the release imgbuild knows, with its pinned digest.
    let jmx = p["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "jmx_exporter")
        .expect("the JMX exporter's agent is an input");
    assert_eq!(jmx["version"], "1.0.1");
    assert!(
        jmx.to_string()
            .contains("7d61f737fd661610ccc14aea79764faa1ea94a340cbc8f0029b3d2edea3d80c1"),
        "{jmx}"
    );
    assert_eq!(p["firewall"]["metrics"], serde_json::json!(["10.20.0.99"]));
    let r = run(&std::fs::read_to_string(&on).unwrap(), &["plan", "node2"]);
    assert!(
        r.stdout
            .contains("ports (metrics)        7000 ZooKeeper metrics_port (Prometheus)")
            && r.stdout.contains("scraped from 10.20.0.99"),
        "{}",
        r.stdout
    );

    let off = dir.path().join("off.yaml");
    std::fs::write(
        &off,
        mutate(&[("users:\n", "metrics:\n  enabled: false\nusers:\n")]),
    )
    .unwrap();
    let p = plan_json(off.to_str().unwrap(), "node2");
    assert!(p["zookeeper"]["metrics_port"].is_null());
    assert!(p["kafka"]["metrics_port"].is_null());
    assert!(p["storm"]["nimbus_metrics_port"].is_null());
    assert!(p["firewall"]["metrics"].is_null());
    // No exporter, so no agent jar to download.
    assert!(
        p["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "jmx_exporter")
    );
    let r = run(&std::fs::read_to_string(&off).unwrap(), &["plan", "node2"]);
    assert!(
        r.stdout.contains("off: no exporter, no metrics port")
            && !r.stdout.contains("ports (metrics)")
            && !r.stdout.contains("7000"),
        "{}",
        r.stdout
    );
}
