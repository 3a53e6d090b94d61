"""The one error tree of unimodel.

Every failure a user or an upstream can cause is one of these classes. Each carries the HTTP status it
maps to and a stable ``type``/``code`` pair used both in the OpenAI-shaped error body and as a metric label,
so the label never drifts from what clients see::

    UnimodelError                      500 server_error / internal_error
    ├── InvalidRequestError            400 invalid_request_error / invalid_value   (carries ``param``)
    │   ├── ContextLengthExceededError 400 invalid_request_error / context_length_exceeded
    │   ├── UnsupportedFeatureError    400 invalid_request_error / unsupported_feature
    │   ├── StoredResponseTooLargeError 400 invalid_request_error / response_too_large (the Responses API's)
    │   ├── EncryptedContentError      400 invalid_request_error / invalid_encrypted_content
    │   └── PreviousResponseNotFoundError 400 invalid_request_error / previous_response_not_found
    ├── AuthenticationError            401 authentication_error / invalid_api_key
    ├── PermissionDeniedError          403 permission_error / permission_denied
    │   └── CrossOriginError           403 permission_error / cross_origin_forbidden
    ├── NotFoundError                  404 not_found_error / not_found
    │   ├── ModelNotFoundError         404 invalid_request_error / model_not_found
    │   └── ResponseNotFoundError      404 invalid_request_error / response_not_found (GET /v1/responses/{id} …)
    ├── ConflictError                  409 conflict_error / conflict
    │   ├── IdempotencyKeyReusedError  409 conflict_error / idempotency_key_reused
    │   └── IdempotencyKeyInUseError   409 conflict_error / idempotency_key_in_use (carries ``retry_after``)
    ├── RequestTimeoutError            408 invalid_request_error / request_timeout (the HTTP layer's: a slow head)
    ├── RequestTooLargeError           413 invalid_request_error / request_too_large
    ├── UnsupportedMediaTypeError      415 invalid_request_error / unsupported_media_type
    ├── MisdirectedRequestError        421 invalid_request_error / host_not_allowed
    ├── RateLimitError                 429 rate_limit_error / rate_limit_exceeded  (carries ``retry_after``)
    │   └── UpstreamShareError         429 rate_limit_error / upstream_share_exceeded (carries ``retry_after``)
    ├── RequestHeadersTooLargeError    431 invalid_request_error / request_headers_too_large (the HTTP layer's)
    ├── ClientClosedError              499 client_closed / client_closed (the client left; logged, never sent)
    │   └── ClientWriteTimeoutError    499 client_closed / client_write_timeout (it stopped reading)
    ├── UpstreamError                  502 upstream_error / bad_gateway
    │   ├── UpstreamConnectionError    502 upstream_error / upstream_unreachable
    │   ├── UpstreamStatusError        any upstream 4xx status kept, 5xx → 502
    │   └── UpstreamTimeoutError       504 upstream_error / upstream_timeout
    └── ServiceUnavailableError        503 service_unavailable / engine_not_ready (carries ``retry_after``)
        ├── OverloadedError            503 service_unavailable / queue_full
        ├── CircuitOpenError           503 service_unavailable / circuit_open (carries ``retry_after``)
        ├── LimitsUnavailableError     503 service_unavailable / limits_unavailable (carries ``retry_after``)
        ├── TooManyConnectionsError    503 service_unavailable / too_many_connections (the HTTP layer's)
        ├── ImagesBusyError            503 service_unavailable / images_busy (carries ``retry_after``)
        └── ResponseStoreUnavailableError 503 service_unavailable / store_unavailable (carries ``retry_after``)

Engines, the gateway and the server raise these; only the server turns them into HTTP responses. Apart from
the tree, :class:`ConfigError` (a ``ValueError``) is an operator's settings problem found at start-up.
"""

from __future__ import annotations

from typing import Any


class UnimodelError(Exception):
    """Base of every error unimodel reports to a client."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(round(self.retry_after))))}


class InvalidRequestError(UnimodelError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class UnsupportedFeatureError(InvalidRequestError):
    code = "unsupported_feature"


class StoredResponseTooLargeError(InvalidRequestError):
    """A response to store (with the conversation ``previous_response_id`` chains to it) or reasoning to seal
    that is larger than the server keeps (``--responses-max-bytes``)."""

    code = "response_too_large"


class EncryptedContentError(InvalidRequestError):
    """Encrypted reasoning a client sent back (``reasoning.encrypted_content``) that this server cannot open:
    tampered with, cut short, sealed with a key it does not hold (another server, or one since retired)."""

    code = "invalid_encrypted_content"


class PreviousResponseNotFoundError(InvalidRequestError):
    """``previous_response_id`` names no stored response this key can see (never stored, another key's, expired,
    deleted): a 400, as OpenAI answers it."""

    code = "previous_response_not_found"


class PriorityClassNotFoundError(InvalidRequestError):
    """``X-Unimodel-Priority`` names no priority class of this server (a class the key may not use is a 403)."""

    code = "priority_class_not_found"


class AuthenticationError(UnimodelError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(UnimodelError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class CrossOriginError(PermissionDeniedError):
    """A browser request from a page of another origin that ``--cors-origins`` does not allow."""

    code = "cross_origin_forbidden"


class NotFoundError(UnimodelError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    error_type = "invalid_request_error"
    code = "model_not_found"


class ResponseNotFoundError(NotFoundError):
    """``GET``/``DELETE /v1/responses/{id}`` (and its cancel, its input items) for an id this key has no stored
    response of: OpenAI's 404, an ``invalid_request_error``."""

    error_type = "invalid_request_error"
    code = "response_not_found"


