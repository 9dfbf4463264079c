//! Property test: no mutation of a real recipe makes the parser or resolver panic, and every
//! rejection names the file with a line and column.

use std::path::Path;

use proptest::prelude::*;

use imgbuild::{plan, recipe};

const SEEDS: [&str; 3] = [
    include_str!("../recipes/cluster.yaml"),
    include_str!("recipes/five-nodes.yaml"),
    include_str!("recipes/kafka-zookeeper-mode.yaml"),
];

/// Fragments that are meaningful to YAML or to the resolver, so mutations hit interesting paths.
const FRAGMENTS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "|",
    ">",
    "\n",
    "  ",
    "\t",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "99999999999999999999",
    "1e9",
    "é",
    "\u{1F600}",
    "{version}",
    "{url}",
    "{",
    "}",
    "192.168.200.151",
    "10.0.0.0/8",
    "node1",
    "plan",
    "zookeeper",
    "kafka",
    "storm-ui",
    "8080",
    "ip: ",
    "roles: []",
    "<<: *a",
    "\\",
    "\r\n",
    "\u{feff}",
    "\0",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, fragment: usize },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..FRAGMENTS.len())
            .prop_map(|(at, fragment)| Mutation::Insert { at, fragment }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let n = chars.len().max(1);
    match *m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(chars.len());
            chars.drain(at.min(end)..end);
            chars.into_iter().collect()
        }
        Mutation::Insert { at, fragment } => {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, FRAGMENTS[fragment].chars());
            chars.into_iter().collect()
        }
        Mutation::Truncate { at } => chars[..at % n.min(chars.len() + 1)].iter().collect(),
        Mutation::DuplicateLine { line } | Mutation::SwapLines { a: line, .. }
            if text.is_empty() =>
        {
            let _ = line;
            String::new()
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = line % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let len = lines.len();
            lines.swap(a % len, b % len);
            lines.join("\n")
        }
    }
}

/// Parse and resolve; on success every node's plan must serialize, on failure the message must
/// name `recipe.yaml:LINE:COL`.
fn check(text: String) -> Result<(), TestCaseError> {
    let path = Path::new("recipe.yaml");
    match recipe::parse(path, text)
        .map_err(anyhow::Error::from)
        .and_then(|l| Ok(plan::resolve(&l)?))
    {
        Ok(cluster) => {
            for p in &cluster.nodes {
                serde_json::to_string(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let _ = imgbuild::cmd::render_plan(p);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let rest = msg.strip_prefix("recipe.yaml:").unwrap_or("");
            let mut parts = rest.splitn(3, ':');
            let line_ok = parts
                .next()
                .is_some_and(|l| l.parse::<usize>().is_ok_and(|l| l >= 1));
            let col_ok = parts
                .next()
                .is_some_and(|c| c.parse::<usize>().is_ok_and(|c| c >= 1));
            prop_assert!(line_ok && col_ok, "error without file:line:col: {msg}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_recipes_never_panic(seed in 0..SEEDS.len(), muts in prop::collection::vec(mutation(), 1..5)) {
        let mut text = SEEDS[seed].to_string();
        for m in &muts {
            text = apply(&text, m);
        }
        check(text)?;
    }
}

#[test]
fn deeply_nested_input_does_not_overflow() {
    for open in ["[", "{", "- "] {
        check(format!("cluster: {}", open.repeat(100_000))).unwrap();
    }
    check(format!(
        "cluster:\n{}",
        (1..2000)
            .map(|i| format!("{}- a\n", " ".repeat(i)))
            .collect::<String>()
    ))
    .unwrap();
}
