"""The S3 error responses the proxy answers with itself: status, XML body, request id."""
from __future__ import annotations

import email.utils
import http
import uuid
from xml.sax.saxutils import escape as _xml_escape

# S3 error code and message by status, for injected and proxy-made answers.
S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
    # S3 itself answers 503 SlowDown; 429 is what many S3-compatible stores send.
    # botocore classifies this code as throttling.
    429: ("TooManyRequestsException", "Too many requests, please slow down."),
    502: ("BadGateway", "The upstream server did not answer."),
    504: ("GatewayTimeout", "The upstream server timed out."),
}


def error_response(status: int, code: str, message: str, resource: str, head_only: bool, close: bool) -> bytes:
    """An S3-style error response (XML body, request id), as bytes."""
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
        "<Resource>%s</Resource><RequestId>%s</RequestId></Error>"
        % (_xml_escape(code), _xml_escape(message), _xml_escape(resource), request_id)
    ).encode("utf-8")
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    lines = [
        "HTTP/1.1 %d %s" % (status, reason),
        "Content-Type: application/xml",
        "Content-Length: %d" % (0 if head_only else len(body)),
        "x-amz-request-id: %s" % request_id,
        "x-amz-id-2: s3io-faultproxy",
        "Date: %s" % email.utils.formatdate(usegmt=True),
        "Server: s3io-faultproxy",
    ]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
