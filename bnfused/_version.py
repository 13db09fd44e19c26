"""The version of bnfused, read by the package and by its build (pyproject.toml)."""

__version__ = "0.2.0"
