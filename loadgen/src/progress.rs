//! The progress bar (on stderr, hidden when stderr is not a terminal or
//! with `--quiet`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::Common;

/// A bar over `total_ms` milliseconds of load.
pub fn bar(common: &Common, total_ms: u64) -> ProgressBar {
    let bar = ProgressBar::new(total_ms);
    if common.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
