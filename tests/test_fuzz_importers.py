"""Property-based fuzzing of every importer with hypothesis: zip archives, CSV and JSON manifests, COCO files.

Each example builds a hostile source (zip members with generated names and contents: traversal and absolute names,
duplicates, a path that is both a folder and a file, links, empty members and members whose header declares a huge
or a too small size; manifests and COCO files with generated rows and structures, valid and not), imports it with
``core.data.importer.import_dataset`` and checks:

- no exception but ``UserError`` escapes, and its message is one line of text;
- nothing is written outside the staging area: the folder that holds the source and the data directory (its staging
  area and the database's own files left out) keep every file they had, byte for byte, and gain only the blobs and
  thumbnails of the items a successful import stored;
- an aborted import leaves the store exactly as it was: every row of every table, and every stored file;
- a successful import accounts for every file it was given: each one is an item, a duplicate, or skipped with a
  reason that names it.

Most sources (two archives in three, three manifests or COCO files in four) are shaped like real ones (concept
folders, rows naming files that exist, ids that match) so that imports get as far as decoding and committing; the
rest are hostile throughout.
Each example gets its own data directory (holding a dataset "seed" an abort must leave alone), so examples never
depend on each other and hypothesis can replay and shrink them.

Examples per test: ``DEEPTRAIN_FUZZ_EXAMPLES`` (default 25: four tests, 100 fuzzed sources per run, about 10 s on
2 cores, to keep the suite fast). Run it longer, e.g. overnight, and see how far the examples got::

    DEEPTRAIN_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_importers.py --hypothesis-show-statistics

A failure prints the smallest source found; ``--hypothesis-seed=N`` replays a run. No example database is kept
(``database=None``); hypothesis' own caches in ``.hypothesis/`` tell git to ignore them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from core import paths
from core.data.importer import import_dataset
from core.data.limits import ImportLimits
from core.errors import UserError
from core.store import datasets as store
from core.store.engine import engine
from core.store.schema import metadata

EXAMPLES = int(os.environ.get("DEEPTRAIN_FUZZ_EXAMPLES", "25"))
FUZZ = settings(deadline=None, max_examples=EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# Small limits, so that the archive limits are reached by generated sources too.
LIMITS = ImportLimits(max_files=10, max_unpacked_bytes=64_000, max_pixels=4_096)
STORE_FILES = ("studio.db", "studio.db-wal", "studio.db-shm", "studio.db.lock")

# ------------------------------------------------------------------------------------------------ contents


def _image(i: int, fmt: str = "PNG") -> bytes:
    """A tiny image, different for each ``i`` (so equal ``i`` is a duplicate)."""
    buf = io.BytesIO()
    Image.new("RGB", (3 + i % 3, 2 + i % 2), ((i * 53) % 256, (i * 101) % 256, (i * 29) % 256)).save(buf, fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG whose header declares 100,000 x 100,000 pixels (a decompression bomb; the data is a stub)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        import zlib

        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"x\x9c\x03\x00\x00\x00\x00\x01") + chunk(b"IEND", b""))


SPECIAL = {
    "empty": b"",
    "garbage": b"\x00\x01not an image at all\xff" * 3,
    "truncated": _image(7)[:30],
    "ppm": b"P6\n2 2\n255\n" + bytes(12),  # an image PIL reads, in a format the studio does not take
    "bomb": _bomb(),
    "gif": _image(11, "GIF"),
    "bmp": _image(12, "BMP"),
    "jpeg": _image(13, "JPEG"),
}
images = st.integers(0, 6).map(lambda i: _image(i))
contents = st.one_of(
    images, images,
    st.sampled_from(sorted(SPECIAL)).map(SPECIAL.get),
    st.binary(max_size=40),
)

# ------------------------------------------------------------------------------------------------ names

HOSTILE_PARTS = ["cat", "dog", "Cat", "a b", "train", "val", "test", ".hidden", "__MACOSX", "..", ".", "", "x.png",
                 "y.jpg", "labels.csv", "c.json", "train.txt", "ünï", "a\\b", "C:", "..\\..", " ", "=cmd", "clip.mp4",
                 "-", "con", "\u202e", "a" * 120]
part = st.one_of(st.sampled_from(HOSTILE_PARTS),
                 st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1,
                         max_size=8))
safe_part = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:"), min_size=1,
                    max_size=8).filter(lambda t: t.strip() and t not in (".", ".."))
arbitrary_name = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "", "", "/", "../", "./"]),
                           st.lists(part, min_size=1, max_size=4))
concept_name = st.one_of(st.sampled_from(["cat", "dog", "a b", "ünï", "=cmd", "@sum", "+1"]), safe_part)
file_name = st.one_of(st.sampled_from(["x.png", "y.jpg", "z", ".x.png", "sub/w.png", "clip.mp4", "train.txt"]),
                      safe_part)


@st.composite
def clean_members(draw) -> list[dict[str, Any]]:
    """An archive shaped like a dataset ([wrapper/][split/]concept/file; no link, no lie, no escape), so that the
    import gets as far as decoding, splitting and committing: its images, names and labels are what is generated."""
    wrap = draw(st.sampled_from(["", "", "wrap/", "a/b/"]))
    splits = draw(st.sampled_from([None, None, ["train/", "val/", "test/"], ["train/"], ["TRAIN/", "Val/"]]))
    members = []
    for _ in range(draw(st.integers(1, 8))):
        split = draw(st.sampled_from(splits)) if splits else ""
        name = wrap + split + draw(concept_name) + "/" + draw(file_name)
        members.append({"name": name, "kind": "file", "data": draw(contents), "deflate": draw(st.booleans()),
                        "declared": None})
    if draw(st.integers(0, 3)) == 0:  # a stray: hidden, at the top, or a folder entry
        members.append({"name": draw(st.sampled_from([".DS_Store", "__MACOSX/._x.png", "readme", "cat/"])),
                        "kind": "file", "data": draw(contents), "deflate": True, "declared": None})
        if members[-1]["name"].endswith("/"):
            members[-1].update(kind="dir", data=b"")
    return members


@st.composite
def hostile_members(draw) -> list[dict[str, Any]]:
    """Members of an archive: name, folder or file, content, compression, a lie about its size, a link."""
    names = draw(st.lists(st.one_of(arbitrary_name, st.builds(lambda c, f: c + "/" + f, concept_name, file_name)),
                          min_size=1, max_size=10))
    names += draw(st.lists(st.sampled_from(names), max_size=2))  # duplicates
    members = []
    for name in names:
        kind = draw(st.sampled_from(["file"] * 12 + ["dir", "link"]))
        members.append({
            "name": name + ("/" if kind == "dir" and not name.endswith("/") else ""),
            "kind": kind,
            "data": b"" if kind == "dir" else draw(contents),
            "deflate": draw(st.booleans()),
            "declared": None,
        })
    if draw(st.integers(0, 2)) == 0:  # one member whose header lies: huge, too small, nothing
        members[draw(st.integers(0, len(members) - 1))]["declared"] = draw(st.sampled_from([0xFFFF_FFF0, 1, 0]))
    return members


zip_members = st.one_of(clean_members(), clean_members(), hostile_members())


def _write_zip(path: Path, members: list[dict[str, Any]]) -> None:
    lies = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: they are the point
        with zipfile.ZipFile(path, "w") as zf:
            for m in members:
                info = zipfile.ZipInfo(m["name"])
                info.compress_type = zipfile.ZIP_DEFLATED if m["deflate"] else zipfile.ZIP_STORED
                if m["kind"] == "link":
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                elif m["kind"] == "dir":
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                zf.writestr(info, m["data"])
                if m["declared"] is not None:
                    lies[info.header_offset] = m["declared"]
    if lies:
        _declare_sizes(path, lies)


def _declare_sizes(path: Path, lies: dict[int, int]) -> None:
    """Rewrite the uncompressed size that the local header at each offset, and its central directory entry,
    declare."""
    data = bytearray(path.read_bytes())
    for offset, size in lies.items():
        struct.pack_into("<I", data, offset + 22, size)
    end = data.rfind(b"PK\x05\x06")
    count, = struct.unpack_from("<H", data, end + 10)
    pos, = struct.unpack_from("<I", data, end + 16)
    for _ in range(count):
        n, e, c = struct.unpack_from("<HHH", data, pos + 28)
        local, = struct.unpack_from("<I", data, pos + 42)
        if local in lies:
            struct.pack_into("<I", data, pos + 24, lies[local])
        pos += 46 + n + e + c
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------ the checks


def _tree(root: Path, skip: Callable[[Path], bool]) -> dict[str, str]:
    """Every file and folder under ``root`` (relative path -> content hash, or "dir"), except what ``skip`` says."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if skip(rel):
            continue
        if p.is_symlink():
            out[rel.as_posix()] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel.as_posix()] = "dir"
        else:
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _rows() -> dict[str, list]:
    with engine().connect() as conn:
        return {t.name: sorted(map(repr, conn.execute(sa.select(t)).all())) for t in metadata.sorted_tables}


