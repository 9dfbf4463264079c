//! The node's OS files: sysctl and limits, the nftables ruleset, /etc/hosts, fstab.

use super::*;

/// The collector of every service JVM, as the Kafka docs recommend (Kafka's own scripts use it
/// already): stated, because the JVM picks the serial collector on a one-CPU machine.
pub const G1: &str = "-XX:+UseG1GC -XX:MaxGCPauseMillis=20";

/// The OS tuning of `plan.os`: kernel parameters in sysctl.d (applied by systemd-sysctl at
/// boot), each service unit's limits as a drop-in, and timesyncd's servers when the recipe
/// names some.
pub(super) fn tuning_files(p: &Plan) -> Vec<FileSpec> {
    let os = &p.os;
    let mut out = Vec::new();
    let mut sysctl =
        String::from("# Written by imgbuild from the recipe's os.sysctl over its defaults.\n");
    for (k, v) in &os.sysctl {
        let _ = writeln!(sysctl, "{k} = {v}");
    }
    out.push(file("etc/sysctl.d/60-imgbuild.conf", sysctl, 0o644));
    for unit in Unit::ALL.into_iter().filter(|u| *u != Unit::KafkaFormat) {
        out.push(file(
            &format!(
                "etc/systemd/system/{}.d/60-imgbuild-limits.conf",
                unit.file_name()
            ),
            format!(
                "# Written by imgbuild from the recipe's os.limits.\n[Service]\nLimitNOFILE={}\nLimitNPROC={}\n",
                os.limit_nofile, os.limit_nproc
            ),
            0o644,
        ));
    }
    if !os.ntp.is_empty() {
        out.push(file(
            "etc/systemd/timesyncd.conf.d/60-imgbuild.conf",
            format!(
                "# Written by imgbuild from the recipe's os.ntp.\n[Time]\nNTP={}\n",
                os.ntp.join(" ")
            ),
            0o644,
        ));
    }
    out
}

/// The node's nftables ruleset (loaded by imgbuild-firewall.service before the network is up):
/// input dropped unless established, loopback, ICMP, or one of the node's ports from the
/// sources its reach allows: cluster ports from the nodes, client ports from `firewall.clients`.
/// Replaces only its own table, so other rulesets on the node are left alone.
pub fn firewall_ruleset(p: &Plan) -> String {
    let fw = &p.firewall;
    let mut rules = String::new();
    for (port, what, reach) in crate::plan::firewall::open_ports(p) {
        let set = match reach {
            Reach::Cluster => "cluster",
            Reach::Clients => "clients",
            Reach::Metrics => "metrics",
        };
        let _ = writeln!(
            rules,
            "\t\tip saddr @{set} tcp dport {port} accept comment \"{what}\""
        );
    }
    let elements = |r: Reach| fw.sources(r).join(", ");
    // The metrics set only where a metrics port is open (metrics on, and an exporter here).
    let metrics = if p.ports.iter().any(|b| b.reach == Reach::Metrics) {
        format!(
            "\tset metrics {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
            elements(Reach::Metrics)
        )
    } else {
        String::new()
    };
    format!(
        "#!/usr/sbin/nft -f\n\
         # Written by imgbuild from the recipe's firewall and the node's ports (imgbuild plan).\n\
         table inet imgbuild\n\
         delete table inet imgbuild\n\
         table inet imgbuild {{\n\
         \tset cluster {{\n\t\ttype ipv4_addr\n\t\telements = {{ {} }}\n\t}}\n\
         \tset clients {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n\
         {metrics}\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiif \"lo\" accept\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         {rules}\
         \t}}\n\
         }}\n",
        elements(Reach::Cluster),
        elements(Reach::Clients),
    )
}

/// `/etc/hosts`: loopback for localhost only, every node under its real address.
pub fn hosts(p: &Plan) -> String {
    let mut s = String::from(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n\n# cluster nodes (imgbuild)\n",
    );
    for h in &p.hosts {
        let _ = writeln!(s, "{} {}", h.ip, h.names.join(" "));
    }
    s
}

/// /etc/fstab: the ESP only. The root is the slot the boot loader chose (root=UUID=… on the
/// kernel command line, each image's own UUID, mounted read-write by the initramfs); naming it
/// here would name one slot's filesystem in both.
pub fn fstab(p: &Plan) -> String {
    format!(
        "# Written by imgbuild: the disk image's filesystems, by UUID. The root is the slot the\n\
         # boot loader chose (root= on the kernel command line), so it is not listed.\n\
         UUID={} /boot/efi vfat umask=0077,nofail 0 2\n",
        crate::util::fmt::serial_text(p.disk_ids.esp_serial)
    )
}
