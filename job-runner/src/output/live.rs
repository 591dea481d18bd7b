//! The live side of a run on standard error: pods' output prefixed by pod
//! name (as `kubectl logs -f -l … --prefix`), event lines, and progress bars
//! (drawn only on a terminal).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::process::Sink;

/// The terminal side of a run.
pub struct Output {
    json: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    lock: Mutex<()>,
}

impl Output {
    /// `json`: pods' output goes to standard error, leaving standard output
    /// to the JSON document. `live`: show progress bars (only drawn when
    /// standard error is a terminal).
    pub fn new(json: bool, live: bool) -> Self {
        let multi = live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Output {
            json,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            lock: Mutex::new(()),
        }
    }

    fn write(&self, to_stderr: bool, text: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let print = || {
            if to_stderr {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        };
        match &self.multi {
            Some(m) => m.suspend(print),
            None => print(),
        }
    }

    /// An event line (standard error).
    pub fn event(&self, text: &str) {
        self.write(true, text);
    }

    /// Updates the live line of one Job (or queue).
    pub fn progress(&self, key: &str, done: u64, total: Option<u64>, message: String) {
        let Some(multi) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(key.to_string()).or_insert_with(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            let style = if total.is_some() {
                ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
            } else {
                ProgressStyle::with_template("{prefix:.bold} {spinner} {msg}")
            };
            if let Ok(style) = style {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(key.to_string());
            multi.add(bar)
        });
        if let Some(n) = total {
            bar.set_length(n);
        }
        bar.set_position(done);
        bar.set_message(message);
        bar.tick();
    }

    /// Removes every live line (before the summary).
    pub fn clear(&self) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in std::mem::take(&mut *bars) {
            bar.finish_and_clear();
        }
    }

    /// Prints the summary or the JSON document on standard output.
    pub fn result(&self, text: &str) {
        self.clear();
        self.write(false, text.trim_end());
    }
}

impl Sink for Output {
    fn line(&self, prefix: &str, text: &str) {
        self.write(self.json, &format!("[{prefix}] {text}"));
    }
}