def _snapshot(top: Path) -> dict[str, Any]:
    home = paths.home()
    inside = home.relative_to(top)

    def skip(rel: Path) -> bool:
        parts = rel.parts
        if parts[:len(inside.parts)] != inside.parts:
            return False
        within = parts[len(inside.parts):]
        return bool(within) and (within[0] == "staging" or within[0] in STORE_FILES)

    return {"files": _tree(top, skip), "rows": _rows()}


@contextlib.contextmanager
def example(tmp_path: Path, tag: str) -> Iterator[tuple[Path, Path]]:
    """(top, source folder) of one example: its own data directory ``top/home`` holding a dataset "seed" of two
    images (an abort must leave it exactly so), so that no example depends on another's (hypothesis replays and
    shrinks them), and an empty folder ``top/source`` for the source."""
    top = tmp_path / f"{tag}-{len(list(tmp_path.iterdir()))}"
    (top / "source").mkdir(parents=True)
    before = os.environ["DEEPTRAIN_HOME"]
    os.environ["DEEPTRAIN_HOME"] = str(top / "home")
    try:
        seed = top / "seed"
        for i, concept in enumerate(("red", "blue")):
            (seed / concept).mkdir(parents=True)
            (seed / concept / f"{i}.png").write_bytes(_image(100 + i))
        import_dataset("local", seed, "seed")
        yield top, top / "source"
    finally:
        engines = importlib.import_module("core.store.engine")._engines
        url = f"sqlite:///{top / 'home' / 'studio.db'}"
        if url in engines:  # one engine per data directory: closed with its example
            engines.pop(url).dispose()
        os.environ["DEEPTRAIN_HOME"] = before
        shutil.rmtree(top, ignore_errors=True)


