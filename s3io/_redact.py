"""Credential redaction for botocore's and urllib3's DEBUG logs.

botocore logs request signatures, signed headers and session tokens at DEBUG.
:func:`install` adds a filter to those loggers that rewrites a record without
them, and remembers the secret key and session token of every client built in
this process so that they are removed wherever they appear.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

__all__ = ["install", "remember_secrets", "redact"]

_PATTERNS = [
    (re.compile(r"AWS4-HMAC-SHA256 Credential=[^'\"\r\n]*"), "AWS4-HMAC-SHA256 <authorization redacted>"),
    (re.compile(r"(?:X-Amz-)?Signature=[0-9a-fA-F]+", re.IGNORECASE), "<signature redacted>"),
    (
        re.compile(r"(x-amz-security-token['\"]?\s*[:=,]\s*b?['\"]?)[^'\"\s,}&]+", re.IGNORECASE),
        r"\1<redacted>",
    ),
    (re.compile(r"X-Amz-Security-Token=[^&'\"\s]+", re.IGNORECASE), "<security token redacted>"),
]
_secrets: "set[str]" = set()  # secret keys and session tokens of the clients built in this process
_LOGGERS = (
    "botocore.auth", "botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.httpsession",
    "botocore.retryhandler", "botocore.credentials", "botocore.utils", "botocore.client", "botocore.awsrequest",
    "botocore.regions", "botocore.retries.standard", "urllib3.connectionpool", "urllib3.connection",
)


def redact(text: str) -> str:
    """``text`` without any remembered secret, signature or security token."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, "<redacted>")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class _RedactCredentials(logging.Filter):
    """Rewrites a log record without credential material (runs only for records that are emitted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_filter = _RedactCredentials()


def remember_secrets(values: Iterable[str]) -> None:
    """Redact these strings (secret keys, session tokens) from now on; short ones are ignored."""
    _secrets.update(v for v in values if v and len(v) >= 8)


def install() -> None:
    """Put the filter on botocore's, boto3's and urllib3's loggers (idempotent)."""
    names = set(_LOGGERS) | {
        name for name in list(logging.root.manager.loggerDict) if name.startswith(("botocore", "boto3", "urllib3"))
    }
    for name in names:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
