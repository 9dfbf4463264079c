//! A Debian package's licenses as its machine-readable copyright file says them
//! (`/usr/share/doc/PKG/copyright` in the DEP-5 format), for the SBOM: the `License:` short names
//! of its `Files:` paragraphs as one SPDX expression, and its `Copyright:` lines. A copyright file
//! in free text (no `Format:` line naming the copyright format) says nothing machine-readable:
//! the SBOM then writes NOASSERTION, never a guess.

use std::collections::BTreeSet;

/// What a DEP-5 copyright file declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The `Files:` paragraphs' licenses as one SPDX expression (AND of the distinct ones).
    pub license: String,
    /// The `Copyright:` lines of the `Files:` paragraphs, distinct, in order.
    pub copyright: String,
    /// Each `LicenseRef-` the expression uses, with the text the file gives for it.
    pub refs: Vec<(String, String)>,
}

/// One paragraph: its fields in order, each value with its continuation lines.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                let l = line.trim();
                v.push('\n');
                v.push_str(if l == "." { "" } else { l });
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Short names that SPDX spells differently or the same (matched without case).
const NAMES: &[(&str, &str)] = &[
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-1.0", "Artistic-1.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsl-1.0", "BSL-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("expat", "MIT"),
    ("mit", "MIT"),
    ("isc", "ISC"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("psf-2", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("zlib", "Zlib"),
    ("x11", "X11"),
    ("ftl", "FTL"),
    ("wtfpl", "WTFPL"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
];

/// A LicenseRef id for a name: letters, digits and `.`, any run of other characters one `-`.
fn license_ref(name: &str) -> String {
    let mut clean = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            clean.push(c);
        } else if !clean.ends_with('-') {
            clean.push('-');
        }
    }
    format!("LicenseRef-{}", clean.trim_matches('-'))
}

/// One DEP-5 short name as an SPDX id: the GNU families by their pattern (`GPL-2+` is
/// `GPL-2.0-or-later`), the rest by the table; anything else a LicenseRef.
fn spdx_name(short: &str) -> (String, bool) {
    let lower = short.to_ascii_lowercase();
    for fam in ["agpl", "lgpl", "gpl", "gfdl"] {
        if let Some(rest) = lower.strip_prefix(fam).and_then(|r| r.strip_prefix('-')) {
            let (ver, plus) = match rest.strip_suffix('+') {
                Some(v) => (v, true),
                None => (rest, false),
            };
            let ok = match fam {
                "gpl" => ["1", "2", "3"].contains(&ver),
                "lgpl" => ["2", "2.1", "3"].contains(&ver),
                "agpl" => ver == "3",
                _ => ["1.1", "1.2", "1.3"].contains(&ver),
            };
            if ok {
                let ver = if ver.contains('.') {
                    ver.to_string()
                } else {
                    format!("{ver}.0")
                };
                let suffix = if plus { "or-later" } else { "only" };
                return (
                    format!("{}-{ver}-{suffix}", fam.to_ascii_uppercase()),
                    false,
                );
            }
        }
    }
    match NAMES.iter().find(|(d, _)| *d == lower) {
        Some((_, s)) => (s.to_string(), false),
        None => (license_ref(short), true),
    }
}

/// A `License:` line's expression in SPDX terms. DEP-5 joins short names with `or` and `and`
/// (`and` binding tighter, as in SPDX; `and/or` is an `or`) and groups with commas (`A or B, and
/// C` is `(A OR B) AND C`). An expression with an exception (`with`) becomes one LicenseRef
/// (DEP-5's exception names are free text), and so does any line that does not parse. The ids it
/// made that are LicenseRefs, with the short name they stand for.
fn expression(line: &str) -> (String, Vec<(String, String)>) {
    let line = line.trim();
    let whole = || {
        let r = license_ref(line);
        (r.clone(), vec![(r, line.to_string())])
    };
    if line
        .split_whitespace()
        .any(|w| w.eq_ignore_ascii_case("with"))
    {
        return whole();
    }
    let mut groups = Vec::new();
    let mut refs = Vec::new();
    for (n, part) in line.split(',').enumerate() {
        let mut words: Vec<&str> = part.split_whitespace().collect();
        // `, and C` / `, or C`: the comma's operator (only `and` is defined; `or` taken as said).
        let mut op = "AND";
        if n > 0
            && let Some(first) = words.first()
        {
            match first.to_ascii_lowercase().as_str() {
                "and" => {
                    words.remove(0);
                }
                "or" | "and/or" => {
                    op = "OR";
                    words.remove(0);
                }
                _ => {}
            }
        }
        let mut parts = Vec::new();
        for (k, w) in words.iter().enumerate() {
            let want_operand = k % 2 == 0;
            let lower = w.to_ascii_lowercase();
            let operator = match lower.as_str() {
                "or" | "and/or" => Some("OR"),
                "and" => Some("AND"),
                _ => None,
            };
            match (want_operand, operator) {
                (false, Some(o)) => parts.push(o.to_string()),
                (true, None) => {
                    let (id, is_ref) = spdx_name(w);
                    if is_ref {
                        refs.push((id.clone(), w.to_string()));
                    }
                    parts.push(id);
                }
                _ => return whole(),
            }
        }
        if parts.is_empty() || parts.len() % 2 == 0 {
            return whole();
        }
        let e = if parts.len() > 1 {
            format!("({})", parts.join(" "))
        } else {
            parts.join(" ")
        };
        if n > 0 {
            groups.push(op.to_string());
        }
        groups.push(e);
    }
    let e = groups.join(" ");
    (
        if groups.len() > 1 {
            format!("({e})")
        } else {
            e
        },
        refs,
    )
}

/// The licenses and copyright lines a DEP-5 copyright file declares (None: not DEP-5, or no
/// `Files:` paragraph with a license).
pub fn declared(text: &str) -> Option<Declared> {
    let paras = paragraphs(text);
    let header = paras.first()?;
    if !field(header, "format").is_some_and(|f| f.contains("copyright-format")) {
        return None;
    }
    let mut licenses = Vec::new();
    let mut copyright = Vec::new();
    let mut short_refs: Vec<(String, String)> = Vec::new();
    for p in paras.iter().skip(1) {
        if field(p, "files").is_none() {
            continue;
        }
        if let Some(l) = field(p, "license") {
            let first = l.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                continue;
            }
            let (e, refs) = expression(first);
            if !licenses.contains(&e) {
                licenses.push(e);
            }
            short_refs.extend(refs);
        }
        if let Some(c) = field(p, "copyright") {
            for l in c.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !copyright.iter().any(|x: &String| x == l) {
                    copyright.push(l.to_string());
                }
            }
        }
    }
    if licenses.is_empty() {
        return None;
    }
    // A LicenseRef's text: the file's stand-alone `License:` paragraph for that name, if any.
    let mut seen = BTreeSet::new();
    let refs = short_refs
        .into_iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .map(|(id, short)| {
            let text = paras
                .iter()
                .filter(|p| field(p, "files").is_none())
                .filter_map(|p| field(p, "license"))
                .find_map(|l| {
                    let (name, body) = l.split_once('\n').unwrap_or((l, ""));
                    (name.trim().eq_ignore_ascii_case(&short) && !body.trim().is_empty())
                        .then(|| body.trim().to_string())
                })
                .unwrap_or_else(|| {
                    format!("The license named \"{short}\" in the package's copyright file.")
                });
            (id, text)
        })
        .collect();
    Some(Declared {
        license: if licenses.len() == 1 {
            licenses[0]
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_string()
        } else {
            licenses.join(" AND ")
        },
        copyright: copyright.join("\n"),
        refs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of Debian's own bash and zlib copyright files (abridged).
    const DEP5: &str = r#"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: zlib

Files: *
Copyright: 1995-2022 Jean-loup Gailly and Mark Adler
License: Zlib

Files: contrib/*
Copyright: 1995-2022 Jean-loup Gailly and Mark Adler
  2003 Someone Else
License: GPL-2+ or Artistic

Files: debian/*
Copyright: 2000 Debian
License: public-domain

License: public-domain
 The author places this in the public domain.
 .
 No warranty.
"#;

    #[test]
    fn a_dep5_file_gives_an_spdx_expression_its_copyright_lines_and_license_refs() {
        let d = declared(DEP5).unwrap();
        assert_eq!(
            d.license,
            "Zlib AND (GPL-2.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-public-domain"
        );
        assert_eq!(
            d.copyright,
            "1995-2022 Jean-loup Gailly and Mark Adler\n2003 Someone Else\n2000 Debian"
        );
        assert_eq!(
            d.refs,
            vec![(
                "LicenseRef-public-domain".to_string(),
                "The author places this in the public domain.\n\nNo warranty.".to_string()
            )]
        );
    }

    #[test]
    fn free_text_copyright_files_and_odd_names_are_not_guessed() {
        assert_eq!(declared("This is the Debian package of foo.\nGPL.\n"), None);
        assert_eq!(spdx_name("LGPL-2.1").0, "LGPL-2.1-only");
        assert_eq!(spdx_name("GPL-3+").0, "GPL-3.0-or-later");
        assert_eq!(spdx_name("GPL-4"), ("LicenseRef-GPL-4".to_string(), true));
        assert_eq!(spdx_name("Expat").0, "MIT");
        let (e, refs) = expression("GPL-2+ with OpenSSL exception");
        assert_eq!(e, "LicenseRef-GPL-2-with-OpenSSL-exception");
        assert_eq!(refs.len(), 1);
        // Real lines of Debian's copyright files (tcl, bison, perl).
        assert_eq!(
            expression("GPL-2+ or AFL-2.1, and MIT").0,
            "((GPL-2.0-or-later OR LicenseRef-AFL-2.1) AND MIT)"
        );
        assert_eq!(
            expression("BSD-3-clause and/or GPL-3+").0,
            "(BSD-3-Clause OR GPL-3.0-or-later)"
        );
        assert_eq!(
            expression("REGCOMP, and GPL-1+ or Artistic").0,
            "(LicenseRef-REGCOMP AND (GPL-1.0-or-later OR Artistic-1.0-Perl))"
        );
        assert_eq!(expression("GPL-2+ or").0, "LicenseRef-GPL-2-or");
    }
}
