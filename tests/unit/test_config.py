import json

import pytest

from postgraas_server.config import ConfigError, load_settings, resolve_config_path


def write(tmp_path, data) -> str:
    path = tmp_path / "application.cfg"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    # The embedded default needs no daemon: SQLite and local postgres processes.
    assert list(settings.backends) == ["local"]
    assert settings.application.default_backend == "local"
    assert settings.metadb.sqlalchemy_url() == f"sqlite:///{tmp_path}/postgraas.sqlite"


def test_2x_single_backend_section_is_named_after_its_type(tmp_path):
    settings = load_settings(write(tmp_path, {"backend": {"type": "docker"}}), environ={})
    assert list(settings.backends) == ["docker"]
    assert settings.application.default_backend == "docker"
    docker = settings.backends["docker"]
    assert (docker.image, docker.bind_address, docker.ready_timeout) == ("postgres:16", "0.0.0.0", 60)


def test_several_named_backends_and_env_per_backend(tmp_path):
    path = write(
        tmp_path,
        {
            "backends": {
                "local": {"type": "local"},
                "pg": {"type": "cluster", "host": "db", "username": "admin"},
            },
            "application": {"default_backend": "pg"},
        },
    )
    settings = load_settings(
        path, environ={"POSTGRAAS_BACKENDS_LOCAL_DATA_ROOT": "/srv/pg", "POSTGRAAS_BACKENDS_PG_PORT": "6432"}
    )
    assert settings.backends["local"].data_root == "/srv/pg"
    assert settings.backends["pg"].port == 6432
    assert settings.application.default_backend == "pg"


def test_shipped_application_cfg_is_valid():
    settings = load_settings("application.cfg", environ={})
    assert settings.metadb.url.startswith("sqlite")


def test_metadb_2x_keys_build_a_postgresql_url(tmp_path):
    path = write(
        tmp_path,
        {"metadb": {"db_name": "meta", "db_username": "u@srv", "db_pwd": "p w", "host": "db", "port": 5433}},
    )
    assert load_settings(path, environ={}).metadb.sqlalchemy_url() == "postgresql+psycopg://u%40srv:p%20w@db:5433/meta"


def test_env_overrides_every_section(tmp_path):
    path = write(tmp_path, {"backend": {"type": "docker", "image": "a"}})
    env = {
        "POSTGRAAS_BACKEND_IMAGE": "postgres:15",
        "POSTGRAAS_BACKEND_READY_TIMEOUT": "12.5",
        "POSTGRAAS_BACKEND_LABELS": '{"team": "x"}',
        "POSTGRAAS_METADB_DB_PWD": "12345",
        "POSTGRAAS_METADB_DB_NAME": "meta",
        "POSTGRAAS_METADB_DB_USERNAME": "u",
        "POSTGRAAS_METADB_HOST": "h",
        "POSTGRAAS_APPLICATION_DEBUG": "true",
        # Not config: client-side variables share the prefix.
        "POSTGRAAS_URL": "http://x",
    }
    settings = load_settings(path, environ=env)
    assert settings.backends["docker"].image == "postgres:15"
    assert settings.backends["docker"].ready_timeout == 12.5
    assert settings.backends["docker"].labels == {"team": "x"}
    assert settings.metadb.db_pwd == "12345"
    assert settings.application.debug is True


def test_config_path_resolution(monkeypatch):
    assert str(resolve_config_path("x.cfg", {"POSTGRAAS_CONFIG": "y.cfg"})) == "x.cfg"
    assert str(resolve_config_path(None, {"POSTGRAAS_CONFIG": "y.cfg"})) == "y.cfg"
    assert str(resolve_config_path(None, {})) == "application.cfg"


@pytest.mark.parametrize(
    ("data", "env", "expected"),
    [
        ({"backend": {"type": "docker", "imag": "x"}}, {}, "backend.imag: unknown key"),
        ({"backend": {"type": "docker", "ready_timeout": "soon"}}, {}, "backend.ready_timeout"),
        ({"backend": {"type": "docker", "ready_timeout": -1}}, {}, "backend.ready_timeout"),
        ({"backend": {"type": "kubernetes"}}, {}, "backend.type: must be one of: docker, cluster, local"),
        ({"backend": {}}, {}, "backend.type: must be one of"),
        ({"backends": {"pg": {"type": "cluster"}}}, {}, "backends.pg: give either 'dsn' or 'host'"),
        ({"backends": {"Bad_Name": {"type": "local"}}}, {}, "backends.Bad_Name: a backend name is"),
        ({"backends": {"a": {"type": "local"}, "b": {"type": "local"}}}, {}, "application.default_backend: required"),
        (
            {"backends": {"a": {"type": "local"}}, "application": {"default_backend": "b"}},
            {},
            "'b' is not a configured",
        ),
        ({"backends": {"a": {"type": "local", "port_min": 3000, "port_max": 2000}}}, {}, "backends.a: port_min"),
        ({"metadb": {"host": "h"}}, {}, "db_name"),
        ({"backend": {"type": "docker"}}, {"POSTGRAAS_BACKEND_FOO": "1"}, "backend.foo: unknown key"),
        ({}, {"POSTGRAAS_BACKEND_LABELS": "{oops"}, "POSTGRAAS_BACKEND_LABELS: not valid JSON"),
        ("{not json", {}, "not valid JSON"),
        ("[1]", {}, "must be a JSON object"),
    ],
)
def test_bad_config_names_the_key(tmp_path, data, env, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_settings(write(tmp_path, data), environ=env)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.cfg", environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(environ={"POSTGRAAS_CONFIG": str(tmp_path / "nope.cfg")})


def test_a_plain_postgresql_url_means_psycopg_3(tmp_path):
    path = tmp_path / "application.cfg"
    path.write_text('{"metadb": {"url": "postgresql://u:p@db/meta"}}')
    assert load_settings(path, environ={}).metadb.sqlalchemy_url() == "postgresql+psycopg://u:p@db/meta"
