"""Sensitive-value detectors: an RE2 candidate search in Arrow, then a checksum on candidates.

Each kind has a candidate pattern that `pyarrow.compute` runs over a whole
string column in C++ (RE2), and, where a checksum or a registry exists, a
validator from a well-kept library that only the candidates reach:

- `credit_card`: `stdnum.luhn` plus the card networks' leading digits, 13-19 digits;
- `iban`: `stdnum.iban` (country length and the mod-97 check digits);
- `us_ssn`: `stdnum.us.ssn` (the area, group and serial rules, dashed form only);
- `phone`: `phonenumbers` (a number valid in its numbering plan, US default region);
- `ip_address`: the standard library's `ipaddress`.

`email`, `aws_access_key`, `private_key` and `jwt` have no checksum and no
library that recognises them in text, so their patterns are written here; a
JWT candidate is confirmed by decoding its header. A cell with a detection is
masked whole: the point is that the caller never reads it, not to keep the
rest of the cell.

The kinds, their patterns and markers live in recorder/masking/kinds.py, which
loads none of these libraries; this module is imported only once a policy
masks something.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from stdnum import iban, luhn
from stdnum.us import ssn

from hoopgw.recorder.masking.kinds import COLUMN_KIND, KINDS, PATTERNS, SUBSUMES, marker

__all__ = [
    "COLUMN_KIND",
    "DETECTORS",
    "KINDS",
    "Detector",
    "detect_array",
    "detect_texts",
    "marker",
]


def _card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    if not 13 <= len(digits) <= 19 or not luhn.is_valid(digits):
        return False
    # Luhn alone passes one number in ten: the issuer prefix rules out most other ids.
    return digits[0] in "3456" or digits.startswith(("2221", "2720", "22", "27"))


def _iban(text: str) -> bool:
    return iban.is_valid(text)


def _ssn(text: str) -> bool:
    return ssn.is_valid(text)


def _phone(text: str) -> bool:
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _jwt(text: str) -> bool:
    header = text.split(".", 1)[0]
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str
    pattern: str
    """RE2 and Python `re` alike: no look-around, no back-references."""
    validate: Callable[[str], bool] | None = None
    """Confirms one match; None when the pattern is all there is."""

    def confirms(self, text: str) -> bool:
        if self.validate is None:
            return True
        return any(self.validate(match.group(0)) for match in self._compiled.finditer(text))

    @property
    def _compiled(self) -> re.Pattern[str]:
        return _compiled(self.pattern)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re.compile(pattern)
    return compiled


_VALIDATORS: Final[dict[str, Callable[[str], bool]]] = {
    "phone": _phone,
    "credit_card": _card,
    "iban": _iban,
    "us_ssn": _ssn,
    "ip_address": _ip,
    "jwt": _jwt,
}
DETECTORS: Final[dict[str, Detector]] = {
    kind: Detector(kind, pattern, _VALIDATORS.get(kind)) for kind, pattern in PATTERNS.items()
}


def _combined(kinds: frozenset[str]) -> str:
    return "|".join(f"(?:{DETECTORS[kind].pattern})" for kind in sorted(kinds))


def detect_array(values: pa.Array, kinds: frozenset[str]) -> dict[str, pa.BooleanArray]:
    """Each kind found in a string array: one boolean per value, True where it was confirmed.

    One RE2 pass with every kind's pattern picks the candidates; each kind's
    own pattern then runs over those only, and a validator over the values that
    pattern matched. Kinds found nowhere are left out.
    """
    if not kinds or len(values) == 0:
        return {}
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = values.cast(pa.string())
    candidates = pc.fill_null(pc.match_substring_regex(values, _combined(kinds)), False)
    if not pc.any(candidates).as_py():
        return {}
    subset = pc.filter(values, candidates)
    found: dict[str, pa.BooleanArray] = {}
    for kind in sorted(kinds):
        detector = DETECTORS[kind]
        hits = pc.fill_null(pc.match_substring_regex(subset, detector.pattern), False)
        if not pc.any(hits).as_py():
            continue
        if detector.validate is not None:
            confirmed = [detector.confirms(text) for text in pc.filter(subset, hits).to_pylist()]
            if not any(confirmed):
                continue
            hits = pc.replace_with_mask(hits, hits, pa.array(confirmed, pa.bool_()))
        # back from the candidates to every value: candidates' places take the hits in order
        found[kind] = pc.replace_with_mask(candidates, candidates, hits)
    for kind, lesser in SUBSUMES.items():
        for other in lesser:
            if kind in found and other in found:
                remaining = pc.and_not(found[other], found[kind])
                if pc.any(remaining).as_py():
                    found[other] = remaining
                else:
                    del found[other]
    return found


def detect_texts(texts: list[str | None], kinds: frozenset[str]) -> dict[str, list[bool]]:
    """`detect_array` for a Python list of strings (a JSON rowset column)."""
    found = detect_array(pa.array(texts, pa.string()), kinds)
    return {kind: flags.to_pylist() for kind, flags in found.items()}
