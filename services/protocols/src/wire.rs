//! Framing shared by the node-to-node protocols (`proto/p2pos/wire/v1/wire.proto`) and the
//! gateway's channel splice: a 4-byte big-endian length, then the bytes.

use tokio_util::codec::LengthDelimitedCodec;

/// Protocol id of application channels.
pub const CHANNEL_PROTOCOL: &str = "/p2pos/channel/1";
/// Protocol id of store-and-forward messages.
pub const MESSAGE_PROTOCOL: &str = "/p2pos/msg/1";
/// Largest application payload: one channel frame or one message.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest handshake or acknowledgement frame.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024;
/// Largest data frame on a channel stream.
pub const MAX_CHANNEL_FRAME: usize = MAX_PAYLOAD + 64;
/// Largest message frame on a message stream.
pub const MAX_MESSAGE_FRAME: usize = MAX_PAYLOAD + 4 * 1024;

/// A codec for frames of at most `max` bytes.
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}