def _accounted(given_paths: list[str], report: dict) -> list[str]:
    """The given files (posix paths, as the source names them) that the report does not account for: not an item,
    not a duplicate, not skipped, and not inside a folder the report skips."""
    ds = store.get_dataset("local", report["dataset"])
    named = {r["source_path"] for r in store.dataset_records(ds["id"])}
    for group in report["duplicate_groups"]:
        named.update(group["paths"])
    for s in report["skipped"]:
        assert isinstance(s["path"], str) and s["path"], s
        assert isinstance(s["reason"], str) and s["reason"].strip(), s
        named.add(s["path"])
    named |= {re.sub(r"@[0-9.]+s$", "", n) for n in named}  # a video's frames are "<video>@<time>s"
    missing = []
    for path in given_paths:
        parts = path.split("/")
        suffixes = {"/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
        if not suffixes & named:
            missing.append(path)
    return missing


def run_import(top: Path, source: Path, name: str, **kwargs) -> dict | None:
    """Import ``source`` and check the properties in the module docstring; the report, or None after an abort."""
    before = _snapshot(top)
    try:
        report = import_dataset("local", source, name, limits=LIMITS, workers=1, **kwargs)
    except UserError as exc:
        message = str(exc)
        event("aborted: " + re.sub(r"[0-9,]+", "N", message.split(": ", 1)[-1])[:50])
        assert message.strip() and "Traceback" not in message and "\n" not in message, message
        after = _snapshot(top)
        assert after == before, f"an aborted import ({message}) changed the store or files"
        return None
    event(f"imported, {len(report['skipped'])} skipped")
    after = _snapshot(top)
    assert after["files"].items() >= before["files"].items(), "a file was changed or removed"
    ds = store.get_dataset("local", report["dataset"])
    stored = {Path(r["path"]).name.split(".")[0] for r in store.dataset_records(ds["id"])}
    home = paths.home().relative_to(top).as_posix()
    for rel in set(after["files"]) - set(before["files"]):
        within = PurePosixPath(rel).relative_to(home) if rel.startswith(home + "/") else None
        assert within is not None and within.parts[0] in ("blobs", "thumbs"), f"{rel}: written outside the store"
        assert after["files"][rel] == "dir" or within.name.split(".")[0] in stored, f"{rel}: not an item's file"
    assert list(paths.subdir("staging").iterdir()) == [], "the staging area was left behind"
    return report


def _visible(name: str) -> bool:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return bool(parts) and not any(p.startswith(".") or p == "__MACOSX" for p in parts)


# ------------------------------------------------------------------------------------------------ the fuzzers


@FUZZ
@given(members=zip_members, name=st.sampled_from(["fuzz", "seed"]))
def test_fuzz_zip_archives(tmp_path, members, name):
    with example(tmp_path, "zip") as (top, folder):
        archive = folder / "upload.zip"
        _write_zip(archive, members)
        report = run_import(top, archive, name, fmt="zip")
        if report is not None and report["format"] == "folder":
            files = [PurePosixPath(m["name"].replace("\\", "/")).as_posix()  # as the importer reads the name
                     for m in members if m["kind"] == "file" and _visible(m["name"])
                     and not m["name"].endswith("/")  # a folder to zip, whatever it holds
                     and PurePosixPath(m["name"]).name not in ("train.txt", "val.txt", "test.txt")]
            assert _accounted(files, report) == []


@st.composite
def csv_manifests(draw) -> tuple[dict[str, bytes], str, list[str] | None]:
    """Image files beside a manifest, the manifest's text, and the files it names (None: hostile, not checked).

    Three in four are well formed (right header, rows naming files that exist, labels and splits generated, labels
    that a spreadsheet would run among them); the rest have generated headers, cells and hand-written rows."""
    files = {f"img/{i}.png": draw(contents) for i in range(draw(st.integers(1, 5)))}
    label_cell = st.one_of(st.sampled_from(["cat", "dog;cat", "=cmd|'/C calc'!A0", "'=x", "''=x", "+1", "@sum", "-2",
                                            "\t=x", "\"quoted\"", "a,b"]), safe_part)
    if draw(st.integers(0, 3)):
        header = draw(st.sampled_from([["path", "labels"], ["path", "labels", "split"], ["Path", " LABELS "]]))
        rows = draw(st.lists(st.tuples(st.sampled_from(sorted(files)), label_cell,
                                       st.sampled_from(["", "train", "val", "test", " Val "])), min_size=1, max_size=8))
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows([p, lab] + ([s] if len(header) == 3 else []) for p, lab, s in rows)
        return files, buf.getvalue(), sorted({p for p, _, _ in rows})
    path_cell = st.one_of(st.sampled_from(sorted(files)), st.sampled_from(
        ["", "missing.png", "../outside.png", "/etc/passwd", "C:\\x.png", "img\\0.png", "img/../img/0.png",
         "'=img/0.png", " img/0.png "]), part)
    label_cell = st.one_of(label_cell, st.sampled_from(["", " ", ";", "a\nb"]), part)
    split_cell = st.sampled_from(["", "train", "TRAIN", "bogus", "'=train"])
    header = draw(st.sampled_from([["path", "labels"], ["path", "labels", "split"], ["labels", "path"],
                                   ["path", "labels", "labels"], ["path"], []]))
    rows = draw(st.lists(st.tuples(path_cell, label_cell, split_cell, st.integers(-1, 1)), max_size=8))
    buf = io.StringIO()
    if draw(st.booleans()):
        writer = csv.writer(buf)
        writer.writerow(header)
        for p, lab, s, extra in rows:
            row = [p, lab] + ([s] if len(header) == 3 else []) + (["x"] if extra > 0 else [])
            writer.writerow(row[:len(row) + min(extra, 0)])
    else:  # written by hand: stray quotes, missing fields
        buf.write(",".join(header) + "\n")
        buf.writelines(f"{p},{lab},{s}\n" for p, lab, s, _ in rows)
    return files, draw(st.sampled_from(["", "\ufeff"])) + buf.getvalue(), None


@FUZZ
@given(manifest=csv_manifests(), encoding=st.sampled_from(["utf-8"] * 6 + ["latin-1", "utf-16"]))
def test_fuzz_csv_manifests(tmp_path, manifest, encoding):
    with example(tmp_path, "csv") as (top, folder):
        files, text, named = manifest
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        (folder / "labels.csv").write_bytes(text.encode(encoding, "replace"))
        report = run_import(top, folder / "labels.csv", "fuzz")
        if report is not None:
            assert report["format"] == "csv"
            assert _accounted(named or [], report) == []


DEEP = "<arrays nested 50,000 deep>"  # written out in the test: hypothesis would print all of it
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                    max_leaves=12)


