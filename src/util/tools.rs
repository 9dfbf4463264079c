//! External tools imgbuild needs: checked before work starts, each with why and which package.

use anyhow::{Result, bail};

pub struct Tool {
    pub command: &'static str,
    pub why: &'static str,
    pub package: &'static str,
}

pub const MMDEBSTRAP: Tool = Tool {
    command: "mmdebstrap",
    why: "builds an apt-based base OS (base kind mmdebstrap)",
    package: "mmdebstrap",
};
pub const OPENSSL: Tool = Tool {
    command: "openssl",
    why: "makes the cluster's CA and node certificates (once, in the recipe's secrets directory)",
    package: "openssl",
};
pub const CP: Tool = Tool {
    command: "cp",
    why: "hard-link copies of the shared tree for each node",
    package: "coreutils",
};

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(cmd);
            std::fs::metadata(&f).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Fail naming every missing tool, what it is for and the Debian/Ubuntu package providing it.
pub fn require(tools: &[Tool]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !on_path(t.command))
        .map(|t| format!("  {:<12} {} (package: {})", t.command, t.why, t.package))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools:\n{}\n\nhint: apt-get install {}",
            missing.join("\n"),
            tools
                .iter()
                .filter(|t| !on_path(t.command))
                .map(|t| t.package)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_named_with_its_package() {
        let t = Tool {
            command: "imgbuild-no-such-tool",
            why: "testing",
            package: "nothing",
        };
        let e = require(&[t, CP]).unwrap_err().to_string();
        assert!(
            e.contains("imgbuild-no-such-tool")
                && e.contains("package: nothing")
                && !e.contains("coreutils"),
            "{e}"
        );
    }
}
