"""The model cache: import, fetch over a real loopback server, resolve and trust."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import stat
import threading
import zipfile
from pathlib import Path

import platformdirs
import pytest
import yaml

from model_zoo import cache
from model_zoo.cache import (
    cache_dir,
    fetch_model,
    import_model,
    is_trusted,
    list_models,
    remove_model,
    resolve_source,
)
from model_zoo.errors import CancelledError, OncoAIError

from ._http_server import PackageServer

UNET_ONNX_SHA = "85f5ac80fa977fea3562ef97c8c5950288be2c4f4cdb5d994807df97008ce088"
UNET_PT_SHA = "a4b0659a1b48454588b12179855ad0a0c9b69ccaa89b8bb06e6271e8f60b02fe"
FILES = "/test-unet/1/files"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[Path]:
    """Every file below ``folder``; empty if it does not exist."""
    return (
        sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    )


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, prefix + file.name)
    return archive


def write_package(folder: Path, rdf: dict, files: dict[str, bytes]) -> Path:
    """Write a small package: ``files`` and an rdf.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_model(name: str, model_id: str | None = None, **weights: dict) -> dict:
    rdf = {"format_version": "0.5.4", "type": "model", "name": name}
    if model_id:
        rdf["id"] = model_id
    rdf["weights"] = weights or {
        "onnx": {"source": "w.onnx", "sha256": digest(b"onnx weights")}
    }
    return rdf


def metadata(model_path: Path) -> dict:
    return json.loads((model_path / "oncoai_cache.json").read_text())


# ---------------------------------------------------------------------- import


def test_cache_dir_follows_env_else_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("ONCOAI_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ONCOAI_CACHE_DIR")
    assert cache_dir() == Path(platformdirs.user_cache_dir("oncoai"))


def test_import_folder_verifies_lists_and_resolves(unet_dir):
    calls = []
    model = import_model(unet_dir, progress=lambda *a: calls.append(a))

    assert model.name == "UNet 2D Nuclei Broad"
    assert model.id.startswith("unet-2d-nuclei-broad-")
    assert model.nickname is None
    assert model.path == cache_dir() / "models" / model.id
    assert model.rdf == model.path / "bioimageio.yaml"
    assert model.source == str(unet_dir.resolve())
    assert model.trusted
    assert sha256(model.path / "weights.onnx") == UNET_ONNX_SHA
    assert sha256(model.rdf) == sha256(unet_dir / "bioimageio.yaml")
    assert list_models() == [model]

    meta = metadata(model.path)
    assert meta["id"] == model.id
    assert meta["rdf_sha256"] == sha256(unet_dir / "bioimageio.yaml")
    assert meta["files_sha256"]["weights.onnx"] == UNET_ONNX_SHA
    assert meta["files_sha256"]["weights.pt"] == UNET_PT_SHA
    assert meta["remote"] == [
        {
            "field": "weights.pytorch_state_dict",
            "source": "http://files.ilastik.org/bioimageio_test/"
            "unet2d_nuclei_broad_weights.torch",
        }
    ]
    # The remote entry's architecture file is left out of the shared package.
    assert meta["absent"] == [
        {"field": "weights.pytorch_state_dict.architecture", "source": "unet2d.py"}
    ]
    total = sum((unet_dir / name).stat().st_size for name in meta["files_sha256"])
    assert calls[-1][:2] == (total, total)

    for key in (model.id, "unet 2d nuclei broad", str(model.path), model.rdf):
        assert resolve_source(key) == model.rdf
    shared_rdf = resolve_source(unet_dir)
    assert shared_rdf == unet_dir.resolve() / "bioimageio.yaml"
    assert not is_trusted(shared_rdf)


@pytest.mark.parametrize("prefix", ["", "unet2d_nuclei_broad/"])
def test_import_zip_replaces_model_of_same_id(unet_dir, tmp_path, prefix):
    first = import_model(unet_dir)
    archive = zip_folder(unet_dir, tmp_path / "unet.zip", prefix)

    model = import_model(archive)

    assert model.id == first.id
    assert model.source == str(archive)
    assert list_models() == [model]
    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    leftovers = [p.name for p in (cache_dir() / "models").iterdir()]
    assert leftovers == [model.id]


