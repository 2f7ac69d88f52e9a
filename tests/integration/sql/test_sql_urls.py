"""Database URLs as stagewise shows them: every password hidden, wherever it was given."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from stagewise_sql import (
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    SchemaMissingError,
    SqlBackend,
)
from stagewise_sql._connect import display_url
from tests.conftest import create_pg_database, drop_pg_database


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***"),
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?application_name=a&sslpassword=secret",
            "postgresql://u@h/db?application_name=a&sslpassword=***",
        ),
        ("postgresql://u@h/db?PassWord=secret&x=1", "postgresql://u@h/db?PassWord=***&x=1"),
        ("sqlite:///app.db", "sqlite:///app.db"),
        # URLs that do not parse are masked as text
        ("not a url:secret@x?password=secret&a=b", "not a url:secret@x?password=***&a=b"),
        ("pg://u:secret@h:port/db", "pg://u:***@h:port/db"),
    ],
)
def test_display_url_hides_every_password(url: str, shown: str) -> None:
    assert display_url(url) == shown
    assert display_url(url).count("secret") == shown.count("secret")


async def test_a_password_in_a_query_parameter_never_appears_in_errors() -> None:
    with pytest.raises(DatabaseUnavailableError) as raised:
        await SqlBackend.connect("postgresql://u@127.0.0.1:1/db?password=secret")
    assert "secret" not in str(raised.value)
    assert "password=***" in str(raised.value)
    assert "secret" not in raised.value.url

    with pytest.raises(InvalidDatabaseUrlError) as bad:
        await SqlBackend.connect("postgresql://u@h:notaport/db?password=secret")
    assert "secret" not in str(bad.value)


@pytest.mark.postgres
async def test_a_backend_shows_its_url_without_the_query_password() -> None:
    url = make_url(create_pg_database()).update_query_dict({"password": "secret"})
    text = url.render_as_string(hide_password=False)
    try:
        with pytest.raises(SchemaMissingError) as raised:  # no tables yet
            await SqlBackend.connect(text, migrate=False)
        assert "secret" not in str(raised.value)
        assert "password=***" in str(raised.value)
        backend = await SqlBackend.connect(text)
        try:
            assert "secret" not in backend.url
            assert backend.url.endswith("?password=***")
        finally:
            await backend.close()
    finally:
        drop_pg_database(text)
