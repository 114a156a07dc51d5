"""A labelled sample of column values for the masking detectors: what each kind looks like.

`labelled_sample(n)` returns (value, kind or None) pairs from a seeded
generator: positives of every kind in the formats people store them in, and
hard negatives: card numbers failing Luhn, IBANs with wrong check digits,
SSNs in ranges never issued, impossible addresses, random 16-digit order ids,
and ordinary text, dates, prices, hashes and UUIDs. Used by the accuracy test
(tests/test_masking.py) and scripts/bench_masking.py.
"""

from __future__ import annotations

import base64
import random
import string
import uuid
from collections.abc import Callable

import orjson
from stdnum import iban, luhn

FIRST = ["ada", "grace", "alan", "edsger", "barbara", "ken", "margaret", "linus", "radia", "john"]
LAST = ["lovelace", "hopper", "turing", "dijkstra", "liskov", "thompson", "hamilton", "torvalds"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.net", "acme.io"]
AREA_CODES = ["212", "415", "646", "312", "617", "206", "303", "512", "702", "808", "404", "213"]
WORDS = [
    "quarterly revenue report shows growth in the north region",
    "customer asked for a refund on an order shipped late",
    "warehouse B restocked widgets",
    "premium plan renewal pending approval by finance next week",
]


def _email(r: random.Random) -> str:
    local = f"{r.choice(FIRST)}{r.choice(['.', '_', ''])}{r.choice(LAST)}{r.randint(0, 99)}"
    address = f"{local}@{r.choice(DOMAINS)}"
    return address if r.random() < 0.7 else f"contact {address} for details"


def _phone(r: random.Random) -> str:
    area, exchange, line = r.choice(AREA_CODES), r.randint(200, 999), r.randint(0, 9999)
    forms = [
        f"({area}) {exchange}-{line:04d}",
        f"{area}-{exchange}-{line:04d}",
        f"+1 {area} {exchange} {line:04d}",
        f"{area}.{exchange}.{line:04d}",
        f"+44 20 7946 {r.randint(0, 999):04d}",
    ]
    return r.choice(forms)


def _card_digits(r: random.Random, valid: bool) -> str:
    prefix, length = r.choice(
        [("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15), ("6011", 16)]
    )
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = int(luhn.calc_check_digit(body))
    return body + str(check if valid else (check + r.randint(1, 9)) % 10)


def _grouped(r: random.Random, digits: str) -> str:
    separator = r.choice(["", " ", "-"])
    return separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _iban_number(r: random.Random, valid: bool) -> str:
    country, bank, digits = r.choice([("DE", "", 18), ("GB", "NWBK", 14), ("NL", "ABNA", 10)])
    bban = bank + "".join(r.choice(string.digits) for _ in range(digits))
    check = iban.calc_check_digits(f"{country}00{bban}")
    if not valid:
        check = f"{(int(check) + r.randint(1, 90)) % 97 + 2:02d}"[-2:]
        if check == iban.calc_check_digits(f"{country}00{bban}"):
            check = f"{(int(check) + 1) % 97 + 2:02d}"[-2:]
    number = f"{country}{check}{bban}"
    if r.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


def _ssn(r: random.Random) -> str:
    area = r.choice([r.randint(1, 665), r.randint(667, 899)])
    return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"


def _ip(r: random.Random) -> str:
    if r.random() < 0.8:
        return ".".join(str(r.randint(0, 255)) for _ in range(4))
    return "2001:db8:" + ":".join(f"{r.randint(0, 0xFFFF):x}" for _ in range(6))


def _aws_key(r: random.Random) -> str:
    alphabet = string.ascii_uppercase + "234567"
    return r.choice(["AKIA", "ASIA"]) + "".join(r.choice(alphabet) for _ in range(16))


def _private_key(r: random.Random) -> str:
    kind = r.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
    body = base64.b64encode(r.randbytes(48)).decode()
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(r: random.Random) -> str:
    header = _b64url(orjson.dumps({"alg": r.choice(["RS256", "HS256", "ES256"]), "typ": "JWT"}))
    payload = _b64url(
        orjson.dumps({"sub": f"user-{r.randint(1, 10**6)}", "exp": r.randint(1, 2**31)})
    )
    return f"{header}.{payload}.{_b64url(r.randbytes(32))}"


def _negative(r: random.Random) -> str:
    choice = r.randrange(12)
    if choice == 0:
        return _grouped(r, _card_digits(r, valid=False))
    if choice == 1:
        return _iban_number(r, valid=False)
    if choice == 2:
        area = r.choice([0, 666, r.randint(900, 999)])  # never issued
        return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    if choice == 3:
        return f"{r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}"
    if choice == 4:
        return "".join(r.choice(string.digits) for _ in range(16))  # an order id, not a card
    if choice == 5:
        return f"{r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
    if choice == 6:
        return f"${r.randint(1, 99)},{r.randint(100, 999)}.{r.randint(0, 99):02d}"
    if choice == 7:
        return str(uuid.UUID(int=r.getrandbits(128)))
    if choice == 8:
        return r.randbytes(32).hex()
    if choice == 9:
        return f"{r.choice(FIRST)} at example dot com, ticket ORD-{r.randint(10**5, 10**6)}"
    if choice == 10:
        return (
            f"AKIA{r.randint(1000, 9999)} v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}"
        )
    return "; ".join(r.choice(WORDS) for _ in range(r.randint(1, 3))).capitalize()


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": _email,
    "phone": _phone,
    "credit_card": lambda r: _grouped(r, _card_digits(r, valid=True)),
    "iban": lambda r: _iban_number(r, valid=True),
    "us_ssn": _ssn,
    "ip_address": _ip,
    "aws_access_key": _aws_key,
    "private_key": _private_key,
    "jwt": _jwt,
}


def labelled_sample(
    per_kind: int = 1000, negatives: int = 3000, seed: int = 21
) -> list[tuple[str, str | None]]:
    """(value, kind) pairs, kind None for a value that is no kind's, shuffled."""
    r = random.Random(seed)
    sample: list[tuple[str, str | None]] = [
        (generate(r), kind) for kind, generate in GENERATORS.items() for _ in range(per_kind)
    ]
    sample.extend((_negative(r), None) for _ in range(negatives))
    r.shuffle(sample)
    return sample
