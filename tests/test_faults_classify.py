"""ServerError.fault is decided by exception type along the chain, never by message text:
Windows words a refusal ``[WinError 10061] ... actively refused it``, Linux ``Connection refused``."""

import socket

import pytest
import requests
import urllib3

from comfy_cluster import ServerConfig
from comfy_cluster.client import ComfyClient, classify
from comfy_cluster.errors import ServerError


def _wrapped(inner: BaseException, outer_kind: str) -> BaseException:
    """The chain requests builds: requests error <- MaxRetryError <- urllib3 error <- socket error."""
    try:
        try:
            raise inner
        except OSError as e:
            if outer_kind == "new_connection":
                raise urllib3.exceptions.NewConnectionError(None, f"Failed to establish a new connection: {e}") from e
            raise urllib3.exceptions.ConnectTimeoutError(None, "connect timeout") from e
    except urllib3.exceptions.HTTPError as u:
        mre = urllib3.exceptions.MaxRetryError(None, "/queue", u)
        return requests.exceptions.ConnectionError(mre)


WINDOWS_REFUSED = ConnectionRefusedError(
    10061, "No connection could be made because the target machine actively refused it"
)


@pytest.mark.parametrize(
    "exc, fault",
    [
        (_wrapped(WINDOWS_REFUSED, "new_connection"), "refused"),
        (_wrapped(ConnectionRefusedError(111, "Connection refused"), "new_connection"), "refused"),
        (_wrapped(socket.timeout("timed out"), "timeout"), "connect_timeout"),
        (requests.exceptions.ConnectTimeout("x"), "connect_timeout"),
        (requests.exceptions.ReadTimeout("x"), "read_timeout"),
        (urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out."), "read_timeout"),
        (_wrapped(ConnectionResetError(10054, "An existing connection was forcibly closed"), "new_connection"), "connect"),
        (requests.exceptions.SSLError("x"), "tls"),
        # Text that says "refused" does not make a refusal: only the type does.
        (requests.exceptions.ConnectionError("Connection refused (said a proxy page)"), "connect"),
        (ValueError("refused"), ""),
    ],
)
def test_classify_by_type(exc, fault):
    assert classify(exc) == fault


def test_a_real_refusal_on_loopback_is_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    client = ComfyClient(ServerConfig(name="gone", host="127.0.0.1", port=port))
    try:
        with pytest.raises(ServerError) as info:
            client.queue()
    finally:
        client.close()
    assert info.value.fault == "refused"
    assert "connection refused" in str(info.value)


def test_http_status_sets_fault_http():
    assert ServerError("x", status=500).fault == "http"
    with pytest.raises(ValueError):
        ServerError("x", fault="nonsense")
