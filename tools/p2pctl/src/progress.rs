//! Progress on stderr while a call that can take seconds runs (a dial that looks the peer up
//! in the DHT, a look-up of providers, a forward's first check): an `indicatif` spinner with
//! what is being done and the time so far, shown only when stderr is a terminal, never with
//! `--json`, and only once the call has taken [`SHOW_AFTER`] (a quick call draws nothing).
//! It is cleared before anything is printed, so stdout and error lines stay clean. [`Live`]
//! is a line whose message changes as something goes on (a job's state).

use std::{borrow::Cow, future::Future, io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a call runs before its spinner appears.
pub(crate) const SHOW_AFTER: Duration = Duration::from_millis(250);
/// How often the spinner turns.
const TICK: Duration = Duration::from_millis(100);

/// Runs `work`, with a spinner saying `message` on stderr if it takes longer than
/// [`SHOW_AFTER`] and [`wanted`] says so.
pub(crate) async fn during<T>(
    message: impl Into<Cow<'static, str>>,
    json: bool,
    work: impl Future<Output = T>,
) -> T {
    if !wanted(json) {
        return work.await;
    }
    let mut work = std::pin::pin!(work);
    tokio::select! {
        out = &mut work => return out,
        () = tokio::time::sleep(SHOW_AFTER) => {}
    }
    let spinner = Spinner::start(message.into());
    let out = work.await;
    drop(spinner);
    out
}

/// A status line that follows something long (a job): a spinner with the latest message,
/// drawn only when [`wanted`] says so (otherwise it does nothing), cleared when dropped.
pub(crate) struct Live(Option<Spinner>);

impl Live {
    /// A status line, shown from the first [`Live::set`] if progress may be drawn.
    pub(crate) fn new(json: bool) -> Self {
        Self(wanted(json).then(|| Spinner::start(Cow::Borrowed(""))))
    }

    /// Shows `message` instead of the one before.
    pub(crate) fn set(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(spinner) = &self.0 {
            spinner.0.set_message(message);
        }
    }
}

/// Whether progress may be drawn: not with `--json`, only on a terminal that can redraw a
/// line (`TERM=dumb` cannot).
pub(crate) fn wanted(json: bool) -> bool {
    !json
        && std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// A spinner on stderr, cleared when dropped (also when the call fails or panics).
struct Spinner(ProgressBar);

impl Spinner {
    fn start(message: Cow<'static, str>) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_message(message);
        bar.enable_steady_tick(TICK);
        Self(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// What a dial of `target` does, for its spinner: a bare peer id is looked up in the DHT first.
pub(crate) fn dial_message(target: &str) -> String {
    let target = target.trim();
    if target.contains('/') || target.starts_with("p2pos") {
        format!("dialing {}", short(target))
    } else {
        format!("looking {} up in the DHT and dialing", short(target))
    }
}

/// `text` cut to 60 characters, with `…` when cut.
pub(crate) fn short(text: &str) -> Cow<'_, str> {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        Cow::Borrowed(text)
    } else {
        let mut cut: String = text.chars().take(MAX - 1).collect();
        cut.push('…');
        Cow::Owned(cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_whether_a_dial_looks_the_peer_up() {
        assert!(dial_message("12D3KooWabc").starts_with("looking 12D3KooWabc up in the DHT"));
        assert_eq!(
            dial_message("/ip4/1.2.3.4/tcp/1/p2p/12D3KooWabc"),
            "dialing /ip4/1.2.3.4/tcp/1/p2p/12D3KooWabc"
        );
        let long = format!("p2pos{}", "x".repeat(200));
        assert_eq!(dial_message(&long).chars().count(), "dialing ".len() + 60);
    }
}
