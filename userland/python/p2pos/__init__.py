"""Python client of the P2P OS open spec: the generated gRPC stubs and a ``connect()`` helper.

# Layout

- ``p2pos.connect()``, ``p2pos.resolve()`` (``_connect.py``): find the local node like the Rust
  client does (``P2POS_GATEWAY``, ``P2POS_TOKEN``, ``P2POS_DATA_DIR``, then
  ``~/.local/share/p2pos``) and open a channel whose calls carry the token.
- ``p2pos.Channel``, ``p2pos.ChannelError`` (``channel.py``): a channel's frames (or a byte
  stream) over its data socket, the way apps should move their data.
- ``p2pos.pack_frames()``, ``p2pos.unpack_frames()`` (``frames.py``): several channel frames in
  one message (``ChannelInput.frames``) and back (``ChannelOutput.frames`` with ``batch``).
- ``p2pos.<package>.v1.<package>_pb2`` / ``..._pb2_grpc``: messages and stubs of each proto
  package (``p2pos.app.v1``, ``p2pos.service.v1``, ...), generated from ``proto/`` by
  ``generate.py`` (not committed).

    import p2pos
    from p2pos.node.v1 import node_pb2

    with p2pos.connect() as node:
        print(node.node.GetInfo(node_pb2.GetInfoRequest()).peer_id)
"""

from p2pos._connect import (
    DATA_DIR_ENV,
    GATEWAY_ENV,
    TOKEN_ENV,
    Connection,
    Target,
    TargetError,
    connect,
    default_data_dir,
    describe_error,
    parse_gateway,
    resolve,
)
from p2pos.channel import Channel, ChannelError
from p2pos.frames import pack_frames, unpack_frames

__all__ = [
    "Channel",
    "ChannelError",
    "DATA_DIR_ENV",
    "GATEWAY_ENV",
    "TOKEN_ENV",
    "Connection",
    "Target",
    "TargetError",
    "connect",
    "default_data_dir",
    "describe_error",
    "pack_frames",
    "parse_gateway",
    "resolve",
    "unpack_frames",
]
