"""Sans-IO protocol implementations: bytes in, reply chunks out.

What the server relies on, for every protocol object, is
``memd.protocol.wire.Connection``'s contract: ``receive(data)`` and
``resume()`` returning reply chunks, ``blocked``, ``closed``, ``fd`` (set by
the server) and ``held_bytes()``.  docs/design.md has the layers and the
connection life cycle.

``protocol_for`` picks one for a new connection from its first byte, as
memcached does: 0x80 is the binary protocol's request magic, anything else
is text (classic and meta commands share the text parser).
"""

from __future__ import annotations

BINARY_REQUEST_MAGIC = 0x80


def protocol_for(node, first_byte: int):
    if first_byte == BINARY_REQUEST_MAGIC:
        from .binary import BinaryProtocol
        return BinaryProtocol(node)
    from .meta import MetaCommands
    from .text import TextProtocol
    return TextProtocol(node, MetaCommands(node))
