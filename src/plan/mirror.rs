//! URL rewriting for mirrors: `FROM=TO` prefix rules from the command line, the environment and the recipe.

use anyhow::{Result, bail};

/// Prefix rewrite rules; the longest matching prefix wins.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    rules: Vec<(String, String)>,
}

/// The environment variable holding mirror rules, separated by whitespace or commas.
pub const ENV: &str = "IMGBUILD_MIRRORS";

/// Parse one `FROM=TO` rule.
pub fn parse_rule(s: &str) -> Result<(String, String)> {
    let Some((from, to)) = s.split_once('=') else {
        bail!(
            "mirror rule `{s}` is not FROM=TO (for example https://downloads.apache.org/=https://mirror.example/apache/)"
        );
    };
    for part in [from, to] {
        if !(part.starts_with("http://") || part.starts_with("https://")) {
            bail!("mirror rule `{s}`: `{part}` is not an http(s) URL prefix");
        }
    }
    Ok((from.to_string(), to.to_string()))
}

impl Mirrors {
    /// Rules in priority order: command line, then `$IMGBUILD_MIRRORS`, then the recipe.
    pub fn new(cli: &[String], env: Option<&str>, recipe: &[(String, String)]) -> Result<Mirrors> {
        let mut rules = Vec::new();
        for s in cli {
            rules.push(parse_rule(s)?);
        }
        for s in env
            .unwrap_or("")
            .split([' ', ',', '\n', '\t'])
            .filter(|s| !s.is_empty())
        {
            rules.push(parse_rule(s).map_err(|e| anyhow::anyhow!("${ENV}: {e}"))?);
        }
        rules.extend(recipe.iter().cloned());
        Ok(Mirrors { rules })
    }

    pub fn rewrite(&self, url: &str) -> String {
        // Longest prefix; among equals, the earliest (highest-priority) rule.
        let mut best: Option<&(String, String)> = None;
        for r in &self.rules {
            if url.starts_with(&r.0) && best.is_none_or(|b| r.0.len() > b.0.len()) {
                best = Some(r);
            }
        }
        match best {
            Some((from, to)) => format!("{to}{}", &url[from.len()..]),
            None => url.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_priority() {
        let m = Mirrors::new(
            &["https://downloads.apache.org/=http://127.0.0.1:1/a/".into()],
            Some("https://=http://127.0.0.1:1/all/ https://downloads.apache.org/=http://ignored/"),
            &[],
        )
        .unwrap();
        assert_eq!(
            m.rewrite("https://downloads.apache.org/kafka/x.tgz"),
            "http://127.0.0.1:1/a/kafka/x.tgz"
        );
        assert_eq!(
            m.rewrite("https://github.com/x"),
            "http://127.0.0.1:1/all/github.com/x"
        );
        assert_eq!(m.rewrite("ftp://x"), "ftp://x");
    }

    #[test]
    fn bad_rules() {
        assert!(parse_rule("https://a").is_err());
        assert!(parse_rule("a=b").is_err());
    }
}
