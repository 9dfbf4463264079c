//! Downloading and verifying artifacts into the cache: parallel, resumable, retried, mirror-aware.
//!
//! Every byte from the network is hostile until its digest (and, where the recipe asks, its
//! signature from a pinned key) checks out. Downloads accumulate in a locked partial file and are
//! hashed while they stream; only verified content is renamed into the cache.

pub mod cache;
pub mod checksum;
mod http;
pub mod import;
pub mod lock;
pub mod pgp;
mod progress;

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER};

use sha2::{Digest, Sha256};

use crate::fetch::cache::{Cache, Record};
use crate::fetch::checksum::{Hashes, PipelinedHasher};
use crate::fetch::lock::{LockEntry, LockFile};
use crate::plan::mirror::Mirrors;
use crate::plan::{Algorithm, Artifact, DigestSource, SignaturePlan};
use crate::recipe::Signs;
use crate::util::fmt::human;

pub use http::file_name;
use http::*;
use progress::*;

/// Largest artifact accepted (a hostile server could otherwise fill the disk).
const MAX_ARTIFACT_BYTES: u64 = 16 << 30;
/// Largest checksum, signature or KEYS file accepted.
const MAX_SMALL_BYTES: u64 = 4 << 20;
const BUF_SIZE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    pub offline: bool,
    pub jobs: usize,
    /// Retries per URL after the first attempt (connection errors, 408, 429, 5xx, cut bodies).
    pub retries: u32,
    /// A read that waits longer than this fails (and is retried).
    pub idle_timeout: Duration,
    /// First backoff delay; doubles per retry.
    pub backoff: Duration,
    /// Resolve afresh (`imgbuild lock`): an artifact pinned only by the publisher's checksum file
    /// is looked up again instead of trusting the cache's record of an earlier resolution.
    pub refresh: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            offline: false,
            jobs: 4,
            retries: env_num("IMGBUILD_HTTP_RETRIES").unwrap_or(4) as u32,
            idle_timeout: Duration::from_secs(env_num("IMGBUILD_HTTP_TIMEOUT").unwrap_or(30)),
            backoff: Duration::from_millis(env_num("IMGBUILD_HTTP_BACKOFF_MS").unwrap_or(500)),
            refresh: false,
        }
    }
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// A verified artifact in the cache.
/// The name of the fetched entry that holds an mmdebstrap base's pinned archive keys.
pub const KEYRING: &str = "base-keyring";

#[derive(Debug, Clone)]
pub struct Fetched {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub record: Record,
    pub from_cache: bool,
}

/// What the content must hash to, known before downloading.
#[derive(Debug, Clone)]
enum Expect {
    Locked(LockEntry),
    Digest(Algorithm, String),
}

pub struct Fetcher<'a> {
    client: Client,
    cache: &'a Cache,
    mirrors: &'a Mirrors,
    lock: Option<(&'a LockFile, &'a Path)>,
    opts: Options,
    progress: Progress,
}

impl<'a> Fetcher<'a> {
    pub fn new(
        cache: &'a Cache,
        mirrors: &'a Mirrors,
        lock: Option<(&'a LockFile, &'a Path)>,
        opts: Options,
    ) -> Result<Self> {
        let client = Client::builder()
            .timeout(opts.idle_timeout)
            .connect_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        Ok(Fetcher {
            client,
            cache,
            mirrors,
            lock,
            progress: Progress::new(),
            opts,
        })
    }

