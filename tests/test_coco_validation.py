"""Malformed COCO files (issue 24): each variant is one SegkerasError line naming the file, the id
and the field, raised in Python before pycocotools' C code sees the data. The crash probes (a NaN
or a 1e9 polygon coordinate: 16 GB and a segfault before) run in a subprocess under an
address-space limit, so a regression fails the test instead of taking the machine down."""

import copy
import json
import re
import resource
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segkeras.data import coco, sources
from segkeras.data.images import MAX_IMAGE_PIXELS, read_rgb
from segkeras.errors import SegkerasError

HEIGHT, WIDTH = 20, 30


def good_content():
    rle = mask_utils.encode(_square())
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 2, "file_name": "b.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[2, 2, 12, 2, 12, 10]]},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [HEIGHT, WIDTH], "counts": [100, 50, HEIGHT * WIDTH - 150]}},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _square():
    square = np.zeros((HEIGHT, WIDTH), np.uint8)
    square[5:15, 14:25] = 1
    return np.asfortranarray(square)


def write(tmp_path, content, raw: bytes | None = None):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(images / name)
    annotations = tmp_path / "annotations.json"
    annotations.write_bytes(raw if raw is not None else json.dumps(content).encode())
    return annotations, images


def test_the_good_file_loads_with_polygon_rle_and_crowd(tmp_path):
    data = coco.load(*write(tmp_path, good_content()))
    assert data.class_names == ["background", "cat", "dog"]
    np.testing.assert_array_equal(data.instances[0].masks[1], _square().astype(bool))
    assert len(data.instances[1]) == 0 and (data.masks[1] == 255).sum() == 50  # the crowd


def mutate(path: str, value):
    """A content transform setting ``path`` ("annotations.0.segmentation.0.1") to ``value``
    (``DELETE`` removes the key)."""
    def apply(content):
        *parents, last = path.split(".")
        node = content
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
        return content
    return apply


DELETE = object()


def duplicate(kind: str, field: str = "id"):
    def apply(content):
        content[kind][1][field] = content[kind][0][field]
        return content
    return apply


