"""PostgreSQL administration for the benchmarks: create and drop their own databases."""

from __future__ import annotations


async def pg_admin(server: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy import make_url

    u = make_url(server)
    conn = await asyncpg.connect(
        host=u.host,
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        database=u.database or "postgres",
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
