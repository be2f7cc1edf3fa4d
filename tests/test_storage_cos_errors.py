"""
What COS failures become (cosgw/storage/cos_errors.py, through cos.py's
C{_error}): each test makes the real COS SDK fail for real, against a
closed port, a server that never answers, a name that does not resolve, or
the COS-dialect test server (tests/cosserver.py) with an injected fault, and
checks the typed store error, its message and its request id.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from cosgw.interfaces import NoSuchKey, NoSuchUpload, StoreError, StoreUnavailable
from cosgw.storage.cos import _error
from cosgw.storage.cos_errors import StoreUnreachable
from tests.cosserver import CosTestServer, closed_port, shared_server


@pytest.fixture(scope="module")
def server() -> CosTestServer:
    return shared_server()


@pytest.fixture(scope="module")
def bucket(server: CosTestServer) -> str:
    return server.create_bucket(f"errors-{uuid.uuid4().hex[:10]}")


@pytest.fixture(autouse=True)
def _no_leftover_faults(server: CosTestServer) -> Iterator[None]:
    server.reset_faults()
    yield
    server.reset_faults()


@contextmanager
def silent_server() -> Iterator[int]:
    """
    A port whose kernel accepts connections and takes requests, and nobody
    ever answers: the request is delivered, the reply never comes.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def client_at(port: int, **config: Any) -> CosS3Client:
    settings = {
        "Region": "ap-guangzhou",
        "SecretId": "AKIDtest",
        "SecretKey": "test-key",
        "Scheme": "http",
        "IP": "127.0.0.1",
        "Port": port,
        **config,
    }
    return CosS3Client(CosConfig(**settings), retry=0)


def sdk_failure(call: Callable[[], Any]) -> Exception:
    """What the SDK raises for C{call} (it must raise)."""
    try:
        call()
    except (CosClientError, CosServiceError) as e:
        return e
    raise AssertionError("the SDK call succeeded")


def mapped(call: Callable[[], Any], what: str = "HEAD k") -> StoreError:
    error = _error(sdk_failure(call), what)
    # Whatever it is, it reads as one line naming the operation.
    assert str(error).startswith(what + ": ")
    assert "\n" not in str(error)
    return error


# -- network failures ------------------------------------------------------


def test_connection_refused() -> None:
    """A closed port: unreachable (nothing delivered), and says why."""
    client = client_at(closed_port())
    error = mapped(lambda: client.head_object(Bucket="b-1250000000", Key="k"))
    assert type(error) is StoreUnreachable
    assert isinstance(error, StoreUnavailable)
    assert str(error) == (
        "HEAD k: store unreachable: connection refused (ECONNREFUSED)"
    )
    assert error.request_id is None


def test_name_does_not_resolve() -> None:
    """A host name that cannot resolve (.invalid, RFC 6761): unreachable."""
    client = CosS3Client(
        CosConfig(
            Region="ap-guangzhou",
            SecretId="AKIDtest",
            SecretKey="test-key",
            Scheme="http",
            Endpoint="cosgw-test.invalid",
        ),
        retry=0,
    )
    error = mapped(
        lambda: client.put_object(Bucket="b-1250000000", Key="k", Body=b"x"),
        "PUT k",
    )
    assert type(error) is StoreUnreachable
    assert str(error) == "PUT k: store unreachable: cannot resolve its name"


def test_no_reply_in_time() -> None:
    """
    A request delivered and never answered: transient, and NOT unreachable,
    since the store may have acted on it.
    """
    with silent_server() as port:
        client = client_at(port, Timeout=0.3)
        error = mapped(
            lambda: client.put_object(Bucket="b-1250000000", Key="k", Body=b"x"),
            "PUT k",
        )
    assert type(error) is StoreUnavailable
    assert str(error) == "PUT k: no reply from the store in time"


@pytest.mark.parametrize("reset", [False, True])
def test_connection_dropped(server: CosTestServer, bucket: str, reset: bool) -> None:
    """A connection closed (FIN or RST) instead of a reply: transient."""
    client = server.cos_client(retry=0)
    server.inject("fail", op="HeadObject", bucket=bucket, drop=True, reset=reset)
    error = mapped(lambda: client.head_object(Bucket=bucket, Key="k"))
    assert type(error) is StoreUnavailable
    assert str(error) in (
        "HEAD k: the store closed the connection early",
        "HEAD k: connection reset by the store",
    )


# -- answers from COS --------------------------------------------------------


@pytest.mark.parametrize(
    "status, code",
    [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")],
)
def test_server_errors_are_transient(
    server: CosTestServer, bucket: str, status: int, code: str
) -> None:
    client = server.cos_client(retry=0)
    server.inject("fail", op="PutObject", bucket=bucket, status=status, code=code)
    error = mapped(
        lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x"), "PUT k"
    )
    assert type(error) is StoreUnavailable
    assert str(error) == f"PUT k: COS {status} {code}"
    assert error.request_id and error.request_id != "Unknown"


def test_head_error_keeps_its_request_id(server: CosTestServer, bucket: str) -> None:
    """
    A HEAD's error has no body: the SDK keeps the headers instead and its
    get_request_id() says "Unknown"; the id comes from the header.
    """
    client = server.cos_client(retry=0)
    server.inject("fail", op="HeadObject", bucket=bucket, status=503)
    failure = sdk_failure(lambda: client.head_object(Bucket=bucket, Key="k"))
    assert isinstance(failure, CosServiceError)
    assert failure.get_request_id() == "Unknown"
    error = _error(failure, "HEAD k")
    assert type(error) is StoreUnavailable
    assert error.request_id == failure.get_digest_msg()["x-cos-request-id"]


def test_missing_object_and_upload(server: CosTestServer, bucket: str) -> None:
    client = server.cos_client(retry=0)
    error = mapped(lambda: client.head_object(Bucket=bucket, Key="nothing"))
    assert type(error) is NoSuchKey
    error = mapped(
        lambda: client.get_object(Bucket=bucket, Key="nothing"), "GET nothing"
    )
    assert type(error) is NoSuchKey
    assert error.request_id
    error = mapped(
        lambda: client.abort_multipart_upload(Bucket=bucket, Key="k", UploadId="x"),
        "ABORT k",
    )
    assert type(error) is NoSuchUpload


def test_permanent_refusals(server: CosTestServer, bucket: str) -> None:
    """
    A wrong key or a missing bucket is permanent: a plain StoreError that
    says COS's code and message, never "try again".
    """
    wrong = server.cos_client(retry=0, SecretKey="wrong-secret-key")
    error = mapped(lambda: wrong.put_object(Bucket=bucket, Key="k", Body=b"x"), "PUT k")
    assert type(error) is StoreError
    assert str(error).startswith("PUT k: COS 403 SignatureDoesNotMatch: ")
    assert error.request_id
    client = server.cos_client(retry=0)
    error = mapped(
        lambda: client.put_object(Bucket="nobucket-1250000000", Key="k", Body=b"x"),
        "PUT k",
    )
    assert type(error) is StoreError
    assert str(error).startswith("PUT k: COS 404 NoSuchBucket")


def test_sdk_refusal_is_permanent(server: CosTestServer, bucket: str) -> None:
    """A request the SDK refuses to send (an empty key) is not transient."""
    client = server.cos_client(retry=0)
    error = mapped(
        lambda: client.put_object(Bucket=bucket, Key="", Body=b"x"), "PUT ''"
    )
    assert type(error) is StoreError
    assert "refused by the COS SDK" in str(error)
