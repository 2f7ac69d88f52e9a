"""A `render_item` hook for applications that autogenerate our tables in their own Alembic
environment (see the README).

Alembic renders a `TypeDecorator` by its module path (`stagewise_sql._schema.UtcDateTime`)
without importing it, and, on a non-PostgreSQL context, PostgreSQL's JSONB with an
unqualified `Text()`. The hook renders both as plain SQLAlchemy types instead, which is what
they are in DDL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.dialects.postgresql import JSONB

from stagewise_sql._schema import UtcDateTime

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Alembic's `render_item` for stagewise's column types; False for anything else.

    Pass it to `context.configure(render_item=stagewise_sql.render_item, ...)` in an
    `env.py` whose `target_metadata` includes `stagewise_sql.metadata`.
    """
    if type_ != "type":
        return False
    if isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSONB):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return f"postgresql.JSONB(none_as_null={obj.none_as_null!r})"
    return False
