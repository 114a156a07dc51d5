"""Cortex REST bodies as an analyst reads them: the question, the proposed SQL and what it
touches, search queries and their results."""

from __future__ import annotations

from typing import Any

from hoopgw.addons.contentview.report import Report
from hoopgw.addons.contentview.rows import MAX_ROWS
from hoopgw.addons.contentview.sql import sql_sections
from hoopgw.addons.contentview.tables import cell, table
from hoopgw.recorder.redaction import redact_json, redact_sql
from hoopgw.recorder.statements import classify


def analyst_request(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    report.title("Cortex Analyst question")
    report.field(
        "Semantic model", redacted.get("semantic_model_file") or redacted.get("semantic_view")
    )
    messages = redacted.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        for item in message.get("content") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                report.field(str(message.get("role", "?")), item["text"])


def analyst_answer(report: Report, body: dict[str, Any]) -> None:
    """The answer's text, suggestions, and each proposed statement with its kind and objects.

    The SQL is not run by Cortex Analyst: the client runs it later through the
    statement endpoints, where the policy checks it.
    """
    redacted = redact_json(body)
    report.title("Cortex Analyst answer")
    report.field("Request id", redacted.get("request_id"))
    message = redacted.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            report.field("Text", item.get("text"))
        elif kind == "suggestions" and isinstance(item.get("suggestions"), list):
            report.section("Suggestions", [cell(text) for text in item["suggestions"]])
        elif kind == "sql" and isinstance(item.get("statement"), str):
            sql = redact_sql(item["statement"])
            statements = classify(sql, database=None, schema=None)
            rows = [
                [
                    statement.kind,
                    ", ".join(statement.reads) or "-",
                    ", ".join(statement.writes) or "-",
                ]
                for statement in statements
            ]
            report.section("Proposed SQL (not run)", table(["kind", "reads", "writes"], rows))
            sql_sections(report, sql)


def search_request(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    report.title("Cortex Search query")
    report.field("Query", redacted.get("query"))
    report.field("Columns", ", ".join(map(str, redacted.get("columns") or [])) or None)
    report.field("Filter", redacted.get("filter"))
    report.field("Limit", redacted.get("limit"))


def search_answer(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    results = [r for r in redacted.get("results") or [] if isinstance(r, dict)]
    report.title("Cortex Search results")
    report.field("Request id", redacted.get("request_id"))
    report.field("Results", len(results))
    names = list(dict.fromkeys(key for result in results for key in result))
    rows = [[cell(result.get(name)) for name in names] for result in results[:MAX_ROWS]]
    if names:
        report.section("Results", table(names, rows))
