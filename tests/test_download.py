"""Galaxy10 h5 source and resumable, verified downloads, served from a local HTTP server (no network).

The h5 file has the genuine Galaxy10 layout (``images`` uint8 [N,256,256,3], ``ans``, ``ra``, ``dec``,
``redshift``, ``pxscale``) and holds the 100 real Galaxy10 DECaLS JPEGs from ../shared/data.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import class_dirs
from PIL import Image

from astrocli.data import build_datasets
from astrocli.data.download import download_file
from astrocli.errors import DataError
from astrocli.recipe import load_recipe


@pytest.fixture(scope="module")
def galaxy_h5(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Galaxy10_DECals.h5 in the genuine layout, made from the 100 real sample galaxies."""
    images, labels = [], []
    for folder in class_dirs(galaxy_sample_dir):
        label = int(folder.name.split("-", 1)[0])
        for path in sorted(folder.glob("*.jpg")):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    path = tmp_path_factory.mktemp("galaxy_h5") / "Galaxy10_DECals.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle["images"] = np.stack(images).astype(np.uint8)
        handle["ans"] = np.asarray(labels, dtype=np.uint8)
        handle["ra"] = rng.uniform(0, 360, len(labels))
        handle["dec"] = rng.uniform(-30, 80, len(labels))
        handle["redshift"] = rng.uniform(0, 0.3, len(labels))
        handle["pxscale"] = np.full(len(labels), 0.262)
    return path


class FileServer:
    """Serves one payload on 127.0.0.1 with HTTP Range support; can cut the first transfer short."""

    def __init__(self, payload: bytes, cut_first_after: int | None = None) -> None:
        self.payload = payload
        self.cut_first_after = cut_first_after
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                body = server.payload[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                if header:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                self.end_headers()
                if server.cut_first_after is not None and len(server.ranges) == 1:
                    self.wfile.write(body[: server.cut_first_after])  # then drop the connection
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/Galaxy10_DECals.h5"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def galaxy_recipe(root: Path, *extra: str):
    return load_recipe(
        None,
        [
            "data.source=galaxy10_decals",
            f"data.root={root}",
            "data.img_size=64",
            "data.val_fraction=0.2",
            *extra,
        ],
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_galaxy10_reads_lazily_with_a_stratified_split(galaxy_h5: Path) -> None:
    recipe = galaxy_recipe(galaxy_h5.parent, "data.download=false")
    bundle = build_datasets(recipe.data)
    assert bundle.class_names[0] == "Disturbed" and bundle.class_names[9] == "Edge-on with Bulge"
    assert (len(bundle.train), len(bundle.val)) == (80, 20)
    assert set(bundle.split_info["counts"]["val"].values()) == {2}  # stratified: 2 of each class
    assert bundle.split_info["heldout_split"] == "stratified" and bundle.split_info["split_seed"] == 0
    assert not set(bundle.train.indices) & set(bundle.val.indices)
    with h5py.File(galaxy_h5, "r") as handle:
        row = int(bundle.val.indices[3])
        expected, label = handle["images"][row], int(handle["ans"][row])
    img, target = bundle.val[3]
    assert img.mode == "RGB" and img.size == (256, 256) and target == label
    assert np.array_equal(np.asarray(img), expected)
    array = bundle.val.uint8_array()
    assert array.shape == (20, 256, 256, 3) and array.dtype == np.uint8
    assert np.array_equal(array[3], expected)
    assert len(bundle.mean) == 3 and all(0 < s < 1 for s in bundle.std)  # measured from the file


def test_galaxy10_in_memory_grayscale_and_worker_processes(galaxy_h5: Path) -> None:
    import torch

    lazy = build_datasets(galaxy_recipe(galaxy_h5.parent, "data.download=false", "data.in_chans=1").data)
    memory = build_datasets(
        galaxy_recipe(galaxy_h5.parent, "data.download=false", "data.in_chans=1", "data.in_memory=true").data
    )
    assert lazy.train[5][0].mode == "L" and len(lazy.mean) == 1
    assert np.array_equal(np.asarray(lazy.train[5][0]), np.asarray(memory.train[5][0]))
    assert lazy.train.uint8_array().shape == (80, 256, 256, 1)
    # h5py handles are not fork-safe: each worker must open its own.
    loader = torch.utils.data.DataLoader(
        lazy.val, batch_size=5, num_workers=2, collate_fn=lambda b: [np.asarray(img).sum() for img, _ in b]
    )
    sums = [s for batch in loader for s in batch]
    assert sums == [np.asarray(lazy.val[i][0]).sum() for i in range(len(lazy.val))]


def test_download_verifies_and_builds(galaxy_h5: Path, tmp_path: Path) -> None:
    with FileServer(galaxy_h5.read_bytes()) as server:
        recipe = galaxy_recipe(tmp_path, f"data.url={server.url}", f"data.sha256={sha256(galaxy_h5)}")
        bundle = build_datasets(recipe.data)
    assert (tmp_path / "Galaxy10_DECals.h5").read_bytes() == galaxy_h5.read_bytes()
    assert not (tmp_path / "Galaxy10_DECals.h5.part").exists()
    assert len(bundle.train) + len(bundle.val) == 100


def test_wrong_checksum_is_one_error_and_leaves_no_file(galaxy_h5: Path, tmp_path: Path) -> None:
    with FileServer(galaxy_h5.read_bytes()) as server:
        recipe = galaxy_recipe(tmp_path, f"data.url={server.url}", "data.sha256=" + "0" * 64)
        with pytest.raises(DataError) as err:
            build_datasets(recipe.data)
    message = str(err.value)
    assert "checksum mismatch" in message and "0" * 64 in message and "\n" not in message
    assert not (tmp_path / "Galaxy10_DECals.h5").exists()
    assert not (tmp_path / "Galaxy10_DECals.h5.part").exists()


def test_interrupted_transfer_resumes_with_range(galaxy_h5: Path, tmp_path: Path) -> None:
    payload = galaxy_h5.read_bytes()
    half = len(payload) // 2
    dest = tmp_path / "Galaxy10_DECals.h5"
    with FileServer(payload, cut_first_after=half) as server:
        with pytest.raises(DataError, match="interrupted .* run again to resume"):
            download_file(server.url, dest, sha256(galaxy_h5), progress=False)
        part = tmp_path / "Galaxy10_DECals.h5.part"
        assert part.stat().st_size == half and not dest.exists()
        download_file(server.url, dest, sha256(galaxy_h5), progress=False)
    assert server.ranges == [None, f"bytes={half}-"]  # the second request resumed, not restarted
    assert dest.read_bytes() == payload and not part.exists()


def test_offline_galaxy_names_the_file_to_place(tmp_path: Path) -> None:
    recipe = galaxy_recipe(tmp_path, "data.download=false")
    with pytest.raises(DataError) as err:
        build_datasets(recipe.data)
    assert "zenodo.org" in str(err.value) and str(tmp_path / "Galaxy10_DECals.h5") in str(err.value)
    closed = galaxy_recipe(tmp_path, "data.url=http://127.0.0.1:9/Galaxy10_DECals.h5")  # nothing listens
    with pytest.raises(DataError, match="cannot download"):
        build_datasets(closed.data)


def test_not_a_galaxy10_file(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "Galaxy10_DECals.h5", "w") as handle:
        handle["pixels"] = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(DataError, match="lacks the Galaxy10 key"):
        build_datasets(galaxy_recipe(tmp_path, "data.download=false").data)