    /// Fetch every artifact, `jobs` at a time. Fails listing every artifact that failed.
    pub fn fetch_all(&self, artifacts: &[Artifact]) -> Result<Vec<Fetched>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Fetched>>>> =
            Mutex::new(artifacts.iter().map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.opts.jobs.clamp(1, artifacts.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(a) = artifacts.get(i) else { break };
                        let r = self
                            .fetch_one(a)
                            .with_context(|| format!("fetching {} {}", a.name, a.version));
                        results.lock().unwrap()[i] = Some(r);
                        crate::util::failpoint::hit("fetch");
                    }
                });
            }
        });
        self.progress.finish();
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for r in results.into_inner().unwrap().into_iter().flatten() {
            match r {
                Ok(f) => ok.push(f),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            Ok(ok)
        } else if self.opts.offline {
            Err(anyhow!(
                "offline, and {} artifact{} not in the cache:\n  {}\n\nhint: run `imgbuild fetch` where upstream is reachable, or `imgbuild cache import FILE...`",
                errors.len(),
                if errors.len() == 1 { " is" } else { "s are" },
                errors.join("\n  ")
            ))
        } else {
            Err(anyhow!(
                "{} of {} artifacts failed:\n  {}",
                errors.len(),
                artifacts.len(),
                errors.join("\n  ")
            ))
        }
    }

    /// The digest the content must have, from the lock or the recipe, if known without a download.
    fn expectation(&self, a: &Artifact) -> Result<Option<Expect>> {
        if let Some((lock, path)) = self.lock
            && let Some(e) = lock.entry(a, path)?
        {
            return Ok(Some(Expect::Locked(e.clone())));
        }
        Ok(match &a.digest {
            DigestSource::Inline { algorithm, value } => {
                Some(Expect::Digest(*algorithm, value.clone()))
            }
            DigestSource::ChecksumFile { .. } => None,
        })
    }

    /// The cached, verified content of `a`, if any: the record of an earlier verification under
    /// the same policy, provided it matches what the lock or recipe pins now; else a blob with the
    /// pinned digest (hashed once, and recorded so the next build need not hash it again).
    fn cached(&self, a: &Artifact, key: &str, expect: Option<&Expect>) -> Result<Option<Record>> {
        let matches = |r: &Record| match expect {
            Some(Expect::Locked(e)) => r.sha256 == e.sha256,
            Some(Expect::Digest(alg, hex)) => r.digest(*alg) == hex,
            None => !self.opts.refresh,
        };
        if let Some(r) = self.cache.record(key).filter(matches) {
            return Ok(Some(r));
        }
        let found = match expect {
            Some(Expect::Locked(e)) => self.cache.find(Algorithm::Sha256, &e.sha256),
            Some(Expect::Digest(alg, hex)) => self.cache.find(*alg, hex),
            None => None,
        };
        let Some(path) = found else { return Ok(None) };
        let h = checksum::hash_file(&path)
            .with_context(|| format!("hashing cached {}", path.display()))?;
        let record = Record {
            name: a.name.to_string(),
            version: a.version.clone(),
            url: a.urls[0].clone(),
            fetched_from: "cache".into(),
            size: h.size,
            sha256: h.sha256,
            sha512: h.sha512,
            fingerprint: match expect {
                Some(Expect::Locked(e)) => e.fingerprint.clone(),
                _ => None,
            },
        };
        self.cache.write_record(key, &record)?;
        Ok(Some(record))
    }

    fn fetch_one(&self, a: &Artifact) -> Result<Fetched> {
        let key = Cache::record_key(a);
        let expect = self.expectation(a)?;
        if let Some(record) = self.cached(a, &key, expect.as_ref())? {
            self.progress.line(&format!(
                "{} {}: cached ({})",
                a.name,
                a.version,
                human(record.size)
            ));
            return Ok(Fetched {
                name: a.name.to_string(),
                version: a.version.clone(),
                path: self.cache.blob_path(&record.sha256),
                record,
                from_cache: true,
            });
        }
        if self.opts.offline {
            bail!("not in the cache ({})", a.urls[0]);
        }
        let mut failures = Vec::new();
        for i in 0..a.urls.len() {
            let url = self.mirrors.rewrite(&a.urls[i]);
            match self.fetch_from(a, i, &url, expect.as_ref()) {
                Ok((path, hashes, fingerprint, final_url)) => {
                    let record = Record {
                        name: a.name.to_string(),
                        version: a.version.clone(),
                        url: a.urls[i].clone(),
                        fetched_from: final_url,
                        size: hashes.size,
                        sha256: hashes.sha256.clone(),
                        sha512: hashes.sha512.clone(),
                        fingerprint,
                    };
                    self.cache.write_record(&key, &record)?;
                    return Ok(Fetched {
                        name: a.name.to_string(),
                        version: a.version.clone(),
                        path,
                        record,
                        from_cache: false,
                    });
                }
                Err(e) => {
                    self.progress
                        .line(&format!("{} {}: {url}: {e:#}", a.name, a.version));
                    failures.push(format!("{url}: {e:#}"));
                }
            }
        }
        if failures.len() == 1 {
            bail!("{}", failures.remove(0))
        }
        bail!("every URL failed:\n    {}", failures.join("\n    "))
    }

    /// Download from one URL (index `i` of the artifact's list) and verify. On any failure the
    /// partial download is removed unless it can be resumed (transport errors).
    // Long on purpose: its four numbered steps (expected digest, download, verify, into the store)
    // run under one lock on the partial download; each is short, and splitting them would pass the
    // lock and the partial around.
    fn fetch_from(
        &self,
        a: &Artifact,
        i: usize,
        url: &str,
        expect: Option<&Expect>,
    ) -> Result<(PathBuf, Hashes, Option<String>, String)> {
        if !plain_http_allowed(url, expect.is_some(), a.signature.is_some()) {
            bail!(
                "refusing plain http: nothing pins the content of {url}, and its checksum would come over the same unauthenticated channel\n\nhint: use https, pin the digest in the recipe, or run `imgbuild lock` over https first"
            );
        }
        // 1. What the content must hash to.
        let mut fingerprint = None;
        let expect = match expect {
            Some(e) => e.clone(),
            None => {
                let DigestSource::ChecksumFile { algorithm, urls } = &a.digest else {
                    unreachable!("inline digests are known")
                };
                let sums_url = self.mirrors.rewrite(&urls[i]);
                let sums = self
                    .get_small(&sums_url)
                    .with_context(|| format!("fetching checksum file {sums_url}"))?;
                if let Some(sig) = a.signature.as_ref().filter(|s| s.signs == Signs::Checksums) {
                    fingerprint = Some(
                        self.check_signature(sig, i, std::io::Cursor::new(&sums))
                            .with_context(|| format!("verifying the signature of {sums_url}"))?,
                    );
                }
                let file = file_name(&a.urls[i]);
                let text = String::from_utf8_lossy(&sums);
                let hex = checksum::parse_checksum_file(&text, &file, *algorithm)
                    .with_context(|| format!("reading checksum file {sums_url}"))?;
                Expect::Digest(*algorithm, hex)
            }
        };
        // 2. Download, hashing as it streams.
        let partial = self.cache.partial_path(url);
        let guard = lock_partial(&partial)?;
        // Another process may have finished this download while we waited for the lock.
        let (alg, want) = match &expect {
            Expect::Locked(e) => (Algorithm::Sha256, e.sha256.clone()),
            Expect::Digest(alg, hex) => (*alg, hex.clone()),
        };
        if let Some(path) = self.cache.find(alg, &want)
            && a.signature
                .as_ref()
                .is_none_or(|s| s.signs == Signs::Checksums)
        {
            let hashes = checksum::hash_file(&path)
                .with_context(|| format!("hashing {}", path.display()))?;
            drop(guard);
            return Ok((path, hashes, fingerprint, url.to_string()));
        }
        let label = format!("{} {}", a.name, a.version);
        let (hashes, final_url) = self.download(url, &partial, &label)?;
        // 3. Verify: digest, then signature over the file if the recipe asks for one.
        let got = hashes.get(alg).to_string();
        if got != want {
            let _ = fs::remove_file(&partial);
            if matches!(expect, Expect::Locked(_)) {
                let lock = self
                    .lock
                    .map(|l| l.1.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "upstream content no longer matches {lock}: {} mismatch: expected {want}, got {got}\n\nhint: if the new content is legitimate, run `imgbuild lock` to re-pin it",
                    alg.name()
                );
            }
            bail!("{} mismatch: expected {want}, got {got}", alg.name());
        }
        if let Some(sig) = a.signature.as_ref().filter(|s| s.signs == Signs::Artifact)
            && !matches!(expect, Expect::Locked(_))
        {
            let file =
                File::open(&partial).with_context(|| format!("opening {}", partial.display()))?;
            match self.check_signature(sig, i, file) {
                Ok(f) => fingerprint = Some(f),
                Err(e) => {
                    let _ = fs::remove_file(&partial);
                    return Err(e.context(format!(
                        "verifying signature {}",
                        self.mirrors.rewrite(&sig.urls[i])
                    )));
                }
            }
        }
        if let Expect::Locked(e) = &expect {
            fingerprint = e.fingerprint.clone();
        }
        // 4. Into the store. The partial is renamed away; its lock goes with the open handle.
        let tmp = self.cache.tmp_path();
        fs::rename(&partial, &tmp).with_context(|| format!("moving {}", partial.display()))?;
        drop(guard);
        let path = self.cache.insert(&tmp, &hashes)?;
        self.progress.line(&format!(
            "{label}: verified {} {}{}",
            alg.name(),
            &want[..16],
            fingerprint
                .as_ref()
                .map(|f| format!(", signed by {f}"))
                .unwrap_or_default()
        ));
        Ok((path, hashes, fingerprint, final_url))
    }

    fn check_signature<R: Read + Seek>(
        &self,
        sig: &SignaturePlan,
        i: usize,
        data: R,
    ) -> Result<String> {
        let sig_url = self.mirrors.rewrite(&sig.urls[i]);
        let keys_url = self.mirrors.rewrite(&sig.keys);
        let sig_bytes = self
            .get_small(&sig_url)
            .with_context(|| format!("fetching signature {sig_url}"))?;
        let key_bytes = self
            .get_small(&keys_url)
            .with_context(|| format!("fetching keys {keys_url}"))?;
        let keys =
            pgp::parse_keys(&key_bytes).with_context(|| format!("reading keys {keys_url}"))?;
        let sigs = pgp::parse_signatures(&sig_bytes).with_context(|| {
            format!(
                "reading signature {sig_url} (pinned key {})",
                sig.fingerprints.join(", ")
            )
        })?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        pgp::verify(&keys, &sigs, data, &sig.fingerprints, now)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "checking against pinned key {}",
                    sig.fingerprints.join(", ")
                )
            })
    }

    /// The apt keyring for an mmdebstrap base with pinned keys: the key file at `url`, reduced
    /// to the pinned keys, kept in the cache (`keyrings/`) so offline builds find it. Returns
    /// its path and the record the manifest and build key list.
    pub fn pinned_keyring(&self, url: &str, fingerprints: &[String]) -> Result<Fetched> {
        let id = {
            let mut h = Sha256::new();
            h.update(url.as_bytes());
            for f in fingerprints {
                h.update(b"\0");
                h.update(f.as_bytes());
            }
            hex::encode(&h.finalize()[..16])
        };
        let path = self.cache.root().join("keyrings").join(format!("{id}.gpg"));
        let from_cache = path.is_file() && self.opts.offline;
        let fetched_from = self.mirrors.rewrite(url);
        if !from_cache {
            if self.opts.offline {
                bail!(
                    "offline, and the cache holds no keyring from {url}\n\nhint: run `imgbuild fetch` once where the URL is reachable"
                );
            }
            let bytes = self
                .get_small(&fetched_from)
                .with_context(|| format!("fetching the base's archive keys {fetched_from}"))?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let ring = pgp::pinned_keyring(&bytes, fingerprints, now)
                .with_context(|| format!("reading the base's archive keys {fetched_from}"))?;
            crate::fetch::cache::write_atomic(&path, &ring)?;
        }
        let hashes =
            checksum::hash_file(&path).with_context(|| format!("reading {}", path.display()))?;
        self.progress.line(&format!(
            "base keyring: {} pinned key(s) {} from {url}",
            fingerprints.len(),
            fingerprints.join(", ")
        ));
        Ok(Fetched {
            name: KEYRING.into(),
            version: fingerprints.join(","),
            path,
            record: Record {
                name: KEYRING.into(),
                version: fingerprints.join(","),
                url: url.to_string(),
                fetched_from,
                size: hashes.size,
                sha256: hashes.sha256,
                sha512: hashes.sha512,
                fingerprint: fingerprints.first().cloned(),
            },
            from_cache,
        })
    }

    /// A small file (checksums, signature, KEYS) into memory, with the same retries.
    fn get_small(&self, url: &str) -> Result<Vec<u8>> {
        self.with_retries(url, |_| {
            let resp = self.client.get(url).send().map_err(Attempt::retry)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Attempt::from_status(status, &resp));
            }
            let mut body = Vec::new();
            resp.take(MAX_SMALL_BYTES + 1)
                .read_to_end(&mut body)
                .map_err(Attempt::retry)?;
            if body.len() as u64 > MAX_SMALL_BYTES {
                return Err(Attempt::fatal(anyhow!(
                    "larger than {} bytes",
                    MAX_SMALL_BYTES
                )));
            }
            Ok(body)
        })
    }

    /// Download `url` into `partial`, resuming what it already holds. Returns the hashes of the
    /// whole file and the URL after redirects.
    // Long on purpose: one attempt of a resumable download (Range request, 200/206/416, re-hashing
    // the partial, streaming with progress and the size cap): the steps share the open file and the
    // hashers, kept in one place so a resume cannot hash differently from a fresh download.
    fn download(&self, url: &str, partial: &Path, label: &str) -> Result<(Hashes, String)> {
        self.with_retries(url, |attempt| {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(partial)
                .map_err(|e| Attempt::fatal(e.into()))?;
            let have = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut req = self.client.get(url);
            if have > 0 {
                req = req.header(RANGE, format!("bytes={have}-"));
            }
            let resp = req.send().map_err(Attempt::retry)?;
            let status = resp.status();
            let final_url = resp.url().to_string();
            let start = match status {
                StatusCode::PARTIAL_CONTENT
                    if have > 0 && content_range_start(&resp) == Some(have) =>
                {
                    have
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    file.set_len(0).map_err(|e| Attempt::fatal(e.into()))?;
                    return Err(Attempt::retry_now(anyhow!(
                        "server rejected the resume range; starting over"
                    )));
                }
                s if s.is_success() && s != StatusCode::PARTIAL_CONTENT => 0,
                StatusCode::PARTIAL_CONTENT => {
                    file.set_len(0).map_err(|e| Attempt::fatal(e.into()))?;
                    return Err(Attempt::retry_now(anyhow!(
                        "unexpected partial response; starting over"
                    )));
                }
                s => return Err(Attempt::from_status(s, &resp)),
            };
            if attempt > 0 || start > 0 {
                self.progress.line(&format!(
                    "{label}: {} from byte {start} of {url}",
                    if start > 0 { "resuming" } else { "restarting" }
                ));
            }
            // Hash what is already on disk, then append the rest as it arrives.
            let mut hasher = PipelinedHasher::default();
            if start > 0 {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| Attempt::fatal(e.into()))?;
                std::io::copy(&mut (&mut file).take(start), &mut hasher)
                    .map_err(|e| Attempt::fatal(e.into()))?;
            } else {
                file.set_len(0).map_err(|e| Attempt::fatal(e.into()))?;
            }
            file.seek(SeekFrom::Start(start))
                .map_err(|e| Attempt::fatal(e.into()))?;
            let length = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let Some(len) = length
                && start + len > MAX_ARTIFACT_BYTES
            {
                return Err(Attempt::fatal(anyhow!(
                    "{} is larger than the {} limit",
                    human(start + len),
                    human(MAX_ARTIFACT_BYTES)
                )));
            }
            let bar = self.progress.bar(label, length.map(|l| start + l), start);
            let mut body = resp;
            let mut buf = vec![0u8; BUF_SIZE];
            let mut received = 0u64;
            let t = Instant::now();
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = file.flush();
                        bar.abandon();
                        return Err(Attempt::retry(anyhow!(e).context(format!(
                            "connection lost after {}",
                            human(start + received)
                        ))));
                    }
                };
                file.write_all(&buf[..n]).map_err(|e| {
                    Attempt::fatal(anyhow!(e).context(format!("writing {}", partial.display())))
                })?;
                hasher.update(&buf[..n]);
                received += n as u64;
                bar.set(start + received);
                if start + received > MAX_ARTIFACT_BYTES {
                    let _ = file.set_len(0);
                    return Err(Attempt::fatal(anyhow!(
                        "more than {} sent; giving up",
                        human(MAX_ARTIFACT_BYTES)
                    )));
                }
            }
            if let Some(len) = length
                && received < len
            {
                bar.abandon();
                return Err(Attempt::retry(anyhow!(
                    "body shorter than Content-Length: got {received} of {len} bytes"
                )));
            }
            file.sync_data().map_err(|e| Attempt::fatal(e.into()))?;
            bar.done(t.elapsed(), received);
            Ok((hasher.finish(), final_url))
        })
    }

    /// Run `f` until it succeeds, a non-retryable error occurs, or retries run out.
    fn with_retries<T>(
        &self,
        url: &str,
        mut f: impl FnMut(u32) -> Result<T, Attempt>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match f(attempt) {
                Ok(v) => return Ok(v),
                Err(Attempt {
                    error,
                    retry: Retry::No,
                }) => return Err(error),
                Err(Attempt { error, retry }) => {
                    if attempt >= self.opts.retries {
                        return Err(
                            error.context(format!("giving up after {} attempts", attempt + 1))
                        );
                    }
                    let delay = match retry {
                        Retry::Now => Duration::ZERO,
                        Retry::After(d) => d.min(Duration::from_secs(60)),
                        _ => self.opts.backoff * 2u32.saturating_pow(attempt.min(6)),
                    };
                    self.progress.line(&format!(
                        "{url}: {error:#}; retrying in {:.1}s",
                        delay.as_secs_f64()
                    ));
                    std::thread::sleep(delay);
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_loopback() {
        assert_eq!(
            file_name(
                "https://github.com/a/releases/download/jdk-21.0.12%2B8/OpenJDK21U-jre_x64_linux_hotspot_21.0.12_8.tar.gz"
            ),
            "OpenJDK21U-jre_x64_linux_hotspot_21.0.12_8.tar.gz"
        );
        assert_eq!(
            file_name("https://x/cpython-3.13.12%2B20260203-x.tar.gz?y=1"),
            "cpython-3.13.12+20260203-x.tar.gz"
        );
        assert!(is_loopback("http://127.0.0.1:8080/x"));
        assert!(is_loopback("http://localhost/x"));
        assert!(is_loopback("http://[::1]:80/x"));
        assert!(!is_loopback("http://mirror.example/x"));
        assert!(!is_loopback("http://127.0.0.1.evil.example/x"));
        assert!(plain_http_allowed("https://x/y", false, false));
        assert!(plain_http_allowed("http://127.0.0.1:9/y", false, false));
        assert!(plain_http_allowed("http://mirror.example/y", true, false));
        assert!(plain_http_allowed("http://mirror.example/y", false, true));
        assert!(!plain_http_allowed("http://mirror.example/y", false, false));
    }

    #[test]
    fn sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
