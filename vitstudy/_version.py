"""The package version (the package and the result cache read it; pyproject.toml repeats it)."""

__version__ = "0.1.0"
