"""What every PostgreSQL connection asks for, and what DATABASE_URL may override."""

from __future__ import annotations

import pytest
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.redact import redact_url
from tieline.services.runtime.pg_auth import trusting_lines, untrusted


def _kwargs(url: str) -> dict[str, object]:
    return db.conninfo_kwargs(Settings(database_url=url, database_schema="s"), "s_g1")


def test_a_plain_url_gets_the_keepalives_and_the_search_path() -> None:
    kw = _kwargs("postgresql://u@db.example:5432/t")
    assert kw["options"] == f"{db.SERVER_KEEPALIVE} -c search_path=s_g1,s"
    assert kw["connect_timeout"] == 10 and kw["tcp_user_timeout"] == 25_000
    assert (kw["keepalives_idle"], kw["keepalives_interval"], kw["keepalives_count"]) == (10, 5, 3)


def test_what_the_url_sets_wins_but_the_search_path_is_ours() -> None:
    """The URL's own ``options`` used to be dropped (the keyword replaced it), and its
    network settings would have been overridden."""
    kw = _kwargs(
        "postgresql://u@db.example/t?connect_timeout=3&keepalives_idle=60"
        "&options=-c%20statement_timeout%3D5000%20-c%20tcp_keepalives_idle%3D60"
        "%20-c%20search_path%3Devil"
    )
    options = str(kw["options"])
    assert options.startswith(db.SERVER_KEEPALIVE)
    # PostgreSQL applies -c settings in order: the URL's come after our defaults, ours last.
    assert options.endswith(
        "-c statement_timeout=5000 -c tcp_keepalives_idle=60 -c search_path=evil "
        "-c search_path=s_g1,s"
    )
    assert "connect_timeout" not in kw and "keepalives_idle" not in kw
    assert kw["tcp_user_timeout"] == 25_000


def test_the_pg_environment_wins_where_the_url_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq reads PGOPTIONS and PGCONNECT_TIMEOUT only for keywords the caller leaves out;
    we always pass ``options`` and ``connect_timeout``, so they used to be ignored."""
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=7000")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    kw = _kwargs("postgresql://u@db.example/t")
    assert kw["options"] == (
        f"{db.SERVER_KEEPALIVE} -c statement_timeout=7000 -c search_path=s_g1,s"
    )
    assert "connect_timeout" not in kw  # libpq takes PGCONNECT_TIMEOUT itself
    # The URL's own keywords beat the environment, as in libpq.
    kw = _kwargs("postgresql://u@db.example/t?connect_timeout=4&options=-c%20work_mem%3D8MB")
    assert str(kw["options"]).endswith("-c work_mem=8MB -c search_path=s_g1,s")
    assert "statement_timeout" not in str(kw["options"]) and "connect_timeout" not in kw


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db.example:5432/t", "postgresql://u:***@db.example:5432/t"),
        ("postgresql://u:s3cret@[::1]:5432/t", "postgresql://u:***@[::1]:5432/t"),
        ("postgresql://:s3cret@db/t", "postgresql://:***@db/t"),
        (
            "postgresql://u@db/t?password=s3cret&sslmode=require",
            "postgresql://u@db/t?password=***&sslmode=require",
        ),
        ("host=db user=u password='s3 cret' dbname=t", "host=db user=u password=*** dbname=t"),
        ("host=db password=s3cret", "host=db password=***"),
        ("nats://api:s3cret@127.0.0.1:4222", "nats://api:***@127.0.0.1:4222"),
        ("postgresql://u@db/t", "postgresql://u@db/t"),
        (
            "nats://a:s3cret@h1:4222,nats://a:s3cret2@h2:4222",
            "nats://a:***@h1:4222,nats://a:***@h2:4222",
        ),
        ("nats://s3cret-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("postgresql://u@db/t?sslpassword=s3cret", "postgresql://u@db/t?sslpassword=***"),
        ("host=db sslpassword=s3cret", "host=db sslpassword=***"),
        (
            "host=db password=s3cret options=-csearch_path=x://y",
            "host=db password=*** options=-csearch_path=x://y",
        ),
    ],
)
def test_a_printed_url_hides_its_password(url: str, shown: str) -> None:
    """Banners and logs show where a server is, never its password (the IPv6 brackets and
    the query's other settings stay)."""
    assert redact_url(url) == shown
    assert "s3" not in redact_url(url)


HBA = """# a comment that says trust
local all all trust
host all all 127.0.0.1/32 trust # lan
host all all 127.0.0.1 255.255.255.255 trust
host all all ::1/128 reject # not trust
host trust trust 10.0.0.0/8 md5
include trust
hostssl all all all trust clientcert=verify-full
local all all peer
host all all 10.0.0.0/8 \\
    "trust"
"""


def test_only_the_method_of_a_record_is_taken_for_trust() -> None:
    """The conversion of an old embedded cluster rewrites exactly the trusting methods: not
    a comment, a database or user named trust, an include directive; and it finds a method
    followed by a comment or options, or after a separate netmask (a regex over the line
    missed the one and rewrote the others); and a record continued on the next line, with
    its method quoted (both valid in PostgreSQL 16 and later)."""
    assert trusting_lines(HBA) == [1, 2, 3, 7, 10]
    assert untrusted(HBA).splitlines() == [
        "# a comment that says trust",
        "local all all scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256 # lan",
        "host all all 127.0.0.1 255.255.255.255 scram-sha-256",
        "host all all ::1/128 reject # not trust",
        "host trust trust 10.0.0.0/8 md5",
        "include trust",
        "hostssl all all all scram-sha-256 clientcert=verify-full",
        "local all all peer",
        "host all all 10.0.0.0/8 \\",
        "    scram-sha-256",
    ]
    assert trusting_lines(untrusted(HBA)) == []
