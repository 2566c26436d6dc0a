//! The control protocol between the app (the chat) and its plug-in: one JSON object per frame
//! of the local control channel, tagged by `"type"`. Unknown fields are ignored, so either side
//! may add some. See the crate documentation for the whole exchange.

use serde::{Deserialize, Serialize};

/// Largest control frame read: 64 KiB.
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// What the app asks (app → plug-in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Open the voice channel to `peer`'s plug-in and stream.
    Call {
        /// The peer id.
        peer: String,
    },
    /// Take the voice channel that `peer`'s plug-in opens, and stream back.
    Answer {
        /// The peer id.
        peer: String,
    },
    /// End the call.
    Hangup,
}

impl Command {
    /// Reads one control frame.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Command, String> {
        if bytes.len() > MAX_CONTROL_FRAME {
            return Err(format!(
                "control frame of {} bytes (at most {MAX_CONTROL_FRAME})",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|err| format!("bad control frame: {err}"))
    }
}

/// What the plug-in tells (plug-in → app).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Report {
    /// Counters of the call, about once a second and once more at the end (`final`).
    Stats(Stats),
    /// The call is over; the plug-in exits.
    Ended {
        /// Why, for people: "hung up", "the peer hung up", ...
        reason: String,
    },
    /// Something went wrong, for people; `ended` follows if the call cannot go on.
    Error {
        /// One line.
        message: String,
    },
}

impl Report {
    /// The frame's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // A derived Serialize of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Counters of one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stats {
    /// The other peer.
    pub(crate) peer: String,
    /// Audio frames handed to the voice channel.
    pub(crate) sent: u64,
    /// Audio frames received (and recorded).
    pub(crate) received: u64,
    /// Frames missing from the received sequence.
    pub(crate) lost: u64,
    /// RFC 3550 interarrival jitter, ms.
    pub(crate) jitter_ms: f64,
    /// Where the received audio is recorded, once the voice channel is open.
    pub(crate) wav: Option<String>,
    /// The last stats of the call.
    #[serde(rename = "final")]
    pub(crate) last: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_json() {
        assert_eq!(
            Command::decode(br#"{"type":"call","peer":"12D3KooWB"}"#).unwrap(),
            Command::Call {
                peer: "12D3KooWB".into()
            }
        );
        assert_eq!(
            Command::decode(br#"{"type":"answer","peer":"X","extra":1}"#).unwrap(),
            Command::Answer { peer: "X".into() }
        );
        assert_eq!(
            Command::decode(br#"{"type":"hangup"}"#).unwrap(),
            Command::Hangup
        );
        assert!(Command::decode(br#"{"type":"dance"}"#).is_err());
        assert!(Command::decode(b"call").is_err());
        assert!(Command::decode(&vec![b' '; MAX_CONTROL_FRAME + 1]).is_err());
    }

    #[test]
    fn reports_are_tagged_json() {
        let stats = Report::Stats(Stats {
            peer: "P".into(),
            sent: 3,
            received: 2,
            lost: 1,
            jitter_ms: 0.25,
            wav: Some("/tmp/x.wav".into()),
            last: true,
        });
        let json: serde_json::Value = serde_json::from_slice(&stats.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "stats", "peer": "P", "sent": 3, "received": 2, "lost": 1,
                "jitter_ms": 0.25, "wav": "/tmp/x.wav", "final": true
            })
        );
        let ended = Report::Ended {
            reason: "hung up".into(),
        };
        assert_eq!(ended.encode(), br#"{"type":"ended","reason":"hung up"}"#);
        let error = Report::Error {
            message: "oops".into(),
        };
        assert_eq!(error.encode(), br#"{"type":"error","message":"oops"}"#);
    }
}
