"""Read an import source into a plan: the files to decode with their labels, splits and boxes.

Sources: a folder (one sub-folder per concept, optionally under train/ val/ test/, optional split lists
``train.txt``/``val.txt``/``test.txt``), a zip archive of such a folder or of a manifest (extracted safely into the
staging area first), a CSV or JSON manifest, a COCO JSON file with boxes, or a video (frames sampled at a rate).

Whatever makes the whole source unusable raises ``UserError`` (the import aborts, nothing stored); a single bad file
becomes a skip entry with its reason. Which files are images is decided later by their content, never by extension.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from core import csvsafe
from core.data.limits import ImportLimits
from core.errors import UserError
from core.fsutil import disk_full, is_disk_full, open_write, write_file
from core.progress import Progress
from core.store.datasets import SPLITS, clean_label

FORMATS = ("auto", "folder", "zip", "csv", "json", "coco", "video")
VIDEO_EXTS = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v"})
SPLIT_LISTS = {f"{s}.txt": s for s in SPLITS}
_CHUNK = 1 << 20


@dataclass
class Entry:
    """One file to decode: where it is, what the source calls it, and what the source says about it."""

    path: Path
    rel: str
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    boxes: list[dict[str, Any]] = field(default_factory=list)
    video: str | None = None
    video_time: float | None = None
    group: str | None = None  # items of one group land in one split (frames of one video)
    declared_size: tuple[int, int] | None = None  # COCO width, height


@dataclass
class Plan:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    kind: str = "folder"


# ------------------------------------------------------------------------------------------------ detection

def detect_format(source: Path) -> str:
    """The format of a source from what it is: a folder, or a file's suffix and (for JSON) its keys."""
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix == ".zip" or (suffix not in (".csv", ".json") and zipfile.is_zipfile(source)):
        return "zip"
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "coco" if _looks_like_coco(source) else "json"
    if suffix in VIDEO_EXTS:
        return "video"
    raise UserError(f"{source.name}: cannot tell what this is; import a folder, a .zip, a .csv or .json manifest, "
                    f"a COCO .json, or a video ({', '.join(sorted(VIDEO_EXTS))})")


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"images"' in head and ('"annotations"' in head or '"categories"' in head)


