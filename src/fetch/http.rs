//! One download attempt over HTTP and what it needs: retry decisions, resumption from a
//! partial file under a lock, the file name of a URL, and when plain http is allowed.

use super::*;

pub(super) enum Retry {
    No,
    Backoff,
    Now,
    After(Duration),
}

pub(super) struct Attempt {
    pub(super) error: anyhow::Error,
    pub(super) retry: Retry,
}

impl Attempt {
    pub(super) fn retry(e: impl Into<anyhow::Error>) -> Self {
        Attempt {
            error: e.into(),
            retry: Retry::Backoff,
        }
    }
    pub(super) fn retry_now(e: anyhow::Error) -> Self {
        Attempt {
            error: e,
            retry: Retry::Now,
        }
    }
    pub(super) fn fatal(e: anyhow::Error) -> Self {
        Attempt {
            error: e,
            retry: Retry::No,
        }
    }
    /// 408, 429 and 5xx are worth retrying (honouring Retry-After); other statuses are final.
    pub(super) fn from_status(status: StatusCode, resp: &reqwest::blocking::Response) -> Self {
        let error = anyhow!("HTTP {status}");
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            let after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            Attempt {
                error,
                retry: after.map_or(Retry::Backoff, |s| Retry::After(Duration::from_secs(s))),
            }
        } else {
            Attempt::fatal(error)
        }
    }
}

pub(super) fn content_range_start(resp: &reqwest::blocking::Response) -> Option<u64> {
    // "bytes START-END/TOTAL"
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

/// The file name a URL ends in (what checksum files name), percent-decoded.
pub fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or(path);
    percent_decode(last)
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Open and lock the partial download at `path`, making sure the lock is on the file that is at
/// `path` now: a process that waited while another finished (and renamed the partial into the
/// cache) would otherwise hold a lock on the renamed file and none on the new partial.
pub(super) fn lock_partial(path: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        let held = f.metadata()?.ino();
        if std::fs::metadata(path).is_ok_and(|m| m.ino() == held) {
            return Ok(f);
        }
    }
}

/// Plain http is acceptable when something other than the same channel authenticates the content:
/// a digest pinned in the recipe or lock, or a signature from a pinned key. A loopback server
/// counts as local files (the test suite, a local mirror).
pub(super) fn plain_http_allowed(url: &str, digest_pinned: bool, signed: bool) -> bool {
    !url.starts_with("http://") || digest_pinned || signed || is_loopback(url)
}

pub(super) fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
