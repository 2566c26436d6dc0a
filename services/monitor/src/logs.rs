//! The ring of the node's recent log lines: a `tracing_subscriber` layer that `p2posd` installs
//! beside its stderr formatter, keeping the last lines of level INFO and above whatever the
//! stderr filter says, and counting WARN and ERROR lines by target since the start.
//!
//! `Monitor.GetLogs` answers from it, and the doctor reads its counts ("recent errors in the
//! log"). Writing a line formats it outside any lock into a string of at most
//! [`MAX_LINE_BYTES`], then holds the ring's lock only to push it and drop the oldest lines
//! beyond [`LogRing`]'s bounds in lines and bytes; a reader holds the lock only to clone
//! reference-counted lines. Nothing slow ever happens under the lock.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::{self, Write as _},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    Layer,
    filter::{Filtered, LevelFilter, Targets},
    layer::Context,
};

/// Lines kept by default.
pub const DEFAULT_MAX_LINES: usize = 2000;
/// Bytes of text kept by default (the oldest lines go first beyond it).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// The longest line kept, in bytes of message and fields; a longer one is cut and ends with
/// `…`.
pub const MAX_LINE_BYTES: usize = 4096;
/// Targets counted one by one; WARN and ERROR lines of further targets are counted under
/// [`OTHER_TARGETS`].
pub const MAX_COUNTED_TARGETS: usize = 256;
/// The name under which lines of targets beyond [`MAX_COUNTED_TARGETS`] are counted.
pub const OTHER_TARGETS: &str = "(other targets)";
/// The least severe level the ring keeps.
pub const RING_LEVEL: LevelFilter = LevelFilter::INFO;

/// Bytes a line costs besides its text (time, level, sequence, bookkeeping).
const LINE_OVERHEAD: usize = 64;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its number since the node started (1, 2, ...): a gap says lines were dropped.
    pub seq: u64,
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// Its level.
    pub level: Level,
    /// Where it comes from (a module path, e.g. `p2pos_network::service`).
    pub target: String,
    /// The message, then the event's fields as ` name=value`.
    pub text: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.text.len() + self.target.len() + LINE_OVERHEAD
    }
}

/// WARN and ERROR lines of one target since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetCounts {
    /// The target (or [`OTHER_TARGETS`]).
    pub target: String,
    /// WARN lines.
    pub warnings: u64,
    /// ERROR lines.
    pub errors: u64,
}

/// The ring: a cheap, cloneable handle; every clone sees the same lines.
#[derive(Clone)]
pub struct LogRing {
    inner: Arc<Inner>,
}

struct Inner {
    max_lines: usize,
    max_bytes: usize,
    next_seq: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    /// `(warnings, errors)` by target.
    counts: BTreeMap<String, (u64, u64)>,
    other: (u64, u64),
}

impl Default for LogRing {
    /// A ring of [`DEFAULT_MAX_LINES`] lines and [`DEFAULT_MAX_BYTES`] bytes.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINES, DEFAULT_MAX_BYTES)
    }
}

impl fmt::Debug for LogRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogRing")
            .field("max_lines", &self.inner.max_lines)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they share one ring.
