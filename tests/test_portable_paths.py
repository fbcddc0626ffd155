"""Server-given names on Windows, macOS and Linux, simulated here with ``ntpath``.

The oracle for Windows' reserved names is Python's own: ``ntpath.isreserved`` (3.13+: names,
characters, trailing dots and spaces) or ``PureWindowsPath.is_reserved`` (older: names).
Downloads claim their targets atomically and case-insensitively; a file held by another
program (Windows) is retried, and a failure never leaves a claimed empty file or hides the
first error.
"""

from __future__ import annotations

import ntpath
import os
import posixpath
import threading
from pathlib import PureWindowsPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_cluster import ServerPool, localfiles
from comfy_cluster.errors import LocalFileError, UnsafePathError
from comfy_cluster.jobs import OutputFile
from comfy_cluster.outputs import unique_targets
from comfy_cluster.paths import is_inside, local_target, windows_safe_name

from helpers import OsWith, servers_of

FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0)


def windows_reserved(name: str) -> bool:
    """Python's own rule for a name Windows cannot use."""
    if hasattr(ntpath, "isreserved"):  # Python 3.13+
        return bool(ntpath.isreserved(name))
    return PureWindowsPath(name).is_reserved()


UNUSABLE = ["CON.png", "con", "nul", "NUL.tar.gz", "COM1.png", "lpt9", "AUX .png", "PRN", "CONIN$",
            "a<b.png", "a>b", 'q"uote.png', "pipe|.png", "what?.png", "star*.png", "tab\t.png",
            "bell\x07", "x.png.", "x.png ", "dots...", "COM\u00b9.png"]


@pytest.mark.parametrize("name", UNUSABLE)
def test_names_windows_cannot_use_are_escaped(name):
    safe = windows_safe_name(name)
    assert safe != name
    assert not windows_reserved(safe)
    assert not any(c in safe for c in '<>:"|?*') and all(ord(c) >= 32 for c in safe)
    assert not safe.endswith((".", " "))


@pytest.mark.parametrize("name", ["plate.0001.png", "ComfyUI_00001_.png", "console.png", "com10.png", "é.exr", "a b.png", ".hidden"])
def test_usable_names_are_kept(name):
    assert windows_safe_name(name) == name


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s and "/" not in s and "\\" not in s and s not in (".", "..")))
def test_any_escaped_name_is_usable_on_windows(name):
    safe = windows_safe_name(name)
    assert not windows_reserved(safe)
    assert not safe.endswith((".", " ")) and not any(c in safe for c in '<>:"|?*')


# Roots at a drive or share root refused every subfolder with a prefix test (root + sep).
ROOT_TABLE = [
    (ntpath, "D:\\", "shots/a", "x.png", "D:\\shots\\a\\x.png"),
    (ntpath, "\\\\server\\share\\", "", "x.png", "\\\\server\\share\\x.png"),
    (ntpath, "\\\\server\\share", "s", "CON.png", "\\\\server\\share\\s\\CON_.png"),
    (ntpath, "C:\\Renders", "A|B", "f?.png", "C:\\Renders\\A_B\\f_.png"),
    (posixpath, "/", "a", "x.png", "/a/x.png"),
    (posixpath, "/mnt/out", "", "nul", "/mnt/out/nul_"),
]


@pytest.mark.parametrize("mod, root, sub, name, expected", ROOT_TABLE)
def test_targets_under_drive_share_and_root_folders(mod, root, sub, name, expected):
    assert local_target(root, sub, name, mod) == expected
    assert is_inside(root, expected, mod)


@pytest.mark.parametrize("sub, name", [("..", "x"), ("a/../..", "x"), ("C:", "x"), ("a/D:evil", "x"), ("", "..\\x"),
                                       ("\\\\other\\share", "x"), ("", "C:x.png"), ("a\x00", "x")])
def test_escapes_are_refused_with_windows_paths(sub, name):
    with pytest.raises(UnsafePathError):
        local_target("D:\\out", sub, name, ntpath)


