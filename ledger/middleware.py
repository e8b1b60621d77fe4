"""Request identity: every request carries a request id and names the instance that served it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from ledger.services import current_instance_id

# nginx's $request_id is 32 hex characters; accept any short token of safe characters.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def request_id_from(request: HttpRequest) -> str:
    """The caller's (or nginx's) X-Request-ID if it is well-formed, else a fresh one."""
    given = request.headers.get("X-Request-ID", "")
    return given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestIdentityMiddleware:
    """Sets request.request_id; answers with X-Request-ID and X-Instance headers."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = request_id_from(request)
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        response["X-Instance"] = current_instance_id()
        return response
