"""The meta db's password hashes and the SCRAM verifiers derived with them."""

import base64
import hashlib
import hmac

from werkzeug.security import generate_password_hash

from postgraas_server.passwords import METHOD, password_hashes, password_matches
from postgraas_server.scram import salted_password, scram_keys


def test_a_hash_checks_its_password_and_no_other():
    hashes = password_hashes("s3cr@t pw")
    assert hashes.meta_hash.startswith(f"{METHOD}$4096$")
    assert password_matches(hashes.meta_hash, "s3cr@t pw")
    assert not password_matches(hashes.meta_hash, "s3cr@t")
    assert "s3cr" not in hashes.meta_hash and "s3cr" not in repr(hashes)
    # A fresh salt each time.
    assert password_hashes("s3cr@t pw").meta_hash != hashes.meta_hash


def test_hash_and_verifier_share_salt_but_give_nothing_of_each_other():
    hashes = password_hashes("pencil")
    _, iterations, salt, digest = hashes.meta_hash.split("$")
    _, scram_salt_part, keys = hashes.scram_verifier.split("$")
    assert scram_salt_part == f"{iterations}:{salt}"
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert scram_keys("pencil", base64.b64decode(salt), int(iterations)) == (stored, server)
    salted = salted_password("pencil", base64.b64decode(salt), int(iterations))
    # The meta db keeps an HMAC of SaltedPassword under a label of its own: not SaltedPassword (which
    # would let whoever reads the meta db log in), nor either SCRAM key.
    assert base64.b64decode(digest) == hmac.new(salted, b"Postgraas Meta Key", hashlib.sha256).digest()
    assert base64.b64decode(digest) not in (salted, stored, server)


def test_hashes_of_earlier_versions_still_check():
    for method in ("scrypt", "pbkdf2:sha256:4096"):
        earlier = generate_password_hash("old pw", method=method)
        assert password_matches(earlier, "old pw") and not password_matches(earlier, "old")


def test_a_malformed_hash_matches_nothing():
    for broken in (f"{METHOD}$x$salt$digest", f"{METHOD}$4096$not base64!$d", f"{METHOD}$4096"):
        assert not password_matches(broken, "anything")


def test_non_ascii_passwords_are_prepared_as_postgres_does():
    # SASLprep maps a non-ASCII space to a space: both spellings are one password, as for PostgreSQL.
    hashes = password_hashes("a\u00a0b")
    assert password_matches(hashes.meta_hash, "a b")
