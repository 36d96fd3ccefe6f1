"""memd: a memcached-compatible cache node on trio."""

__version__ = "0.1.0"


def serve(*flags, **options):
    """Run a node in a background thread: ``with memd.serve() as node: ...``
    (see memd.testing)."""
    from .testing import serve as _serve
    return _serve(*flags, **options)