def build_plan(source: Path, fmt: str, scratch: Path, limits: ImportLimits, progress: Progress | None = None,
               video_fps: float = 1.0, video_label: str | None = None) -> Plan:
    """Read a source of the given format (or detected) into a plan. ``scratch`` takes extracted archives/frames."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "folder":
        if not source.is_dir():
            raise UserError(f"{source}: format folder needs a folder")
        return read_folder(source, scratch, limits, video_fps)
    if source.is_dir():
        raise UserError(f"{source}: format {fmt} needs a file, this is a folder")
    if fmt == "zip":
        root = scratch / "archive"
        extract_zip(source, root, limits, progress)
        return _plan_extracted(root, scratch, limits, video_fps)
    if fmt == "csv":
        return read_csv_manifest(source)
    if fmt == "json":
        return read_json_manifest(source)
    if fmt == "coco":
        return read_coco(source)
    label = clean_label(video_label if video_label is not None else source.stem, f"{source.name}: video label")
    plan = Plan(kind="video")
    frames = extract_frames(source, scratch / "frames", source.name, video_fps, limits)
    if not frames:
        raise UserError(f"{source.name}: no frame could be decoded from this video")
    for rel_frame, t in frames:
        plan.entries.append(Entry(path=scratch / "frames" / rel_frame, rel=f"{source.name}@{t:.3f}s", labels=[label],
                                  video=source.name, video_time=t, group=source.name))
    return plan


def _plan_extracted(root: Path, scratch: Path, limits: ImportLimits, video_fps: float) -> Plan:
    """An extracted archive: a manifest or COCO file at its top (or under its single folder), else folders."""
    base = root
    visible = [p for p in base.iterdir() if not _hidden(p.name)]
    while len(visible) == 1 and visible[0].is_dir() and visible[0].name.lower() not in SPLITS:
        base = visible[0]
        visible = [p for p in base.iterdir() if not _hidden(p.name)]
    metas = [p for p in visible if p.is_file() and p.suffix.lower() in (".csv", ".json")]
    if len(metas) == 1:
        meta = metas[0]
        if meta.suffix.lower() == ".csv":
            return read_csv_manifest(meta)
        return read_coco(meta) if _looks_like_coco(meta) else read_json_manifest(meta)
    if len(metas) > 1:
        raise UserError(f"The archive holds several manifests ({', '.join(sorted(p.name for p in metas))}); "
                        "keep one, or none for a folder-per-concept archive")
    return read_folder(root, scratch, limits, video_fps)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


# ------------------------------------------------------------------------------------------------ zip

def extract_zip(archive: Path, dest: Path, limits: ImportLimits, progress: Progress | None = None) -> None:
    """Extract a zip into ``dest`` after checking every member; refuse the whole archive on any unsafe member.

    Refused: members escaping the archive (``../``, absolute paths, drive letters), symbolic links, encrypted
    members, more than ``limits.max_files`` members, more than ``limits.max_unpacked_bytes`` unpacked (counted
    while decompressing, so a lying header does not help), an empty archive, a truncated or corrupt one.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{archive.name}: not a readable zip archive (truncated or not a zip): {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UserError(f"{archive.name}: {len(infos):,} members, over the limit of {limits.max_files:,} files "
                            "per archive")
        unnamed = next((n for n, i in enumerate(infos) if not i.filename), None)
        if unnamed is not None:  # zipfile itself fails on it (is_dir indexes the name's last character)
            raise UserError(f"{archive.name}: member number {unnamed + 1} has an empty name; every member needs a path")
        files = [i for i in infos if not i.is_dir()]
        if not files:
            raise UserError(f"{archive.name}: the archive is empty (no files)")
        declared = sum(i.file_size for i in files)
        if declared > limits.max_unpacked_bytes:
            raise UserError(f"{archive.name}: unpacks to {declared:,} bytes, over the limit of "
                            f"{limits.max_unpacked_bytes:,} bytes (zip bomb?)")
        for info in infos:
            _check_member(archive.name, info)
        _check_file_folder_clash(archive.name, infos)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        total = 0
        for n, info in enumerate(files):
            target = (dest / _member_path(info.filename)).resolve()
            if root not in target.parents:
                raise UserError(f"{archive.name}: member {info.filename!r} escapes the archive folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open_write(target) as out:
                    while True:
                        block = src.read(_CHUNK)
                        if not block:
                            break
                        written += len(block)
                        total += len(block)
                        if total > limits.max_unpacked_bytes:
                            raise UserError(f"{archive.name}: unpacks to more than {limits.max_unpacked_bytes:,} "
                                            "bytes, over the limit (zip bomb?)")
                        if written > info.file_size:
                            raise UserError(f"{archive.name}: member {info.filename!r} unpacks to more than its "
                                            f"declared {info.file_size:,} bytes (corrupt or malicious archive)")
                        out.write(block)
            except UserError:
                raise
            except RuntimeError as exc:  # zipfile raises RuntimeError for encryption
                raise UserError(f"{archive.name}: member {info.filename!r} cannot be read: {exc}") from None
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, zlib.error) as exc:
                if is_disk_full(exc):
                    raise disk_full(exc, f"{archive.name}: member {info.filename!r}, unpacked for the import") from None
                raise UserError(f"{archive.name}: truncated or corrupt archive at member {info.filename!r}: "
                                f"{exc}") from None
            if progress and n % 200 == 0:
                progress(0.05 * n / len(files), f"Unpacking {n:,}/{len(files):,}")


def _member_path(name: str) -> PurePosixPath:
    return PurePosixPath(name.replace("\\", "/"))


def _check_file_folder_clash(archive: str, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive that holds a path both as a file and as a folder (``a`` and ``a/b``): one would overwrite
    or block the other on extraction, whichever came first."""
    files = {_member_path(i.filename).as_posix(): i.filename for i in infos if not i.is_dir()}
    for info in infos:
        path = _member_path(info.filename)
        prefixes = [path] if info.is_dir() else []
        prefixes += list(path.parents)[:-1]  # every folder above it, up to the top ('.' left out)
        for folder in prefixes:
            if folder.as_posix() in files:
                raise UserError(f"{archive}: member {info.filename!r} lies inside {files[folder.as_posix()]!r}, which "
                                "the archive also holds as a file; a path cannot be both a file and a folder")


def _check_member(archive: str, info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise UserError(f"{archive}: member {name!r} is encrypted; encrypted archives are not supported")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"{archive}: member {name!r} is a symbolic link; links are not allowed in archives")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UserError(f"{archive}: member {name!r} has an absolute path; paths must stay inside the archive")
    if ".." in norm.split("/"):
        raise UserError(f"{archive}: member {name!r} escapes the archive with '../'; paths must stay inside it")
    if "\x00" in name:
        raise UserError(f"{archive}: member {name!r} has a NUL character in its name")


# ------------------------------------------------------------------------------------------------ folder

def read_folder(source: Path, scratch: Path, limits: ImportLimits, video_fps: float = 1.0) -> Plan:
    """Folder per concept (``root/<concept>/...``), or split folders (``root/<train|val|test>/<concept>/...``).

    A folder holding a single folder of folders is descended into (``caltech101/101_ObjectCategories``). Split lists
    ``train.txt``/``val.txt``/``test.txt`` at the top (one path per line, relative to the concept folders' parent)
    assign splits. Videos inside concept folders become sampled frames. Links that lead outside the folder abort.
    """
    plan = Plan(kind="folder")
    top = source.resolve()
    lists = {s: top / f for f, s in SPLIT_LISTS.items() if (top / f).is_file()}
    base = top
    above: list[Path] = []  # the folders descended through, whose files are outside every concept folder
    while True:
        subdirs = [p for p in base.iterdir() if p.is_dir() and not _hidden(p.name)]
        if len(subdirs) == 1 and subdirs[0].name.lower() not in SPLITS and _is_wrapper(subdirs[0]):
            above.append(base)
            base = subdirs[0]
            lists.update({s: base / f for f, s in SPLIT_LISTS.items() if (base / f).is_file()})
            continue
        break
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not _hidden(p.name))
    split_dirs = [p for p in subdirs if p.name.lower() in SPLITS]
    if split_dirs and len(split_dirs) != len(subdirs):
        others = sorted(p.name for p in subdirs if p not in split_dirs)
        raise UserError(f"{source.name}: mixes split folders (train/val/test) with concept folders "
                        f"({', '.join(others[:5])}); put every concept folder under a split folder, or use none")
    strays = [p for folder in above + ([base] if split_dirs else []) for p in folder.iterdir()]
    for path in sorted(strays):  # files beside the folders read: imported unlabelled, never silently left out
        if not path.is_dir() and not _hidden(path.name) and path.name not in SPLIT_LISTS:
            rel = (path.relative_to(base) if path.parent == base else path.relative_to(top)).as_posix()
            _add_unlabelled(plan, path, rel, top, None)
    roots = [(p, p.name.lower()) for p in split_dirs] if split_dirs else [(base, None)]
    for root, split in roots:
        for path in sorted(root.iterdir()):
            rel = path.relative_to(base).as_posix()
            if _hidden(path.name) or (path.name in SPLIT_LISTS and path.parent in (top, base)):
                continue
            if path.is_symlink():
                _check_link(path, top, rel)
            if path.is_file():
                _add_unlabelled(plan, path, rel, top, split)
                continue
            if not path.is_dir():
                continue
            label = clean_label(path.name, f"{source.name}: folder {rel!r}")
            for file in _walk_files(path, top, base, plan):
                frel = file.relative_to(base).as_posix()
                if file.suffix.lower() in VIDEO_EXTS:
                    _add_video(plan, file, frel, label, split, scratch, video_fps, limits)
                    continue
                plan.entries.append(Entry(path=file, rel=frel, labels=[label], split=split))
    if not plan.entries and not plan.skipped:
        raise UserError(f"{source.name}: the folder is empty (expected one sub-folder of images per concept)")
    if lists:
        _apply_split_lists(plan, lists)
    return plan


def _add_unlabelled(plan: Plan, path: Path, rel: str, top: Path, split: str | None) -> None:
    """A file outside every concept folder: an image without a label (to label later); a video is skipped (its
    frames would need a concept), and so is anything but a regular file."""
    if path.is_symlink():
        _check_link(path, top, rel)
    if not path.is_file():
        plan.skipped.append({"path": rel, "reason": "not a regular file"})
    elif path.suffix.lower() in VIDEO_EXTS:
        plan.skipped.append({"path": rel, "reason": "video outside a concept folder (its frames need a concept)"})
    else:
        plan.entries.append(Entry(path=path, rel=rel, labels=[], split=split))


def _is_wrapper(folder: Path) -> bool:
    """A folder holding only folders (and split lists): a wrapper around concept folders, not a concept itself."""
    entries = [p for p in folder.iterdir() if not _hidden(p.name) and p.name not in SPLIT_LISTS]
    return bool(entries) and all(p.is_dir() for p in entries)


def _check_link(path: Path, top: Path, rel: str) -> None:
    target = path.resolve()
    if target != top and top not in target.parents:
        raise UserError(f"{rel}: symbolic link leads outside the imported folder; links inside the folder must "
                        "stay inside it")


def _walk_files(folder: Path, top: Path, base: Path, plan: Plan):
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        d = Path(dirpath)
        for name in sorted(dirnames):
            p = d / name
            if p.is_symlink():
                _check_link(p, top, p.relative_to(base).as_posix())
                plan.skipped.append({"path": p.relative_to(base).as_posix(),
                                     "reason": "link to a folder, not followed"})
            elif _hidden(name):
                plan.skipped.append({"path": p.relative_to(base).as_posix(), "reason": "hidden folder, not read"})
        dirnames[:] = sorted(n for n in dirnames if not _hidden(n) and not (d / n).is_symlink())
        for name in sorted(filenames):
            p = d / name
            if _hidden(name):
                plan.skipped.append({"path": p.relative_to(base).as_posix(), "reason": "hidden file"})
                continue
            if p.is_symlink():
                _check_link(p, top, p.relative_to(base).as_posix())
            if p.is_file():
                yield p
            else:  # a broken link, a pipe, a socket: named, never opened
                plan.skipped.append({"path": p.relative_to(base).as_posix(), "reason": "not a regular file"})


def _apply_split_lists(plan: Plan, lists: dict[str, Path]) -> None:
    by_rel = {e.rel: e for e in plan.entries}
    for split, lst in sorted(lists.items()):
        missing: list[str] = []
        for n, line in enumerate(lst.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            rel = line.strip().replace("\\", "/")
            if not rel or rel.startswith("#"):
                continue
            entry = by_rel.get(rel)
            if entry is None:
                missing.append(f"line {n}")
                continue
            entry.split = split
        if missing:
            raise UserError(f"{lst.name} names {len(missing)} file(s) that do not exist in the folder, e.g. on "
                            f"{', '.join(missing[:3])}; expected one path per line, relative to the concept "
                            "folders' parent")


def _add_video(plan: Plan, file: Path, rel: str, label: str, split: str | None, scratch: Path, fps: float,
               limits: ImportLimits) -> None:
    try:
        frames = extract_frames(file, scratch / "frames", rel, fps, limits)
    except UserError as exc:
        plan.skipped.append({"path": rel, "reason": str(exc)})
        return
    if not frames:
        plan.skipped.append({"path": rel, "reason": "video has no decodable frame"})
    for frame_rel, t in frames:
        plan.entries.append(Entry(path=scratch / "frames" / frame_rel, rel=f"{rel}@{t:.3f}s", labels=[label],
                                  split=split, video=rel, video_time=t, group=rel))


# ------------------------------------------------------------------------------------------------ video

def extract_frames(video: Path, dest: Path, rel: str, fps: float, limits: ImportLimits) -> list[tuple[str, float]]:
    """Decode a video with PyAV and write one JPEG (quality 95) per sampled frame; return (file, time) pairs.

    A frame is kept every ``1/fps`` seconds of presentation time (the first frame always), at most
    ``limits.max_video_frames``. Before any frame is decoded the header's duration, frame count and frame size are
    checked against ``limits`` (:func:`check_video_header`); while decoding, every frame's time, size and the count of
    frames decoded are checked again, so a header that lies does not help.
    """
    import av  # PyAV; imported here so other imports do not pay for it

    if fps <= 0:
        raise UserError(f"frame rate must be above 0, got {fps}")
    out: list[tuple[str, float]] = []
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", rel)
    folder = dest / safe
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise UserError(f"{rel}: no video stream")
            stream = container.streams.video[0]
            check_video_header(rel, container, stream, limits)
            stream.thread_type = "AUTO"
            next_t = 0.0
            for decoded, frame in enumerate(container.decode(stream), 1):
                _check_video_frame(rel, frame, decoded, limits)
                t = float(frame.time) if frame.time is not None else len(out) / fps
                if t + 1e-6 < next_t:
                    continue
                if len(out) >= limits.max_video_frames:
                    break
                name = f"{len(out):06d}.jpg"
                buf = io.BytesIO()
                frame.to_image().save(buf, "JPEG", quality=95)
                write_file(folder / name, buf.getvalue(), fsync=False)  # scratch: read once, by the decoder
                out.append((f"{safe}/{name}", round(t, 3)))
                next_t = t + 1.0 / fps
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - av.error.* and friends: the video's message, named
        if is_disk_full(exc):
            raise disk_full(exc, f"{rel}: the frames sampled for the import") from None
        if out:
            return out  # a video cut short keeps the frames before the damage
        raise UserError(f"{rel}: not a readable video: {exc}") from None
    return out


def check_video_header(rel: str, container: Any, stream: Any, limits: ImportLimits) -> None:
    """Refuse a video whose header gives a duration, a frame count or a frame size over ``limits`` (nothing decoded).

    The duration is the container's, else the stream's; the frame count the stream's, else its duration times its
    average rate. Values a header leaves out are checked while decoding instead.
    """
    width = int(getattr(stream.codec_context, "width", 0) or 0)
    height = int(getattr(stream.codec_context, "height", 0) or 0)
    if width * height > limits.max_video_pixels:
        raise UserError(f"{rel}: frames of {width}x{height} are {width * height:,} pixels, over the limit of "
                        f"{limits.max_video_pixels:,} per video frame (setting import_max_video_pixels)")
    seconds = None
    if container.duration is not None and container.duration > 0:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    elif stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        seconds = float(stream.duration * stream.time_base)
    if seconds is not None and seconds > limits.max_video_seconds:
        raise UserError(f"{rel}: lasts {seconds:g} s, over the limit of {limits.max_video_seconds:g} s per video "
                        "(setting import_max_video_seconds)")
    frames = int(stream.frames or 0)
    if not frames and seconds is not None and stream.average_rate:
        frames = int(seconds * float(stream.average_rate))
    if frames > limits.max_video_decoded_frames:
        raise UserError(f"{rel}: holds {frames:,} frames, over the limit of {limits.max_video_decoded_frames:,} per "
                        "video (setting import_max_video_decoded_frames)")


def _check_video_frame(rel: str, frame: Any, decoded: int, limits: ImportLimits) -> None:
    """The header's checks again on each decoded frame: its size, its time, and how many frames came so far."""
    if frame.width * frame.height > limits.max_video_pixels:
        raise UserError(f"{rel}: a frame of {frame.width}x{frame.height} is over the limit of "
                        f"{limits.max_video_pixels:,} pixels per video frame (setting import_max_video_pixels)")
    if frame.time is not None and float(frame.time) > limits.max_video_seconds:
        raise UserError(f"{rel}: runs past {limits.max_video_seconds:g} s, the limit per video (setting "
                        "import_max_video_seconds)")
    if decoded > limits.max_video_decoded_frames:
        raise UserError(f"{rel}: holds more than {limits.max_video_decoded_frames:,} frames, the limit per video "
                        "(setting import_max_video_decoded_frames)")


# ------------------------------------------------------------------------------------------------ manifests

def _manifest_path(manifest: Path, raw: Any, where: str) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise UserError(f"{where}: path is missing or empty")
    norm = raw.strip().replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in norm.split("/"):
        raise UserError(f"{where}: the path must be relative to the manifest and stay inside its folder")
    return manifest.parent / norm


def _finish_manifest(manifest: Path, rows: list[tuple[str, Any, list[str], str | None]], kind: str) -> Plan:
    """Rows (where, raw path, labels, split) into a plan; files named twice merge labels; missing files abort."""
    plan = Plan(kind=kind)
    by_path: dict[Path, Entry] = {}
    first_where: dict[Path, str] = {}
    missing: list[str] = []
    for where, raw, labs, split in rows:
        path = _manifest_path(manifest, raw, where)
        if split is not None and split not in SPLITS:
            raise UserError(f"{where}: the split is not one of {', '.join(SPLITS)}")
        if not path.is_file():
            missing.append(where)
            continue
        rel = path.relative_to(manifest.parent).as_posix()
        entry = by_path.get(path)
        if entry is None:
            entry = by_path[path] = Entry(path=path, rel=rel, labels=[], split=split)
            first_where[path] = where
            plan.entries.append(entry)
        elif split is not None and entry.split not in (None, split):
            raise UserError(f"{where}: {rel} is listed again with another split than at {first_where[path]}; a file "
                            "has one split")
        entry.labels = sorted(set(entry.labels) | set(labs))
        entry.split = entry.split or split
    if missing:
        raise UserError(f"{manifest.name} names {len(missing)} file(s) that do not exist, e.g. at "
                        f"{', '.join(missing[:3])}; paths are relative to the manifest's folder")
    if not plan.entries:
        raise UserError(f"{manifest.name}: the manifest lists no files")
    return plan


def read_csv_manifest(manifest: Path) -> Plan:
    """CSV with a header ``path,labels[,split]``: labels separated by ``;`` (a blank cell: not labelled yet), split
    one of train/val/test.

    A cell that starts with quotes followed by ``=``, ``+``, ``-``, ``@``, a tab or a carriage return loses one quote
    (the studio's exports add it so that spreadsheets do not run labels as formulas: ``core.csvsafe``); every other
    cell is read as written.
    """
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{manifest.name}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise UserError(f"{manifest.name}: the manifest is empty; expected a header path,labels[,split]") from None
    except csv.Error as exc:
        raise UserError(f"{manifest.name}: malformed CSV: {exc}") from None
    allowed = ["path", "labels", "split"]
    if header[:2] != ["path", "labels"] or any(h not in allowed for h in header) or len(set(header)) != len(header):
        raise UserError(f"{manifest.name}: the first line is not a manifest header; expected path,labels or "
                        "path,labels,split")
    rows = []
    try:
        for n, row in enumerate(reader, 2):
            if not any(c.strip() for c in row):
                continue
            where = f"{manifest.name} line {n}"
            if len(row) != len(header):
                raise UserError(f"{where}: {len(row)} fields, the header has {len(header)}")
            rec = dict(zip(header, map(csvsafe.unquote, row)))  # '=x as the studio's exports write =x
            # a blank cell: an image without a label yet; a blank name among names is a mistake
            labs = [clean_label(x, where) for x in rec["labels"].split(";")] if rec["labels"].strip() else []
            split = rec.get("split", "").strip().lower() or None
            rows.append((where, rec["path"], labs, split))
    except csv.Error as exc:
        raise UserError(f"{manifest.name}: malformed CSV: {exc}") from None
    return _finish_manifest(manifest, rows, "csv")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path.name}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # arrays or objects nested thousands deep: no manifest or COCO file looks like that
        raise UserError(f"{path.name}: JSON nested too deeply to be a manifest or a COCO file") from None


def read_json_manifest(manifest: Path) -> Plan:
    """JSON: a list of ``{"path", "labels": [...], "split"}`` (split optional; labels empty or left out: not labelled
    yet)."""
    data = _load_json(manifest)
    if not isinstance(data, list):
        raise UserError(f"{manifest.name}: expected a JSON list of {{\"path\", \"labels\", \"split\"}} objects")
    rows = []
    for n, obj in enumerate(data):
        where = f"{manifest.name} entry {n}"
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected an object with path, labels and optional split")
        unknown = set(obj) - {"path", "labels", "split"}
        if unknown:
            raise UserError(f"{where}: {len(unknown)} unknown key(s); allowed: path, labels, split")
        labs = obj.get("labels", [])
        if not isinstance(labs, list):
            raise UserError(f"{where}: labels must be a list of names (empty or left out: not labelled yet)")
        split = obj.get("split")
        if split is not None and not isinstance(split, str):
            raise UserError(f"{where}: split must be one of {', '.join(SPLITS)}")
        rows.append((where, obj.get("path"), [clean_label(x, where) for x in labs],
                     split.strip().lower() if split else None))
    return _finish_manifest(manifest, rows, "json")


# ------------------------------------------------------------------------------------------------ COCO

def read_coco(path: Path) -> Plan:
    """A COCO detection file: images, categories and annotations with ``bbox`` [x, y, w, h] in pixels.

    Image files are looked up beside the JSON, then in an ``images/`` folder beside it. Aborts on unknown
    categories or images, malformed or empty boxes, boxes outside their image, and missing files.
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("categories"), list):
        raise UserError(f"{path.name}: not a COCO file (expected an object with images, annotations, categories)")
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise UserError(f"{path.name}: annotations must be a list")
    cats: dict[Any, str] = {}
    category_at: dict[Any, int] = {}
    for n, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise UserError(f"{path.name}: categories[{n}] needs id and name")
        _check_unique_id(path.name, "categories", "category", n, c["id"], category_at)
        cats[c["id"]] = clean_label(c["name"], f"{path.name}: categories[{n}]")
    images: dict[Any, Entry] = {}
    missing: list[str] = []
    plan = Plan(kind="coco")
    image_at: dict[Any, int] = {}
    for n, im in enumerate(data["images"]):
        where = f"{path.name}: images[{n}]"
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise UserError(f"{where} needs id and file_name")
        _check_unique_id(path.name, "images", "image", n, im["id"], image_at)
        file = _manifest_path(path, im["file_name"], where)
        if not file.is_file():
            alt = path.parent / "images" / str(im["file_name"]).replace("\\", "/")
            if alt.is_file():
                file = alt
            else:
                missing.append(f"images[{n}]")
                continue
        size = None
        if isinstance(im.get("width"), (int, float)) and isinstance(im.get("height"), (int, float)):
            size = (int(im["width"]), int(im["height"]))
        split = im.get("split")
        if split is not None and split not in SPLITS:
            raise UserError(f"{where}: the split is not one of {', '.join(SPLITS)}")
        extra = im.get("labels") or []  # image-level labels (this studio's exports write them)
        if not isinstance(extra, list):
            raise UserError(f"{where}: labels must be a list of names")
        entry = Entry(path=file, rel=file.relative_to(path.parent).as_posix(), split=split, declared_size=size,
                      labels=[clean_label(x, where) for x in extra])
        images[im["id"]] = entry
        plan.entries.append(entry)
    if missing:
        raise UserError(f"{path.name} names {len(missing)} image file(s) that do not exist, e.g. at "
                        f"{', '.join(missing[:3])}; file_name is looked up beside the JSON file, then in images/")
    annotation_at: dict[Any, int] = {}
    for n, a in enumerate(annotations):
        where = f"{path.name}: annotations[{n}]"
        if not isinstance(a, dict):
            raise UserError(f"{where} must be an object")
        if "id" in a:
            _check_unique_id(path.name, "annotations", "annotation", n, a["id"], annotation_at)
        if not _is_id(a.get("category_id")) or a["category_id"] not in cats:
            raise UserError(f"{where}: category_id is not the id of any of the {len(cats)} categories")
        if not _is_id(a.get("image_id")) or a["image_id"] not in images:
            raise UserError(f"{where}: image_id is not the id of any of the {len(images)} images")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"{where}: bbox must be a list of four numbers [x, y, width, height] in pixels")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise UserError(f"{where}: the box has no area (width and height must be above 0)")
        entry = images[a["image_id"]]
        if entry.declared_size:
            check_box(where, entry.rel, (x, y, w, h), entry.declared_size)
        entry.boxes.append({"concept": cats[a["category_id"]], "x": x, "y": y, "w": w, "h": h})
    for entry in plan.entries:
        entry.labels = sorted({b["concept"] for b in entry.boxes} | set(entry.labels))
    if not plan.entries:
        raise UserError(f"{path.name}: the COCO file lists no images")
    return plan


def _is_id(value: Any) -> bool:
    """A COCO id: a number (not a truth value, not NaN) or a string; lists and objects are none (nor hashable)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, str)) and \
        not (isinstance(value, float) and math.isnan(value))


def _check_unique_id(file: str, key: str, what: str, n: int, value: Any, seen: dict[Any, int]) -> None:
    """Refuse a COCO id that is not a number or string, or that an earlier entry of the same list has already."""
    if not _is_id(value):
        raise UserError(f"{file}: {key}[{n}] has id {value!r}; an id must be a number or a string")
    if value in seen:
        raise UserError(f"{file}: {key}[{n}] has id {value!r}, the id of {key}[{seen[value]}] too; {what} ids must "
                        "be unique")
    seen[value] = n


def check_box(where: str, rel: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> None:
    """Refuse a box that is not inside its image (half a pixel of tolerance for rounding)."""
    x, y, w, h = box
    width, height = size
    tol = 0.5
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise UserError(f"{where}: the box falls outside image {rel}; x, y, width and height must keep it inside "
                        "the image, in pixels")
