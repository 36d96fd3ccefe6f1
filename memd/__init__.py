"""memd: a memcached-compatible cache node on trio."""

__version__ = "0.1.0"
