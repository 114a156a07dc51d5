"""The Snowflake content view: an analyst reads statements and results, not JSON and base64.

    mitmweb -r session.flows -s addons/contentview/__init__.py

For Snowflake endpoints it outranks mitmproxy's JSON view and shows, in plain
text: who logged in and with which client, role, database and warehouse; each
statement's SQL (formatted) and bindings; each answer's outcome, query id,
statement type, row counts and chunk summary, with the first rows as a table
(Arrow `rowsetBase64` and JSON `rowset` alike); and error codes and messages.
Every other body is left to the other views.

Everything shown passes through the recorder's redaction first, so tokens and
passwords appear as "[REDACTED]" even in live flows where the body still holds
them. Results are bounded: at most `MAX_ROWS` rows are decoded, whatever the
size of the body.

Like mitmproxy's own `contentviews` package, one module per part: `view` (the
view and its registration), `rendering` (the text per endpoint), `sql` (SQL
and bindings), `rows` (row decoding), `tables` (the text table), `report`
(the text builder). This file only gathers them, with absolute imports, so
that mitmproxy can also load it on its own as a script; importing it
registers the view once.
"""

from hoopgw.addons.contentview.rendering import render
from hoopgw.addons.contentview.rows import MAX_ROWS, DecodedRows, decode_arrow, decode_rowset
from hoopgw.addons.contentview.sql import format_sql
from hoopgw.addons.contentview.tables import table
from hoopgw.addons.contentview.view import SnowflakeContentview, snowflake_view

__all__ = [
    "MAX_ROWS",
    "DecodedRows",
    "SnowflakeContentview",
    "decode_arrow",
    "decode_rowset",
    "format_sql",
    "render",
    "snowflake_view",
    "table",
]
