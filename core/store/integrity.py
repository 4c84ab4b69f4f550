"""The store's integrity: the blob collector, and the checks ``python -m core doctor`` and the start-up check run.

The rule that keeps stored images: a stored file is removed only when no row refers to it, and that is decided and
done inside a write transaction (:func:`collect`), so no import can commit a use of the file in between. An import
never relies on a stored file it did not bring: its decoder links (or copies) every image it needs into its own
staging area, and its commit moves that copy in when the store's file is gone. So the collector may run at any time,
and deletes, failed imports and rolled-back imports all end with it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core import paths
from core.store.engine import describe, engine, read, transaction
from core.store.schema import blobs, indexes, items, metadata, models

STORED_EXTS = ("jpg", "png")  # what core.data.decode stores
_BATCH = 500
_SAMPLE = 20  # problems listed per kind (the counts are complete)


def _chunks(seq: list, size: int = _BATCH) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _files(digest: str, blobs_root: Path, thumbs_root: Path) -> list[Path]:
    """Every file the store may hold for one content hash: its image (any stored format) and its thumbnail."""
    return [blobs_root / digest[:2] / f"{digest}.{ext}" for ext in STORED_EXTS] + [thumbs_root / digest[:2] /
                                                                                   f"{digest}.jpg"]


def collect(hashes: Iterable[str]) -> int:
    """Remove the stored files (image and thumbnail) of those ``hashes`` that no blob row refers to; return how many
    files went. Each batch is checked and removed inside one write transaction."""
    removed = 0
    blobs_root, thumbs_root = paths.subdir("blobs"), paths.subdir("thumbs")
    for chunk in _chunks(sorted(set(hashes))):
        with transaction() as conn:
            known = set(conn.execute(sa.select(blobs.c.hash).where(blobs.c.hash.in_(chunk))).scalars())
            for digest in chunk:
                if digest in known:
                    continue
                for f in _files(digest, blobs_root, thumbs_root):
                    try:
                        f.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
    return removed


def _hashes_on_disk() -> dict[str, set[str]]:
    """{"blobs": hashes with an image file, "thumbs": hashes with a thumbnail} (temporary names left out)."""
    out: dict[str, set[str]] = {}
    for sub in ("blobs", "thumbs"):
        found: set[str] = set()
        with os.scandir(paths.subdir(sub)) as fans:
            for fan in fans:
                if fan.is_dir():
                    with os.scandir(fan.path) as files:
                        found.update(f.name.split(".", 1)[0] for f in files if not f.name.startswith("."))
        out[sub] = found
    return out


def orphans() -> dict[str, Any]:
    """What the collector would remove, read-only: blob rows no item uses and stored files no row refers to."""
    with read() as conn:
        known = set(conn.execute(sa.select(blobs.c.hash)).scalars())
        unused = list(conn.execute(sa.select(blobs.c.hash).where(
            ~sa.exists().where(items.c.blob == blobs.c.hash))).scalars())
    disk = _hashes_on_disk()
    files = sorted((disk["blobs"] | disk["thumbs"]) - known)
    return {"unused_blob_rows": len(unused), "files_without_row": len(files), "examples": (unused + files)[:_SAMPLE]}


def unreferenced_folders() -> list[str]:
    """Model and index folders no row refers to (a training or index build that died between writing its files and
    registering them). Reported, never removed by the collector: a build in progress looks the same for a moment."""
    with read() as conn:
        known = {str(Path(p).resolve()) for p in conn.execute(sa.select(models.c.path)).scalars()}
        known |= {str(Path(p).resolve()) for p in conn.execute(sa.select(indexes.c.path)).scalars()}
    found = []
    for sub in ("models", "indexes"):
        for entry in paths.subdir(sub).iterdir():
            if entry.is_dir() and str(entry.resolve()) not in known:
                found.append(str(entry))
    return sorted(found)


def collect_orphans() -> dict[str, int]:
    """The collector: drop blob rows no item uses, then remove every stored file no row refers to.

    Safe while imports run (see the module docstring); it reads every fan-out folder, so it runs from the start-up
    check only when an interrupted import needs it, and from ``python -m core doctor --collect``.
    """
    with transaction() as conn:
        unused = list(conn.execute(sa.select(blobs.c.hash).where(
            ~sa.exists().where(items.c.blob == blobs.c.hash))).scalars())
        for chunk in _chunks(unused):
            conn.execute(blobs.delete().where(blobs.c.hash.in_(chunk)))
    with read() as conn:
        known = set(conn.execute(sa.select(blobs.c.hash)).scalars())
    disk = _hashes_on_disk()
    return {"blob_rows": len(unused), "files": collect((disk["blobs"] | disk["thumbs"]) - known | set(unused))}


# ------------------------------------------------------------------------------------------------ checks

def _pragma_check(pragma: str) -> list[str]:
    try:
        with read() as conn:
            if conn.dialect.name != "sqlite":
                return []
            rows = [r[0] for r in conn.exec_driver_sql(f"PRAGMA {pragma}").all()]
    except sa.exc.DatabaseError as exc:  # too damaged to walk: "database disk image is malformed", "not a database"
        if isinstance(exc, sa.exc.OperationalError) and "locked" in str(exc.orig):
            raise
        return [f"{exc.orig}"]
    return [] if rows == ["ok"] else rows


def quick_check() -> list[str]:
    """SQLite's ``PRAGMA quick_check`` (O(size of the database), indexes' content not compared): ``[]`` when sound,
    else its messages (SQLite's own error when the file is too damaged to walk). Other databases check themselves."""
    return _pragma_check("quick_check")


# PostgreSQL settings under which a crash of the server can lose or damage committed rows (the studio's "nothing
# lost" holds only when every commit is on disk before the user is told it happened).
_PG_DURABILITY = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def _sequences_behind(conn: sa.Connection) -> list[str]:
    """PostgreSQL: integer ids whose sequence would hand out an id that a row already has (rows copied in with their
    ids and the sequence never moved): the next insert into that table fails."""
    out = []
    for table in metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer):
            continue
        seq = conn.execute(sa.select(sa.func.pg_get_serial_sequence(table.name, pk[0].name))).scalar()
        if seq is None:
            continue
        last, called = conn.execute(sa.text(f"SELECT last_value, is_called FROM {seq}")).one()
        top = conn.execute(sa.select(sa.func.max(pk[0]))).scalar()
        next_id = last + 1 if called else last
        if top is not None and next_id <= top:
            out.append(f"{table.name}: the next id would be {next_id} but the rows reach {top}, so inserts fail; "
                       f"SELECT setval('{seq}', {top}) fixes it")
    return out


