"""``python -m core doctor``: is this studio's data sound, and is the server set up safely for a team?

The report (``run``): versions, the training device, free disk and each cache's size, which database the store is
(the SQLite file, or the PostgreSQL server's URL without its password, with its version and durability settings), the
store's integrity (SQLite's full ``integrity_check``; on PostgreSQL, id sequences behind their rows; on both, foreign
keys and folders checked with joins), every stored image items use (there, of its recorded size, hashing to its id),
orphans (files no row refers to, blob rows no item uses, abandoned staging areas, temporary files of gone processes,
expired exports and uploads), queued and running jobs, and settings unsafe for a team server.

Errors are damage: the integrity check fails, an item's file is missing or does not hash to its id, a row points
nowhere, an id sequence is behind its rows, the database cannot be opened. Warnings are what a sound store may have:
unsafe settings (a PostgreSQL server that may lose commits in a crash among them), orphans awaiting the collector
(``--collect`` removes them). ``python -m core doctor`` exits 1 on any error and 0 otherwise. The doctor opens the
store without the start-up check, so that it reports what it finds rather than what the check left.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import stat
import sys
import time
from pathlib import Path
from typing import Any

from core import disk, paths, settings, startup
from core.errors import UserError

PACKAGES = ("torch", "torchvision", "timm", "faiss-cpu", "numpy", "pillow", "safetensors", "sqlalchemy", "alembic",
            "streamlit", "onnx", "onnxruntime", "psycopg")


def versions() -> dict[str, str | None]:
    """Python, SQLite and the packages the studio runs on (None: not installed), read without importing them."""
    out: dict[str, str | None] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device() -> dict[str, Any]:
    """The training device, as the job workers will see it."""
    from core.device import device_info

    info = device_info()
    return {"kind": info.kind, "label": info.label, "note": info.note}


def disk_report() -> dict[str, Any]:
    """Free disk, the caches (name, kind, dataset, bytes, last used) and their budget."""
    usage = os.statvfs(paths.home())
    found = disk.caches()
    held = sum(c["bytes"] for c in found)
    return {"home": str(paths.home()), "free_bytes": disk.free_bytes(), "total_bytes": usage.f_blocks * usage.f_frsize,
            "cache_bytes": held, "cache_budget_bytes": disk.cache_budget(held),
            "caches": [{k: c[k] for k in ("name", "kind", "dataset_id", "bytes", "last_used")} for c in found]}


def jobs_report() -> list[dict[str, Any]]:
    """Queued and running jobs, oldest first, with how long ago each running one's worker last beat."""
    from core.jobs import describe
    from core.store import jobs as store

    now = time.time()
    rows = store.list_jobs(states=("queued", *store.ACTIVE))
    return [{"id": j["id"], "owner": j["owner"], "state": j["state"], "what": describe(j),
             "heartbeat_s_ago": round(now - j["heartbeat_at"], 1) if j["heartbeat_at"] else None}
            for j in sorted(rows, key=lambda j: j["id"])]


def unsafe_settings() -> list[str]:
    """Settings (and permissions) that are fine on a laptop but unsafe on a server a team shares."""
    out: list[str] = []

    def value(key: str) -> Any:
        try:
            return settings.get(key)
        except UserError as exc:
            out.append(f"{key}: {exc}")
            return None

    home = paths.home().resolve()
    for root in value("import_roots") or []:
        resolved = Path(root).expanduser().resolve()
        if resolved == Path(resolved.anchor) or resolved == home or resolved in home.parents:
            holds = "the whole server" if resolved == Path(resolved.anchor) else "the data directory"
            out.append(f"import_roots includes {root}, which holds {holds}: page users may import from any folder "
                       "under it; name the folders that hold images instead")
    heartbeat, stale = value("heartbeat_s"), value("stale_s")
    if heartbeat and stale and stale < 3 * heartbeat:
        out.append(f"stale_s ({stale:g}) is under three heartbeats (heartbeat_s {heartbeat:g}): a busy worker may be "
                   "judged dead and its job interrupted; use at least 3x heartbeat_s")
    free = disk.free_bytes()
    cache_max = value("cache_max_bytes")
    if cache_max and cache_max > free + sum(c["bytes"] for c in disk.caches()):
        out.append(f"cache_max_bytes ({cache_max:,}) is more than the disk has free ({free:,} bytes): the training "
                   "caches could fill it; leave it 0 to use a share of the free disk")
    fraction = value("cache_max_fraction")
    if fraction is not None and fraction > 0.5:
        out.append(f"cache_max_fraction ({fraction:g}) lets the caches take over half of the free disk, leaving little "
                   "for imports and models; 0.25 is the default")
    unpacked = value("import_max_unpacked_bytes")
    if unpacked and unpacked > free:
        out.append(f"import_max_unpacked_bytes ({unpacked:,}) is more than the disk has free ({free:,} bytes): one "
                   "upload may fill the disk")
    if value("auth_header"):
        out.append(f"auth_header is set ({value('auth_header')}): whoever sends that header is signed in as anyone, so "
                   "the studio must be reachable only through the proxy that sets it (bind it to 127.0.0.1)")
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o007:
        out.append(f"the data directory {home} is open to every account on this machine (mode {mode:o}): every "
                   "user's images, models and database can be read there; chmod 700 it")
    return out


