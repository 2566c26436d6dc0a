"""Channel frames packed into one ``bytes`` field (``ChannelInput.frames``,
``ChannelOutput.frames``): for each frame a 4-byte big-endian length, then its bytes.

    from p2pos.app.v1 import app_pb2
    from p2pos.frames import pack_frames, unpack_frames

    app_pb2.ChannelInput(frames=pack_frames([b"one", b"two"]))   # one message, two frames
    unpack_frames(output.frames)                                   # -> [b"...", ...]
"""

import struct

HEADER = struct.Struct(">I")
# Largest channel frame the node accepts.
MAX_FRAME = 1024 * 1024


def pack_frames(frames):
    """Packs an iterable of ``bytes`` into one batch."""
    out = bytearray()
    for frame in frames:
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a channel frame of {len(frame)} bytes exceeds the {MAX_FRAME}-byte limit")
        out += HEADER.pack(len(frame))
        out += frame
    return bytes(out)


def unpack_frames(packed):
    """The frames of a batch, in order; ``ValueError`` if it ends inside a frame."""
    frames = []
    view = memoryview(packed)
    at = 0
    while at < len(view):
        if len(view) - at < HEADER.size:
            raise ValueError("packed frames end inside a frame's length")
        (length,) = HEADER.unpack_from(view, at)
        at += HEADER.size
        if len(view) - at < length:
            raise ValueError("packed frames end inside a frame")
        frames.append(bytes(view[at : at + length]))
        at += length
    return frames
