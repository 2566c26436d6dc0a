//! Signals between two chats, inside the chat's own channel. A frame that starts with a
//! newline is a signal: a typed line never contains one (stdin is split at newlines), so text
//! lines stay exactly as they were. The rest of the frame is a JSON object tagged by `"type"`.
//!
//! Call signals ([`Signal`]): `{"type":"call"}` (a call is coming: answer it with your
//! plug-in) and `{"type":"hangup"}`, optionally with `"reason"`. They go only over a live
//! channel, never by `Apps.Send`: a stored call would be stale by the time it arrives, so a
//! stored call signal is acknowledged and not shown.
//!
//! Line signals ([`LineSignal`], see `confirm`): `{"type":"hello","tag":T}` before a chat's
//! first line on a channel (its lines there are numbered from 1 under tag `T`),
//! `{"type":"got","upto":N}` (the first `N` lines came and were shown) and
//! `{"type":"resent","tag":T,"n":N,"text":...}` (line `N` of tag `T`, sent again, by a channel
//! or by `Apps.Send`, after the channel it was written on broke before it was confirmed).
//!
//! A signal that does not decode as either kind (say, from a newer chat) is ignored.

use serde::{Deserialize, Serialize};

/// What starts a signal frame.
const MARK: char = '\n';

/// A call signal between chats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Signal {
    /// The sender's plug-in is calling ours.
    Call,
    /// The sender ended the call (or could not take it).
    Hangup {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// What two chats tell each other about the lines of a channel (see `confirm`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum LineSignal {
    /// The sender's lines on this channel follow, numbered from 1 under `tag`.
    Hello { tag: String },
    /// The first `upto` lines on this channel came, and were shown.
    Got { upto: u64 },
    /// Line `n` of tag `tag`, sent again.
    Resent { tag: String, n: u64, text: String },
}

/// Whether a frame or message is a signal rather than a text line.
pub(crate) fn is_signal(text: &str) -> bool {
    text.starts_with(MARK)
}

/// The frame of a signal.
pub(crate) fn encode(signal: &Signal) -> String {
    // A tagged enum of strings: serializing cannot fail.
    let json = serde_json::to_string(signal).unwrap_or_default();
    format!("{MARK}{json}")
}

/// The signal in a frame, if it is one this chat knows.
pub(crate) fn decode(text: &str) -> Option<Signal> {
    serde_json::from_str(text.strip_prefix(MARK)?).ok()
}

/// The frame of a line signal.
pub(crate) fn encode_line(signal: &LineSignal) -> String {
    // A tagged enum of strings and numbers: serializing cannot fail.
    let json = serde_json::to_string(signal).unwrap_or_default();
    format!("{MARK}{json}")
}

/// The line signal in a frame, if it is one.
pub(crate) fn decode_line(text: &str) -> Option<LineSignal> {
    serde_json::from_str(text.strip_prefix(MARK)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_text_is_never_one() {
        assert_eq!(encode(&Signal::Call), "\n{\"type\":\"call\"}");
        assert_eq!(
            encode(&Signal::Hangup { reason: None }),
            "\n{\"type\":\"hangup\"}"
        );
        let busy = Signal::Hangup {
            reason: Some("busy".into()),
        };
        assert_eq!(decode(&encode(&busy)), Some(busy));
        assert!(is_signal(&encode(&Signal::Call)));
        assert!(!is_signal("{\"type\":\"call\"}"));
        assert!(!is_signal(""));
        assert_eq!(decode("{\"type\":\"call\"}"), None);
        assert_eq!(decode("\n{\"type\":\"video\"}"), None);
        assert_eq!(decode("\nnot json"), None);
    }

    #[test]
    fn line_signals_round_trip_and_are_no_call_signals() {
        let resent = LineSignal::Resent {
            tag: "ab12-1".into(),
            n: 3,
            text: "hi\tthere".into(),
        };
        assert_eq!(decode_line(&encode_line(&resent)), Some(resent.clone()));
        assert!(is_signal(&encode_line(&resent)));
        assert_eq!(decode(&encode_line(&resent)), None);
        assert_eq!(decode_line(&encode(&Signal::Call)), None);
        assert_eq!(
            encode_line(&LineSignal::Got { upto: 2 }),
            "\n{\"type\":\"got\",\"upto\":2}"
        );
    }
}
