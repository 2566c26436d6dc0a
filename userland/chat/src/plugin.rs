//! The voice plug-in `p2p-voice` as the chat sees it: its helper spec names and its control
//! protocol (one JSON object per frame of the local control channel, tagged by `"type"`; the
//! plug-in's crate documentation is the reference), and the status line made of its stats.

use serde::{Deserialize, Serialize};

/// The helper's name in the chat's helper specs.
pub(crate) const HELPER: &str = "voice";
/// The program in the node's plug-in directory.
pub(crate) const PROGRAM: &str = "p2p-voice";
/// The app id the plug-in acts as: `<app>:<helper>`.
pub(crate) const PLUGIN_APP_ID: &str = "chat:voice";
/// Largest report read from the plug-in.
pub(crate) const MAX_REPORT: usize = 64 * 1024;

/// What the chat asks its plug-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Open the voice channel to `peer`'s plug-in and stream.
    Call { peer: String },
    /// Take the voice channel `peer`'s plug-in opens, and stream back.
    Answer { peer: String },
    /// End the call.
    Hangup,
}

impl Command {
    /// The frame's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Strings only: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What the plug-in tells the chat.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Report {
    /// Counters, about once a second and once more at the end.
    Stats(Stats),
    /// The call is over; the plug-in exits.
    Ended { reason: String },
    /// Something went wrong, for people.
    Error { message: String },
}

impl Report {
    /// Reads one frame; `None` for anything else (too long, not JSON, an unknown type).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Report> {
        if bytes.len() > MAX_REPORT {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

/// Counters of one call, from the plug-in.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub(crate) struct Stats {
    #[serde(default)]
    pub(crate) sent: u64,
    #[serde(default)]
    pub(crate) received: u64,
    #[serde(default)]
    pub(crate) lost: u64,
    #[serde(default)]
    pub(crate) jitter_ms: f64,
    /// Where the received audio is recorded.
    #[serde(default)]
    pub(crate) wav: Option<String>,
}

impl Stats {
    /// The status line: `* voice: sent 250 frames, received 250 frames, lost 0, jitter 0.3 ms,
    /// recording <path>` (the path last, so it may hold any character).
    pub(crate) fn line(&self) -> String {
        let Stats {
            sent,
            received,
            lost,
            jitter_ms,
            wav,
        } = self;
        let mut line = format!(
            "* voice: sent {sent} frames, received {received} frames, lost {lost}, jitter {jitter_ms:.1} ms"
        );
        if let Some(wav) = wav {
            line.push_str(", recording ");
            line.push_str(wav);
        }
        line
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_json() {
        assert_eq!(
            Command::Call { peer: "B".into() }.encode(),
            br#"{"type":"call","peer":"B"}"#
        );
        assert_eq!(
            Command::Answer { peer: "A".into() }.encode(),
            br#"{"type":"answer","peer":"A"}"#
        );
        assert_eq!(Command::Hangup.encode(), br#"{"type":"hangup"}"#);
    }

    #[test]
    fn reports_are_read_and_junk_is_not() {
        let stats = Report::decode(
            br#"{"type":"stats","peer":"B","sent":3,"received":2,"lost":1,"jitter_ms":0.34,"wav":"/r/a b.wav","final":false,"new":1}"#,
        )
        .unwrap();
        let Report::Stats(stats) = stats else {
            panic!("{stats:?}")
        };
        assert_eq!(
            stats.line(),
            "* voice: sent 3 frames, received 2 frames, lost 1, jitter 0.3 ms, recording /r/a b.wav"
        );
        assert_eq!(
            Report::decode(br#"{"type":"ended","reason":"hung up"}"#),
            Some(Report::Ended {
                reason: "hung up".into()
            })
        );
        assert_eq!(
            Report::decode(br#"{"type":"error","message":"x"}"#),
            Some(Report::Error {
                message: "x".into()
            })
        );
        assert_eq!(Report::decode(br#"{"type":"song"}"#), None);
        assert_eq!(Report::decode(b"stats"), None);
    }

    #[test]
    fn stats_without_a_recording_say_so() {
        let stats = Stats {
            sent: 5,
            ..Stats::default()
        };
        assert_eq!(
            stats.line(),
            "* voice: sent 5 frames, received 0 frames, lost 0, jitter 0.0 ms"
        );
    }
}
