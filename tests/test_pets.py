"""Oxford-IIIT Pet loader on a fake tree in the official layout, odd files included; no network."""

import io
import os
import shutil
import tarfile

import keras
import numpy as np
import pytest
from PIL import Image

from segkeras.data import pets
from segkeras.errors import DataUnavailableError, SegkerasError

NAMES = ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2", "Bombay_1", "boxer_1"]
UNREADABLE = "boxer_1"


def trimap(height, width):
    """1 = pet (a centred box), 3 = its one-pixel border, 2 = background."""
    values = np.full((height, width), 2, np.uint8)
    values[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 3
    values[height // 4 + 1: 3 * height // 4 - 1, width // 4 + 1: 3 * width // 4 - 1] = 1
    return values


def photo(height, width, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, 3)
    return np.clip(base + rng.integers(-8, 9, (height, width, 3)), 0, 255).astype(np.uint8)


def make_tree(root, names=NAMES):
    """images/*.jpg with the real archive's oddities, annotations/trimaps/*.png, split files."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "annotations", "trimaps"))
    sizes = {}
    for index, name in enumerate(names):
        height, width = 30 + 4 * index, 40 - 2 * index
        sizes[name] = (height, width)
        path = os.path.join(root, "images", f"{name}.jpg")
        pixels = photo(height, width, index)
        if name == "Abyssinian_1":  # a regular RGB JPEG
            Image.fromarray(pixels).save(path, format="JPEG", quality=95)
        elif name == "Abyssinian_2":  # PNG data behind a .jpg name
            Image.fromarray(pixels).save(path, format="PNG")
        elif name == "beagle_1":  # grayscale JPEG
            Image.fromarray(pixels[..., 0]).save(path, format="JPEG", quality=95)
        elif name == "beagle_2":  # RGBA PNG behind a .jpg name
            Image.fromarray(np.dstack([pixels, np.full((height, width), 128, np.uint8)])).save(
                path, format="PNG")
        elif name == "Bombay_1":  # CMYK JPEG
            Image.fromarray(pixels).convert("CMYK").save(path, format="JPEG", quality=95)
        else:  # unreadable
            with open(path, "wb") as file:
                file.write(b"\xff\xd8 not really a jpeg")
        Image.fromarray(trimap(height, width)).save(
            os.path.join(root, "annotations", "trimaps", f"{name}.png"))
    # macOS resource-fork junk, as in the real annotations archive
    with open(os.path.join(root, "annotations", "trimaps", "._Abyssinian_1.png"), "wb") as f:
        f.write(b"junk")
    with open(os.path.join(root, "annotations", "trainval.txt"), "w") as file:
        file.write("#Image CLASS-ID SPECIES BREED ID\n")
        file.writelines(f"{name} 1 1 1\n" for name in names[:-2] + [names[-1]])
    with open(os.path.join(root, "annotations", "test.txt"), "w") as file:
        file.write(f"{names[-2]} 2 1 1\n")
    return sizes


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "oxford_pets"
    return str(root), make_tree(str(root))


def expected_mask(height, width, mode):
    values = trimap(height, width)
    border = 2 if mode == "trimap" else 255
    return np.select([values == 1, values == 2, values == 3], [1, 0, border]).astype(np.uint8)


def test_trimap_mode_reads_every_odd_file(tree):
    root, sizes = tree
    with pytest.warns(UserWarning, match=f"{UNREADABLE}.jpg"):
        data = pets.load(root, split="trainval", mode="trimap")
    assert data.class_names == ["background", "pet", "border"]
    assert data.extra["names"] == ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2"]
    assert data.extra["skipped"] == [UNREADABLE]
    assert data.instances is None
    for name, image, mask in zip(data.extra["names"], data.images, data.masks, strict=True):
        assert image.dtype == np.uint8 and image.shape == (*sizes[name], 3)
        np.testing.assert_array_equal(mask, expected_mask(*sizes[name], "trimap"))
    np.testing.assert_array_equal(data.images[1], photo(*sizes["Abyssinian_2"], 1))  # PNG
    gray = data.images[2]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    np.testing.assert_array_equal(data.images[3], photo(*sizes["beagle_2"], 3))  # RGBA


def test_binary_mode_ignores_the_border_and_reads_cmyk(tree):
    root, sizes = tree
    data = pets.load(root, split="test", mode="binary")
    assert data.class_names == ["background", "pet"] and data.extra["names"] == ["Bombay_1"]
    np.testing.assert_array_equal(data.masks[0], expected_mask(*sizes["Bombay_1"], "binary"))
    assert set(np.unique(data.masks[0])) == {0, 1, 255}
    original = photo(*sizes["Bombay_1"], 4).astype(int)
    assert np.abs(data.images[0].astype(int) - original).mean() < 6  # CMYK JPEG -> RGB


def test_resize_on_load_and_limit(tree):
    root, _ = tree
    data = pets.load(root, image_size=(16, 20), limit=2)
    assert data.images.shape == (2, 16, 20, 3) and data.masks.shape == (2, 16, 20)
    assert set(np.unique(data.masks)) <= {0, 1, 2}


def test_missing_listed_image_names_the_path(tree):
    root, _ = tree
    os.remove(os.path.join(root, "images", "beagle_1.jpg"))
    with pytest.raises(FileNotFoundError, match="beagle_1.jpg"):
        pets.load(root)


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"images.tar.gz.*annotations.tar.gz"):
        pets.load(tmp_path / "nothing", download=False)


def test_offline_download_failure_is_explained(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    root = tmp_path / "pets"
    with pytest.raises(DataUnavailableError) as error:
        pets.load(root)
    message = str(error.value)
    assert "images.tar.gz" in message and str(root) in message and "no network" in message
    assert "robots.ox.ac.uk" in message


def test_download_fetches_both_archives_with_md5_and_extracts(tmp_path, monkeypatch):
    source = tmp_path / "source"
    make_tree(str(source))
    calls = []

    def fake_get_file(fname, origin, file_hash, hash_algorithm, cache_subdir):
        calls.append((fname, origin, file_hash, hash_algorithm))
        folder = fname.split(".")[0]
        target = os.path.join(cache_subdir, fname)
        with tarfile.open(target, "w:gz") as tar:
            tar.add(source / folder, arcname=folder)
        return target

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    root = tmp_path / "downloaded"
    with pytest.warns(UserWarning):
        data = pets.load(root)
    assert len(data) == 4
    assert [(c[0], c[2], c[3]) for c in calls] == [
        ("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", "md5"),
        ("annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f", "md5"),
    ]
    assert calls[0][1] == "https://thor.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"
    assert not any(name.endswith(".tar.gz") for name in os.listdir(root))
    # only what is missing is fetched again
    calls.clear()
    shutil.rmtree(root / "annotations")
    with pytest.warns(UserWarning):
        pets.load(root)
    assert [c[0] for c in calls] == ["annotations.tar.gz"]


def test_default_root_is_under_the_keras_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert pets.default_root() == os.path.join(str(tmp_path), "datasets", "oxford_pets")


@pytest.mark.parametrize("arguments", [{"split": "train"}, {"mode": "instance"},
                                       {"image_size": (0, 4)}])
def test_bad_arguments(tree, arguments):
    with pytest.raises(SegkerasError):
        pets.load(tree[0], **arguments)


def test_unreadable_trimap_is_skipped(tree):
    root, _ = tree
    with open(os.path.join(root, "annotations", "trimaps", "beagle_2.png"), "wb") as file:
        file.write(io.BytesIO(b"broken").getvalue())
    with pytest.warns(UserWarning, match="beagle_2"):
        data = pets.load(root)
    assert "beagle_2" in data.extra["skipped"]
