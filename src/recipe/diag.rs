//! Recipe diagnostics: where in the file a problem is, and how it is shown to the user.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest stretch of a source line shown under a diagnostic.
const SNIPPET_WIDTH: usize = 120;

/// A 1-based line and column in the recipe text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a recipe, pointing at a place in it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            pos,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(pos, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `error: FILE:LINE:COL: message`, the offending line with a caret, and a hint if any.
    pub fn render(&self, file: &Path, source: &str) -> String {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!(
            "{label}: {}:{}:{}: {}\n",
            file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        );
        if let Some(line) = source.lines().nth(self.pos.line.saturating_sub(1)) {
            let gutter = self.pos.line.to_string();
            let pad = " ".repeat(gutter.len());
            // Show at most a window of a long line around the column.
            let col = self.pos.col.saturating_sub(1);
            let skip = col.saturating_sub(SNIPPET_WIDTH / 2);
            let mut text: String = line.chars().skip(skip).take(SNIPPET_WIDTH).collect();
            if skip > 0 {
                text.insert(0, '…');
            }
            if line.chars().count() > skip + SNIPPET_WIDTH {
                text.push('…');
            }
            // The caret is placed by characters, not bytes; tabs are kept so it lines up.
            let lead: String = text
                .chars()
                .take(col - skip + usize::from(skip > 0))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{pad} |\n{gutter} | {text}\n{pad} | {lead}^\n"));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("\nhint: {hint}\n"));
        }
        out
    }
}

/// The recipe could not be used: every error found, with the text needed to show them.
/// Code matches on this type to choose exit code 2.
#[derive(Debug, thiserror::Error)]
pub struct RecipeError {
    pub file: PathBuf,
    pub source_text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<&Diagnostic> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        for (i, d) in errors.iter().enumerate() {
            let text = d.render(&self.file, &self.source_text);
            if i == 0 {
                // main prints "error: " in front of the whole chain.
                f.write_str(text.strip_prefix("error: ").unwrap_or(&text).trim_end())?;
            } else {
                write!(f, "\n\n{}", text.trim_end())?;
            }
        }
        if errors.len() > 1 {
            write!(f, "\n\n{} errors in {}", errors.len(), self.file.display())?;
        }
        Ok(())
    }
}

/// The command line asks for something that does not exist (a node, a recipe file): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", hint.as_ref().map(|h| format!("\n\nhint: {h}")).unwrap_or_default())]
pub struct UsageError {
    pub message: String,
    pub hint: Option<String>,
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_caret_at_column() {
        let d = Diagnostic::error(Pos { line: 2, col: 7 }, "bad ip").with_hint("fix it");
        let text = d.render(Path::new("r.yaml"), "a: 1\nip:   10.0.0.x\n");
        assert_eq!(
            text,
            "error: r.yaml:2:7: bad ip\n  |\n2 | ip:   10.0.0.x\n  |       ^\n\nhint: fix it\n"
        );
    }

    #[test]
    fn render_survives_position_past_end() {
        let d = Diagnostic::error(Pos { line: 9, col: 1 }, "eof");
        assert_eq!(
            d.render(Path::new("r.yaml"), "a: 1\n"),
            "error: r.yaml:9:1: eof\n"
        );
    }

    #[test]
    fn long_lines_are_windowed() {
        let line = format!("{}X{}", "a".repeat(500), "b".repeat(500));
        let d = Diagnostic::error(Pos { line: 1, col: 501 }, "here");
        let text = d.render(Path::new("r"), &line);
        let shown: Vec<&str> = text.lines().collect();
        assert!(shown[2].len() < 140 * 3, "{}", shown[2]);
        let caret = shown[3].find('^').unwrap();
        assert_eq!(shown[2].chars().nth(caret), Some('X'), "{text}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("ipp", ["ip", "id", "mac"]), Some("ip"));
        assert_eq!(
            did_you_mean("zookeper", ["zookeeper", "kafka"]),
            Some("zookeeper")
        );
        assert_eq!(did_you_mean("qqqq", ["ip", "id"]), None);
    }
}