def test_import_refuses_sha_mismatch_and_leaves_nothing(unet_dir, tmp_path):
    package = tmp_path / "unet"
    shutil.copytree(unet_dir, package)
    weights = package / "weights.onnx"
    weights.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    actual = sha256(weights)

    with pytest.raises(
        OncoAIError, match=rf"weights\.onnx .*{UNET_ONNX_SHA}.*{actual}"
    ):
        import_model(package)

    assert files_in(cache_dir()) == []
    assert list_models() == []


@pytest.mark.parametrize(
    "member", ["../evil.txt", "/tmp/oncoai-evil.txt", "sub/../../evil.txt", "link"]
)
def test_import_refuses_zip_slip(tmp_path, member):
    archive = tmp_path / "pkg" / "slip.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(tiny_model("slip")))
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../../etc/passwd" if member == "link" else "pwned")

    with pytest.raises(OncoAIError, match="unsafe entry"):
        import_model(archive)
    with pytest.raises(OncoAIError, match="unsafe entry"):
        resolve_source(archive)

    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "pkg" / "evil.txt").exists()
    assert not Path("/tmp/oncoai-evil.txt").exists()
    assert files_in(cache_dir()) == []


def _not_a_zip(tmp_path: Path) -> Path:
    path = tmp_path / "model.zip"
    path.write_text("this is text")
    return path


def _bad_crc_zip(tmp_path: Path) -> Path:
    path = tmp_path / "model.zip"
    payload = b"x" * 4096
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(tiny_model("crc")))
        zf.writestr("w.onnx", payload)
    data = bytearray(path.read_bytes())
    data[data.index(payload) + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _no_rdf(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "weights.onnx").write_bytes(b"w")
    return tmp_path / "pkg"


def _bad_yaml(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rdf.yaml").write_text("name: [unclosed\n")
    return tmp_path / "pkg"


def _missing_weights(tmp_path: Path) -> Path:
    return write_package(tmp_path / "pkg", tiny_model("missing"), {})


def _v04_bad_architecture(tmp_path: Path) -> Path:
    rdf = {
        "format_version": "0.4.10",
        "type": "model",
        "name": "old style",
        "test_inputs": ["in.npy"],
        "weights": {
            "pytorch_state_dict": {
                "source": "w.pt",
                "sha256": digest(b"state"),
                "architecture": "net.py:Net",
                "architecture_sha256": digest(b"other code"),
            }
        },
    }
    files = {"in.npy": b"npy", "w.pt": b"state", "net.py": b"class Net: ..."}
    return write_package(tmp_path / "pkg", rdf, files)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "nowhere.zip", "no such file or folder"),
        (_not_a_zip, "neither a zip nor a folder"),
        (_bad_crc_zip, "not a readable zip"),
        (_no_rdf, "no model description in .*rdf.yaml"),
        (_bad_yaml, "not valid YAML"),
        (_missing_weights, r"lacks w\.onnx, named by the RDF field weights\.onnx"),
        (_v04_bad_architecture, r"net\.py does not match .*architecture"),
    ],
)
def test_import_refuses_bad_packages(tmp_path, make, message):
    with pytest.raises(OncoAIError, match=message):
        import_model(make(tmp_path))
    assert files_in(cache_dir()) == []


def test_import_refuses_rdf_naming_files_outside_the_package(tmp_path):
    rdf = tiny_model("escape")
    rdf["covers"] = ["../secret.png"]
    package = write_package(tmp_path / "pkg", rdf, {"w.onnx": b"onnx weights"})
    (tmp_path / "secret.png").write_bytes(b"png")

    with pytest.raises(OncoAIError, match=r"covers\[0\] points outside the package"):
        import_model(package)
    assert files_in(cache_dir()) == []


def test_resolve_source_unpacks_a_zip_once_untrusted(unet_dir, tmp_path):
    archive = zip_folder(unet_dir, tmp_path / "unet.zip")

    rdf = resolve_source(archive)

    assert rdf == cache_dir() / "unpacked" / sha256(archive) / "bioimageio.yaml"
    assert sha256(rdf.parent / "weights.onnx") == UNET_ONNX_SHA
    mtime = rdf.stat().st_mtime_ns
    assert resolve_source(str(archive)) == rdf
    assert rdf.stat().st_mtime_ns == mtime
    assert not is_trusted(rdf)
    assert list_models() == []


