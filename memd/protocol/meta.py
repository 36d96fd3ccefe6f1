"""memcached's meta commands (mg, ms, md, ma, me); mn is answered by the text parser.

Being written (issue 4): until then every meta command but mn answers ERROR,
which is what a memcached without meta support would say.
"""

from __future__ import annotations


class MetaCommands:
    def __init__(self, node) -> None:
        self.node = node

    def dispatch(self, proto, tokens) -> None:
        proto.out.append(b"ERROR\r\n")
