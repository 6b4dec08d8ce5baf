"""Salted password hashes: the meta db can check a db_pwd but never reveal one."""

from __future__ import annotations

import secrets

from werkzeug.security import check_password_hash, generate_password_hash

# PBKDF2-SHA256 with 4096 rounds and a random salt: the strength of the SCRAM verifier that
# PostgreSQL itself keeps for the same password, so a stolen meta db gives no easier guess than a
# stolen pg_authid would; at about 1 ms it stays off the create path's budget (scrypt took 95 ms).
# Hashes of other methods (the scrypt ones of earlier versions) are still checked as they are.
HASH_METHOD = "pbkdf2:sha256:4096"


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=HASH_METHOD)


def password_matches(password_hash: str, password: str) -> bool:
    return check_password_hash(password_hash, password)


def generate_password() -> str:
    # 32 URL-safe characters: 192 bits, and nothing that needs quoting in a URI or a shell.
    return secrets.token_urlsafe(24)
