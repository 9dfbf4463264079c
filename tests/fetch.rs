//! `imgbuild fetch`, `lock` and `cache` against the fixture mirror served by a misbehaving local
//! server. Each test has its own cache and recipe copy; only 127.0.0.1 is contacted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::server::{Fault, Server};

const KAFKA: &str = "/downloads.apache.org/kafka/4.3.1/kafka_2.13-4.3.1.tgz";
const KAFKA_ARCHIVE: &str = "/archive.apache.org/dist/kafka/4.3.1/kafka_2.13-4.3.1.tgz";
const ZK: &str =
    "/downloads.apache.org/zookeeper/zookeeper-3.9.5/apache-zookeeper-3.9.5-bin.tar.gz";
const ALL: [&str; 7] = [
    "base",
    "java",
    "zookeeper",
    "kafka",
    "storm",
    "python",
    "jmx_exporter",
];

struct Env {
    server: Server,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            common::mirror().join("recipe.yaml"),
            dir.path().join("recipe.yaml"),
        )
        .unwrap();
        Env {
            server: Server::start(common::mirror()),
            dir,
        }
    }
    fn recipe(&self) -> PathBuf {
        self.dir.path().join("recipe.yaml")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
        c.arg("-r")
            .arg(self.recipe())
            .arg("--cache-dir")
            .arg(self.cache());
        c.arg("--mirror")
            .arg(format!("https://={}", self.server.url()));
        c.args(args);
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "IMGBUILD_MIRRORS",
        ] {
            c.env_remove(v);
        }
        c.env("NO_PROXY", "*")
            .env("IMGBUILD_HTTP_BACKOFF_MS", "20")
            .env("IMGBUILD_HTTP_TIMEOUT", "2");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    /// Names of artifacts with a verified blob in the cache.
    fn cached(&self) -> Vec<String> {
        let out = Command::cargo_bin("imgbuild")
            .unwrap()
            .arg("--cache-dir")
            .arg(self.cache())
            .args(["cache", "list"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    }
    fn partials(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.cache().join("partial"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\n{}",
        o.status.code(),
        stderr(o)
    );
}

fn failed(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected failure\n{}", stderr(o));
    stderr(o)
}

fn sha256_of(path: &Path) -> String {
    imgbuild::fetch::checksum::hash_file(path).unwrap().sha256
}

#[test]
fn fetches_everything_and_second_run_is_cached() {
    let env = Env::new();
    let o = env.run(&["fetch"]);
    ok(&o);
    assert!(stderr(&o).contains("fetched 7 artifacts"), "{}", stderr(&o));
    assert_eq!(env.cached().len(), ALL.len());
    let before = env.server.requests().len();
    let o = env.run(&["fetch"]);
    ok(&o);
    assert!(
        stderr(&o).contains("0 downloaded, 7 from cache"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        env.server.requests().len(),
        before,
        "a warm cache makes no requests"
    );
}

#[test]
fn not_found_falls_back_to_the_archive() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Status(404), usize::MAX);
    ok(&env.run(&["fetch"]));
    assert_eq!(
        env.server.requests_for(KAFKA).len(),
        1,
        "404 is not retried"
    );
    assert_eq!(env.server.requests_for(KAFKA_ARCHIVE).len(), 1);
}

#[test]
fn not_found_everywhere_names_every_url_and_caches_nothing() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Status(404), usize::MAX);
    env.server
        .fault(KAFKA_ARCHIVE, Fault::Status(404), usize::MAX);
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains(&format!(
            "{}downloads.apache.org/kafka/4.3.1/kafka_2.13-4.3.1.tgz: HTTP 404",
            env.server.url()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}archive.apache.org/dist/kafka/4.3.1/kafka_2.13-4.3.1.tgz: HTTP 404",
            env.server.url()
        )),
        "{err}"
    );
    assert!(!env.cached().contains(&"kafka".to_string()));
    assert_eq!(
        env.cached().len(),
        ALL.len() - 1,
        "the other artifacts still land"
    );
}

#[test]
fn server_errors_are_retried() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Status(500), 2);
    ok(&env.run(&["fetch"]));
    let statuses: Vec<u16> = env
        .server
        .requests_for(KAFKA)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
}