@st.composite
def json_manifests(draw) -> tuple[dict[str, bytes], str, list[str] | None]:
    """Image files, a JSON manifest's text, and the files it names (None: hostile); three in four well formed."""
    files = {f"{i}.png": draw(contents) for i in range(draw(st.integers(1, 4)))}
    if draw(st.integers(0, 3)):
        entries = draw(st.lists(st.fixed_dictionaries(
            {"path": st.sampled_from(sorted(files)), "labels": st.lists(concept_name, min_size=1, max_size=3)},
            optional={"split": st.sampled_from(["train", "val", "test", "Val"])}), min_size=1, max_size=6))
        return files, json.dumps(entries), sorted({e["path"] for e in entries})
    entry = st.fixed_dictionaries(
        {"path": st.one_of(st.sampled_from(sorted(files)), st.sampled_from(["../x.png", "/x.png", ""]), JSON)},
        optional={"labels": st.one_of(st.lists(st.one_of(st.sampled_from(["cat", "=1+1", " "]), JSON), max_size=3),
                                      JSON),
                  "split": st.one_of(st.sampled_from(["train", "val", "test", "x"]), JSON),
                  "extra": JSON})
    data = draw(st.one_of(st.lists(entry, max_size=6), JSON))
    raw = draw(st.sampled_from([None] * 6 + [DEEP, "[{\"path\": ", "\ufeff[]", "nul\x00"]))
    return files, raw if raw is not None else json.dumps(data), None


