"""The one error hierarchy of Switchyard, and how it maps at the boundaries.

    SwitchyardError                    (base; never raised directly)
    ├── ClientError                    safe to show; never retried; never counts against a provider
    │   ├── InvalidRequest             400 invalid_request_error
    │   ├── ContextLengthExceeded      400 context_length_exceeded
    │   ├── Unauthenticated            401 invalid_api_key
    │   ├── PermissionDenied           403 permission_denied
    │   ├── NotFound                   404 not_found / model_not_found
    │   ├── Conflict                   409 conflict
    │   ├── PayloadTooLarge            413 request_too_large
    │   │   └── BodyTooLarge           413, and the connection closes (the rest of the body is never read)
    │   ├── Unprocessable              422 unprocessable_entity
    │   └── RateLimited                429 rate_limit_exceeded (carries retry_after)
    ├── UpstreamError                  a provider misbehaved; retryable unless said otherwise
    │   ├── UpstreamRateLimited        429 from the provider (carries retry_after)
    │   ├── UpstreamUnavailable        5xx / overloaded / connect error
    │   ├── UpstreamTimeout            the provider did not answer in time
    │   ├── UpstreamAuthFailed         provider 401/403: our credentials are wrong; fall back
    │   └── UpstreamBadResponse        unparseable / cut response
    ├── InternalError                  our own fault or an unavailable dependency
    │   ├── ServiceUnavailable         503 (a store or the bus could not be reached)
    │   │   ├── NotAccepted            503 not_accepted: a new request never reached the bus; it never runs
    │   │   └── OutcomeUnknown         503 outcome_unknown: sent, unacknowledged; its fate is queryable by id
    │   └── DeadlineExceeded           504 the request's deadline passed
    └── Defer                          not a failure: handle the message again after ``delay_s``

Two questions decide everything at a boundary: *may the client see the
message?* (``public``) and *may the work be tried again?* (``retryable``).
The bus maps a handler's exception to ack / nak(delay) / term from
``retryable`` (``Defer`` is a nak with exactly its delay, not counted as a
failure: a handler waits for a backoff or a ``Retry-After`` without holding
anything); the gateway maps any error to OpenAI's error object with
``status`` / ``type`` / ``code``.
"""

from __future__ import annotations

