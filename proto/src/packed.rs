//! Frames packed into one `bytes` field (`ChannelInput.frames`, `ChannelOutput.frames` and
//! `ServiceChannelInput.frames`): for each frame a 4-byte big-endian length, then its bytes,
//! exactly the framing of channels on the wire, so a node passes a batch on without touching
//! each frame.
#![warn(clippy::all, missing_docs, unreachable_pub)]

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of a frame's length prefix.
pub const HEADER: usize = 4;

/// Why packed frames cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedError {
    /// A frame is longer than allowed.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end inside a frame (or inside its length).
    Truncated,
}

impl fmt::Display for PackedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackedError::TooLarge { len, max } => {
                write!(
                    f,
                    "a channel frame of {len} bytes exceeds the {max}-byte limit"
                )
            }
            PackedError::Truncated => write!(
                f,
                "packed frames end inside a frame (each is a 4-byte big-endian length, then that many bytes)"
            ),
        }
    }
}

impl std::error::Error for PackedError {}

/// Appends one frame to `batch`.
///
/// # Panics
/// If the frame is 4 GiB or longer (channel frames are at most 1 MiB).
pub fn push(batch: &mut BytesMut, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("a frame shorter than 4 GiB");
    batch.reserve(HEADER + frame.len());
    batch.put_u32(len);
    batch.extend_from_slice(frame);
}

/// The length of the frame whose header starts `buf`, if the header is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// Checks that `batch` is whole frames of at most `max` bytes each; returns how many.
pub fn check(batch: &[u8], max: usize) -> Result<usize, PackedError> {
    let mut count = 0;
    let mut rest = batch;
    while !rest.is_empty() {
        let len = frame_len(rest).ok_or(PackedError::Truncated)?;
        if len > max {
            return Err(PackedError::TooLarge { len, max });
        }
        rest = rest.get(HEADER + len..).ok_or(PackedError::Truncated)?;
        count += 1;
    }
    Ok(count)
}

/// Whole frames at the start of `buf`: `(bytes, needed)`, where `bytes` is the length of the
/// longest run of whole frames that stops once it reaches `limit` bytes, and `needed` how many
/// more bytes the next frame needs to be whole (0 when it is, or when `limit` was reached).
/// A frame over `max` bytes is an error once the whole frames before it have been taken.
pub fn whole_frames(buf: &[u8], limit: usize, max: usize) -> Result<(usize, usize), PackedError> {
    let mut at = 0;
    while at < limit {
        let Some(len) = frame_len(&buf[at..]) else {
            return Ok((at, HEADER - (buf.len() - at)));
        };
        if len > max {
            return if at > 0 {
                Ok((at, 0))
            } else {
                Err(PackedError::TooLarge { len, max })
            };
        }
        let end = at + HEADER + len;
        if end > buf.len() {
            return Ok((at, end - buf.len()));
        }
        at = end;
    }
    Ok((at, 0))
}

/// The frames of a batch, in order, each sharing the batch's memory.
#[derive(Debug, Clone, Default)]
pub struct Unpack {
    rest: Bytes,
}

impl Unpack {
    /// Reads `batch` (checked as it goes: a malformed batch yields an error, then ends).
    pub fn new(batch: Bytes) -> Unpack {
        Unpack { rest: batch }
    }
}

impl Iterator for Unpack {
    type Item = Result<Bytes, PackedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let frame = frame_len(&self.rest)
            .filter(|&len| len <= self.rest.len() - HEADER)
            .map(|len| self.rest.slice(HEADER..HEADER + len));
        match frame {
            Some(frame) => {
                self.rest = self.rest.slice(HEADER + frame.len()..);
                Some(Ok(frame))
            }
            None => {
                self.rest = Bytes::new();
                Some(Err(PackedError::Truncated))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packed(frames: &[&[u8]]) -> BytesMut {
        let mut batch = BytesMut::new();
        for frame in frames {
            push(&mut batch, frame);
        }
        batch
    }

    #[test]
    fn frames_come_back_whole_and_in_order() {
        let batch = packed(&[b"one", b"", b"three"]);
        assert_eq!(check(&batch, 8), Ok(3));
        let frames: Vec<Bytes> = Unpack::new(batch.freeze()).map(Result::unwrap).collect();
        assert_eq!(frames, [&b"one"[..], b"", b"three"]);
        assert_eq!(Unpack::new(Bytes::new()).count(), 0);
        assert_eq!(check(b"", 8), Ok(0));
    }

    #[test]
    fn malformed_batches_are_errors() {
        let batch = packed(&[b"one", b"three"]);
        for cut in [1, 4, 6, batch.len() - 1] {
            assert_eq!(
                check(&batch[..cut], 8),
                Err(PackedError::Truncated),
                "cut {cut}"
            );
        }
        assert_eq!(
            check(&batch, 4),
            Err(PackedError::TooLarge { len: 5, max: 4 })
        );
        let last = Unpack::new(batch.freeze().slice(..10)).last().unwrap();
        assert_eq!(last, Err(PackedError::Truncated));
    }

    #[test]
    fn whole_frames_stop_at_the_limit_and_say_what_is_missing() {
        let batch = packed(&[b"aa", b"bbbb", b"c"]);
        // 6 + 8 + 5 bytes.
        assert_eq!(whole_frames(&batch, 100, 8), Ok((19, 4)));
        assert_eq!(whole_frames(&batch, 6, 8), Ok((6, 0)));
        assert_eq!(whole_frames(&batch, 7, 8), Ok((14, 0)));
        assert_eq!(whole_frames(&batch[..10], 100, 8), Ok((6, 4)));
        assert_eq!(whole_frames(&batch[..2], 100, 8), Ok((0, 2)));
        assert_eq!(whole_frames(b"", 100, 8), Ok((0, 4)));
        // The frames before one that is too large come first, then the error.
        assert_eq!(whole_frames(&batch, 100, 3), Ok((6, 0)));
        assert_eq!(
            whole_frames(&batch[6..], 100, 3),
            Err(PackedError::TooLarge { len: 4, max: 3 })
        );
    }
}
