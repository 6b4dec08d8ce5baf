import re

import pytest

from postgraas_server.errors import InvalidRequest, Unprocessable
from postgraas_server.schemas import CreateInstanceRequest, DeleteInstanceRequest, connection_uri, parse_request

VALID = {"postgraas_instance_name": "my-db_1.x", "db_name": "app_db", "db_username": "alice", "db_pwd": "s3cret"}


def errors_of(body, model=CreateInstanceRequest):
    with pytest.raises((InvalidRequest, Unprocessable)) as info:
        parse_request(model, body)
    return info.value


def test_valid_request_and_2x_alias():
    assert parse_request(CreateInstanceRequest, VALID).postgraas_instance_name == "my-db_1.x"
    legacy = {**VALID, "postgraas_name": VALID["postgraas_instance_name"]}
    del legacy["postgraas_instance_name"]
    assert parse_request(CreateInstanceRequest, legacy).postgraas_instance_name == "my-db_1.x"


def test_unknown_fields_are_ignored():
    assert parse_request(CreateInstanceRequest, {**VALID, "extra": 1}).db_name == "app_db"


def test_every_bad_field_is_listed_at_once():
    error = errors_of({"db_name": 5, "db_pwd": ""})
    assert error.code == 400
    assert error.errors == {
        "postgraas_instance_name": "is required",
        "db_name": "must be a string",
        "db_username": "is required",
        "db_pwd": "must not be empty",
    }
    assert "postgraas_instance_name is required" in error.msg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("postgraas_instance_name", ""),
        ("postgraas_instance_name", "-starts-with-dash"),
        ("postgraas_instance_name", "has space"),
        ("postgraas_instance_name", "a" * 64),
        ("postgraas_instance_name", "ünïcode"),
        ("postgraas_instance_name", "x/../y"),
        ("db_name", 'x"; drop database postgres; --'),
        ("db_name", "1abc"),
        ("db_name", "a" * 64),
        ("db_name", "dollar$"),
        ("db_name", "é"),
        ("db_name", "template1"),
        ("db_name", "TEMPLATE0"),
        ("template", "x y"),
        ("backend", "b" * 33),
        ("db_username", "pg_monitor"),
        ("db_username", "al ice"),
        ("db_pwd", "nul\x00byte"),
        ("db_pwd", "x" * 1025),
        ("db_pwd", 12345),
        ("db_username", ["alice"]),
    ],
)
def test_invalid_values_are_400_naming_the_field(field, value):
    error = errors_of({**VALID, field: value})
    assert error.code == 400
    assert list(error.errors) == [field]


def test_limits_are_inclusive():
    body = {**VALID, "postgraas_instance_name": "a" * 63, "db_name": "b" * 63, "db_pwd": "x" * 1024}
    assert parse_request(CreateInstanceRequest, body).db_name == "b" * 63


@pytest.mark.parametrize("username", ["postgres", "POSTGRES", "postgres@myserver"])
def test_reserved_username_is_422(username):
    error = errors_of({**VALID, "db_username": username})
    assert error.code == 422
    assert "db_username" in error.errors


def test_reserved_username_among_other_errors_is_400():
    error = errors_of({**VALID, "db_username": "postgres", "db_name": ""})
    assert error.code == 400
    assert set(error.errors) == {"db_username", "db_name"}


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_body_must_be_an_object(body):
    assert errors_of(body).code == 400


def test_delete_request_types():
    assert parse_request(DeleteInstanceRequest, {"db_pwd": "x"}).force is False
    assert errors_of({"db_pwd": "x", "force": "yes"}, DeleteInstanceRequest).errors == {
        "force": "must be true or false"
    }
    # Optional in the shape: with a token it is not needed (the service requires it without one).
    assert parse_request(DeleteInstanceRequest, {}).db_pwd is None


def test_connection_uri_is_percent_encoded():
    uri = connection_uri("alice", "p@ss:w/rd %?#", "db.example", 5432, "app")
    assert uri == "postgresql://alice:p%40ss%3Aw%2Frd%20%25%3F%23@db.example:5432/app"
    assert connection_uri("a", None, "::1", 1, "d") == "postgresql://a@[::1]:1/d"


@pytest.mark.parametrize(
    "username",
    ["public", "PUBLIC", "none", "None", "current_user", "CURRENT_ROLE", "session_user", "system_user", "pg_monitor"],
)
def test_role_names_postgresql_keeps_for_itself_are_400_naming_the_field(username):
    error = errors_of({**VALID, "db_username": username})
    assert error.code == 400
    assert list(error.errors) == ["db_username"]
    # The OpenAPI document refuses them too, so a client checking against it learns the same.
    pattern = CreateInstanceRequest.model_json_schema()["properties"]["db_username"]["pattern"]
    assert re.fullmatch(pattern, username) is None


@pytest.mark.parametrize("username", ["public_user", "nonee", "my_current_user", "publicity", "pgadmin"])
def test_names_that_only_start_like_a_reserved_one_are_fine(username):
    assert parse_request(CreateInstanceRequest, {**VALID, "db_username": username}).db_username == username
    pattern = CreateInstanceRequest.model_json_schema()["properties"]["db_username"]["pattern"]
    assert re.fullmatch(pattern, username)
