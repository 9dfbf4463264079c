//! Progress on a terminal: a bar per download with bytes, rate and ETA (nothing when stderr is
//! not a terminal).

use super::*;

/// Progress: indicatif bars on a terminal, plain lines otherwise (CI logs).
pub(super) struct Progress {
    pub(super) multi: Option<indicatif::MultiProgress>,
}

pub(super) struct Bar {
    pub(super) bar: Option<indicatif::ProgressBar>,
    pub(super) label: String,
    pub(super) plain: bool,
}

impl Progress {
    pub(super) fn new() -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("IMGBUILD_PLAIN").is_none();
        Progress {
            multi: tty.then(indicatif::MultiProgress::new),
        }
    }
    pub(super) fn line(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }
    pub(super) fn bar(&self, label: &str, total: Option<u64>, pos: u64) -> Bar {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(total.map_or_else(
                indicatif::ProgressBar::no_length,
                indicatif::ProgressBar::new,
            ));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:24} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(label.to_string());
            b.set_position(pos);
            b
        });
        if bar.is_none() {
            self.line(&format!(
                "{label}: downloading{}",
                total.map(|t| format!(" {}", human(t))).unwrap_or_default()
            ));
        }
        Bar {
            plain: bar.is_none(),
            bar,
            label: label.to_string(),
        }
    }
    pub(super) fn finish(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

impl Bar {
    pub(super) fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }
    pub(super) fn abandon(&self) {
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }
    pub(super) fn done(&self, took: Duration, bytes: u64) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.plain {
            let secs = took.as_secs_f64().max(1e-6);
            eprintln!(
                "{}: {} in {:.1}s ({}/s)",
                self.label,
                human(bytes),
                secs,
                human((bytes as f64 / secs) as u64)
            );
        }
    }
}