@FUZZ
@given(manifest=json_manifests())
def test_fuzz_json_manifests(tmp_path, manifest):
    with example(tmp_path, "json") as (top, folder):
        files, text, named = manifest
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        (folder / "list.json").write_text("[" * 50_000 + "]" * 50_000 if text == DEEP else text, encoding="utf-8")
        report = run_import(top, folder / "list.json", "fuzz", fmt="json")
        if report is not None:
            assert _accounted(named or [], report) == []


@st.composite
def coco_files(draw) -> tuple[dict[str, bytes], str, list[str] | None]:
    """Image files, a COCO file's text, and the files it names (None: hostile); three in four well formed (ids
    unique and referring to what exists; sizes and boxes generated, so some boxes fall outside their image)."""
    files = {f"{i}.png": draw(contents) for i in range(draw(st.integers(1, 4)))}
    if draw(st.integers(0, 3)):
        names = draw(st.lists(st.sampled_from(sorted(files)), min_size=1, max_size=4, unique=True))
        images = []
        for n, file in enumerate(names):
            im = {"id": n + 1, "file_name": file}
            if draw(st.booleans()):
                im.update(width=draw(st.integers(1, 6)), height=draw(st.integers(1, 6)))
            if draw(st.booleans()):
                im["split"] = draw(st.sampled_from(["train", "val", "test"]))
            if draw(st.booleans()):
                im["labels"] = draw(st.lists(concept_name, max_size=2))
            images.append(im)
        cats = [{"id": n + 1, "name": c} for n, c in enumerate(draw(st.lists(concept_name, min_size=1, max_size=3)))]
        coord = st.floats(0, 4, allow_nan=False)
        anns = [{"id": n + 1, "image_id": draw(st.integers(1, len(images))),
                 "category_id": draw(st.integers(1, len(cats))),
                 "bbox": [draw(coord), draw(coord), draw(st.floats(0.25, 3)), draw(st.floats(0.25, 3))]}
                for n in range(draw(st.integers(0, 5)))]
        return files, json.dumps({"images": images, "categories": cats, "annotations": anns}), names
    number = st.one_of(st.integers(-5, 10), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), JSON)
    ident = st.one_of(st.integers(0, 3), st.sampled_from(["1", 1.0, True, None]), JSON)
    image = st.fixed_dictionaries(
        {"id": ident, "file_name": st.one_of(st.sampled_from(sorted(files)),
                                             st.sampled_from(["../0.png", "/0.png", "images/0.png"]), JSON)},
        optional={"width": number, "height": number, "split": st.one_of(st.sampled_from(["train", "val"]), JSON),
                  "labels": st.one_of(st.lists(st.sampled_from(["cat", "", "=x"]), max_size=2), JSON)})
    category = st.fixed_dictionaries({"id": ident, "name": st.one_of(st.sampled_from(["cat", "dog", " "]), JSON)})
    annotation = st.fixed_dictionaries(
        {"image_id": ident, "category_id": ident,
         "bbox": st.one_of(st.lists(number, min_size=4, max_size=4), JSON)},
        optional={"id": ident})
    data = {"images": draw(st.one_of(st.lists(image, max_size=4), JSON)),
            "categories": draw(st.one_of(st.lists(category, max_size=3), JSON)),
            "annotations": draw(st.one_of(st.lists(annotation, max_size=5), JSON))}
    if draw(st.integers(0, 5)) == 0:
        data = draw(JSON)
    return files, json.dumps(data), None


