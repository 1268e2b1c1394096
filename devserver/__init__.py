"""kit-dev: a local model dev server for KitOps ModelKits."""

__version__ = "0.1.0"