impl PartialEq for LogRing {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for LogRing {}

impl LogRing {
    /// A ring keeping at most `max_lines` lines and `max_bytes` bytes (at least one line).
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_lines: max_lines.max(1),
                max_bytes,
                next_seq: AtomicU64::new(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The layer that writes every event of level INFO and above to this ring, whatever other
    /// layers filter.
    pub fn layer<S>(&self) -> Filtered<RingLayer, Targets, S>
    where
        S: Subscriber,
    {
        // INFO and above, but libp2p's and sled's chatter only from WARN (kad's from ERROR), as
        // the daemon's default stderr filter has it: a host on the LAN announcing itself to
        // mDNS, say, must not push the node's own lines out of the ring.
        let targets = Targets::new()
            .with_default(RING_LEVEL)
            .with_target("libp2p", LevelFilter::WARN)
            .with_target("libp2p_kad", LevelFilter::ERROR)
            .with_target("sled", LevelFilter::WARN);
        RingLayer { ring: self.clone() }.with_filter(targets)
    }

    /// Keeps one line (its text cut to [`MAX_LINE_BYTES`]) and counts it if it is a warning
    /// or an error.
    pub fn push(&self, level: Level, target: &str, text: &str) {
        self.keep(level, target, one_line(text, MAX_LINE_BYTES));
    }

    fn keep(&self, level: Level, target: &str, text: String) {
        let owned_target = target.to_owned();
        let mut guard = self.lock();
        // Numbered and timed under the lock: lines are kept in the order of their numbers.
        let line = Arc::new(LogLine {
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            at_ms: now_ms(),
            level,
            target: owned_target,
            text,
        });
        let cost = line.cost();
        let state = &mut *guard;
        if level <= Level::WARN {
            if !state.counts.contains_key(target) && state.counts.len() < MAX_COUNTED_TARGETS {
                state.counts.insert(target.to_owned(), (0, 0));
            }
            let count = match state.counts.get_mut(target) {
                Some(count) => count,
                None => &mut state.other,
            };
            if level == Level::ERROR {
                count.1 += 1;
            } else {
                count.0 += 1;
            }
        }
        state.lines.push_back(line);
        state.bytes += cost;
        while state.lines.len() > self.inner.max_lines
            || (state.bytes > self.inner.max_bytes && state.lines.len() > 1)
        {
            if let Some(old) = state.lines.pop_front() {
                state.bytes -= old.cost();
            }
        }
    }

    /// The last `limit` lines kept of level `min_level` or more severe, oldest first.
    pub fn recent(&self, min_level: Level, limit: usize) -> Vec<Arc<LogLine>> {
        let state = self.lock();
        let mut out: Vec<Arc<LogLine>> = state
            .lines
            .iter()
            .rev()
            .filter(|line| line.level <= min_level)
            .take(limit)
            .cloned()
            .collect();
        drop(state);
        out.reverse();
        out
    }

    /// WARN and ERROR lines by target since the node started (not only those still kept),
    /// targets in name order, [`OTHER_TARGETS`] last if any.
    pub fn counts(&self) -> Vec<TargetCounts> {
        let state = self.lock();
        let mut out: Vec<TargetCounts> = state
            .counts
            .iter()
            .map(|(target, &(warnings, errors))| TargetCounts {
                target: target.clone(),
                warnings,
                errors,
            })
            .collect();
        if state.other != (0, 0) {
            out.push(TargetCounts {
                target: OTHER_TARGETS.to_owned(),
                warnings: state.other.0,
                errors: state.other.1,
            });
        }
        out
    }

    /// How many lines were written since the start (kept or since dropped).
    pub fn written(&self) -> u64 {
        self.inner.next_seq.load(Ordering::Relaxed) - 1
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left whole lines behind: the state stays usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `tracing_subscriber` layer of a [`LogRing`] (see [`LogRing::layer`]).
#[derive(Debug)]
pub struct RingLayer {
    ring: LogRing,
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let metadata = event.metadata();
        // Records of the `log` crate come through `tracing-log` with target "log" and their own
        // target in a field.
        let target = visitor
            .log_target
            .take()
            .unwrap_or_else(|| metadata.target().to_owned());
        self.ring
            .keep(*metadata.level(), &target, visitor.into_text());
    }
}

/// Writes an event's message, then its fields, into bounded strings.
struct LineVisitor {
    message: Capped,
    fields: Capped,
    log_target: Option<String>,
}

impl Default for LineVisitor {
    fn default() -> Self {
        Self {
            message: Capped::new(MAX_LINE_BYTES),
            fields: Capped::new(MAX_LINE_BYTES),
            log_target: None,
        }
    }
}

impl LineVisitor {
    fn into_text(self) -> String {
        let mut text = Capped::new(MAX_LINE_BYTES);
        let message = self.message.finish();
        let fields = self.fields.finish();
        let _ = text.write_str(&message);
        let _ = text.write_str(&fields);
        text.finish()
    }
}

impl tracing::field::Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => {
                let _ = self.message.write_str(value);
            }
            "log.target" => {
                let mut target = Capped::new(256);
                let _ = target.write_str(value);
                self.log_target = Some(target.finish());
            }
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// `text` with its control characters escaped, cut to `cap` bytes (ending with `…` when cut).
pub(crate) fn one_line(text: &str, cap: usize) -> String {
    let mut capped = Capped::new(cap);
    let _ = capped.write_str(text);
    capped.finish()
}

/// A string that takes at most `cap` bytes, cut on a character boundary, ending with `…` when
/// something was cut. Writing more never allocates beyond the cap.
struct Capped {
    buf: String,
    cap: usize,
    cut: bool,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Self {
            buf: String::new(),
            cap,
            cut: false,
        }
    }

    fn finish(mut self) -> String {
        if self.cut {
            // Room for the mark, within the cap.
            let mut end = self.cap.saturating_sub('…'.len_utf8()).min(self.buf.len());
            while !self.buf.is_char_boundary(end) {
                end -= 1;
            }
            self.buf.truncate(end);
            self.buf.push('…');
        }
        self.buf
    }
}

impl Capped {
    /// Adds `c`, unless it would pass the cap (then the text is cut).
    fn push(&mut self, c: char) -> fmt::Result {
        if self.buf.len() + c.len_utf8() > self.cap {
            self.cut = true;
            return Err(fmt::Error);
        }
        self.buf.push(c);
        Ok(())
    }
}

impl fmt::Write for Capped {
    /// Control characters are escaped (`\u{1b}`, `\n`): a line stays one line, and no
    /// terminal it is printed on takes its escape sequences.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.chars().any(char::is_control) {
            for c in s.chars() {
                match c.is_control() {
                    true => c.escape_default().try_for_each(|e| self.push(e))?,
                    false => self.push(c)?,
                }
            }
            return Ok(());
        }
        let room = self.cap - self.buf.len();
        if s.len() <= room {
            self.buf.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.buf.push_str(&s[..end]);
        self.cut = true;
        // Stops `write!` early: the rest would be dropped anyway.
        Err(fmt::Error)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};

