"""Completion for the interactive shell: commands, stats groups, recent keys
(prompt_toolkit is imported only by the interactive shell)."""

from __future__ import annotations

from prompt_toolkit.completion import Completer, Completion

from .commands import key_positions, tokens_of
from .recent import RecentKeys

COMMANDS = {
    # memcached's text and meta commands
    "get": "get <key>*", "gets": "gets <key>*", "gat": "gat <exptime> <key>*",
    "gats": "gats <exptime> <key>*", "set": "set <key> <flags> <exptime> [<bytes>]",
    "add": "add <key> <flags> <exptime> [<bytes>]",
    "replace": "replace <key> <flags> <exptime> [<bytes>]",
    "append": "append <key> <flags> <exptime> [<bytes>]",
    "prepend": "prepend <key> <flags> <exptime> [<bytes>]",
    "cas": "cas <key> <flags> <exptime> [<bytes>] <cas>", "delete": "delete <key>",
    "incr": "incr <key> <delta>", "decr": "decr <key> <delta>", "touch": "touch <key> <exptime>",
    "mg": "mg <key> <flags>*", "ms": "ms <key> [<datalen>] <flags>*", "md": "md <key> <flags>*",
    "ma": "ma <key> <flags>*", "mn": "mn", "me": "me <key>", "stats": "stats [<group>]",
    "version": "version", "verbosity": "verbosity <level>", "flush_all": "flush_all [<delay>]",
    "cache_memlimit": "cache_memlimit <MiB>", "slabs": "slabs reassign|automove ...",
    "lru_crawler": "lru_crawler crawl|metadump|enable|disable ...", "watch": "watch [<type>]*",
    "config": "config get cluster", "shutdown": "shutdown [graceful]", "quit": "quit",
    # the shell's own
    "help": "help", "exit": "leave the shell", "nodes": "the fleet's members",
    "where": "where <key>: the node(s) that own a key", "top": "the live view",
}
STATS_GROUPS = ["settings", "items", "slabs", "sizes", "conns", "hotkeys", "reset", "detail",
                "cachedump"]
SUBCOMMANDS = {
    "stats": STATS_GROUPS,
    "slabs": ["reassign", "automove"],
    "lru_crawler": ["crawl", "metadump", "enable", "disable", "sleep", "tocrawl"],
    "watch": ["fetchers", "mutations", "evictions"],
    "config": ["get"],
    "shutdown": ["graceful"],
}


class ShellCompleter(Completer):
    def __init__(self, recent: RecentKeys) -> None:
        self.recent = recent

    def get_completions(self, document, complete_event):
        before = document.text_before_cursor
        words = before.split()
        if not words or (len(words) == 1 and not before.endswith(" ")):
            prefix = words[0] if words else ""
            for name, meta in COMMANDS.items():
                if name.startswith(prefix.lower()):
                    yield Completion(name, -len(prefix), display_meta=meta)
            return
        ending = "" if before.endswith(" ") else words[-1]
        position = len(words) if before.endswith(" ") else len(words) - 1
        cmd = words[0].lower()
        if position == 1 and cmd in SUBCOMMANDS:
            for sub in SUBCOMMANDS[cmd]:
                if sub.startswith(ending):
                    yield Completion(sub, -len(ending))
            return
        tokens = tokens_of((before + "x").encode()) if before.endswith(" ") else tokens_of(
            before.encode())
        if position in key_positions(tokens) or (cmd == "where" and position == 1):
            for key in self.recent:
                if key.startswith(ending) and key != ending:
                    yield Completion(key, -len(ending), display_meta="recent key")