def store_report(hash_files: bool) -> dict[str, Any]:
    """Integrity, dangling rows, the stored images items use, and orphans."""
    from core.data import staging
    from core.store import integrity, migrate
    from core.store.engine import engine

    def revision() -> str | None:
        with engine(check=False).connect() as conn:
            return ", ".join(sorted(migrate.current(conn) or [])) or None

    def orphans() -> dict[str, Any]:
        found = integrity.orphans()
        found["staging_areas"] = [p.name for p in staging.abandoned()]
        found["temp_files"] = [str(p) for p in disk.temp_files()]
        found["expired"] = [str(p) for sub in ("exports", "uploads") for p in disk.expired(sub)]
        found["unreferenced_folders"] = integrity.unreferenced_folders()
        return found

    report: dict[str, Any] = {"unreadable": {}}
    for key, step in (("database", integrity.database_report), ("revision", revision),
                      ("integrity", integrity.integrity_check),
                      ("dangling_rows", integrity.dangling_rows),
                      ("item_files", lambda: integrity.check_item_files(hash_files=hash_files)),
                      ("orphans", orphans)):
        try:
            report[key] = step()
        except Exception as exc:  # noqa: BLE001 - a damaged page stops one check, not the report
            report["unreadable"][key] = f"{type(exc).__name__}: {exc}"
    return report


def run(hash_files: bool = True, collect: bool = False) -> dict[str, Any]:
    """The whole report, with ``errors`` (damage: exit status 1) and ``warnings``; ``collect`` then removes the
    orphans (collector, abandoned staging areas, temporary files, expired exports and uploads) and says what went."""
    from core.store.engine import describe, engine, url

    report: dict[str, Any] = {"home": str(paths.home()), "versions": versions()}
    try:
        eng = engine(check=False)
    except Exception as exc:  # noqa: BLE001 - a server that does not answer, a file that is not a database
        report["store"] = {"error": f"cannot open {describe(url())}: {type(exc).__name__}: "
                                    f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}"}
    else:
        startup.skip(eng, "python -m core doctor reports instead")  # nothing is cleaned before it is reported
    try:
        report["device"] = device()
    except Exception as exc:  # noqa: BLE001 - a broken torch is worth reporting, not a crash of the doctor
        report["device"] = {"kind": "unknown", "label": f"cannot tell: {type(exc).__name__}: {exc}"}
    report["disk"] = disk_report()
    errors: list[str] = []
    warnings: list[str] = []
    if "store" not in report:  # opened
        try:
            report["store"] = store_report(hash_files)
        except Exception as exc:  # noqa: BLE001 - "file is not a database", "database disk image is malformed"
            report["store"] = {"error": f"{type(exc).__name__}: {exc}"}
    store = report["store"]
    if "error" in store:
        errors.append(f"the store cannot be read: {store['error']}")
    else:
        database = store.get("database") or {"problems": [], "warnings": []}
        errors += [f"database: {p}" for p in database["problems"]]
        warnings += [f"database: {w}" for w in database["warnings"]]
        errors += [f"cannot check {key}: {why}" for key, why in store["unreadable"].items()]
        problems = store.get("integrity", [])
        errors += [f"integrity check: {line}" for line in problems[:10]]
        errors += [f"integrity check: {len(problems) - 10} more problem(s)"] if len(problems) > 10 else []
        errors += [f"a row points nowhere: {d['what']} ({d['rows']} row(s))" for d in store.get("dangling_rows", [])]
        files = store.get("item_files") or {"items_missing_file": 0, "items_damaged_file": 0}
        if files["items_missing_file"]:
            errors.append(f"{files['items_missing_file']} item(s) have lost their image file, e.g. "
                          f"{files['missing'][0]}")
        if files["items_damaged_file"]:
            errors.append(f"{files['items_damaged_file']} item(s) have an image file that does not "
                          f"{'hash to its id' if files['hashed'] else 'have its recorded size'}, e.g. "
                          f"{files['damaged'][0]}")
        orphans = store.get("orphans") or {"files_without_row": 0, "unused_blob_rows": 0, "staging_areas": [],
                                           "temp_files": [], "expired": [], "unreferenced_folders": []}
        if orphans["files_without_row"] or orphans["unused_blob_rows"]:
            warnings.append(f"{orphans['files_without_row']} stored file(s) and {orphans['unused_blob_rows']} blob "
                            "row(s) are orphans awaiting the collector (`doctor --collect` removes them)")
        if orphans["staging_areas"] or orphans["temp_files"] or orphans["expired"]:
            warnings.append(f"{len(orphans['staging_areas'])} abandoned import(s), {len(orphans['temp_files'])} "
                            f"temporary file(s) of gone processes and {len(orphans['expired'])} expired export(s) or "
                            "upload(s) await the start-up check's clean-up (or `doctor --collect`)")
        if orphans["unreferenced_folders"]:
            warnings.append(f"{len(orphans['unreferenced_folders'])} model or index folder(s) no row refers to (a "
                            f"build that died before registering it?), e.g. {orphans['unreferenced_folders'][0]}; "
                            "remove them by hand once no job is running")
        try:
            report["jobs"] = jobs_report()
        except Exception as exc:  # noqa: BLE001
            report["jobs"] = []
            errors.append(f"the job queue cannot be read: {type(exc).__name__}: {exc}")
    report["unsafe_settings"] = unsafe_settings()
    warnings += [f"unsafe for a team server: {w}" for w in report["unsafe_settings"]]
    report["errors"], report["warnings"] = errors, warnings
    report["status"] = "damaged" if errors else "healthy"
    if collect and not errors:  # never delete on a damaged store: the rows that say what is used may be wrong
        from core.data import staging
        from core.store import integrity

        report["collected"] = {"staging": staging.recover(), "store": integrity.collect_orphans(),
                               "clean_up": disk.clean()}
    return report