    use super::*;

    #[test]
    fn keeps_the_last_lines_within_both_bounds() {
        let ring = LogRing::new(3, 10_000);
        for i in 0..5 {
            ring.push(Level::INFO, "t", &format!("line {i}"));
        }
        let texts: Vec<String> = ring
            .recent(Level::TRACE, 10)
            .iter()
            .map(|l| l.text.clone())
            .collect();
        assert_eq!(texts, ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.written(), 5);

        let ring = LogRing::new(100, 3 * (LINE_OVERHEAD + 1 + 100));
        for _ in 0..10 {
            ring.push(Level::INFO, "t", &"x".repeat(100));
        }
        assert_eq!(ring.recent(Level::TRACE, 100).len(), 3, "bounded in bytes");
        ring.push(Level::INFO, "t", &"y".repeat(100_000));
        let last = ring.recent(Level::TRACE, 1);
        assert_eq!(
            last.len(),
            1,
            "one line is kept even when it is alone too big"
        );
        assert!(last[0].text.len() <= MAX_LINE_BYTES && last[0].text.ends_with('…'));
    }

    #[test]
    fn filters_by_level_and_counts_warnings_by_target() {
        let ring = LogRing::default();
        ring.push(Level::INFO, "a", "started");
        ring.push(Level::WARN, "a", "careful");
        ring.push(Level::ERROR, "b", "broken");
        ring.push(Level::INFO, "b", "fine");
        let warn: Vec<_> = ring.recent(Level::WARN, 10);
        assert_eq!(
            warn.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["careful", "broken"]
        );
        assert_eq!(ring.recent(Level::ERROR, 10).len(), 1);
        assert_eq!(ring.recent(Level::INFO, 2)[1].text, "fine");
        assert_eq!(
            ring.counts(),
            [
                TargetCounts {
                    target: "a".into(),
                    warnings: 1,
                    errors: 0
                },
                TargetCounts {
                    target: "b".into(),
                    warnings: 0,
                    errors: 1
                }
            ]
        );
    }

    #[test]
    fn targets_beyond_the_bound_are_counted_together() {
        let ring = LogRing::new(10, 10_000);
        for i in 0..MAX_COUNTED_TARGETS + 5 {
            ring.push(Level::WARN, &format!("t{i}"), "w");
        }
        let counts = ring.counts();
        assert_eq!(counts.len(), MAX_COUNTED_TARGETS + 1);
        let other = counts.last().unwrap();
        assert_eq!((other.target.as_str(), other.warnings), (OTHER_TARGETS, 5));
    }

    #[test]
    fn control_characters_are_escaped_and_a_line_stays_one_line() {
        let ring = LogRing::new(10, 64 * 1024);
        ring.push(Level::WARN, "t", "\x1b]0;owned\x07red\nnext");
        let lines = ring.recent(Level::INFO, 10);
        assert_eq!(lines[0].text, "\\u{1b}]0;owned\\u{7}red\\nnext");
        let mut capped = Capped::new(8);
        let _ = capped.write_str("ab\x1bcdef");
        assert_eq!(
            capped.finish(),
            "ab\\u{…",
            "cut within the cap, escapes counted"
        );
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let mut capped = Capped::new(7);
        let _ = capped.write_str("ééééé");
        let text = capped.finish();
        assert!(text.len() <= 7, "{text}");
        assert_eq!(text, "éé…");
    }

    #[test]
    fn the_layer_keeps_info_and_above_with_fields_whatever_the_other_filters() {
        let ring = LogRing::default();
        let quiet = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(LevelFilter::ERROR);
        let _guard = tracing_subscriber::registry()
            .with(quiet)
            .with(ring.layer())
            .set_default();
        tracing::debug!("not kept");
        tracing::info!(peer = "p1", n = 3, "dialled");
        tracing::warn!(target: "custom", "look out");
        let lines = ring.recent(Level::TRACE, 10);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].text, "dialled peer=p1 n=3");
        assert_eq!(lines[0].level, Level::INFO);
        assert_eq!(lines[1].target, "custom");
        assert_eq!(ring.counts()[0].warnings, 1);
        assert!(lines[0].seq < lines[1].seq && lines[1].at_ms > 0);
    }
}
