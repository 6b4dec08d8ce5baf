"""Settings of the test project: a Django project as users write one, whose database is the one a
CI job got from Postgraas (``postgraas create ... --output env`` sets ``DATABASE_URL``).

``TEST_DATABASE_NAME``, when set, is the test database's name (Django's ``TEST["NAME"]``; else
Django's ``test_<name>``): the database itself, for a role that may not create databases, run with
``manage.py test --keepdb`` or ``pytest --reuse-db`` (docs/test-suites.md).
"""

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


def database_from_url(url: str) -> dict:
    """Django's settings of a ``postgresql://user:password@host:port/dbname?option=value`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Query parameters (sslmode=require, ...) are libpq's connection parameters.
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


if "DATABASE_URL" not in os.environ:
    raise ImproperlyConfigured("DATABASE_URL is not set (e.g. postgresql://user:password@host:5432/dbname)")

DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
DATABASES["default"]["TEST"] = (
    {"NAME": os.environ["TEST_DATABASE_NAME"]} if os.environ.get("TEST_DATABASE_NAME") else {}
)

SECRET_KEY = "only-for-tests"
DEBUG = False
INSTALLED_APPS = ["library"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
