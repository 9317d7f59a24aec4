"""Downloader against a local HTTP server: good, interrupted+resumed, bad checksum, traversal."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from keras_mtl.core.errors import DataError, UserError
from keras_mtl.data.download import download_corpus, extract, load_descriptor

REPO = Path(__file__).resolve().parent.parent


class Server:
    """Serves in-memory files with Range support; can cut the first response short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_first_at: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                server.requests.append((self.path, self.headers.get("Range")))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first_at is not None:
                    cut, server.cut_first_at = server.cut_first_at, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture()
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _descriptor(server, name, data, **extra):
    server.files[name] = data
    return {
        "name": "demo",
        "files": [
            {"url": f"{server.base}/{name}", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **extra}
        ],
    }


CONTENT = {"corpus/a.txt": b"alpha" * 1000, "corpus/sub/b.txt": b"beta" * 50000}


def test_good_download_verifies_and_extracts(server, tmp_path):
    descriptor = _descriptor(server, "demo.tar.gz", _tar(CONTENT))
    download_corpus(descriptor, tmp_path / "out")
    assert (tmp_path / "out/corpus/a.txt").read_bytes() == CONTENT["corpus/a.txt"]
    assert (tmp_path / "out/corpus/sub/b.txt").read_bytes() == CONTENT["corpus/sub/b.txt"]
    requests = len(server.requests)
    download_corpus(descriptor, tmp_path / "out")  # second run: nothing fetched again
    assert len(server.requests) == requests


def test_interrupted_download_resumes(server, tmp_path):
    data = _tar({f"corpus/{k}.bin": bytes(range(256)) * 800 for k in range(4)})
    descriptor = _descriptor(server, "big.tar.gz", data)
    server.cut_first_at = len(data) // 3
    with pytest.raises(DataError, match="interrupted"):
        download_corpus(descriptor, tmp_path / "out")
    part = tmp_path / "out/.archives/big.tar.gz.part"
    assert part.stat().st_size == len(data) // 3
    assert not (tmp_path / "out/corpus").exists()
    download_corpus(descriptor, tmp_path / "out")
    assert server.requests[-1][1] == f"bytes={len(data) // 3}-"
    assert len(list((tmp_path / "out/corpus").iterdir())) == 4


def test_wrong_checksum_is_refused_and_nothing_extracted(server, tmp_path):
    descriptor = _descriptor(server, "demo.tar.gz", _tar(CONTENT))
    descriptor["files"][0]["sha256"] = "0" * 64
    with pytest.raises(DataError, match="checksum mismatch"):
        download_corpus(descriptor, tmp_path / "out")
    assert not (tmp_path / "out/corpus").exists()
    assert not list((tmp_path / "out/.archives").glob("*"))


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "corpus/../../evil.txt"])
def test_traversal_members_are_refused(server, tmp_path, member):
    descriptor = _descriptor(server, "bad.tar.gz", _tar({"corpus/ok.txt": b"ok", member: b"evil"}))
    with pytest.raises(DataError, match="refusing member"):
        download_corpus(descriptor, tmp_path / "out")
    assert not (tmp_path / "out/corpus").exists() and not (tmp_path / "evil.txt").exists()


def test_symlink_and_zip_slip_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        link = tarfile.TarInfo("corpus/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "link.tar").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="refusing link member"):
        extract(tmp_path / "link.tar", tmp_path / "x")
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../../slip.txt", "evil")
    with pytest.raises(DataError, match="escapes the target folder"):
        extract(tmp_path / "slip.zip", tmp_path / "y")
    assert not (tmp_path / "y" / "ok.txt").exists()


def test_manual_corpora_and_descriptors_in_repo(tmp_path):
    for path in sorted((REPO / "datasets").glob("*/descriptor.yaml")):
        descriptor = load_descriptor(path)
        assert descriptor.get("files") or descriptor.get("manual"), path
    with pytest.raises(UserError, match="needs manual steps"):
        download_corpus(load_descriptor(REPO / "datasets/common_voice/descriptor.yaml"), tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/download.py"), "common_voice", "--to", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Mozilla Data Collective" in result.stderr and "Traceback" not in result.stderr


def test_download_script_end_to_end(server, tmp_path):
    descriptor = _descriptor(server, "demo.tar.gz", _tar(CONTENT))
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(descriptor))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/download.py"), str(path), "--to", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o/corpus/a.txt").is_file()
