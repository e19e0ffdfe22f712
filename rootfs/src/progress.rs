//! Build progress: an indicatif bar on a terminal, log lines (tracing) otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports the steps of a build.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal, silent otherwise (steps are still logged).
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar()
        } else {
            Self::hidden()
        }
    }

    /// Always draws on stderr.
    pub fn bar() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Draws nothing.
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Announces how many steps follow.
    pub fn start(&self, steps: u64, what: &str) {
        self.bar.set_length(steps);
        self.bar.set_position(0);
        self.bar.set_message(what.to_string());
        tracing::info!("{what}");
    }

    /// Moves to the next step.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!("{message}");
        self.bar.inc(1);
        self.bar.set_message(message);
    }

    /// Clears the bar (the caller prints the result).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
