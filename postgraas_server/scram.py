"""SCRAM-SHA-256 verifiers (RFC 5802, RFC 7677) as PostgreSQL stores them in pg_authid.

Made here rather than by the server (CREATE ROLE ... PASSWORD 'plain text'), so a password never
reaches a server's statement log, and rather than by libpq's PQencryptPasswordConn, which is
slower than OpenSSL's PBKDF2 through hashlib: a create makes one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

# PostgreSQL's default (scram_iterations); the server checks any count it finds in a verifier.
SCRAM_ITERATIONS = 4096


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``; a server given it in
    CREATE/ALTER ROLE ... PASSWORD stores it as is, so the password itself never reaches it."""
    salt = new_salt() if salt is None else salt
    return verifier_from_salted(salted_password(password, salt, iterations), salt, iterations)


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """SCRAM's SaltedPassword: PBKDF2-HMAC-SHA-256 of the SASLprep'd password (the costly part)."""
    prepared = saslprep(password)
    # PostgreSQL (and libpq) hash the password as given when SASLprep refuses it.
    raw = (prepared if prepared is not None else password).encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)


def verifier_from_salted(salted: bytes, salt: bytes, iterations: int) -> str:
    stored_key, server_key = _keys(salted)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey of a password."""
    return _keys(salted_password(password, salt, iterations))


def _keys(salted: bytes) -> tuple[bytes, bytes]:
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def saslprep(text: str) -> str | None:
    """RFC 4013 SASLprep as PostgreSQL's pg_saslprep applies it (the same in libpq); None where it
    refuses the string, which then is hashed as it is."""
    if text.isascii():
        # Passed through untouched, control characters included.
        return text
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    if not mapped:
        return None
    # pg_saslprep checks the mapped characters, not the normalised ones: so does this.
    prohibited = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(c) for c in mapped for check in prohibited):
        return None
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return None
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return None
    return unicodedata.normalize("NFKC", mapped)
