//! Source map of a YAML document: where each key and value sits, so later stages can point into the file.
//!
//! serde gives us typed values but forgets positions; this walks the same text with yaml-rust2's
//! event parser and records, for every path (`nodes.node1.ip`, `components.kafka.urls[0]`), the
//! line and column of its key and its value. It also finds duplicate keys, which serde would
//! silently resolve for maps deserialized into `IndexMap`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::recipe::diag::Pos;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Option<Pos>,
    value: Pos,
    /// Columns between the value's position and its first character (1 for a quoted scalar).
    content_offset: usize,
}

/// A key that appears twice in one mapping.
#[derive(Debug, Clone)]
pub struct DuplicateKey {
    pub path: String,
    pub first: Pos,
    pub again: Pos,
}

#[derive(Debug, Default)]
pub struct SourceMap {
    entries: HashMap<String, Entry>,
    pub duplicates: Vec<DuplicateKey>,
    /// The first place where nesting went deeper than [`MAX_DEPTH`], if any.
    pub too_deep: Option<Pos>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        index: usize,
    },
    /// Inside a complex (non-scalar) mapping key, which recipes never use: skip it.
    Skip {
        depth: usize,
    },
}

/// Deeper than any recipe needs (about 6 levels), shallow enough to keep parsing linear.
pub const MAX_DEPTH: usize = 32;

/// Child path of a mapping key: `a.b`, or `b` at the root.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Child path of a sequence item: `a[3]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: line is 1-based, column 0-based.
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

impl SourceMap {
    /// Scan `text`. A syntax error stops the scan; what was seen until then is kept (serde will
    /// report the syntax error itself, with its own position).
    pub fn scan(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut started = false;
        loop {
            let (event, marker) = match parser.next_token() {
                Ok(t) => t,
                Err(e) => {
                    // yaml-rust2 stops at 255 nested flow collections.
                    if e.info().contains("recursion limit") {
                        map.too_deep.get_or_insert(pos(e.marker()));
                    }
                    break;
                }
            };
            let at = pos(&marker);
            match event {
                Event::StreamEnd | Event::DocumentEnd => break,
                Event::DocumentStart => {
                    if started {
                        break;
                    }
                    started = true;
                }
                Event::MappingEnd | Event::SequenceEnd => match stack.last_mut() {
                    Some(Frame::Skip { depth }) if *depth > 1 => *depth -= 1,
                    _ => {
                        stack.pop();
                    }
                },
                Event::Scalar(..)
                | Event::Alias(_)
                | Event::MappingStart(..)
                | Event::SequenceStart(..) => {
                    map.node(&mut stack, &event, at);
                }
                Event::Nothing | Event::StreamStart => {}
            }
        }
        map
    }