def test_resolve_source_unknown_explains_the_fix(tmp_path):
    with pytest.raises(
        OncoAIError,
        match=r"'no-such-model' is neither an existing file or folder nor a cached "
        r"model; run `oncoai models list`.*`oncoai models import PATH`.*"
        r"`oncoai models fetch ID`",
    ):
        resolve_source("no-such-model")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OncoAIError, match="neither a model description"):
        resolve_source(tmp_path / "notes.txt")


def test_ambiguous_name_asks_for_an_id(tmp_path):
    for model_id in ("first-model", "second-model"):
        package = write_package(
            tmp_path / model_id,
            tiny_model("Same Name", model_id),
            {"w.onnx": b"onnx weights"},
        )
        import_model(package)

    assert resolve_source("second-model").parent.name == "second-model"
    with pytest.raises(OncoAIError, match="several cached models are named"):
        resolve_source("same name")


def test_nickname_resolves_and_remove_deletes(tmp_path):
    rdf = tiny_model("Nick", "10.5281/zenodo.1/2")
    rdf["config"] = {"bioimageio": {"nickname": "witty-otter"}}
    model = import_model(
        write_package(tmp_path / "p", rdf, {"w.onnx": b"onnx weights"})
    )

    assert model.nickname == "witty-otter"
    assert model.path.parent == cache_dir() / "models"
    assert "/" not in model.path.name
    assert resolve_source("witty-otter") == model.rdf

    assert remove_model("witty-otter") == model
    assert not model.path.exists()
    assert list_models() == []
    with pytest.raises(OncoAIError, match="no cached model 'witty-otter' to remove"):
        remove_model("witty-otter")


def test_trust_is_revoked_by_edits_after_install(tmp_path, unet_dir):
    code = b"class Net:\n    pass\n"
    weights = {
        "pytorch_state_dict": {
            "source": "w.pt",
            "sha256": digest(b"state"),
            "architecture": {
                "source": "net.py",
                "sha256": digest(code),
                "callable": "Net",
            },
        }
    }
    package = write_package(
        tmp_path / "p",
        tiny_model("Coded", "coded", **weights),
        {"w.pt": b"state", "net.py": code},
    )
    model = import_model(package)
    arch = model.path / "net.py"
    assert model.trusted and is_trusted(model.rdf)
    assert not is_trusted(package / "rdf.yaml")

    arch.write_bytes(code + b"import os\n")
    assert not is_trusted(model.rdf)
    assert [m.trusted for m in list_models()] == [False]
    arch.write_bytes(code)
    assert is_trusted(model.rdf)
    model.rdf.write_text(model.rdf.read_text() + "\n# edited\n")
    assert not is_trusted(model.rdf)

    # An architecture file absent at import must not appear later.
    unet = import_model(unet_dir)
    assert is_trusted(unet.rdf)
    (unet.path / "unet2d.py").write_text("import os\n")
    assert not is_trusted(unet.rdf)


# ----------------------------------------------------------------------- fetch


@pytest.fixture
def server(unet_dir):
    """A loopback bioimage.io collection holding the U-Net as ``test-unet``."""
    rdf = yaml.safe_load((unet_dir / "bioimageio.yaml").read_text())
    rdf = {"id": "test-unet", **rdf}
    rdf_bytes = yaml.safe_dump(rdf, sort_keys=False).encode()
    with PackageServer() as srv:
        srv.files[f"{FILES}/rdf.yaml"] = rdf_bytes
        for file in unet_dir.iterdir():
            if file.name != "bioimageio.yaml":
                srv.add_file(f"{FILES}/{file.name}", file)
        entry = {
            "type": "model",
            "name": rdf["name"],
            "version_number": "1",
            "doi": "10.5281/zenodo.1111111",
            "concept_doi": "10.5281/zenodo.1111110",
            "entry_sha256": digest(rdf_bytes),
        }
        versioned = {**entry, "id": "test-unet/1", "nickname": "test-unet/1"}
        versioned["rdf_source"] = "test-unet/1/files/rdf.yaml"
        latest = {**entry, "id": "test-unet", "nickname": "test-unet"}
        latest["rdf_source"] = f"{srv.url}{FILES}/rdf.yaml"
        collection = {"name": "test", "collection": [versioned, latest]}
        srv.files["/collection.json"] = json.dumps(collection).encode()
        yield srv


