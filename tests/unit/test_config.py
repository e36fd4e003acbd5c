"""aidist.config: Settings defaults, the AIDIST_ environment, plugin lists, URL redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from aidist.config import Settings, redact_url
from aidist.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AIDIST_* variables and no .env file in the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("AIDIST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_match_the_design(clean_env: Path) -> None:
    settings = Settings()
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/aidist"
    assert settings.namespace == "aidist"
    assert settings.plugins == []


def test_environment_overrides_with_prefix(clean_env: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("AIDIST_BROKER_URL", "amqp://u:p@broker:5672/vh")
    monkeypatch.setenv("AIDIST_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("AIDIST_DATABASE_URL", "postgresql+psycopg://x@db/other")
    monkeypatch.setenv("AIDIST_NAMESPACE", "team-a")
    monkeypatch.setenv("AIDIST_PACK_SIZE", "7")
    settings = Settings()
    assert settings.broker_url == "amqp://u:p@broker:5672/vh"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.database_url == "postgresql+psycopg://x@db/other"
    assert settings.namespace == "team-a"
    assert settings.pack_size == 7


def test_unprefixed_variables_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("BROKER_URL", "amqp://elsewhere//")
    monkeypatch.setenv("NAMESPACE", "other")
    settings = Settings()
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.namespace == "aidist"


def test_dotenv_file_is_read(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("AIDIST_NAMESPACE=fromfile\nAIDIST_PLUGINS=a.b\n")
    settings = Settings()
    assert settings.namespace == "fromfile"
    assert settings.plugins == ["a.b"]
    monkeypatch.setenv("AIDIST_NAMESPACE", "fromenv")
    assert Settings().namespace == "fromenv"


def test_explicit_arguments_win_over_environment(clean_env: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDIST_NAMESPACE", "fromenv")
    assert Settings(namespace="explicit").namespace == "explicit"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("tests.plugins", ["tests.plugins"]),
        ("a.b,c", ["a.b", "c"]),
        (" a.b , c ,, d ", ["a.b", "c", "d"]),
        ("", []),
        (" , ", []),
    ],
)
def test_plugins_from_comma_separated_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                          raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("AIDIST_PLUGINS", raw)
    assert Settings().plugins == expected


def test_plugins_accept_a_list_and_a_string(clean_env: Path) -> None:
    assert Settings(plugins=["x", "y"]).plugins == ["x", "y"]
    assert Settings(plugins="x, y").plugins == ["x", "y"]


@pytest.mark.parametrize("namespace", ["", "Upper", "1abc", "has space", "dot.ted", "a" * 42])
def test_invalid_namespace_is_rejected(clean_env: Path, namespace: str) -> None:
    with pytest.raises(ConfigError, match="AIDIST_NAMESPACE") as raised:
        Settings(namespace=namespace)
    assert isinstance(raised.value.__cause__, ValidationError)


def test_invalid_namespace_from_env_is_rejected(clean_env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDIST_NAMESPACE", "Not Valid")
    with pytest.raises(ConfigError, match="AIDIST_NAMESPACE") as raised:
        Settings()
    assert "Not Valid" not in str(raised.value)  # values are never echoed: they may be secrets


@pytest.mark.parametrize("namespace", ["a", "t0123456789", "team_a-1", "a" * 41])
def test_valid_namespaces(clean_env: Path, namespace: str) -> None:
    assert Settings(namespace=namespace).namespace == namespace


@pytest.mark.parametrize(
    ("field", "value"),
    [("pack_size", 0), ("pack_size", 10_001), ("connect_timeout_s", 0), ("max_input_chars", 0),
     ("prefetch_multiplier", 0), ("torch_threads", -1), ("result_ttl_s", 0)],
)
def test_numeric_bounds(clean_env: Path, field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"AIDIST_{field.upper()}"):
        Settings(**{field: value})


def test_settings_are_frozen(clean_env: Path) -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.namespace = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql+psycopg://app:pw@db:5432/aidist", "postgresql+psycopg://app:***@db:5432/aidist"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("amqp://u:p@ss@h//", "amqp://u:***@h//"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "***" in redacted


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:5432/aidist",
        "redis://127.0.0.1:6379/0",
        "amqp://localhost//",
    ],
)
def test_redact_url_leaves_urls_without_password_alone(url: str) -> None:
    assert redact_url(url) == url


def test_as_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(namespace="roundtrip", plugins=["a.b", "c"], pack_size=7,
                        batch_max_delay_ms=3.5, database_url="postgresql+psycopg://u:p@h:1/d")
    for name, value in original.as_env().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original  # type: ignore[call-arg]


def test_settings_never_show_passwords_in_repr_or_str() -> None:
    settings = Settings(broker_url="amqp://user:s3cret@host:5672//",
                        redis_url="redis://:hunter2@host:6379/0",
                        database_url="postgresql+psycopg://app:pa55@host/db")
    for text in (repr(settings), str(settings)):
        assert "s3cret" not in text and "hunter2" not in text and "pa55" not in text
        assert "amqp://user:***@host:5672//" in text
    assert settings.broker_url == "amqp://user:s3cret@host:5672//"  # the value itself is intact