def _size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def print_report(report: dict[str, Any], out: Any = None) -> None:
    """The report as text (on ``out``, default standard output): a line or a few a section, errors and warnings
    last."""
    out = out or sys.stdout
    v = report["versions"]
    w = out.write
    w(f"Deep Training Studio doctor: {report['home']}\n")
    w("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "\n")
    w(f"device: {report['device']['label']}\n")
    d = report["disk"]
    w(f"disk: {_size(d['free_bytes'])} free of {_size(d['total_bytes'])}; caches {_size(d['cache_bytes'])} of a "
      f"{_size(d['cache_budget_bytes'])} budget\n")
    for c in d["caches"]:
        w(f"  cache {c['name']}: {_size(c['bytes'])} ({c['kind']}), last used "
          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(c['last_used']))}\n")
    s = report["store"]
    if "error" in s:
        w(f"store: cannot be read ({s['error']})\n")
    else:
        if "database" in s:
            db = s["database"]
            w(f"database: {db['server']} at {db['name']} ("
              + ", ".join(f"{k} {v}" for k, v in db.get("settings", {}).items()) + ")\n")
        w(f"store: revision {s.get('revision')}, integrity {'ok' if not s.get('integrity') else 'FAILED'}, "
          f"{len(s.get('dangling_rows', []))} kind(s) of dangling rows\n")
        if "item_files" in s:
            f = s["item_files"]
            w(f"images: {f['files']:,} files {'hashed' if f['hashed'] else 'sized'}: {f['items_missing_file']} "
              f"item(s) missing their file, {f['items_damaged_file']} with a damaged one\n")
        if "orphans" in s:
            o = s["orphans"]
            w(f"orphans: {o['files_without_row']} file(s) without a row, {o['unused_blob_rows']} unused blob row(s), "
              f"{len(o['staging_areas'])} abandoned staging area(s), {len(o['temp_files'])} temporary file(s), "
              f"{len(o['expired'])} expired export(s)/upload(s), {len(o['unreferenced_folders'])} model or index "
              "folder(s) without a row\n")
        jobs = report.get("jobs", [])
        w(f"jobs: {sum(j['state'] == 'queued' for j in jobs)} queued, {sum(j['state'] != 'queued' for j in jobs)} "
          "running\n")
        for j in jobs:
            w(f"  job {j['id']} {j['state']} ({j['owner']}): {j['what']}\n")
    if report.get("collected"):
        w(f"collected: {report['collected']}\n")
    for e in report["errors"]:
        w(f"ERROR: {e}\n")
    for warning in report["warnings"]:
        w(f"warning: {warning}\n")
    w(f"status: {report['status']}\n")
