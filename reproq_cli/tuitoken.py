"""HS256 tokens for reproq-tui (go-worker.md §8.5), shared by the worker and reproq_django.

A token is three base64url segments; the signature is HMAC-SHA256 over ``header.payload``
with the metrics auth token as the secret, compared in constant time. Accepted when the header
says HS256, ``exp`` (if numeric) has not passed, ``aud`` is or contains ``reproq-tui`` or
``reproq-worker``, ``iss`` (if a string) is ``reproq-django``, and ``superuser`` is true.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from typing import Any

AUDIENCES = ("reproq-tui", "reproq-worker")
ISSUER = "reproq-django"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(text: str) -> bytes:
    """Raw (unpadded) base64url, strictly, as Go's RawURLEncoding decodes it: Python's
    decoder skipped characters outside the alphabet and took padding."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not raw base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signing_input: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256).digest()


def issue(secret: str, *, subject: str, username: str, lifetime: float = 30 * 86400) -> str:
    """A token as reproq-django's TUI authorize view issues it."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {
        "sub": subject,
        "username": username,
        "superuser": True,
        "iat": now,
        "exp": now + int(lifetime),
        "iss": ISSUER,
        "aud": "reproq-tui",
        "jti": uuid.uuid4().hex,
    }
    signing_input = ".".join(
        _b64encode(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    return f"{signing_input}.{_b64encode(_sign(secret, signing_input))}"


def expires_at(token: str) -> int:
    """The ``exp`` claim (Unix seconds) of a token ``issue`` made; reproq-tui keeps it as the
    token's expiry."""
    return int(json.loads(_b64decode(token.split(".")[1]))["exp"])


def verify(token: str, secret: str, *, now: float | None = None) -> bool:
    if not secret:
        return False
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        return False
    # The signature first: nothing an unauthenticated client sends is parsed as JSON (a
    # header nested 20,000 deep raised RecursionError in the request handler).
    try:
        signature = _b64decode(parts[2])
    except ValueError:
        return False
    if not hmac.compare_digest(signature, _sign(secret, f"{parts[0]}.{parts[1]}")):
        return False
    try:
        header: Any = json.loads(_b64decode(parts[0]))
        payload: Any = json.loads(_b64decode(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return False
    if not isinstance(payload, dict):
        return False
    exp = payload.get("exp")
    current = time.time() if now is None else now
    # NaN or an infinity (Python's json reads them) is no expiry time.
    numeric = isinstance(exp, int | float) and not isinstance(exp, bool)
    if numeric and (not math.isfinite(exp) or math.floor(exp) < current):
        return False
    aud = payload.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not any(a in AUDIENCES for a in audiences if isinstance(a, str)):
        return False
    iss = payload.get("iss")
    if isinstance(iss, str) and iss != ISSUER:
        return False
    return payload.get("superuser") is True
