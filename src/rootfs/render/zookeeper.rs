//! ZooKeeper's files: zoo.cfg (quorum and client TLS), its logging, and how a ZooKeeper client on
//! a node speaks TLS.

use super::*;

/// ZooKeeper's logging: INFO and above to the console (the journal), as upstream's
/// conf/logback.xml does by default (`zookeeper.console.threshold`).
pub(super) const ZOOKEEPER_LOGBACK: &str = r#"<!-- Written by imgbuild: ZooKeeper logs INFO and above to the journal. -->
<configuration>
  <property name="zookeeper.console.threshold" value="INFO" />
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n</pattern>
    </encoder>
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>${zookeeper.console.threshold}</level>
    </filter>
  </appender>
  <root level="INFO">
    <appender-ref ref="CONSOLE" />
  </root>
</configuration>
"#;

/// zoo.cfg: the same on every node but for the address the metrics endpoint binds (`ip`).
pub fn zoo_cfg(z: &ZookeeperPlan, tls: bool, ip: std::net::Ipv4Addr) -> String {
    let mut p = Properties::new("Written by imgbuild from the recipe.");
    p.set("tickTime", 2000)
        .set("initLimit", 10)
        .set("syncLimit", 5)
        .set("dataDir", "/var/lib/zookeeper");
    if tls {
        // Clients on TLS only (no plain clientPort), each showing a certificate of the cluster's
        // CA (ssl.clientAuth=need), which X509AuthenticationProvider makes its identity: Storm's
        // daemons and workers (their node's Storm certificate, `storm_zk_tls`), Kafka in
        // ZooKeeper mode, the health check and `up --check` (the node's). TLS on the client port
        // needs Netty (zookeeperAdmin.md, "secureClientPort"). Unknown zoo.cfg keys become
        // `zookeeper.`-prefixed system properties (QuorumPeerConfig), which is how these reach
        // ClientX509Util.
        p.set("secureClientPort", z.client_port)
            .set(
                "serverCnxnFactory",
                "org.apache.zookeeper.server.NettyServerCnxnFactory",
            )
            .set(
                "authProvider.x509",
                "org.apache.zookeeper.server.auth.X509AuthenticationProvider",
            )
            .set("ssl.clientAuth", "need")
            .set("ssl.keyStore.location", ZK_KEYSTORE)
            .set("ssl.keyStore.type", "PEM")
            .set("ssl.trustStore.location", CA_CERT)
            .set("ssl.trustStore.type", "PEM");
    } else {
        p.set("clientPort", z.client_port);
    }
    p.set("autopurge.snapRetainCount", 3)
        .set("autopurge.purgeInterval", 24)
        .set("4lw.commands.whitelist", "srvr,ruok,mntr,stat,conf,isro")
        .set("admin.serverPort", z.admin_port);
    if tls {
        // Quorum and leader election over TLS, each server proving itself with its node's
        // certificate (imgbuild's PKI).
        p.set("sslQuorum", true)
            .set("ssl.quorum.keyStore.location", ZK_KEYSTORE)
            .set("ssl.quorum.keyStore.type", "PEM")
            .set("ssl.quorum.trustStore.location", CA_CERT)
            .set("ssl.quorum.trustStore.type", "PEM");
    }
    if let Some(port) = z.metrics_port {
        // ZooKeeper's own Prometheus endpoint (zookeeperAdmin.md, "Metrics Providers"; the
        // provider and its Prometheus client jars are in the binary tarball's lib/), on the
        // node's address only; the firewall opens it to `metrics.clients`.
        p.set(
            "metricsProvider.className",
            "org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider",
        )
        .set("metricsProvider.httpHost", ip)
        .set("metricsProvider.httpPort", port)
        .set("metricsProvider.exportJvmInfo", true);
    }
    for srv in &z.servers {
        p.set(&format!("server.{}", srv.id), srv.value());
    }
    p.render()
}

/// The JVM options that make a ZooKeeper client (any: ZooKeeper's own `ZKClientConfig` reads
/// them from system properties when the program gives it no configuration, as Storm's Curator
/// does unless `storm.zookeeper.ssl.enable`) speak TLS with `keystore` as its identity.
/// `netty` is the client socket class: Storm shades ZooKeeper, so its is Storm's relocated one.
/// Why not Storm's own `storm.zookeeper.ssl.*`: Storm 2.8 refuses an empty keystore password
/// (CuratorUtils.validateSslConfiguration), and ZooKeeper's PEM loader takes any password to
/// mean an encrypted key: the key would have to be encrypted with a password written beside it.
pub fn zk_client_tls_opts(netty: &str, keystore: &str) -> String {
    format!(
        "-Dzookeeper.client.secure=true -Dzookeeper.clientCnxnSocket={netty} \
         -Dzookeeper.ssl.keyStore.location={keystore} -Dzookeeper.ssl.keyStore.type=PEM \
         -Dzookeeper.ssl.trustStore.location={CA_CERT} -Dzookeeper.ssl.trustStore.type=PEM"
    )
}

/// ZooKeeper's client socket with TLS support, in Storm's shaded copy of ZooKeeper.
pub const STORM_ZK_NETTY: &str =
    "org.apache.storm.shade.org.apache.zookeeper.ClientCnxnSocketNetty";

/// Which of the node's keystores a ZooKeeper client run as root on it (the health check,
/// `up --check`) shows: the node's own (ZooKeeper's or Kafka's copy), else its Storm one.
/// None without TLS.
pub fn zk_client_keystore(p: &Plan) -> Option<&'static str> {
    if !p.security.tls() {
        return None;
    }
    if p.roles.contains(&Role::Zookeeper) {
        Some(ZK_KEYSTORE)
    } else if p.roles.contains(&Role::Kafka) {
        Some(KAFKA_KEYSTORE)
    } else if p.storm.is_some() {
        Some(crate::layout::STORM_KEYSTORE)
    } else {
        None
    }
}
