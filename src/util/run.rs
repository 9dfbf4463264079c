//! The one way imgbuild runs external tools: the command line is logged in a form that can be
//! pasted into a shell, stdin is null, and a failure names the command, its exit status and the
//! tail of its stderr.

use std::ffi::{OsStr, OsString};
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

/// Quote a word for a POSIX shell when it needs it.
/// The last `n` lines of a tool's stderr on one line (`a | b | c`), for an error message.
pub fn stderr_tail(err: &str, n: usize) -> String {
    let mut tail: Vec<&str> = err.lines().rev().take(n).collect();
    tail.reverse();
    tail.join(" | ")
}

pub fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_owned());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Cmd {
        self.args
            .extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }
    /// The command as a shell line.
    pub fn line(&self) -> String {
        let envs = self
            .envs
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), shell_quote(v)));
        let words = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(a));
        envs.chain(words).collect::<Vec<_>>().join(" ")
    }
    /// Run to completion and return what it did, whatever its exit status (for tools whose
    /// status or stderr needs reading: `debugfs` reports failed commands only on stderr).
    pub fn output(self) -> Result<std::process::Output> {
        self.output_with(Stdio::null())
    }

    /// `output`, with stdin from `stdin` (a file to feed the tool).
    pub fn output_with(self, stdin: Stdio) -> Result<std::process::Output> {
        let line = self.line();
        if std::env::var_os("IMGBUILD_VERBOSE").is_some() {
            eprintln!("+ {line}");
        }
        self.command()
            .stdin(stdin)
            .output()
            .map_err(|e| anyhow::anyhow!("running `{line}`: {e}"))
    }

    /// Replace imgbuild with the tool (`imgbuild ssh`): returns only if it could not start.
    pub fn exec(self) -> anyhow::Error {
        use std::os::unix::process::CommandExt;
        let line = self.line();
        let e = self.command().exec();
        anyhow::anyhow!("running `{line}`: {e}")
    }

    /// The program and its arguments, as QEMU's saved command line is kept to boot a VM again.
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    fn command(&self) -> Command {
        // A bare name is looked up as the tool check does (PATH, then the sbin directories).
        let program = match self.program.to_str() {
            Some(name) if !name.contains('/') => crate::util::tools::locate(name)
                .map(|p| p.into_os_string())
                .unwrap_or_else(|| self.program.clone()),
            _ => self.program.clone(),
        };
        let mut c = Command::new(program);
        c.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Start a long-lived child (QEMU, systemd-nspawn) with the given stdio. It is killed when
    /// imgbuild dies (PR_SET_PDEATHSIG), so a killed `up` leaves nothing running.
    pub fn spawn(self, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Result<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let line = self.line();
        if std::env::var_os("IMGBUILD_VERBOSE").is_some() {
            eprintln!("+ {line} &");
        }
        let mut c = self.command();
        c.stdin(stdin).stdout(stdout).stderr(stderr);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.spawn()
            .map_err(|e| anyhow::anyhow!("starting `{line}`: {e}"))
    }

    /// Run to completion; Ok(stdout) on success.
    pub fn run(self) -> Result<Vec<u8>> {
        let line = self.line();
        let out = self.output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!("`{line}` failed ({}):\n{}", out.status, tail.join("\n"));
        }
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_failure() {
        let c = Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]);
        assert_eq!(c.line(), "sh -c 'echo oops >&2; exit 3'");
        let e = c.run().unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("oops"), "{e}");
        assert_eq!(Cmd::new("echo").arg("hi").run().unwrap(), b"hi\n");
        let c = Cmd::new("sh").args(["-c", "echo $X"]).env("X", "a b");
        assert_eq!(c.line(), "X='a b' sh -c 'echo $X'");
        assert_eq!(c.run().unwrap(), b"a b\n");
    }
}