def test_windows_compares_case_insensitively_and_across_drives():
    assert is_inside("C:\\Renders", "c:\\renders\\x.png", ntpath)
    assert not is_inside("C:\\Renders", "D:\\Renders\\x.png", ntpath)
    assert not is_inside("C:\\Renders", "C:\\Renders2\\x.png", ntpath)
    assert not is_inside("/out", "/out2/x", posixpath)


def _files(*names, sub=""):
    return [OutputFile(n, sub, "output", "9") for n in names]


def test_names_differing_only_by_case_get_distinct_targets(tmp_path):
    (tmp_path / "Shot.png").write_bytes(b"other job")
    targets = unique_targets(str(tmp_path), _files("shot.png", "SHOT.png", "a.png", "A.png"), tag="abcd1234")
    folded = [os.path.basename(t).casefold() for t in targets]
    assert len(set(folded)) == 4 and "shot.png" not in folded
    assert (tmp_path / "Shot.png").read_bytes() == b"other job"
    assert all(os.path.getsize(t) == 0 for t in targets)  # claimed


def test_escaped_names_that_collide_stay_distinct(tmp_path):
    targets = unique_targets(str(tmp_path), _files("a?.png", "a*.png", "a_.png"))
    assert len({t.casefold() for t in targets}) == 3