#[test]
fn too_many_requests_and_timeouts_are_retried_until_giving_up() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Status(429), usize::MAX);
    env.server
        .fault(KAFKA_ARCHIVE, Fault::Status(503), usize::MAX);
    let err = failed(
        &env.cmd(&["fetch"])
            .env("IMGBUILD_HTTP_RETRIES", "2")
            .output()
            .unwrap(),
    );
    assert_eq!(env.server.requests_for(KAFKA).len(), 3);
    assert!(
        err.contains("HTTP 429 Too Many Requests") && err.contains("giving up after 3 attempts"),
        "{err}"
    );
    assert!(!env.cached().contains(&"kafka".to_string()));
    assert!(
        env.partials()
            .iter()
            .all(|p| std::fs::metadata(p).unwrap().len() == 0)
    );
}

#[test]
fn connection_reset_mid_body_resumes_with_range() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Reset { after: 100 }, 1);
    ok(&env.run(&["fetch"]));
    let reqs = env.server.requests_for(KAFKA);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100-"));
    assert_eq!(reqs[1].status, 206);
}

#[test]
fn body_shorter_than_content_length_is_retried() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Short { after: 50 }, 1);
    let o = env.run(&["fetch"]);
    ok(&o);
    // hyper notices the missing bytes itself; the partial 50 bytes are kept and resumed.
    assert!(
        stderr(&o).contains("connection lost after 50 B")
            && stderr(&o).contains("end of file before message length reached"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        env.server.requests_for(KAFKA)[1].range.as_deref(),
        Some("bytes=50-")
    );
}

#[test]
fn stall_beyond_idle_timeout_is_retried() {
    let env = Env::new();
    env.server.fault(
        KAFKA,
        Fault::Stall {
            after: 10,
            secs: 10,
        },
        1,
    );
    let t = Instant::now();
    ok(&env.run(&["fetch"]));
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "the 2 s idle timeout cut the stall short"
    );
    assert_eq!(env.server.requests_for(KAFKA).len(), 2);
}

#[test]
fn wrong_content_names_url_and_both_digests_and_leaves_nothing() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Wrong, usize::MAX);
    env.server.fault(KAFKA_ARCHIVE, Fault::Wrong, usize::MAX);
    let good = imgbuild::fetch::checksum::hash_file(&common::mirror().join(&KAFKA[1..]))
        .unwrap()
        .sha512;
    let err = failed(&env.run(&["fetch"]));
    let url = format!(
        "{}downloads.apache.org/kafka/4.3.1/kafka_2.13-4.3.1.tgz",
        env.server.url()
    );
    assert!(
        err.contains(&format!("{url}: sha512 mismatch: expected {good}, got ")),
        "{err}"
    );
    assert!(!env.cached().contains(&"kafka".to_string()));
    assert!(
        env.partials()
            .iter()
            .all(|p| std::fs::metadata(p).unwrap().len() == 0),
        "no tampered bytes kept"
    );
}

#[test]
fn redirect_chain_is_followed() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Redirect { hops: 3 }, 1);
    ok(&env.run(&["fetch"]));
    let statuses: Vec<u16> = env
        .server
        .requests_for(KAFKA)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [302, 302, 302, 200]);
}

#[test]
fn ignored_range_restarts_from_zero() {
    let env = Env::new();
    env.server.fault(KAFKA, Fault::Reset { after: 100 }, 1);
    env.server.fault(KAFKA, Fault::IgnoreRange, 1);
    ok(&env.run(&["fetch"]));
    let reqs = env.server.requests_for(KAFKA);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100-"));
    assert_eq!(reqs[1].status, 200, "server sent the whole file again");
    let blob = env
        .cache()
        .join("blobs/sha256")
        .join(sha256_of(&common::mirror().join(&KAFKA[1..])));
    assert!(blob.is_file(), "the restarted download verified");
}

#[test]
fn signature_from_a_key_not_pinned_names_the_fingerprint() {
    let env = Env::new();
    let f = common::fingerprints();
    let text = std::fs::read_to_string(env.recipe())
        .unwrap()
        .replace(&f["release"], &f["other"]);
    std::fs::write(env.recipe(), text).unwrap();
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains(&format!(
            "signature made by key {}, which the recipe does not pin (pinned: {})",
            f["release"], f["other"]
        )),
        "{err}"
    );
    assert!(!env.cached().contains(&"zookeeper".to_string()));
}

