"""The version, in a module that imports nothing, so any side can read it cheaply."""

__version__ = "0.1.0"
