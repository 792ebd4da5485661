"""Translate botocore's errors into dtimeout's hierarchy, at the edge of the SQS transport.

The consumer's retry policy looks only at ``transient``: throttling, 5xx answers and dropped
connections may succeed when tried again (``TransientTransportError``); a denied permission, a
missing queue, a missing region or credentials will not, and are configuration errors (the CLI
exits 2 with one line). Everything else is a plain, permanent ``TransportError``. The botocore
exception stays chained as the cause; messages name the queue and the operation, never a
credential.

Imported only from ``dtimeout_sqs.transport``, i.e. after boto3 is known to be installed.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    SSLError,
)

from dtimeout.errors import (
    ConfigurationError,
    DtimeoutError,
    PayloadTooLargeError,
    TransientTransportError,
    TransportError,
)

# Error codes as botocore reports them for SQS (the JSON protocol keeps the query-era codes).
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
MISSING_QUEUE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSecurity",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "KMS.AccessDeniedException",
        "KmsAccessDenied",
        "KMS.DisabledException",
        "KmsDisabled",
    }
)


class SqsMessageTooLargeError(PayloadTooLargeError, TransportError):
    """Raised by ``send`` when messages exceed the queue's ``MaximumMessageSize``.

    Our own check, made before any request: an emulator would accept what SQS refuses. The
    other messages of the call were sent; ``failed`` lists the refused message ids. It is a
    ``PayloadTooLargeError`` (caller input, exit 2) and a ``TransportError`` carrying ``failed``,
    so a caller handling either learns which messages did not go.
    """

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message, transient=False)
        self.failed = failed


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: BaseException, *, operation: str, queue: str) -> DtimeoutError:
    """The dtimeout error for a botocore failure of ``operation`` on ``queue``."""
    where = f"sqs: {operation} on queue {queue!r}"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = _one_line(str(exc.response.get("Error", {}).get("Message", "")) or code)
        if code in MISSING_QUEUE_CODES:
            return ConfigurationError(f"{where}: the queue does not exist (or is not visible)")
        if code in DENIED_CODES or status == 403:
            return ConfigurationError(f"{where}: access denied ({code}); check IAM permissions")
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientTransportError(f"{where} failed, may succeed later: {code}: {detail}")
        return TransportError(f"{where} failed: {code}: {detail}")
    if isinstance(exc, NoRegionError):
        return ConfigurationError(
            "sqs: no AWS region: add ?region=… to the URL or set AWS_DEFAULT_REGION"
        )
    if isinstance(exc, ProfileNotFound | NoCredentialsError | PartialCredentialsError):
        return ConfigurationError(f"sqs: AWS credentials are not usable: {_one_line(str(exc))}")
    if isinstance(exc, CredentialRetrievalError):
        return ConfigurationError(
            f"sqs: AWS credentials could not be obtained: {type(exc).__name__}"
        )
    if isinstance(exc, SSLError):
        return ConfigurationError(f"{where}: TLS failed: {_one_line(str(exc))}")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientTransportError(f"{where}: connection failed: {_one_line(str(exc))}")
    if isinstance(exc, BotoCoreError):
        return TransportError(f"{where} failed: {_one_line(str(exc))}")
    return TransportError(f"{where} failed: {type(exc).__name__}")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
