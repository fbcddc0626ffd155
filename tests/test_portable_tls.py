"""One trust decision for HTTPS and WSS, tested with an empty default certificate store (as a
python.org Python on macOS has before "Install Certificates") and with a studio CA that only
the system store holds (as on Windows). Certificates come from tests/data/tls (no openssl)."""

from __future__ import annotations

import os
import ssl

import pytest
from helpers import sleep_workflow

from comfy_cluster import ConfigError, ServerPool
from comfy_cluster import tls as tls_mod
from comfy_cluster.testing import MockComfyServer

TLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tls")
CA = os.path.join(TLS_DIR, "ca.pem")
FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=3.0)


@pytest.fixture
def https_mock():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.path.join(TLS_DIR, "server.pem"), os.path.join(TLS_DIR, "server.key"))
    server = MockComfyServer(name="tls", ssl_context=ctx).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def default_store(monkeypatch):
    """The OS default store, made empty (macOS python.org) or given a studio CA (Windows)."""
    held = []
    real = ssl.SSLContext.load_default_certs

    def load_default_certs(self, purpose=ssl.Purpose.SERVER_AUTH):
        for path in held:
            self.load_verify_locations(cafile=path)

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", load_default_certs)
    monkeypatch.setattr(tls_mod, "_cache", {})  # contexts are cached per setting
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)  # a machine's own CA settings (this one has them) are not the test's
    yield held
    assert ssl.SSLContext.load_default_certs is not real


@pytest.fixture
def certifi_with_ca(monkeypatch):
    """certifi's bundle holding the test CA (a public CA, for the test's purpose)."""
    monkeypatch.setattr(tls_mod.certifi, "where", lambda: CA)


def _run_one(url, verify):
    with ServerPool([{"name": "tls", "url": url, "verify_tls": verify}], **FAST) as pool:
        st = pool.status(refresh=True)[0]
        assert st.online, st.error
        job = pool.submit(sleep_workflow(0.2, steps=3))
        job.result(timeout=20)
        kinds = [e.kind for e in job.events]
        # Progress came over the websocket (wss), not only from /history.
        assert "progress" in kinds and "started" in kinds
        assert pool._sockets["tls"].connected


def test_default_trust_serves_https_and_wss_with_an_empty_default_store(https_mock, default_store, certifi_with_ca):
    """Before: HTTPS used certifi, WSS the (empty) default store: online, yet no websocket."""
    assert default_store == []
    _run_one(https_mock.url, True)


def test_system_store_serves_https_and_wss(https_mock, default_store):
    """A studio CA installed in the system store (Windows), not in certifi: verify_tls "system"."""
    default_store.append(CA)
    _run_one(https_mock.url, "system")


def test_ca_file_serves_both_whatever_the_default_store_holds(https_mock, default_store):
    _run_one(https_mock.url, CA)


def test_unloadable_ca_path_is_a_config_error(https_mock, default_store, tmp_path):
    with pytest.raises(ConfigError, match="tls: verify_tls: cannot load CA certificates from"):
        ServerPool([{"name": "tls", "url": https_mock.url, "verify_tls": str(tmp_path / "missing.pem")}], **FAST)


def test_untrusted_certificate_fails_both_alike(https_mock, default_store):
    """Nothing trusts the CA: the server is offline with a TLS error, never half-online."""
    with ServerPool([{"name": "tls", "url": https_mock.url, "verify_tls": "system"}], **FAST) as pool:
        st = pool.status(refresh=True)[0]
        assert not st.online and "TLS" in st.error
    assert https_mock.received_prompts == []


def test_https_and_wss_share_one_context():
    from comfy_cluster import ServerConfig
    from comfy_cluster.client import ComfyClient
    from comfy_cluster.events import sslopt_for

    cfg = ServerConfig(name="s", url="https://127.0.0.1:1", verify_tls=CA)
    client = ComfyClient(cfg)
    try:
        assert sslopt_for(cfg)["context"] is client._ssl
        assert client._ssl.verify_mode == ssl.CERT_REQUIRED and client._ssl.check_hostname
    finally:
        client.close()
    off = ServerConfig(name="s", url="https://127.0.0.1:1", verify_tls=False)
    assert sslopt_for(off)["context"].verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_private_ca_from_the_environment_is_trusted_as_requests_trusts_it(https_mock, default_store, monkeypatch, variable):
    """Issue 21 item 6: a studio sets REQUESTS_CA_BUNDLE (or OpenSSL's SSL_CERT_FILE) to its
    private CA. Plain requests got 200 while the pool showed the server offline on TLS."""
    import requests

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv(variable, CA)
    if variable == "REQUESTS_CA_BUNDLE":
        assert requests.get(https_mock.url + "/queue", timeout=10).status_code == 200  # what the user checked
    _run_one(https_mock.url, True)


def test_environment_ca_that_cannot_be_loaded_is_a_config_error(https_mock, default_store, monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="verify_tls: cannot load CA certificates from .*missing.pem"):
        ServerPool([{"name": "tls", "url": https_mock.url}], **FAST)
