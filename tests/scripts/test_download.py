"""``scripts/download.py`` against a local HTTP server on 127.0.0.1 (nothing leaves the machine): a partial file is
resumed with a Range request, a transfer cut mid-way is resumed by the retry, a server that ignores Range restarts
the file, a bad checksum is refused (the file deleted), an interrupted extraction is redone, SA-1B tars from a links
file end up extracted and indexed the way the loader reads them, and weights are fetched by name and checked."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import download  # scripts/ is on sys.path (conftest.py)
import pytest
import torch

from edgetam_train.data.formats.sa1b import load_index
from edgetam_train.data.synthetic import make_sample_data


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; ``cut_after`` (name -> n) closes the first response
    for that name after n bytes; ``ignore_range`` answers 200 with the whole file; ``requests`` logs (name, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/").split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = bytes(range(256)) * 4000  # 1 MB: more than one read chunk


def test_partial_file_is_resumed_with_range(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:300_000])  # left by an interrupted run
    digest = download.download(f"{server.url}/blob.bin", dest, sha(PAYLOAD), log=lambda *_: None)
    assert digest == sha(PAYLOAD) and dest.read_bytes() == PAYLOAD
    assert server.requests == [("blob.bin", "bytes=300000-")]  # only the rest was asked for
    assert not (tmp_path / "blob.bin.part").exists()
    assert (tmp_path / "blob.bin.sha256").read_text() == f"{sha(PAYLOAD)}  blob.bin\n"
    download.download(f"{server.url}/blob.bin", dest, sha(PAYLOAD))  # done already: checked, nothing fetched
    assert len(server.requests) == 1


def test_cut_transfer_is_resumed_by_the_retry_and_range_ignored_restarts(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    server.files["blob.bin"] = PAYLOAD
    server.cut_after["blob.bin"] = 123_456
    digest = download.download(f"{server.url}/blob.bin", tmp_path / "a.bin", log=lambda *_: None)
    assert digest == sha(PAYLOAD) and (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests == [("blob.bin", None), ("blob.bin", "bytes=123456-")]

    server.ignore_range = True
    (tmp_path / "b.bin.part").write_bytes(b"stale bytes of another version")
    assert download.download(f"{server.url}/blob.bin", tmp_path / "b.bin", sha(PAYLOAD)) == sha(PAYLOAD)
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD  # the 200 answer replaced the part instead of appending

    server.cut_after["blob.bin"] = 10
    with pytest.raises(download.DownloadError, match=r"c.bin: download from .* failed after 1 tries.*resume"):
        download.download(f"{server.url}/blob.bin", tmp_path / "c.bin", retries=0, log=lambda *_: None)
    with pytest.raises(download.DownloadError, match=r"missing.bin: .* answered 404"):
        download.download(f"{server.url}/missing.bin", tmp_path / "missing.bin", log=lambda *_: None)


def test_bad_checksum_is_refused_and_the_file_deleted(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    wrong = sha(b"something else")
    with pytest.raises(download.DownloadError, match=rf"blob.bin: sha256 {sha(PAYLOAD)} does not match the expected "
                                                     rf"{wrong}; the file was deleted"):
        download.download(f"{server.url}/blob.bin", tmp_path / "blob.bin", wrong)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()
    assert not (tmp_path / "blob.bin.sha256").exists()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def sa1b_tars(tmp_path) -> dict[str, bytes]:
    """Two SA-1B-style tars (flat sa_N.jpg + sa_N.json, as the official ones) of generated sample images."""
    sample = tmp_path / "sample"
    make_sample_data(["--out", str(sample), "--num-images", "4", "--formats", "sa1b"])
    files = sorted(p for p in (sample / "sa1b").iterdir() if p.suffix in (".jpg", ".json"))
    assert len(files) == 8
    return {"sa_000000.tar": _tar({p.name: p.read_bytes() for p in files[:4]}),
            "sa_000001.tar": _tar({p.name: p.read_bytes() for p in files[4:]})}


def test_sa1b_links_file_download_extract_index_and_rerun(server, tmp_path, sa1b_tars, capsys):
    server.files.update(sa1b_tars)
    links = tmp_path / "sa1b_links.txt"  # Meta's format; the query strings of the CDN links are kept as is
    links.write_text("file_name\tcdn_link\n" + "".join(f"{n}\t{server.url}/{n}?ccb=10-5&oe=6A74\n" for n in sa1b_tars)
                     + f"sa_000002.tar\t{server.url}/sa_000002.tar\n")
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{sha(d)}  {n}\n" for n, d in sa1b_tars.items()))
    out = tmp_path / "sa1b"
    (out / ".sa_000001.partial").mkdir(parents=True)  # an extraction interrupted by an earlier run
    (out / ".sa_000001.partial" / "sa_999.jpg").write_bytes(b"half a file")

    args = ["sa1b", "--links", str(links), "--out", str(out), "--select", "sa_00000[01].tar", "--sha256", str(sums),
            "--workers", "2"]
    assert download.main(args) == 0
    printed = capsys.readouterr().out
    assert "SA-1B index: 4 images with annotations" in printed
    assert sorted(p.name for p in out.iterdir()) == [".edgetam_index.txt", "sa_000000", "sa_000001"]
    assert not (out / ".sa_000001.partial").exists() and not (out / "sa_000001" / "sa_999.jpg").exists()
    index = load_index(out)
    assert len(index) == 4 and all(f.startswith(("sa_000000/", "sa_000001/")) for f in index)
    assert (out / ".edgetam_index.txt").read_text().count("\n") == 4 + 4  # 4-line header + 4 files

    n = len(server.requests)
    assert download.main(args) == 0  # everything extracted: nothing downloaded again
    assert len(server.requests) == n and "already extracted" in capsys.readouterr().out

    assert download.main(["sa1b", "--links", str(links), "--out", str(out), "--select", "sa_000002.tar"]) == 1
    assert "sa_000002.tar" in capsys.readouterr().err  # 404: named, exit status 1
    assert download.main(["sa1b", "--links", str(links), "--out", str(out), "--select", "nothing*"]) == 2


def test_broken_archive_is_named_and_unsafe_members_refused(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(download.DownloadError, match=r"broken.tar: cannot extract it"):
        download.extract(tmp_path / "broken.tar", tmp_path / "out")
    (tmp_path / "evil.tar").write_bytes(_tar({"../escape.txt": b"x"}))
    with pytest.raises(download.DownloadError, match="evil.tar"):
        download.extract(tmp_path / "evil.tar", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "evil").exists()


def test_links_file_formats():
    assert download.archive_stem("DAVIS-2017-trainval-480p.zip") == "DAVIS-2017-trainval-480p"
    assert download.archive_stem("x.tar.gz") == "x" and download.archive_stem("edgetam.pt") is None


def test_read_links_accepts_url_lists_and_names_bad_lines(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("# DAVIS\nhttps://example.org/davis/DAVIS-2017-trainval-480p.zip\n\nmy.tar https://h/x.tar\n")
    assert download.read_links(path) == [("DAVIS-2017-trainval-480p.zip",
                                          "https://example.org/davis/DAVIS-2017-trainval-480p.zip"),
                                         ("my.tar", "https://h/x.tar")]
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        download.read_links(path)


def test_weights_by_name_checked_after_download(server, tmp_path, monkeypatch, capsys):
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(6.0).view(2, 3)}}, buf)
    server.files["edgetam.pt"] = buf.getvalue()
    server.files["html.pt"] = b"<html>Please log in</html>"
    monkeypatch.setitem(download.WEIGHTS, "edgetam",
                        download.Weight(f"{server.url}/edgetam.pt", "edgetam.pt", None, "test"))
    monkeypatch.setitem(download.WEIGHTS, "sam2.1_hiera_tiny",
                        download.Weight(f"{server.url}/html.pt", "sam2.1_hiera_tiny.pt", None, "test"))
    out = tmp_path / "weights"
    assert download.main(["weights", "edgetam", "--out", str(out), "--sha256", f"edgetam={sha(buf.getvalue())}"]) == 0
    assert (out / "edgetam.pt").read_bytes() == buf.getvalue()
    assert f"edgetam: {out / 'edgetam.pt'} sha256 {sha(buf.getvalue())}" in capsys.readouterr().out
    assert download.main(["weights", "sam2.1_hiera_tiny", "--out", str(out)]) == 1
    assert "sam2.1_hiera_tiny.pt: downloaded but not readable as weights" in capsys.readouterr().err
    assert download.main(["weights", "nope", "--out", str(out)]) == 2
    assert download.main(["weights", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in download.WEIGHTS) and "dl.fbaipublicfiles.com" in listed


def test_stale_part_larger_than_the_file_is_downloaded_again(server, tmp_path):
    """A 416 ``bytes */N`` with N smaller than the part is not "finished": the part is replaced by a fresh download."""
    server.files["blob.bin"] = PAYLOAD
    (tmp_path / "blob.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 1000))  # left by another version of the file
    digest = download.download(f"{server.url}/blob.bin", tmp_path / "blob.bin", log=lambda *_: None)
    assert digest == sha(PAYLOAD) and (tmp_path / "blob.bin").read_bytes() == PAYLOAD
    assert server.requests == [("blob.bin", f"bytes={len(PAYLOAD) + 1000}-"), ("blob.bin", None)]
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD)  # exactly the whole file: 416, finished, nothing fetched again
    assert download.download(f"{server.url}/blob.bin", tmp_path / "c.bin", log=lambda *_: None) == sha(PAYLOAD)
    assert server.requests[-1] == ("blob.bin", f"bytes={len(PAYLOAD)}-")


def test_links_names_that_are_folders_and_archives_sharing_a_stem_exit_2(tmp_path, capsys):
    links = tmp_path / "links.txt"
    for name in (".", ".."):
        links.write_text(f"{name} http://127.0.0.1:9/x.tar\n")
        assert download.main(["archives", "--links", str(links), "--out", str(tmp_path / "out")]) == 2
        assert f"line 1: file name {name!r} is not a plain file name" in capsys.readouterr().err
    links.write_text("http://127.0.0.1:9/data/..\n")  # a URL whose last part is '..'
    assert download.main(["archives", "--links", str(links), "--out", str(tmp_path / "out")]) == 2
    links.write_text("http://127.0.0.1:9/x.tar\nhttp://127.0.0.1:9/x.zip\n")
    assert download.main(["archives", "--links", str(links), "--out", str(tmp_path / "out")]) == 2
    assert "archives x.tar and x.zip would both extract to the folder x/" in capsys.readouterr().err
