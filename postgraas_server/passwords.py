"""Salted password hashes: the meta db can check a db_pwd but never reveal one.

A create needs two salted derivations of its password: the meta db's hash, to check a db_pwd
later, and the SCRAM-SHA-256 verifier the database server keeps. Both come from one PBKDF2 run
(the costly part, with the verifier's salt and iterations): the verifier's keys are HMACs of its
output under "Client Key" and "Server Key", the meta db's hash one under a label of its own,
so none of them gives away another, and a stolen meta db gives no easier guess than a stolen
pg_authid would. Hashes of earlier versions (werkzeug's scrypt and pbkdf2) are still checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from werkzeug.security import check_password_hash

from .scram import SCRAM_ITERATIONS, new_salt, salted_password, verifier_from_salted

# <METHOD>$<iterations>$<salt, base64>$<HMAC-SHA-256 of SCRAM's SaltedPassword under META_LABEL, base64>
METHOD = "scram-salted-hmac-sha256"
META_LABEL = b"Postgraas Meta Key"


@dataclass(frozen=True)
class PasswordHashes:
    meta_hash: str
    scram_verifier: str

    def __repr__(self) -> str:
        return "PasswordHashes(...)"


def password_hashes(password: str) -> PasswordHashes:
    salt = new_salt()
    salted = salted_password(password, salt, SCRAM_ITERATIONS)
    return PasswordHashes(
        _meta_hash(salted, salt, SCRAM_ITERATIONS), verifier_from_salted(salted, salt, SCRAM_ITERATIONS)
    )


def hash_password(password: str) -> str:
    return password_hashes(password).meta_hash


def password_matches(password_hash: str, password: str) -> bool:
    if not password_hash.startswith(METHOD + "$"):
        return check_password_hash(password_hash, password)
    try:
        _, iterations_text, salt_text, _ = password_hash.split("$")
        iterations, salt = int(iterations_text), base64.b64decode(salt_text, validate=True)
    except (ValueError, binascii.Error):
        return False
    expected = _meta_hash(salted_password(password, salt, iterations), salt, iterations)
    return hmac.compare_digest(expected, password_hash)


def generate_password() -> str:
    # 32 URL-safe characters: 192 bits, and nothing that needs quoting in a URI or a shell.
    return secrets.token_urlsafe(24)


def _meta_hash(salted: bytes, salt: bytes, iterations: int) -> str:
    digest = hmac.new(salted, META_LABEL, hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"{METHOD}${iterations}${b64(salt).decode()}${b64(digest).decode()}"