def test_fetch_downloads_verifies_and_resumes_a_dropped_transfer(server, unet_dir):
    size = (unet_dir / "weights.pt").stat().st_size
    server.drops[f"{FILES}/weights.pt"] = [size // 2]
    calls = []

    model = fetch_model(
        "test-unet", base_url=server.url, progress=lambda *a: calls.append(a)
    )

    assert model.id == "test-unet"
    assert model.source == f"{server.url}{FILES}/rdf.yaml"
    assert model.trusted
    assert list_models() == [model]
    assert resolve_source("test-unet") == model.rdf == model.path / "rdf.yaml"
    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    assert sha256(model.path / "weights.onnx") == UNET_ONNX_SHA

    pt_requests = server.requests_for(f"{FILES}/weights.pt")
    assert len(pt_requests) == 2
    assert "Range" not in pt_requests[0]
    assert pt_requests[1]["Range"] == f"bytes={size // 2}-"
    assert (size, size, "weights.pt") in calls

    meta = metadata(model.path)
    assert meta["remote"][0]["field"] == "weights.pytorch_state_dict"
    # The remote entry's files are not fetched: they serve weights not in the package.
    assert server.requests_for(f"{FILES}/environment.yaml") == []
    assert not (model.path / "environment.yaml").exists()
    assert sorted(p.name for p in model.path.iterdir()) == sorted(
        [
            "rdf.yaml",
            "oncoai_cache.json",
            "README.md",
            "cover0.png",
            "test_input.npy",
            "test_input.png",
            "test_output.npy",
            "test_output.png",
            "weights.onnx",
            "weights.pt",
        ]
    )
    assert not (cache_dir() / "downloads").exists()


def test_fetch_restarts_when_server_ignores_range(server, unet_dir):
    size = (unet_dir / "weights.pt").stat().st_size
    server.drops[f"{FILES}/weights.pt"] = [size // 3]
    server.ignore_range = True

    model = fetch_model("test-unet", base_url=server.url)

    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    pt_requests = server.requests_for(f"{FILES}/weights.pt")
    assert [r.get("Range") for r in pt_requests] == [None, f"bytes={size // 3}-"]


def test_fetch_resumes_in_a_later_call(server, unet_dir, monkeypatch):
    monkeypatch.setattr(cache, "_RETRY_DELAYS_S", (0.0, 0.0))
    size = (unet_dir / "weights.pt").stat().st_size
    server.drops[f"{FILES}/weights.pt"] = [size // 2, 0]

    with pytest.raises(OncoAIError, match="run the same command again to resume"):
        fetch_model("test-unet", base_url=server.url)
    assert list_models() == []
    parts = list((cache_dir() / "downloads").rglob("weights.pt.part"))
    assert [p.stat().st_size for p in parts] == [size // 2]

    model = fetch_model("test-unet", base_url=server.url)

    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    assert (
        server.requests_for(f"{FILES}/weights.pt")[-1]["Range"] == f"bytes={size // 2}-"
    )
    # Files completed in the first call are not downloaded again.
    assert len(server.requests_for(f"{FILES}/weights.onnx")) == 1
    assert not (cache_dir() / "downloads").exists()


def test_fetch_restarts_a_stale_part_from_an_earlier_call(
    server, unet_dir, monkeypatch
):
    monkeypatch.setattr(cache, "_RETRY_DELAYS_S", (0.0, 0.0))
    path = f"{FILES}/weights.pt"
    good = server.files[path]
    wrong = bytearray(good)
    wrong[10] ^= 0xFF
    server.files[path] = bytes(wrong)
    server.drops[path] = [len(good) // 2, 0]
    with pytest.raises(OncoAIError, match="run the same command again to resume"):
        fetch_model("test-unet", base_url=server.url)

    server.files[path] = good
    model = fetch_model("test-unet", base_url=server.url)

    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    ranges = [r.get("Range") for r in server.requests_for(path)]
    assert ranges[-2:] == [f"bytes={len(good) // 2}-", None]


def test_fetch_missing_file_on_server(server):
    del server.files[f"{FILES}/test_output.npy"]

    with pytest.raises(OncoAIError, match=r"test_output\.npy: HTTP 404"):
        fetch_model("test-unet", base_url=server.url)
    assert files_in(cache_dir()) == []


@pytest.mark.parametrize(
    "query",
    [
        "bioimage-io/test-unet",
        "test-unet/1",
        "10.5281/zenodo.1111111",
        "doi:10.5281/zenodo.1111110",
        "https://doi.org/10.5281/zenodo.1111110",
        "{url}/test-unet/1/files/rdf.yaml",
    ],
)
def test_fetch_resolves_ids_and_dois(server, query):
    query = query.replace("{url}", server.url)
    model = fetch_model(query, base_url=server.url, formats=["onnx"])
    assert model.id == "test-unet"
    assert sha256(model.path / "weights.onnx") == UNET_ONNX_SHA


def test_fetch_only_chosen_weights(server):
    collection = server.url + "/collection.json"

    model = fetch_model("test-unet", base_url=collection, formats=["onnx"])

    assert not (model.path / "weights.pt").exists()
    assert server.requests_for(f"{FILES}/weights.pt") == []
    assert metadata(model.path)["skipped_weights"] == ["torchscript"]
    assert resolve_source("test-unet") == model.rdf


def test_fetch_refuses_weights_not_in_the_package(server):
    with pytest.raises(
        OncoAIError,
        match="weights pytorch_state_dict are not files of this package; "
        "choose from: onnx, torchscript",
    ):
        fetch_model("test-unet", base_url=server.url, formats=["pytorch_state_dict"])
    assert files_in(cache_dir()) == []


def test_fetch_pattern_from_env_needs_no_collection(server, monkeypatch):
    monkeypatch.setenv("ONCOAI_BIOIMAGEIO_URL", server.url + "/{id}/1/files/rdf.yaml")

    model = fetch_model("test-unet", formats=["torchscript"])

    assert model.id == "test-unet"
    assert sha256(model.path / "weights.pt") == UNET_PT_SHA
    assert server.requests_for("/collection.json") == []


def test_fetch_refuses_corrupt_file_and_leaves_nothing(server):
    path = f"{FILES}/weights.onnx"
    data = bytearray(server.files[path])
    data[1000] ^= 0xFF
    server.files[path] = bytes(data)

    with pytest.raises(
        OncoAIError,
        match=rf"weights\.onnx downloaded from .* expected {UNET_ONNX_SHA}, "
        rf"got {digest(bytes(data))}",
    ):
        fetch_model("test-unet", base_url=server.url)
    assert files_in(cache_dir()) == []


def test_fetch_refuses_rdf_that_leaves_the_package(server):
    rdf = tiny_model("escape", "escape")
    rdf["documentation"] = "../../../../outside.md"
    server.files["/escape/files/rdf.yaml"] = yaml.safe_dump(rdf).encode()

    with pytest.raises(OncoAIError, match="documentation points outside the package"):
        fetch_model("escape", base_url=server.url + "/{id}/files/rdf.yaml")
    assert files_in(cache_dir()) == []
    assert server.requests_for("/outside.md") == []


def test_fetch_cancel_leaves_nothing(server):
    cancel = threading.Event()

    def progress(done: int, total: int | None, name: str) -> None:
        if name == "weights.onnx" and done > 0:
            cancel.set()

    with pytest.raises(CancelledError, match="cancelled"):
        fetch_model("test-unet", base_url=server.url, progress=progress, cancel=cancel)
    assert files_in(cache_dir()) == []


def test_fetch_unknown_id(server):
    with pytest.raises(
        OncoAIError, match="no model 'nope' in the bioimage.io collection"
    ):
        fetch_model("nope", base_url=server.url)
    assert files_in(cache_dir()) == []


def test_fetch_unreachable_server(monkeypatch):
    monkeypatch.setattr(cache, "_RETRY_DELAYS_S", (0.0, 0.0))
    with socket.socket() as sock:  # a port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(OncoAIError, match=rf"could not reach http://127.0.0.1:{port}/"):
        fetch_model("test-unet", base_url=f"http://127.0.0.1:{port}")
    assert files_in(cache_dir()) == []
