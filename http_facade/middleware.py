"""Request ids: one per HTTP request, sent to the core and returned on every response.

EdgeMiddleware (edge.py) gives each request its id and the x-request-id
header. The id is always generated there, never taken from the client: the core uses it as
the idempotency key of the request's charge, so a client-chosen id could
collide with another request's.
"""

from __future__ import annotations

from starlette.types import Scope

from gateway_core import request_ids

REQUEST_ID_HEADER = b"x-request-id"
# Where routes find the id; a private scope key rather than lifespan state,
# which servers may share between requests.
REQUEST_ID_SCOPE_KEY = "tollgate.request_id"


def new_request_id() -> str:
    """A fresh request id: "req_" and 32 random hex digits (one OS random read per batch of ids)."""
    return request_ids.new_request_id()


def request_id_of(scope: Scope) -> str:
    """The id EdgeMiddleware gave this request."""
    request_id: str = scope[REQUEST_ID_SCOPE_KEY]
    return request_id
