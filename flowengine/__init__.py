"""flowengine: a flow engine for file-processing pipelines."""


def version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("flowengine")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
