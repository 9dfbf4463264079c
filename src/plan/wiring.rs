//! How the services find each other, as values: ZooKeeper's ensemble members, Kafka's voters,
//! listeners and process roles. The renderers write them in each file's syntax; in the plan's
//! JSON (and so in the build key) each is shown as the text the service's configuration uses.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Serialize, Serializer};

/// A ZooKeeper ensemble member: `server.ID=IP:QUORUM:ELECTION` in zoo.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkServer {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub quorum_port: u16,
    pub election_port: u16,
}

impl ZkServer {
    /// The value of its `server.ID` line: `IP:QUORUM:ELECTION`.
    pub fn value(&self) -> String {
        format!("{}:{}:{}", self.ip, self.quorum_port, self.election_port)
    }
}

impl fmt::Display for ZkServer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "server.{}={}", self.id, self.value())
    }
}

/// A KRaft controller voter: `ID@IP:PORT` in `controller.quorum.voters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Voter {
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl fmt::Display for Voter {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}@{}:{}", self.id, self.ip, self.port)
    }
}

/// Kafka's listeners: clients on CLIENT, the brokers' replication on INTERNAL (firewalled
/// to the cluster's nodes), the KRaft quorum on CONTROLLER. Each is SSL with `security: tls`
/// (mTLS: every peer shows a certificate of the cluster's CA), PLAINTEXT with `plaintext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerName {
    Client,
    Internal,
    Controller,
}

/// A Kafka listener: `NAME://IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: ListenerName,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = match self.name {
            ListenerName::Client => "CLIENT",
            ListenerName::Internal => "INTERNAL",
            ListenerName::Controller => "CONTROLLER",
        };
        write!(f, "{name}://{}:{}", self.ip, self.port)
    }
}

/// A KRaft `process.roles` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessRole {
    Broker,
    Controller,
}

impl fmt::Display for ProcessRole {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            ProcessRole::Broker => "broker",
            ProcessRole::Controller => "controller",
        })
    }
}

/// `a,b,c` of the items' text.
pub fn comma<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Serialise a list as its comma-joined text (`serialize_with`).
pub fn as_comma<T: fmt::Display, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&comma(items))
}

/// Serialise an optional list as its comma-joined text, or null.
pub fn as_comma_opt<T: fmt::Display, S: Serializer>(
    items: &Option<Vec<T>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match items {
        Some(v) => s.serialize_str(&comma(v)),
        None => s.serialize_none(),
    }
}

/// Serialise a list as a list of the items' text.
pub fn as_texts<T: fmt::Display, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_is_written_as_its_service_spells_it() {
        let ip = Ipv4Addr::new(192, 168, 200, 151);
        let z = ZkServer {
            id: 1,
            ip,
            quorum_port: 2888,
            election_port: 3888,
        };
        assert_eq!(z.to_string(), "server.1=192.168.200.151:2888:3888");
        let v = [
            Voter {
                id: 1,
                ip,
                port: 9093,
            },
            Voter {
                id: 2,
                ip: Ipv4Addr::new(192, 168, 200, 152),
                port: 9093,
            },
        ];
        assert_eq!(comma(&v), "1@192.168.200.151:9093,2@192.168.200.152:9093");
        let l = Listener {
            name: ListenerName::Controller,
            ip,
            port: 9093,
        };
        assert_eq!(l.to_string(), "CONTROLLER://192.168.200.151:9093");
        assert_eq!(
            comma(&[ProcessRole::Broker, ProcessRole::Controller]),
            "broker,controller"
        );
    }
}