#[test]
fn tampered_signature_names_the_key() {
    let env = Env::new();
    // Serve a signature of other content: the checksum matches, the signature cannot.
    let f = common::fingerprints();
    env.server
        .fault(&format!("{ZK}.asc"), Fault::Wrong, usize::MAX);
    env.server.fault(
        &format!(
            "/archive.apache.org/dist{}.asc",
            &ZK["/downloads.apache.org".len()..]
        ),
        Fault::Wrong,
        usize::MAX,
    );
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains("signature")
            && (err.contains(&f["release"]) || err.contains("no OpenPGP signature")),
        "{err}"
    );
    assert!(!env.cached().contains(&"zookeeper".to_string()));
}

#[test]
fn killed_download_resumes_on_the_next_run() {
    let env = Env::new();
    // Hold kafka's body after 200 bytes; kill the fetch while it waits.
    env.server.fault(
        KAFKA,
        Fault::Stall {
            after: 200,
            secs: 30,
        },
        1,
    );
    let mut child = env
        .cmd(&["fetch", "-j", "1"])
        .env("IMGBUILD_HTTP_TIMEOUT", "30")
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let partial_bytes: u64 = env
            .partials()
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if partial_bytes >= 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "download never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !env.cached().contains(&"kafka".to_string()),
        "nothing half-done in the cache"
    );
    ok(&env.run(&["fetch"]));
    let reqs = env.server.requests_for(KAFKA);
    assert_eq!(
        reqs.last().unwrap().range.as_deref(),
        Some("bytes=200-"),
        "{reqs:?}"
    );
    assert_eq!(reqs.last().unwrap().status, 206);
    assert!(env.cached().contains(&"kafka".to_string()));
}

#[test]
fn offline_names_every_missing_artifact_then_import_fills_the_gap() {
    let env = Env::new();
    // The connected side: pin everything.
    let o = env.run(&["lock"]);
    ok(&o);
    let lock = env.dir.path().join("recipe.lock.json");
    let text = std::fs::read_to_string(&lock).unwrap();
    let f = common::fingerprints();
    assert!(
        text.contains(&f["release"]) && text.contains(&f["cloud"]),
        "fingerprints recorded:\n{text}"
    );
    // The air-gapped side: an empty cache.
    std::fs::remove_dir_all(env.cache()).unwrap();
    let err = failed(&env.run(&["--offline", "fetch"]));
    assert!(
        err.contains("offline, and 7 artifacts are not in the cache"),
        "{err}"
    );
    for name in ALL {
        assert!(
            err.contains(&format!("fetching {name} ")),
            "{name} not named:\n{err}"
        );
    }
    let requests = env.server.requests().len();
    let files: Vec<PathBuf> = [
        "cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz",
        "github.com/adoptium/temurin21-binaries/releases/download/jdk-21.0.12+8/OpenJDK21U-jre_x64_linux_hotspot_21.0.12_8.tar.gz",
        &ZK[1..],
        &KAFKA[1..],
        "downloads.apache.org/storm/apache-storm-2.8.3/apache-storm-2.8.3.tar.gz",
        "github.com/astral-sh/python-build-standalone/releases/download/20260203/cpython-3.13.12+20260203-x86_64-unknown-linux-gnu-install_only.tar.gz",
        "repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/1.0.1/jmx_prometheus_javaagent-1.0.1.jar",
    ]
    .iter()
    .map(|p| common::mirror().join(p))
    .collect();
    let mut import = env.cmd(&["cache", "import"]);
    import.args(&files);
    ok(&import.output().unwrap());
    ok(&env.run(&["--offline", "fetch"]));
    assert_eq!(
        env.server.requests().len(),
        requests,
        "offline touched the network"
    );
}

#[test]
fn import_rejects_files_that_match_nothing() {
    let env = Env::new();
    let stray = env.dir.path().join("stray.tgz");
    std::fs::write(&stray, b"not an artifact").unwrap();
    let err = failed(&env.cmd(&["cache", "import"]).arg(&stray).output().unwrap());
    assert!(
        err.contains("stray.tgz: sha256 ") && err.contains("matches no pinned artifact"),
        "{err}"
    );
    assert!(err.contains("run `imgbuild lock`"), "{err}");
}