class ConflictError(UnimodelError):
    status_code = 409
    error_type = "conflict_error"
    code = "conflict"


class IdempotencyKeyReusedError(ConflictError):
    """An ``Idempotency-Key`` already used for a different request body."""

    code = "idempotency_key_reused"


class IdempotencyKeyInUseError(ConflictError):
    """The first request with this ``Idempotency-Key`` is still running (retry after ``retry_after``)."""

    code = "idempotency_key_in_use"


class RequestTooLargeError(UnimodelError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(UnimodelError):
    """A request body not sent as JSON (``Content-Type: application/json``)."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class MisdirectedRequestError(UnimodelError):
    """The request's ``Host`` is not one this server answers to (``--allowed-hosts``): a DNS-rebound name."""

    status_code = 421
    error_type = "invalid_request_error"
    code = "host_not_allowed"


class RequestTimeoutError(UnimodelError):
    """A connection did not send a whole request head in ``--header-timeout-s`` (answered by the HTTP layer,
    ``server/connections.py``, before any route: no request is logged)."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class RateLimitError(UnimodelError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamShareError(RateLimitError):
    """The key already holds its share of the upstream connection pool (``--upstream-key-share``)."""

    code = "upstream_share_exceeded"


class RequestHeadersTooLargeError(UnimodelError):
    """A request head (request line and headers) over ``--max-header-bytes`` (answered by the HTTP layer,
    ``server/connections.py``, before any route: no request is logged)."""

    status_code = 431
    error_type = "invalid_request_error"
    code = "request_headers_too_large"


class ClientClosedError(UnimodelError):
    """The client left before the answer was complete: recorded as 499 (nginx's label for it) in the logs and
    metrics; never sent, nobody is there to read it."""

    status_code = 499
    error_type = "client_closed"
    code = "client_closed"


class ClientWriteTimeoutError(ClientClosedError):
    """The client stopped reading: a write to it made no progress for ``--stream-write-timeout-s``, so the
    server ended the request and dropped the connection (``server/connections.py``). A 499, with its own code."""

    code = "client_write_timeout"


class UpstreamError(UnimodelError):
    status_code = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamConnectionError(UpstreamError):
    code = "upstream_unreachable"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status.

    A 4xx keeps its status (the client's request was at fault and the upstream said why); a 5xx becomes 502.
    """

    code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int, param: str | None = None,
                 code: str | None = None, error_type: str | None = None) -> None:
        status = upstream_status if 400 <= upstream_status < 500 else 502
        super().__init__(message, param=param, code=code, status_code=status)
        self.upstream_status = upstream_status
        if 400 <= upstream_status < 500:
            self.error_type = error_type or "invalid_request_error"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ServiceUnavailableError(UnimodelError):
    status_code = 503
    error_type = "service_unavailable"
    code = "engine_not_ready"


class OverloadedError(ServiceUnavailableError):
    code = "queue_full"


class PoolSaturatedError(OverloadedError):
    """Every replica of the upstream pool stayed saturated for as long as a request may wait at the gateway."""

    code = "pool_saturated"


class CircuitOpenError(ServiceUnavailableError):
    """Every upstream a request could go to has its circuit breaker open (retry after ``retry_after``)."""

    code = "circuit_open"


class LimitsUnavailableError(ServiceUnavailableError):
    """Rate limits cannot be checked (their Redis is down) and ``--limits-on-redis-failure closed`` is set."""

    code = "limits_unavailable"


class TooManyConnectionsError(ServiceUnavailableError):
    """Every one of ``--max-connections`` has a request in flight (answered by the HTTP layer before any
    route: no request is logged)."""

    code = "too_many_connections"


class ImagesBusyError(ServiceUnavailableError):
    """Every slot for image work (fetching and decoding, server-wide) stayed busy for the whole wait."""

    code = "images_busy"


class ResponseStoreUnavailableError(ServiceUnavailableError):
    """The stored responses' database or Redis cannot be reached (or timed out): a response to store was not
    stored, or one asked for could not be read. Never swallowed: a lost write would break the next turn."""

    code = "store_unavailable"


class ConfigError(ValueError):
    """A settings problem an operator can fix (not a client's error, never an HTTP answer): raised while the
    settings become objects, at start-up; the CLI prints it as one line and exits 2."""