import msgspec


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A serialisable description of an error, as carried in events and shown to clients."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    retry_after: float | None = None
    # Error class used by routing and traces: failed, timeout, rate_limited, auth, bad_request, ...
    outcome: str = "failed"
    # Response headers that go with the error (x-ratelimit-*, which budget refused and when it resets).
    headers: dict[str, str] | None = None

    def body(self) -> dict:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class SwitchyardError(Exception):
    """Base of every error Switchyard raises on purpose."""

    status = 500
    type = "server_error"
    code = "internal_error"
    outcome = "failed"
    public = False
    retryable = False
    # An operator-only account of what went wrong (e.g. a provider's status and error body), set by whoever
    # raises it and already scrubbed (shared/scrub.py); never part of ``info()``, so never shown to a client.
    detail: str | None = None

    def __init__(self, message: str = "", *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def info(self) -> ErrorInfo:
        """What may travel in an event and reach the client."""
        message = self.message if self.public else "The server had an error while processing your request."
        return ErrorInfo(status=self.status, type=self.type, code=self.code, message=message,
                         param=self.param, retry_after=self.retry_after, outcome=self.outcome)


# ---- client errors: the request itself is at fault -------------------------------------------

class ClientError(SwitchyardError):
    """The request cannot be served as sent."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    outcome = "bad_request"
    public = True


class InvalidRequest(ClientError):
    """The request is malformed or names something that does not fit."""


class ContextLengthExceeded(ClientError):
    """The prompt does not fit in the model's context window."""

    code = "context_length_exceeded"


class Unauthenticated(ClientError):
    """Missing, malformed, unknown, revoked or expired API key."""

    status = 401
    code = "invalid_api_key"
    outcome = "denied"


class PermissionDenied(ClientError):
    """The key may not do this."""

    status = 403
    type = "permission_error"
    code = "permission_denied"
    outcome = "denied"


class NotFound(ClientError):
    """No such resource."""

    status = 404
    code = "not_found"
    outcome = "denied"


class Conflict(ClientError):
    """The resource is not in a state that allows this."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ClientError):
    """The request body is larger than allowed."""

    status = 413
    code = "request_too_large"


class BodyTooLarge(PayloadTooLarge):
    """The request body is over the limit; it was not read in full, so its connection cannot be reused."""

    def info(self) -> ErrorInfo:
        return msgspec.structs.replace(super().info(), headers={"connection": "close"})


class Unprocessable(ClientError):
    """The request is well-formed JSON but breaks a limit or a rule."""

    status = 422
    code = "unprocessable_entity"


class RateLimited(ClientError):
    """Too many requests; try again after ``retry_after`` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome = "rate_limited"


# ---- upstream errors: a provider failed us --------------------------------------------------

class UpstreamError(SwitchyardError):
    """A provider call failed."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    public = True
    retryable = True


class UpstreamRateLimited(UpstreamError):
    """The provider rate-limited us."""

    status = 429
    code = "upstream_rate_limited"
    outcome = "rate_limited"


class UpstreamUnavailable(UpstreamError):
    """The provider is down, overloaded or unreachable."""

    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The provider did not answer in time."""

    status = 504
    code = "upstream_timeout"
    outcome = "timeout"


class UpstreamAuthFailed(UpstreamError):
    """The provider refused our credentials."""

    status = 502
    code = "upstream_auth_failed"
    outcome = "auth"


class UpstreamBadResponse(UpstreamError):
    """The provider answered with something we could not understand."""

    code = "upstream_bad_response"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (its 400/404/422): not retried, not the provider's fault."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"
    outcome = "bad_request"
    retryable = False


# ---- our own failures ---------------------------------------------------------------------

class InternalError(SwitchyardError):
    """Something inside Switchyard failed."""

    retryable = True


class ServiceUnavailable(InternalError):
    """A dependency (bus, store) could not be reached; try again shortly."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    public = True


class _RequestNotAcknowledged(ServiceUnavailable):
    """A new request the bus did not acknowledge; the answer names its id (header and message)."""

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(message, retry_after=1)
        self.request_id = request_id

    def info(self) -> ErrorInfo:
        info = super().info()
        return msgspec.structs.replace(info, headers={**(info.headers or {}), "x-request-id": self.request_id})


class NotAccepted(_RequestNotAcknowledged):
    """The request never reached the bus: it was not accepted and will never run; retrying is safe."""

    code = "not_accepted"

    def __init__(self, request_id: str, why: str = "the event bus is unavailable") -> None:
        super().__init__(request_id, f"Request {request_id} was not accepted ({why}) and will never run; "
                                     f"retrying is safe.")


class OutcomeUnknown(_RequestNotAcknowledged):
    """The request was sent to the bus but not acknowledged: it may still run, and its fate can be queried."""

    code = "outcome_unknown"

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id, f"Request {request_id} was sent but not acknowledged: it may still run. "
                                     f"Its fate: GET /v1/requests/{request_id} (or the job's poll); retry with "
                                     f"the same Idempotency-Key to run it at most once.")


class DeadlineExceeded(InternalError):
    """The request's deadline passed before it could finish."""

    status = 504
    type = "timeout"
    code = "deadline_exceeded"
    outcome = "timeout"
    public = True
    retryable = False


class Defer(SwitchyardError):
    """Come back later: the bus redelivers the message after ``delay_s`` (a backoff, a Retry-After)."""

    retryable = True

    def __init__(self, delay_s: float, reason: str = "") -> None:
        super().__init__(reason or f"deferred for {delay_s:.3f}s")
        self.delay_s = max(0.0, float(delay_s))


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe any exception safely: our own carry their info, anything else becomes a 500."""
    if isinstance(exc, SwitchyardError):
        return exc.info()
    return InternalError().info()