#[test]
fn lock_detects_changed_upstream_content() {
    let env = Env::new();
    ok(&env.run(&["lock"]));
    std::fs::remove_dir_all(env.cache()).unwrap();
    env.server.fault(KAFKA, Fault::Wrong, usize::MAX);
    env.server.fault(KAFKA_ARCHIVE, Fault::Wrong, usize::MAX);
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains("upstream content no longer matches") && err.contains("recipe.lock.json"),
        "{err}"
    );
}

#[test]
fn lock_resolves_checksum_file_artifacts_afresh() {
    // A private copy of the mirror, whose python tarball (pinned only by the publisher's
    // SHA256SUMS) is then republished with new content under the same URL.
    let mirror = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", common::mirror().display()))
        .arg(mirror.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut env = Env::new();
    env.server = Server::start(mirror.path());
    ok(&env.run(&["lock"]));
    let lock =
        |env: &Env| std::fs::read_to_string(env.dir.path().join("recipe.lock.json")).unwrap();
    let before = lock(&env);
    let dir = mirror
        .path()
        .join("github.com/astral-sh/python-build-standalone/releases/download/20260203");
    let file = "cpython-3.13.12+20260203-x86_64-unknown-linux-gnu-install_only.tar.gz";
    std::fs::write(dir.join(file), b"republished content").unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let new_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"republished content"))
    };
    let sums: String = sums
        .lines()
        .map(|l| {
            if l.ends_with(file) {
                format!("{new_sha}  {file}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    // The cache still holds the old content and a record of it: lock must not trust that.
    ok(&env.run(&["lock"]));
    let after = lock(&env);
    assert_ne!(before, after);
    assert!(after.contains(&new_sha), "{after}");
}

#[test]
fn stale_lock_is_reported() {
    let env = Env::new();
    ok(&env.run(&["lock"]));
    let text = std::fs::read_to_string(env.recipe())
        .unwrap()
        .replace("version: 2.8.3", "version: 2.8.2");
    std::fs::write(env.recipe(), text).unwrap();
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains("is out of date for storm: it pins 2.8.3"),
        "{err}"
    );
}

#[test]
fn three_fetches_at_once_share_the_cache() {
    let env = Env::new();
    // Hold kafka for a second so all three meet on its partial file.
    env.server
        .fault(KAFKA, Fault::Stall { after: 10, secs: 1 }, 1);
    let procs: Vec<_> = (0..3)
        .map(|_| {
            env.cmd(&["fetch"])
                .env("IMGBUILD_HTTP_TIMEOUT", "10")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in procs {
        ok(&p.wait_with_output().unwrap());
    }
    assert_eq!(env.cached().len(), ALL.len());
    assert!(
        std::fs::read_dir(env.cache().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temporaries left"
    );
}

#[test]
fn mirror_from_the_environment() {
    let env = Env::new();
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("imgbuild"));
    c.arg("-r")
        .arg(env.recipe())
        .arg("--cache-dir")
        .arg(env.cache())
        .arg("fetch");
    c.env("IMGBUILD_MIRRORS", format!("https://={}", env.server.url()))
        .env("NO_PROXY", "*");
    ok(&c.output().unwrap());
}

#[test]
fn prune_keeps_what_the_recipe_needs() {
    let env = Env::new();
    ok(&env.run(&["fetch"]));
    let stray = env.cache().join("blobs/sha256").join("0".repeat(64));
    std::fs::write(&stray, b"orphan").unwrap();
    ok(&env.run(&["cache", "prune"]));
    assert!(!stray.exists());
    assert_eq!(env.cached().len(), ALL.len());
}

/// Regression: a cached verification made under one pinned key must not satisfy a recipe that
/// pins another (found by `make demo-fetch`, whose fixture keys change on every run).
#[test]
fn changing_the_pinned_key_forces_reverification() {
    let env = Env::new();
    ok(&env.run(&["fetch"]));
    let f = common::fingerprints();
    let text = std::fs::read_to_string(env.recipe())
        .unwrap()
        .replace(&f["release"], &f["other"]);
    std::fs::write(env.recipe(), text).unwrap();
    let err = failed(&env.run(&["fetch"]));
    assert!(
        err.contains(&format!(
            "signature made by key {}, which the recipe does not pin",
            f["release"]
        )),
        "{err}"
    );
}
