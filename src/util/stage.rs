//! The stage timer: every stage prints one line, `name note (seconds)`, when it is done; on a
//! terminal a spinner with the stage's name and elapsed time runs meanwhile (never in a log:
//! with stderr not a terminal, only the lines).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Log one stage line with its duration (stderr).
pub fn stage<T>(name: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
    let t = Instant::now();
    let spin = spinner(name);
    let r = f();
    if let Some(s) = spin {
        s.finish_and_clear();
    }
    let (v, note) = r?;
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
        let spin = spinner(&format!("[{}] {name}", self.node));
        let r = f();
        if let Some(s) = spin {
            s.finish_and_clear();
        }
        let (v, note) = r.with_context(|| format!("{}: stage {name}", self.node))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[{}] {name:<8} {note} ({secs:.1}s)", self.node);
        self.times.push((name.to_string(), secs));
        Ok(v)
    }
}

/// A spinner `label … 12s` on stderr when it is a terminal.
fn spinner(label: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let s = indicatif::ProgressBar::new_spinner().with_message(label.to_string());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        s.set_style(style);
    }
    s.enable_steady_tick(Duration::from_millis(200));
    Some(s)
}