def test_concurrent_claims_never_share_a_path(tmp_path):
    """Issue 11 item 13: two download() into one folder at once got the same path."""
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        results.extend(unique_targets(str(tmp_path), _files("ComfyUI_00001_.png"), tag="t"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 8


def test_two_concurrent_downloads_into_one_folder(mock_cluster_factory, tmp_path):
    """Two servers each made ``same.png``; downloaded at once into one folder, both survive."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    for i, server in enumerate(cluster.servers):
        src = os.path.join(server.data_dir, "output")
        os.makedirs(src, exist_ok=True)
        with open(os.path.join(src, "same.png"), "wb") as fh:
            fh.write(bytes([i]) * 100)
    got = {}
    barrier = threading.Barrier(2)
    with ServerPool(servers_of(cluster), **FAST) as pool:

        def dl(i):
            barrier.wait()
            got[i] = pool._download(pool.servers[i], _files("same.png"), str(tmp_path), tag=f"job{i}")[0]

        threads = [threading.Thread(target=dl, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got[0] != got[1]
    assert {open(got[i], "rb").read() for i in range(2)} == {b"\x00" * 100, b"\x01" * 100}
    assert open(got[0], "rb").read() == b"\x00" * 100


class _Locked:
    """os.replace/os.unlink as on Windows while another program holds the file."""

    def __init__(self, real, times):
        self.real, self.times, self.calls = real, times, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls <= self.times:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        return self.real(*args)


@pytest.fixture
def fake_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(localfiles, "_clock", lambda: now[0])
    monkeypatch.setattr(localfiles, "_sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


def test_replace_retries_while_the_file_is_held(tmp_path, monkeypatch, fake_time):
    src, dst = tmp_path / "a.part", tmp_path / "a.png"
    src.write_bytes(b"new")
    dst.write_bytes(b"")
    locked = _Locked(os.replace, 3)
    monkeypatch.setattr(localfiles, "os", OsWith(replace=locked))
    localfiles.replace(str(src), str(dst))
    assert locked.calls == 4 and dst.read_bytes() == b"new"


def test_a_file_held_for_good_is_a_library_error_naming_it(tmp_path, monkeypatch, fake_time):
    src, dst = tmp_path / "a.part", tmp_path / "a.png"
    src.write_bytes(b"new")
    monkeypatch.setattr(localfiles, "os", OsWith(replace=_Locked(os.replace, 10**6)))
    with pytest.raises(LocalFileError, match="a.png.*another program"):
        localfiles.replace(str(src), str(dst))
    assert fake_time[0] >= localfiles.LOCK_RETRY_SECONDS


def test_failed_download_keeps_the_first_error_and_leaves_nothing(mock_comfy, tmp_path, monkeypatch, fake_time):
    # The server answers 404 for the second file; the clean-up of the claimed names is itself
    # held by "another program" for good: the 404 must still be what the caller sees.
    from comfy_cluster.errors import ServerError

    src = os.path.join(mock_comfy.data_dir, "output")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "ok.png"), "wb") as fh:
        fh.write(b"x")
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        with pytest.raises(ServerError, match="404"):
            pool._download(pool.servers[0], _files("ok.png", "missing.png"), str(tmp_path / "out"))
        assert sorted(os.listdir(tmp_path / "out")) == ["ok.png"]  # no empty claim, no .part
        monkeypatch.setattr(localfiles, "os", OsWith(unlink=_Locked(os.unlink, 10**6)))
        with pytest.raises(ServerError, match="404"):
            pool._download(pool.servers[0], _files("missing.png"), str(tmp_path / "out2"))


def test_unwritable_folder_is_a_library_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(LocalFileError, match="cannot create folder"):
        unique_targets(str(blocker / "sub"), _files("x.png"))


# ---------------------------------------------------------------------------------------------
# issue 21 item 12: names valid on NTFS, too long for Linux and macOS (255 bytes per name)


def test_long_cjk_output_name_downloads_shortened_and_unique(tmp_path):
    """A 131-character CJK name (fine on NTFS: 255 UTF-16 units) is 393 UTF-8 bytes: its
    download failed on Linux and macOS with "File name too long". The server here is a real
    HTTP server answering /view as a ComfyUI on Windows would (no Linux disk holds that name)."""
    import http.server

    from comfy_cluster import ServerConfig
    from comfy_cluster.client import ComfyClient
    from comfy_cluster.outputs import download_outputs
    from comfy_cluster.paths import MAX_NAME_BYTES

    class View(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = self.path.encode()  # each file's content names it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), View)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server = ServerConfig(name="win", url=f"http://127.0.0.1:{httpd.server_address[1]}")
    client = ComfyClient(server)
    try:
        names_on_server = ["東" * 130 + "京_00001_.png", "東" * 130 + "都_00001_.png"]  # differ only after any cut
        assert all(len(n) <= 255 < len(n.encode()) for n in names_on_server)
        files = [OutputFile(filename=n, subfolder="", type="output", node="9") for n in names_on_server]
        paths = download_outputs(client, server, files, str(tmp_path / "renders"), tag="abcd1234")
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    names = [os.path.basename(p) for p in paths]
    assert len(set(names)) == 2 and sorted(os.listdir(tmp_path / "renders")) == sorted(names)
    for name, path in zip(names, paths):
        assert len(name.encode("utf-8")) <= MAX_NAME_BYTES and len(name.encode("utf-16-le")) // 2 <= MAX_NAME_BYTES
        assert name.startswith("東" * 50) and name.endswith(".png")
        assert os.path.getsize(path) > 0


@given(st.lists(st.text(min_size=200, max_size=300), min_size=2, max_size=5, unique=True))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_shortened_names_fit_every_os_and_stay_distinct(names):
    from comfy_cluster.paths import MAX_NAME_BYTES, fit_name

    fitted = [fit_name(n + ".png") for n in names]
    for name in fitted:
        assert len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        assert len(name.encode("utf-16-le", "surrogatepass")) // 2 <= MAX_NAME_BYTES
    assert len(set(fitted)) == len(fitted)


def test_a_taken_long_name_gets_a_distinct_shortened_name(tmp_path):
    name = "東" * 84 + ".png"  # 252 bytes: fits, but not with the job's id added
    first = unique_targets(str(tmp_path), [OutputFile(filename=name, subfolder="", type="output", node="9")], tag="abcd1234")
    second = unique_targets(str(tmp_path), [OutputFile(filename=name, subfolder="", type="output", node="9")], tag="abcd1234")
    assert first != second and all(len(os.path.basename(p).encode()) <= 255 for p in first + second)
