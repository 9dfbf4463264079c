//! The stage timer: every stage prints one line, `name note (seconds)`, when it is done.

use std::time::Instant;

use anyhow::{Context, Result};

/// Log one stage line with its duration (stderr).
pub fn stage<T>(name: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
    let t = Instant::now();
    let (v, note) = f()?;
    eprintln!("{name:<8} {note} ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(v)
}

/// The stages of one node's build, each timed and printed as `[node] name note (secs)`, and
/// kept for the build report.
pub struct Stages {
    pub node: String,
    pub times: Vec<(String, f64)>,
}

impl Stages {
    pub fn new(node: &str) -> Stages {
        Stages {
            node: node.to_string(),
            times: Vec::new(),
        }
    }

    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
        let t = Instant::now();
        let (v, note) = f().with_context(|| format!("{}: stage {name}", self.node))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[{}] {name:<8} {note} ({secs:.1}s)", self.node);
        self.times.push((name.to_string(), secs));
        Ok(v)
    }
}
