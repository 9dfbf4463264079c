//! The cluster network (CIDR, gateway, DNS) and the checks of addresses and host names.

use super::*;

pub(super) fn resolve_network(cx: &mut Ctx) -> Option<NetworkPlan> {
    let net = &cx.loaded.recipe.network;
    let Some((addr, prefix_len)) = parse_cidr(&net.cidr) else {
        let d = cx.error(
            cx.at("network.cidr"),
            format!("`{}` is not an IPv4 network in CIDR form", net.cidr),
        );
        Ctx::hint(d, "write it like 192.168.200.0/24");
        return None;
    };
    let mask = prefix_mask(prefix_len);
    if u32::from(addr) & !mask != 0 {
        let d = cx.error(
            cx.at("network.cidr"),
            format!("`{}` has host bits set", net.cidr),
        );
        Ctx::hint(
            d,
            format!(
                "did you mean {}/{prefix_len}?",
                Ipv4Addr::from(u32::from(addr) & mask)
            ),
        );
    }
    let gateway = match net.gateway.parse::<Ipv4Addr>() {
        Ok(g) => {
            if !in_network(g, addr, prefix_len) {
                cx.error(
                    cx.at("network.gateway"),
                    format!("gateway {g} is outside the network {}", net.cidr),
                );
            }
            g
        }
        Err(_) => {
            cx.error(
                cx.at("network.gateway"),
                format!("`{}` is not an IPv4 address", net.gateway),
            );
            Ipv4Addr::UNSPECIFIED
        }
    };
    let mut dns = Vec::new();
    for (i, s) in net.dns.iter().enumerate() {
        match s.parse::<Ipv4Addr>() {
            Ok(a) => dns.push(a),
            Err(_) => {
                cx.error(
                    cx.at(&index("network.dns", i)),
                    format!("`{s}` is not an IPv4 address"),
                );
            }
        }
    }
    Some(NetworkPlan {
        cidr: format!("{}/{prefix_len}", Ipv4Addr::from(u32::from(addr) & mask)),
        prefix_len,
        gateway,
        dns,
        domain: cx.loaded.recipe.cluster.domain.clone(),
    })
}

pub(super) fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some(())?;
    Some((a.parse().ok()?, p))
}

pub(super) fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

pub(super) fn in_network(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let m = prefix_mask(prefix);
    u32::from(ip) & m == u32::from(net) & m
}

/// Why `s` is not a valid hostname label (RFC 1123, lower case), if it is not.
pub(super) fn hostname_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > 63 {
        return Some("it is longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lower-case letters, digits and `-` are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("it may not start or end with `-`");
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Some("it may not be all digits");
    }
    None
}

pub(super) fn check_hostname_like(cx: &mut Ctx, path: &str, value: &str, what: &str) {
    if let Some(why) = hostname_problem(value) {
        cx.error(
            cx.at(path),
            format!("{what} `{value}` is not a valid hostname: {why}"),
        );
    }
}
