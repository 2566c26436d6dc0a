//! Audio frames on the voice channel: one channel data frame carries 20 ms of 48 kHz mono
//! 16-bit PCM with its sequence number and timestamps.
//!
//! Layout (all little-endian), [`FRAME_LEN`] = 1,944 bytes:
//!
//! | bytes     | field         | meaning                                                   |
//! |-----------|---------------|-----------------------------------------------------------|
//! | 0..8      | `seq`         | frame number, from 0, +1 per frame                        |
//! | 8..16     | `sample_index`| index of the first sample since the call began (RTP-like) |
//! | 16..24    | `sent_at_us`  | sender's wall clock, µs since the Unix epoch              |
//! | 24..1944  | samples       | [`FRAME_SAMPLES`] × `i16`                                 |

use std::fmt;

/// Samples per second.
pub(crate) const SAMPLE_RATE: u32 = 48_000;
/// Samples per frame: 20 ms at 48 kHz.
pub(crate) const FRAME_SAMPLES: usize = 960;
/// How long one frame plays.
pub(crate) const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);
/// Bytes before the samples.
const HEADER_LEN: usize = 24;
/// Bytes of one encoded frame.
pub(crate) const FRAME_LEN: usize = HEADER_LEN + 2 * FRAME_SAMPLES;

/// One 20 ms frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Frame number, from 0.
    pub(crate) seq: u64,
    /// Index of its first sample since the call began.
    pub(crate) sample_index: u64,
    /// Sender's wall clock when it was sent, µs since the Unix epoch.
    pub(crate) sent_at_us: u64,
    /// Exactly [`FRAME_SAMPLES`] samples.
    pub(crate) samples: Vec<i16>,
}

/// A data frame that is not an audio frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadFrame {
    /// Its length in bytes.
    pub(crate) len: usize,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an audio frame is {FRAME_LEN} bytes, this one {}",
            self.len
        )
    }
}

impl Frame {
    /// The frame's bytes. Samples beyond [`FRAME_SAMPLES`] are cut, missing ones are zeros.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_LEN);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sample_index.to_le_bytes());
        out.extend_from_slice(&self.sent_at_us.to_le_bytes());
        let samples = self
            .samples
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(FRAME_SAMPLES);
        for sample in samples {
            out.extend_from_slice(&sample.to_le_bytes());
        }
        out
    }

    /// Reads a frame; anything but exactly [`FRAME_LEN`] bytes is refused.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, BadFrame> {
        if bytes.len() != FRAME_LEN {
            return Err(BadFrame { len: bytes.len() });
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        let word = |at: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(le)
        };
        let samples = body
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        Ok(Frame {
            seq: word(0),
            sample_index: word(8),
            sent_at_us: word(16),
            samples,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            sample_index: seq * FRAME_SAMPLES as u64,
            sent_at_us: 1_700_000_000_000_000 + seq * 20_000,
            samples: (0..FRAME_SAMPLES)
                .map(|i| (i as i16).wrapping_mul(37).wrapping_sub(i16::MAX))
                .collect(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let original = frame(7);
        let bytes = original.encode();
        assert_eq!(bytes.len(), FRAME_LEN);
        assert_eq!(Frame::decode(&bytes).unwrap(), original);
    }

    #[test]
    fn layout_is_little_endian_header_then_samples() {
        let mut f = frame(0x0102);
        f.samples[0] = -2;
        let bytes = f.encode();
        assert_eq!(&bytes[0..8], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[8..16], &(0x0102u64 * 960).to_le_bytes());
        assert_eq!(&bytes[24..26], &[0xfe, 0xff]);
    }

    #[test]
    fn short_sample_lists_are_padded_with_silence() {
        let mut f = frame(1);
        f.samples = vec![5; 10];
        let decoded = Frame::decode(&f.encode()).unwrap();
        assert_eq!(decoded.samples.len(), FRAME_SAMPLES);
        assert_eq!(&decoded.samples[..10], &[5; 10]);
        assert!(decoded.samples[10..].iter().all(|s| *s == 0));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let bytes = frame(1).encode();
        assert_eq!(
            Frame::decode(&bytes[..FRAME_LEN - 1]),
            Err(BadFrame { len: FRAME_LEN - 1 })
        );
        assert!(Frame::decode(b"").is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(Frame::decode(&long).is_err());
    }
}
