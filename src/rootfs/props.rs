//! The one writer of key=value files (Kafka's server.properties, ZooKeeper's zoo.cfg): a header
//! comment, then the entries in the order given, escaped as `java.util.Properties` reads them.

use std::fmt::{Display, Write};

pub struct Properties {
    header: &'static str,
    entries: Vec<(String, String)>,
}

impl Properties {
    pub fn new(header: &'static str) -> Properties {
        Properties {
            header,
            entries: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Display) -> &mut Properties {
        self.entries.push((key.to_string(), value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let mut s = format!("# {}\n", self.header);
        for (k, v) in &self.entries {
            let _ = writeln!(s, "{}={}", escape(k, true), escape(v, false));
        }
        s
    }
}

/// Backslash escapes for what `Properties.load` would otherwise read differently: backslashes,
/// line breaks, tabs and form feeds; in keys also `=`, `:` and spaces (they end a key); a
/// leading space of a value (it would be dropped), and a leading `#` or `!` of a key (a comment).
fn escape(s: &str, key: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | ' ' if key => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 => out.push_str("\\ "),
            '#' | '!' if key && i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_in_order_and_escaped_as_java_reads_them() {
        let mut p = Properties::new("Written by a test.");
        p.set("server.1", "192.168.200.151:2888:3888")
            .set("a key", " lead\\and\nbreak")
            .set("#k", "x=y:z");
        assert_eq!(
            p.render(),
            "# Written by a test.\nserver.1=192.168.200.151:2888:3888\na\\ key=\\ lead\\\\and\\nbreak\n\\#k=x=y:z\n"
        );
    }
}