def database_report() -> dict[str, Any]:
    """Which database the store is (``name``: the SQLite file or the server's URL without its password), its version
    and durability settings, ``problems`` (damage: errors) and ``warnings`` (settings that put commits at risk)."""
    eng = engine(check=False)
    name = eng.url.database if eng.dialect.name == "sqlite" else describe(eng.url)
    report: dict[str, Any] = {"dialect": eng.dialect.name, "name": name, "problems": [], "warnings": []}
    with read() as conn:
        if eng.dialect.name == "sqlite":
            report["server"] = f"SQLite {conn.exec_driver_sql('SELECT sqlite_version()').scalar()}"
            sync = int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
            report["settings"] = {"journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                                  "synchronous": ("off", "normal", "full", "extra")[sync]}
        elif eng.dialect.name == "postgresql":
            report["server"] = f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}"
            names = [*list(_PG_DURABILITY), "server_encoding", "default_transaction_isolation"]
            report["settings"] = {k: conn.exec_driver_sql(f"SHOW {k}").scalar() for k in names}
            report["warnings"] += [f"{k} is {report['settings'][k]} on the server: a crash of the server or a power "
                                   f"cut can lose rows the studio said were saved; set {k} = {want}"
                                   for k, want in _PG_DURABILITY.items() if report["settings"][k] != want]
            if report["settings"]["server_encoding"] != "UTF8":
                report["warnings"].append(f"the database's encoding is {report['settings']['server_encoding']}: names "
                                          "and labels outside it cannot be stored; create it with ENCODING 'UTF8'")
            report["problems"] += _sequences_behind(conn)
        else:  # pragma: no cover - the store runs on SQLite or PostgreSQL
            report["server"] = eng.dialect.name
    return report


def integrity_check() -> list[str]:
    """SQLite's full ``PRAGMA integrity_check`` (also compares every index with its table): ``[]`` when sound."""
    return _pragma_check("integrity_check")


def dangling_rows() -> list[dict[str, Any]]:
    """Rows that point nowhere: every foreign key of the schema whose target row is missing (checked with joins, so it
    holds whatever the database enforces), and models or indexes whose folder is gone."""
    out: list[dict[str, Any]] = []
    with read() as conn:
        for table in metadata.sorted_tables:
            for fk in table.foreign_keys:
                child, parent = fk.parent, fk.column
                missing = (sa.select(sa.func.count()).select_from(table.outerjoin(parent.table, child == parent))
                           .where(child.is_not(None), parent.is_(None)))
                n = conn.execute(missing).scalar_one()
                if n:
                    out.append({"what": f"{table.name}.{child.name} -> {parent.table.name}.{parent.name}",
                                "rows": int(n)})
        folders = [("models", r.id, r.name, r.path) for r in conn.execute(sa.select(models.c.id, models.c.name,
                                                                                    models.c.path))]
        folders += [("indexes", r.id, r.name, r.path) for r in conn.execute(sa.select(indexes.c.id, indexes.c.name,
                                                                                      indexes.c.path))]
    for kind, row_id, name, path in folders:
        if not Path(path).is_dir():
            out.append({"what": f"{kind} row {row_id} ({name}): its folder {path} is missing", "rows": 1})
    return out


def check_item_files(hash_files: bool = True, workers: int = 4) -> dict[str, Any]:
    """Every stored image that items use: is its file there, of its recorded size, and (``hash_files``) does its
    content hash to its id? Returns counts and examples of missing and damaged files."""
    with read() as conn:
        rows = conn.execute(sa.select(blobs.c.hash, blobs.c.ext, blobs.c.nbytes).where(
            sa.exists().where(items.c.blob == blobs.c.hash))).all()
        users: dict[str, int] = dict(conn.execute(sa.select(items.c.blob, sa.func.count())
                                                  .group_by(items.c.blob)).all())
    root = paths.subdir("blobs")

    def verdict(row) -> str | None:
        path = root / row.hash[:2] / f"{row.hash}.{row.ext}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size != row.nbytes:
            return "damaged"
        if hash_files:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != row.hash:
                return "damaged"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib and reads release the GIL
        verdicts = list(pool.map(verdict, rows, chunksize=64))
    missing = [r for r, v in zip(rows, verdicts) if v == "missing"]
    damaged = [r for r, v in zip(rows, verdicts) if v == "damaged"]

    def listed(found: list) -> list[str]:
        return [str(root / r.hash[:2] / f"{r.hash}.{r.ext}") for r in found[:_SAMPLE]]

    return {"files": len(rows), "hashed": bool(hash_files),
            "items_missing_file": sum(users.get(r.hash, 0) for r in missing), "missing": listed(missing),
            "items_damaged_file": sum(users.get(r.hash, 0) for r in damaged), "damaged": listed(damaged)}
