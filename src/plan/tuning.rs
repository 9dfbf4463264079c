//! OS tuning as cp-ansible and the Kafka and ZooKeeper docs recommend: kernel parameters,
//! per-service limits and time sync, with the recipe's `os:` block over imgbuild's defaults.

use serde::Serialize;

use super::Ctx;
use crate::recipe::srcmap::{index, join};

/// Kernel parameters every node gets unless the recipe sets them otherwise:
/// - vm.swappiness 1: the page cache may go, the JVM heaps may not (swapping a broker or a
///   ZooKeeper server stalls it past its session timeout);
/// - vm.dirty_*: start writeback early and let the brokers' log segments build up in the page
///   cache before writers block (Kafka's "Understanding Linux OS Flush Behavior");
/// - vm.max_map_count: every Kafka log segment maps its index files; the default 65530 caps a
///   broker at a few ten thousand segments;
/// - net.core.somaxconn: accept backlog for the brokers' and ZooKeeper's client listeners.
pub const DEFAULT_SYSCTL: [(&str, &str); 5] = [
    ("vm.swappiness", "1"),
    ("vm.dirty_background_ratio", "5"),
    ("vm.dirty_ratio", "60"),
    ("vm.max_map_count", "262144"),
    ("net.core.somaxconn", "4096"),
];

/// File descriptors per service: a broker holds every segment and connection open.
pub const DEFAULT_NOFILE: u64 = 100_000;
/// Processes and threads per service user: a supervisor's workers and a broker's threads.
pub const DEFAULT_NPROC: u64 = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct OsPlan {
    /// (key, value) in the order written to /etc/sysctl.d: the defaults, then the recipe's own.
    pub sysctl: Vec<(String, String)>,
    pub limit_nofile: u64,
    pub limit_nproc: u64,
    /// systemd-timesyncd's servers; empty: the distribution's defaults.
    pub ntp: Vec<String>,
}

pub(super) fn resolve_os(cx: &mut Ctx) -> OsPlan {
    let os = &cx.loaded.recipe.os;
    let mut sysctl: Vec<(String, String)> = DEFAULT_SYSCTL
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut problems = Vec::new();
    for (key, value) in &os.sysctl {
        let path = join("os.sysctl", key);
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            && !key.starts_with(['.', '/'])
            && !key.contains("..");
        if !key_ok {
            problems.push((cx.key_at(&path), format!("`{key}` is not a sysctl key")));
            continue;
        }
        if value.trim().is_empty() || value.contains(['\n', '\r', '#', ';']) {
            problems.push((
                cx.at(&path),
                format!("{value:?} is not a value for sysctl {key}"),
            ));
            continue;
        }
        match sysctl.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.trim().to_string(),
            None => sysctl.push((key.clone(), value.trim().to_string())),
        }
    }
    for (pos, msg) in problems {
        cx.error(pos, msg);
    }
    let mut limit = |field: &str, asked: Option<u64>, default: u64| -> u64 {
        match asked {
            Some(n) if n < 1024 => {
                let path = join("os.limits", field);
                cx.error(
                    cx.at(&path),
                    format!("{field} {n} is too low for a JVM service (at least 1024)"),
                );
                default
            }
            Some(n) => n,
            None => default,
        }
    };
    let limit_nofile = limit("nofile", os.limits.nofile, DEFAULT_NOFILE);
    let limit_nproc = limit("nproc", os.limits.nproc, DEFAULT_NPROC);
    let ntp = os.ntp.clone();
    for (i, server) in ntp.iter().enumerate() {
        if server.parse::<std::net::IpAddr>().is_err() && !is_dns_name(server) {
            cx.error(
                cx.at(&index("os.ntp", i)),
                format!("NTP server `{server}` is neither an IP address nor a DNS name"),
            );
        }
    }
    OsPlan {
        sysctl,
        limit_nofile,
        limit_nproc,
        ntp,
    }
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits and inner hyphens.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
