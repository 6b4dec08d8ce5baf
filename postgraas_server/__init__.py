"""Postgraas: PostgreSQL databases on demand, over REST."""

__version__ = "3.0.0.dev0"