@FUZZ
@given(coco=coco_files())
def test_fuzz_coco_files(tmp_path, coco):
    with example(tmp_path, "coco") as (top, folder):
        files, text, named = coco
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        (folder / "annotations.json").write_text(text, encoding="utf-8")
        report = run_import(top, folder / "annotations.json", "fuzz", fmt="coco")
        if report is not None:
            assert _accounted(named or [], report) == []


# ------------------------------------------------------------------------------------------------ the oracle itself


def test_declared_sizes_are_rewritten(tmp_path):
    """The fuzzer's lying headers really lie (else the huge-declared members would test nothing)."""
    archive = tmp_path / "a.zip"
    _write_zip(archive, [{"name": "cat/a.png", "kind": "file", "data": _image(1), "deflate": True,
                          "declared": 0xFFFF_FFF0}])
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("cat/a.png").file_size == 0xFFFF_FFF0


def test_snapshot_sees_a_stray_file(tmp_path):
    """The check for writes outside the staging area notices one beside the source and one in the store."""
    with example(tmp_path, "oracle") as (top, _):
        before = _snapshot(top)
        (top / "escaped.txt").write_text("x")
        assert _snapshot(top) != before
        (top / "escaped.txt").unlink()
        (paths.subdir("blobs") / "stray").write_text("x")
        assert _snapshot(top) != before
