//! Progress bars on long operations: shown when stderr is a terminal (or when forced, like
//! qemu-img's `-p`), hidden otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A progress bar over `total` units (bytes, or tables for `check`).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for an operation of `total` units; visible if `force` or stderr is a terminal.
    pub fn new(total: u64, force: bool) -> Progress {
        // indicatif hides itself when stderr is not a terminal; forced, it draws there anyway.
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else if force {
            ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template("    ({percent:>3}.00/100%) [{bar:40}] {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    /// A bar that never shows (for library callers and tests).
    pub fn hidden() -> Progress {
        Progress { bar: ProgressBar::hidden() }
    }

    /// The operation turns out to be `total` units long.
    pub fn set_length(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// `done` units are done.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// The operation is over; the bar is cleared.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
