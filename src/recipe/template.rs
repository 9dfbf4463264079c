//! `{name}` templates in recipe URLs: rendering and the errors that point at the bad variable.

use indexmap::IndexMap;

#[derive(Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// `{name}` where no variable `name` exists; `offset` is the character index of `{`.
    Unknown { name: String, offset: usize },
    /// A `{` with no matching `}`.
    Unclosed { offset: usize },
}

/// Substitute every `{name}` in `template` from `vars`.
pub fn render(template: &str, vars: &IndexMap<String, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    let mut char_pos = 0usize;
    while let Some((_, c)) = chars.next() {
        if c != '{' {
            out.push(c);
            char_pos += 1;
            continue;
        }
        let open = char_pos;
        let mut name = String::new();
        let mut closed = false;
        for (_, c) in chars.by_ref() {
            char_pos += 1;
            if c == '}' {
                closed = true;
                break;
            }
            name.push(c);
        }
        char_pos += 1;
        if !closed {
            return Err(TemplateError::Unclosed { offset: open });
        }
        match vars.get(&name) {
            Some(v) => out.push_str(v),
            None => return Err(TemplateError::Unknown { name, offset: open }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> IndexMap<String, String> {
        [("version", "3.9.5"), ("scala", "2.13")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_known_variables() {
        assert_eq!(
            render("https://x/kafka_{scala}-{version}.tgz", &vars()).unwrap(),
            "https://x/kafka_2.13-3.9.5.tgz"
        );
    }

    #[test]
    fn unknown_variable_reports_offset() {
        assert_eq!(
            render("ab{vesion}", &vars()),
            Err(TemplateError::Unknown {
                name: "vesion".into(),
                offset: 2
            })
        );
        assert_eq!(
            render("é{x}", &vars()).unwrap_err(),
            TemplateError::Unknown {
                name: "x".into(),
                offset: 1
            }
        );
    }

    #[test]
    fn unclosed_brace() {
        assert_eq!(
            render("a{version", &vars()),
            Err(TemplateError::Unclosed { offset: 1 })
        );
    }
}