MALFORMED = {
    # name: (transform, the message's file-independent part)
    "nan_polygon": (mutate("annotations.0.segmentation.0.1", float("nan")),
                    r"annotation 1 of .*annotations.json, segmentation: .*NaN"),
    "1e9_polygon": (mutate("annotations.0.segmentation.0.2", 1e9),
                    r"annotation 1 of .*, segmentation: polygon x coordinates reach 2\.\.1e\+09"),
    "broken_rle_counts": (mutate("annotations.1.segmentation.counts", "PZ3#0"),
                          r"annotation 2 of .*, segmentation.counts: not a valid compressed RLE"),
    "rle_counts_wrong_total": (mutate("annotations.2.segmentation.counts", [100, 50]),
                               r"annotation 3 .*counts: the runs cover 150 pixels .* 600"),
    "rle_wrong_size": (mutate("annotations.1.segmentation.size", [10, 10]),
                       r"annotation 2 .*segmentation.size: \[10, 10\] but the image is \[20, 30\]"),
    "counts_none": (mutate("annotations.1.segmentation.counts", None),
                    r"annotation 2 .*segmentation.counts: a NoneType"),
    "counts_int": (mutate("annotations.1.segmentation.counts", 7),
                   r"annotation 2 .*segmentation.counts: a int"),
    "size_of_length_1": (mutate("annotations.1.segmentation.size", [20]),
                         r"annotation 2 .*segmentation.size: \[20\]; an RLE size is \[height"),
    "polygon_strings": (mutate("annotations.0.segmentation.0", ["2", "2", "12", "2", "12", "10"]),
                        r"annotation 1 .*segmentation: a polygon must be a list of numbers"),
    "polygon_too_short": (mutate("annotations.0.segmentation.0", [2, 2, 12, 2]),
                          r"annotation 1 .*polygon with 2\.0 points; a polygon needs at least 3"),
    "duplicate_annotation_ids": (duplicate("annotations"),
                                 r"annotation 1 of .*, id: used twice"),
    "duplicate_image_ids": (duplicate("images"), r"image 1 of .*, id: used twice"),
    "duplicate_category_ids": (duplicate("categories"), r"category 1 of .*, id: used twice"),
    "iscrowd_string": (mutate("annotations.0.iscrowd", "0"),
                       r"annotation 1 .*, iscrowd: '0'; it must be the number 0 or 1"),
    "iscrowd_2": (mutate("annotations.0.iscrowd", 2), r"annotation 1 .*, iscrowd: 2"),
    "unknown_image_id": (mutate("annotations.0.image_id", 77),
                         r"annotation 1 .*, image_id: 77 is not the id of any image"),
    "unknown_category_id": (mutate("annotations.0.category_id", 99),
                            r"annotation 1 .*, category_id: 99 is not the id of any category"),
    "category_without_name": (mutate("categories.1.name", DELETE),
                              r"category 2 of .*, name: missing; every category needs a name"),
    "mixed_id_types": (mutate("images.1.id", "2"),
                       r"image '2' of .*, id: a str; ids must be integers"),
    "no_categories_key": (mutate("categories", DELETE), r"has no 'categories' list"),
    "integer_file_name": (mutate("images.0.file_name", 17),
                          r"image 1 of .*, file_name: 17 is not a file name"),
    "height_as_string": (mutate("images.0.height", "20"),
                         r"image 1 of .*, height: '20'; it must be a whole number"),
    "huge_image_entry": (mutate("images.0.width", 6_000_000),
                         r"image 1 of .* is 20x6000000 pixels, more than"),
    "not_an_object": (lambda content: [content], r"holds a JSON list, not a COCO"),
    "no_segmentation": (mutate("annotations.0.segmentation", DELETE),
                        r"annotation 1 of .* has no segmentation; give it one or remove it"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_is_one_line_naming_file_id_and_field(tmp_path, name):
    transform, expected = MALFORMED[name]
    annotations, images = write(tmp_path, transform(copy.deepcopy(good_content())))
    with pytest.raises(SegkerasError, match=expected) as caught:
        coco.load(annotations, images)
    assert "\n" not in str(caught.value) and str(annotations) in str(caught.value)


def test_non_utf8_json(tmp_path):
    raw = json.dumps(good_content()).replace('"cat"', '"caf\\u00e9"').encode()
    raw = raw.replace(b"caf\\u00e9", "café".encode("latin-1"))
    with pytest.raises(SegkerasError, match=r"annotations.json is not UTF-8 text \(byte \d+\)"):
        coco.load(*write(tmp_path, None, raw=raw))


def png_header_only(path, width, height):
    """A PNG claiming ``width`` x ``height`` gray pixels with one row of data: what a
    decompression bomb looks like to a reader of headers (a few dozen bytes on disk)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 30_000])
def test_huge_png_is_refused_before_decoding(tmp_path, side):
    """A 12000^2 or 30000^2 PNG (144 MP, 900 MP: 2.7 GB decoded) is refused from its header, in
    read_rgb (predict, Pets) and in the COCO loader."""
    annotations, images = write(tmp_path, good_content())
    png_header_only(images / "a.png", side, side)
    expected = rf"a.png (is {side}x{side} pixels: |has )more than {MAX_IMAGE_PIXELS:,} pixels"
    with pytest.raises(SegkerasError, match=expected):
        read_rgb(images / "a.png")
    with pytest.raises(SegkerasError, match=expected):
        coco.load(annotations, images)


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.asfortranarray(rng.random((37, 23)) < rng.random())
        rle = mask_utils.encode(mask.astype(np.uint8))
        counts = coco.rle_string_counts(rle["counts"].decode())
        assert sum(counts) == mask.size
        back = np.zeros(mask.size, np.uint8)
        position = 0
        for index, run in enumerate(counts):
            back[position:position + run] = index % 2
            position += run
        np.testing.assert_array_equal(back.reshape(mask.shape, order="F"), mask)


@pytest.mark.parametrize("spec, expected", [
    ("coco:ann.json:images", ("ann.json", "images")),
    ("coco:C:\\data\\val.json:D:\\val2017", ("C:\\data\\val.json", "D:\\val2017")),
    ("coco:/a:b/ann.JSON:/c:d/img", ("/a:b/ann.JSON", "/c:d/img")),
])
def test_coco_spec_is_split_after_json(spec, expected):
    assert sources.parse_coco_spec(spec) == expected


@pytest.mark.parametrize("spec", ["coco:ann.json", "coco:ann.json:", "coco:ann.txt:images",
                                  "coco::images"])
def test_bad_coco_spec_states_the_rule(spec):
    with pytest.raises(SegkerasError, match=r"the annotations file must end in \.json .* "
                                            r"Windows paths work"):
        sources.parse_coco_spec(spec)


PROBE = textwrap.dedent("""
    import sys
    from segkeras.data import coco
    from segkeras.errors import SegkerasError
    for annotations, images in zip(sys.argv[1::2], sys.argv[2::2]):
        try:
            coco.load(annotations, images)
            print("LOADED", annotations, flush=True)
        except SegkerasError as error:
            print("REFUSED", error, flush=True)
""")
ADDRESS_SPACE = 3 * 2**30  # importing TensorFlow maps about 1.6 GB; the crash asked for 16 GB
CRASH_PROBES = ("nan_polygon", "1e9_polygon", "broken_rle_counts")


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_crash_probes_are_refused_under_an_address_space_limit(tmp_path):
    """These reached pycocotools' C code: 16 GB and an OOM kill, a segfault, uninitialised
    memory. Now a one-line refusal each, in a process that cannot take the machine down (one
    process for the three: a crash stops it at the probe that crashed)."""
    arguments = []
    for name in CRASH_PROBES:
        transform, _ = MALFORMED[name]
        (tmp_path / name).mkdir()
        arguments += map(str, write(tmp_path / name, transform(copy.deepcopy(good_content()))))
    done = subprocess.run([sys.executable, "-c", PROBE, *arguments],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_address_space)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (f"exit {done.returncode} after {len(lines)} of "
                                  f"{CRASH_PROBES}: {done.stderr[-2000:]}")
    assert len(lines) == len(CRASH_PROBES), lines
    for name, line in zip(CRASH_PROBES, lines, strict=True):
        assert line.startswith("REFUSED") and f"/{name}/" in line, (name, line)
        assert re.search(MALFORMED[name][1], line), (name, line)
