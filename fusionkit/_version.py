"""The package version: a leaf module (imports nothing), so any layer can name it."""
__version__ = "0.1.0"
