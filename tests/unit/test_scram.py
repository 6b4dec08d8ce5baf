"""SCRAM-SHA-256 verifiers as PostgreSQL keeps them; a real server accepting one is tested in
tests/integration (every tenant's password is set through one)."""

import base64
import hashlib
import hmac

import pytest

from postgraas_server.scram import saslprep, scram_keys, scram_sha256_verifier


def test_scram_keys_match_rfc_7677():
    # RFC 7677 section 3: user "user", password "pencil".
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = scram_keys("pencil", salt, 4096)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    server_signature = hmac.new(server_key, auth_message.encode(), hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    client_proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(client_proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_scram_verifier_has_postgres_format_and_a_fresh_salt():
    first, second = scram_sha256_verifier("pw"), scram_sha256_verifier("pw")
    assert first != second
    assert first.startswith("SCRAM-SHA-256$4096:")
    salt = base64.b64decode(first.split("$")[1].split(":")[1])
    assert len(salt) == 16
    assert scram_sha256_verifier("pw", salt=salt) == first


@pytest.mark.parametrize(
    "password, prepared",
    [
        ("plain ascii \x07", "plain ascii \x07"),  # ASCII passes untouched
        ("a\u00a0b", "a b"),  # non-ASCII space -> space
        ("a\u00adb", "ab"),  # soft hyphen: mapped to nothing
        ("\ufb01x", "fix"),  # NFKC
        ("\u00e9", "\u00e9"),
        ("\u0221", None),  # unassigned in Unicode 3.2
        ("\u0627a", None),  # right-to-left mixed with left-to-right
        ("\u0627\u0628", "\u0627\u0628"),
        ("\u00ad", None),  # empty once mapped
    ],
)
def test_saslprep(password, prepared):
    assert saslprep(password) == prepared
