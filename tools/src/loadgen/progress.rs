//! The live progress display: an `indicatif` bar of elapsed over total time with the
//! current rate, shown only for runs longer than [`MIN_DURATION`] when stderr is a
//! terminal (it would only clutter logs and test output otherwise).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Runs this short or shorter get no progress display.
pub const MIN_DURATION: Duration = Duration::from_secs(3);

/// A progress bar, or nothing.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    last: (u64, u64),
}

impl Progress {
    /// A bar for a run of `duration` if `wanted`, the run is longer than [`MIN_DURATION`]
    /// and stderr is a terminal; `what` labels the rate (`sent`, `received`).
    pub fn new(duration: Duration, wanted: bool, what: &'static str) -> Self {
        let show = wanted && duration > MIN_DURATION && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let bar = ProgressBar::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed_precise} / {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            what,
            last: (0, 0),
        }
    }

    /// Moves the bar to `elapsed_ns` and shows the rate since the previous update from
    /// the running byte count `total_bytes`.
    pub fn update(&mut self, elapsed_ns: u64, total_bytes: u64) {
        let Some(bar) = &self.bar else { return };
        let (t0, b0) = self.last;
        let dt = elapsed_ns.saturating_sub(t0);
        if dt == 0 {
            return;
        }
        let mbps = total_bytes.saturating_sub(b0) as f64 * 8.0 / dt as f64 * 1e3;
        self.last = (elapsed_ns, total_bytes);
        let total_s = bar.length().unwrap_or(0) as f64 / 1e3;
        bar.set_position(elapsed_ns / 1_000_000);
        bar.set_message(format!("{total_s:.0} s, {} {mbps:.2} Mbit/s", self.what));
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
