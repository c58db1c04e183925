"""signal-worker: trading signals from Kafka to simulated trades in PostgreSQL, exactly once."""

__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version (the source tree's when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("signal-worker")
    except metadata.PackageNotFoundError:
        return __version__
