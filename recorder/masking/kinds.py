"""The kinds of sensitive value the detectors know: names, candidate patterns, markers.

Kept apart from recorder/masking/detectors.py so that reading a policy, or
listing kinds, never loads the detectors' libraries (pyarrow.compute,
phonenumbers, python-stdnum): together they add about 50 MB to a process,
which a gateway whose policy masks nothing should not carry.
"""

from __future__ import annotations

from typing import Final

PATTERNS: Final[dict[str, str]] = {
    # the common practical shape (RFC 5322 allows more than anyone uses); no library
    # finds addresses in running text
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # international numbers with their `+`, or North American ones in the NANP's shape
    # (area code and exchange start with 2-9): ids and references with digit groups
    # would otherwise all reach the validator
    "phone": (
        r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}\b"
        r"|(?:\(|\b)[2-9]\d{2}\)?[ .-]?[2-9]\d{2}[ .-]?\d{4}\b"
    ),
    # as cards are written: 13-19 digits, groups of four, or Amex's 4-6-5; other digit
    # runs with dashes (order and reference numbers) never reach the Luhn check
    "credit_card": (
        r"\b(?:\d{13,19}|\d{4}(?: \d{4}){2} \d{1,7}|\d{4}(?:-\d{4}){2}-\d{1,7}"
        r"|\d{4}[ -]\d{6}[ -]\d{5})\b"
    ),
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
    "us_ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "ip_address": (r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f:]{1,}\b"),
    # AWS documents the key id prefixes; there is no public checksum to test
    "aws_access_key": r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b",
    # the PEM armour line (RFC 7468) is the whole signature of a private key in text
    "private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    # a JWS in compact form: three base64url parts whose first decodes to a JSON header
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
}
"""Each kind's candidate pattern: RE2 and Python `re` alike (no look-around or
back-references), so pyarrow.compute runs it in C++ over a whole column."""
KINDS: Final = frozenset(PATTERNS)
SUBSUMES: Final[dict[str, tuple[str, ...]]] = {
    "iban": ("credit_card", "phone"),
    "credit_card": ("phone",),
    "ip_address": ("phone",),
}
"""A value confirmed as the key kind is not also the listed kinds: an IBAN's digits
can pass Luhn, and a card's groups or an address's parts can parse as a phone number."""
COLUMN_KIND: Final = "column"
"""The kind a column rule masks under: `[MASKED:column]`."""


def marker(kind: str) -> str:
    return f"[MASKED:{kind}]"