    fn node(&mut self, stack: &mut Vec<Frame>, event: &Event, at: Pos) {
        let opens = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        // Paths grow with depth, so recording a deeply nested (hostile) document would cost
        // depth² memory. No recipe nests this deep; serde rejects such input anyway.
        if opens && stack.len() >= MAX_DEPTH && !matches!(stack.last(), Some(Frame::Skip { .. })) {
            self.too_deep.get_or_insert(at);
            stack.push(Frame::Skip { depth: 0 });
        }
        let path = match stack.last_mut() {
            Some(Frame::Skip { depth }) => {
                if opens {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                // This node is a key.
                None => {
                    match event {
                        Event::Scalar(k, ..) => {
                            let full = join(path, k);
                            if let Some(first) = seen.get(k) {
                                self.duplicates.push(DuplicateKey {
                                    path: full.clone(),
                                    first: *first,
                                    again: at,
                                });
                            } else {
                                seen.insert(k.clone(), at);
                            }
                            self.entries
                                .entry(full)
                                .and_modify(|e| e.key = e.key.or(Some(at)))
                                .or_insert(Entry {
                                    key: Some(at),
                                    value: at,
                                    content_offset: 0,
                                });
                            *key = Some(k.clone());
                        }
                        _ => {
                            *key = Some("?".to_string());
                            if opens {
                                stack.push(Frame::Skip { depth: 1 });
                            }
                        }
                    }
                    return;
                }
                Some(k) => join(path, &k),
            },
            Some(Frame::Seq { path, index: i }) => {
                *i += 1;
                index(path, *i - 1)
            }
            None => String::new(),
        };
        let content_offset = match event {
            Event::Scalar(_, TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted, ..) => 1,
            _ => 0,
        };
        let entry = self.entries.entry(path.clone()).or_insert(Entry {
            key: None,
            value: at,
            content_offset,
        });
        entry.value = at;
        entry.content_offset = content_offset;
        match event {
            Event::MappingStart(..) => stack.push(Frame::Map {
                path,
                key: None,
                seen: HashMap::new(),
            }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { path, index: 0 }),
            _ => {}
        }
    }

    /// Position of the value at `path`, or of its nearest recorded ancestor.
    pub fn value(&self, path: &str) -> Pos {
        self.lookup(path, |e| e.value)
    }

    /// Position of the key at `path` (falls back to its value, then to the nearest ancestor).
    pub fn key(&self, path: &str) -> Pos {
        self.lookup(path, |e| e.key.unwrap_or(e.value))
    }

    /// Whether the recipe spells out `path` (as opposed to it taking a default).
    pub fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Position of the character `offset` characters into the scalar at `path`, when that scalar
    /// is on one line (plain or quoted); otherwise the value's start.
    pub fn within(&self, path: &str, offset: usize, text: &str) -> Pos {
        let Some(e) = self.entries.get(path) else {
            return self.value(path);
        };
        let start = Pos {
            line: e.value.line,
            col: e.value.col + e.content_offset,
        };
        let fits = text
            .lines()
            .nth(start.line - 1)
            .is_some_and(|l| l.chars().count() >= start.col + offset);
        if fits {
            Pos {
                line: start.line,
                col: start.col + offset,
            }
        } else {
            e.value
        }
    }

    fn lookup(&self, path: &str, get: impl Fn(&Entry) -> Pos) -> Pos {
        let mut p = path;
        loop {
            if p.is_empty() {
                return Pos::START;
            }
            if let Some(e) = self.entries.get(p) {
                return get(e);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                // The document itself: its first line.
                None => return Pos::START,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
a:
  b: 1
  list:
    - x
    - 'quoted {v}'
  nested: {k: v}
c: [1, 2]
";

    #[test]
    fn positions_of_keys_and_values() {
        let m = SourceMap::scan(DOC);
        assert_eq!(m.key("a.b"), Pos { line: 2, col: 3 });
        assert_eq!(m.value("a.b"), Pos { line: 2, col: 6 });
        assert_eq!(m.value("a.list[1]"), Pos { line: 5, col: 7 });
        assert_eq!(m.value("a.nested.k"), Pos { line: 6, col: 15 });
        assert_eq!(m.value("c[1]"), Pos { line: 7, col: 8 });
        assert!(m.has("a.list[0]") && !m.has("a.list[2]"));
    }

    #[test]
    fn within_quoted_scalar() {
        let m = SourceMap::scan(DOC);
        // `{v}` starts 7 characters into `quoted {v}`, after the opening quote.
        assert_eq!(m.within("a.list[1]", 7, DOC), Pos { line: 5, col: 15 });
    }

    #[test]
    fn missing_path_falls_back_to_ancestor() {
        let m = SourceMap::scan(DOC);
        assert_eq!(m.value("a.list[9]"), m.value("a.list"));
        assert_eq!(m.key("zzz"), Pos { line: 1, col: 1 });
    }

    #[test]
    fn duplicate_keys_found() {
        let m = SourceMap::scan("n:\n  x: 1\n  y: 2\n  x: 3\n");
        assert_eq!(m.duplicates.len(), 1);
        let d = &m.duplicates[0];
        assert_eq!(d.path, "n.x");
        assert_eq!((d.first.line, d.again.line), (2, 4));
    }

    #[test]
    fn deep_nesting_is_cut_off() {
        let text = format!("a: {}", "[".repeat(10_000));
        let m = SourceMap::scan(&text);
        assert!(m.entries.len() <= MAX_DEPTH + 1);
        assert!(m.too_deep.is_some());
        let staircase: String = (0..100)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        assert!(SourceMap::scan(&staircase).too_deep.is_some());
    }

    #[test]
    fn syntax_error_keeps_partial_map() {
        let m = SourceMap::scan("a: 1\nb: [\n");
        assert_eq!(m.value("a"), Pos { line: 1, col: 4 });
    }
}
