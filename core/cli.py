"""The command line: ``python -m core COMMAND ...``. Thin commands over core; no logic lives here.

Every command that reports data or acts takes ``--json`` and then prints the data, or what it did, as JSON
(tests/test_export_meta_cli.py lists the few without); each exits 2 with a one-line message on stderr when the input
is refused (``UserError``), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import UserError
from core.models import GENERAL

if TYPE_CHECKING:
    from core.records import IndexFacts, JobListing, JobStatus, ModelRow

_Row = TypeVar("_Row")

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _print_rows(rows: Sequence[_Row], as_json: bool, line: Callable[[_Row], str]) -> None:
    """A listing: the rows as JSON, or one formatted line each."""
    if as_json:
        _print_json(rows)
    else:
        for row in rows:
            print(line(row))


def _parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``--set key=value`` pairs into a dict of strings (validation coerces the types)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- templates
def cmd_templates(args: argparse.Namespace) -> int:
    """List the template catalog (``--kind`` to filter); ``--json`` prints every parameter spec."""
    from core.templates import list_templates

    templates = list_templates(args.kind)
    if args.json:
        _print_json([t.to_json() for t in templates])
        return 0
    for t in templates:
        dim = t.embedding_dim if t.embedding_dim is not None else "-"
        print(f"{t.kind:<10} {t.name:<36} dim={dim:<5} {t.network}")
        for p in t.params:
            bounds = p.allowed()
            print(f"    {p.name:<26} default={p.default!r:<14} {bounds}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the validated hyperparameters of KIND NAME with ``--set`` overrides (exit 2 with the reason if refused)."""
    from core.templates import validate

    _print_json(validate(args.kind, args.name, _parse_sets(args.set)))
    return 0


# ---------------------------------------------------------------- datasets
def _print_import_report(report: dict) -> None:
    print(f"Dataset {report['dataset']!r} version {report['version']}: {report['items']:,} images, "
          f"{len(report['concepts'])} concepts, splits " + ", ".join(f"{k} {v:,}" for k, v in report["splits"].items()))
    for name, count in report["concepts"].items():
        print(f"  {name}: {count:,}")
    if report["duplicates"]:
        print(f"Duplicates stored once: {report['duplicates']:,}")
    for s in report["skipped"]:
        print(f"Skipped {s['path']}: {s['reason']}")
    for w in report.get("warnings", []):
        print(f"Warning: {w}")


def _stderr_progress(fraction: float, message: str) -> None:
    """A ``core.progress.Progress`` for a terminal: one line on stderr, redrawn."""
    sys.stderr.write(f"\r{fraction * 100:5.1f}% {message:<60}")
    sys.stderr.flush()


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from core.data.importer import import_dataset

    progress = _stderr_progress if not args.json and sys.stderr.isatty() else None
    report = import_dataset(args.user, args.source, args.name, fmt=args.format, val_fraction=args.val_fraction,
                            seed=args.seed, progress=progress, video_fps=args.fps)
    if progress:
        sys.stderr.write("\n")
    keys = ("dataset", "version", "items", "concepts", "splits", "skipped", "duplicates")
    if args.json:
        _print_json({**{k: report[k] for k in keys}, **{k: v for k, v in report.items() if k not in keys}})
    else:
        _print_import_report(report)
    return 0


def cmd_dataset_samples(args: argparse.Namespace) -> int:
    from core.data import samples

    if args.which == "scenes":
        from core.data import scenes

        report = scenes.import_scenes(args.user, args.name or "scenes", count=args.count, concepts=args.concepts,
                                      seed=args.seed, val_fraction=args.val_fraction)
    elif args.which == "fashion-mnist":
        report = samples.import_fashion_mnist(args.user, args.name or "fashion-mnist", per_class=args.per_class,
                                              val_fraction=args.val_fraction, seed=args.seed)
    else:
        report = samples.import_digits(args.user, args.name or "digits", val_fraction=args.val_fraction,
                                       seed=args.seed)
    _print_json(report) if args.json else _print_import_report(report)
    return 0


def cmd_dataset_list(args: argparse.Namespace) -> int:
    from core.data import service

    rows = service.list_datasets(args.user)
    if args.json:
        _print_json([{k: d[k] for k in ("id", "name", "owner", "visibility", "version", "items", "splits", "concepts",
                                        "source", "created_at", "updated_at")} for d in rows])
    else:
        for d in rows:
            print(f"{service.display_name(args.user, d)}\t{d['visibility']}\tv{d['version']}\t{d['items']:,} images\t"
                  f"{len(d['concepts'])} concepts")
    return 0


def cmd_dataset_show(args: argparse.Namespace) -> int:
    from core.data import service

    ds = service.get_dataset(args.user, args.name)
    shown = {**ds, "eval_split": "test" if ds["splits"].get("test") else "val",
             "report": service.latest_report(args.user, ds["id"])}
    if args.json:
        _print_json(shown)
    else:
        print(f"{ds['name']} (id {ds['id']}, version {ds['version']}): {ds['items']:,} images, splits "
              + ", ".join(f"{k} {v:,}" for k, v in ds["splits"].items()))
        for name, count in ds["concepts"].items():
            print(f"  {name}: {count:,}")
    return 0


def cmd_dataset_delete(args: argparse.Namespace) -> int:
    from core.data import service

    ds = service.get_dataset(args.user, args.name)
    service.delete_dataset(args.user, ds["id"])
    done = {"deleted": "dataset", "name": ds["name"], "id": ds["id"], "items": ds["items"]}
    _print_json(done) if args.json else print(f"Deleted dataset {ds['name']!r} ({ds['items']:,} images)")
    return 0


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from core.data.export import export_dataset

    out = export_dataset(args.user, args.name, args.format, args.out)
    if args.json:
        _print_json({"dataset": args.name, "format": args.format, "path": str(out), "bytes": out.stat().st_size})
    else:
        print(out)
    return 0


def cmd_dataset_split(args: argparse.Namespace) -> int:
    from core.data.importer import resplit

    counts = resplit(args.user, args.name, args.val_fraction, args.seed)
    if args.json:
        _print_json({"dataset": args.name, "val_fraction": args.val_fraction, "seed": args.seed, "splits": counts})
    else:
        print(f"Dataset {args.name!r} split again (val fraction {args.val_fraction}, seed {args.seed}): "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0


def cmd_dataset_issues(args: argparse.Namespace) -> int:
    """Rank a dataset's label mistakes, outliers and near-duplicates: a background job followed on stderr."""
    from tqdm import tqdm

    from core import jobs
    from core.data import quality

    if args.limit < 0:
        raise UserError(f"--limit must be 0 (every row) or more, got {args.limit}")
    job_id = jobs.submit(args.user, "quality", quality.quality_job_config(args.user, args.name, args.model))
    bar = tqdm(total=100, desc=f"quality job {job_id}", file=sys.stderr, unit="%", leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def show(st: JobStatus) -> None:
        bar.n = round(100 * (st["progress"].get("fraction") or 0))
        bar.set_postfix_str(f"{st['state']} {st['progress'].get('phase') or ''}".strip())

    st = jobs.wait(args.user, job_id, poll=0.5, on_progress=show)
    bar.close()
    if st["state"] != "succeeded":
        print(f"error: quality job {job_id} {st['state']}: {st.get('error') or 'see jobs logs'}", file=sys.stderr)
        return 1
    report = quality.dataset_issues(args.user, args.name, args.model)
    rows = report["issues"] if report else []
    if args.limit:
        rows = rows[:args.limit]
    if args.json:
        _print_json(rows)
        return 0

    def shown(value: Any) -> str:
        return "-" if value is None else ", ".join(value) if isinstance(value, list) else str(value)

    for r in rows:
        print(f"{r['score']:.4f}  {r['kind']:<14} item {r['item']:<8} {shown(r['given'])}"
              + (f" -> {shown(r['suggested'])}" if r["suggested"] is not None else ""))
    counts = report["counts"] if report else {}
    print(f"{len(rows)} issue(s): " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return 0


# ---------------------------------------------------------------- training
def cmd_train(args: argparse.Namespace) -> int:
    """Train a template on a dataset: ``--foreground`` in this process with a progress bar."""
    import os
    import time

    from core import paths

    config = {"owner": args.user.name, "dataset": args.dataset, "kind": args.kind, "template": args.template,
              "params": _parse_sets(args.set), "name": args.name, "seed": args.seed}
    options = {"early_stopping_patience": args.patience} if args.patience else {}
    if args.compile is not None:
        options["compile"] = args.compile
    if options:
        config["options"] = options
    if args.base_model:
        config["base_model"] = args.base_model
    if not args.foreground:  # a background job: queued at once, followed with --wait
        from core import jobs

        job_id = jobs.submit(args.user, "train", config)
        if args.wait:
            return follow_job(args.user, job_id, args.json)
        _print_json({"job": job_id}) if args.json else print(f"job {job_id} queued (follow: jobs wait {job_id})")
        return 0
    from core.device import keep_freed_memory
    from core.training import ConsoleCallbacks, train
    from core.users import require_role

    require_role(args.user, "member", "training")
    keep_freed_memory()
    run_dir = paths.subdir("runs") / f"fg-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    result = train(config, run_dir, ConsoleCallbacks(quiet=args.json))
    out = {"model_id": result.model_id, "model_path": result.model_path, "epochs_done": result.epochs_done,
           "train_seconds": round(result.train_seconds, 2), "metrics": result.metrics, "run_dir": str(run_dir)}
    if args.json:
        _print_json(out)
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, (int, float)))
        print(f"model {result.model_id} stored in {result.model_path}\n{shown}")
    return 0


# ---------------------------------------------------------------- jobs
def cmd_worker(args: argparse.Namespace) -> int:
    """Run one queued job in this process (started by the queue; not meant to be typed)."""
    from core.jobs.worker import run

    return run(args.job_id)


def _job_line(j: JobListing) -> str:
    import time as _time

    when = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(j["created_at"]))
    fraction = j["fraction"]
    frac = f"{100 * fraction:.0f}%" if fraction is not None else "-"
    epoch = f"epoch {j['epoch']}/{j['num_epochs']}" if j.get("epoch") else ""
    return f"{j['id']:>5}  {j['state']:<11} {frac:>5}  {when}  {j['owner']:<8} {j['what']}  {epoch}"


def follow_job(user, job_id: int, as_json: bool = False) -> int:
    """Follow a job to its end with a progress bar on stderr; print its final status; exit 0 only on success."""
    from tqdm import tqdm

    from core import jobs

    bar = tqdm(total=100, desc=f"job {job_id}", file=sys.stderr, unit="%", leave=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def show(st: JobStatus) -> None:
        p = st["progress"]
        bar.n = round(100 * (p.get("fraction") or 0))
        post = st["state"]
        if p.get("epoch"):
            post += f" epoch {p['epoch']}/{p.get('num_epochs')} step {p.get('step')}/{p.get('steps_per_epoch')}"
        if p.get("loss") is not None:
            post += f" loss {p['loss']:.4f}"
        if p.get("images_per_sec"):
            post += f" {p['images_per_sec']:.0f} img/s"
        bar.set_postfix_str(post)

    st = jobs.wait(user, job_id, poll=1.0, on_progress=show)
    bar.close()
    if as_json:
        _print_json(st)
    else:
        print(f"job {job_id} {st['state']}" + (f": model {st['model_id']}" if st.get("model_id") else "")
              + (f": {st['error']}" if st.get("error") and st["state"] != "succeeded" else ""))
    return 0 if st["state"] == "succeeded" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    """List jobs, or show/cancel/resume/extend one, or print its log."""
    from core import jobs

    action = getattr(args, "jobs_action", None) or "list"
    if action == "list":
        _print_rows(jobs.list_jobs(args.user, team=args.all), args.json, _job_line)
        return 0
    if action == "show":
        st = jobs.status(args.user, args.id)
        if args.json:
            _print_json(st)
            return 0
        print(_job_line(st))
        if st.get("error"):
            print(f"error: {st['error']}")
        for m in st["metrics"]:
            print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
        return 0
    if action == "cancel":
        st = jobs.cancel(args.user, args.id)
        _print_json(st) if args.json else print(f"job {args.id} {st['state']}")
        return 0
    if action in ("resume", "extend"):
        job_id = jobs.resume(args.user, args.id) if action == "resume" else jobs.extend(args.user, args.id, args.epochs)
        if args.wait:
            print(job_id, file=sys.stderr if args.json else sys.stdout)
            return follow_job(args.user, job_id, args.json)
        _print_json({"job": job_id, "from": args.id, "action": action}) if args.json else print(job_id)
        return 0
    if action == "logs":
        print(jobs.logs(args.user, args.id, tail=args.tail))
        return 0
    if action == "wait":
        return follow_job(args.user, args.id, args.json)

    raise UserError(f"unknown jobs action {action!r}")


# ---------------------------------------------------------------- models, evaluation, prediction, export
def _model_line(m: ModelRow) -> str:
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in (m.get("metrics") or {}).items()
                        if isinstance(v, float) and k in ("top1", "top5", "recall_at_1", "map", "val_loss"))
    return f"{m['id']:>4}  {m['name']:<28} {m['kind']:<10} {m['template']:<36} {metrics}"


def cmd_models(args: argparse.Namespace) -> int:
    from core.evaluation import service

    _print_rows(service.list_models(args.user), args.json, _model_line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluation import service

    result = service.evaluate(args.user, args.model, refresh=args.refresh, threshold=args.threshold)
    if args.json:
        _print_json(result)
    else:
        _print_json({"model": result["model"]["name"], "split": result["split"], **service.summary(result)})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.evaluation.predict import draw_predictions, predict

    out = predict(args.user, args.model, args.images, top_k=args.top_k, threshold=args.threshold,
                  score_threshold=args.score_threshold)
    if args.out:
        for entry, path in zip(out, draw_predictions(args.user, args.model, args.images, out, args.out),
                               strict=True):
            entry["drawn"] = str(path)
    if args.json:
        _print_json(out)
    else:
        for entry in out:
            tops = ", ".join(f"{c['name']} {c['probability']:.3f}" for c in entry["concepts"])
            print(f"{entry['image']}: {tops}" + (f" ({len(entry['boxes'])} boxes)" if entry["boxes"] else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.evaluation.export import export_model

    done = export_model(args.user, args.model, args.format, args.out)
    if args.json:
        _print_json(done)
    else:
        print(f"model {done['model']!r} exported as {done['format']} to {done['path']} ({done['bytes']:,} bytes; "
              f"largest difference from the original {done['max_diff']:.1e})")
    return 0



# ---------------------------------------------------------------- visual search
def _index_line(f: IndexFacts) -> str:
    stale = "  (dataset changed: run `index sync`)" if f.get("stale") else ""
    params = ",".join(f"{k}={v}" for k, v in (f.get("index_params") or {}).items() if k in ("nlist", "nprobe"))
    return (f"{f['name']:<24} {f['dataset'] or '-':<16} {f['count']:>8} x {f['dim']:<5} {f['index_type']:<5} "
            f"{params:<20} {f['model_label']}{stale}")


def cmd_index(args: argparse.Namespace) -> int:
    """index build/list/show/sync/delete/duplicates/export."""
    from core.search import service

    action = args.index_command
    if action == "build":
        config = {"dataset": args.dataset, "model": args.model, "name": args.name}
        if args.foreground:
            from core.device import keep_freed_memory

            keep_freed_memory()
            progress = _stderr_progress if not args.json and sys.stderr.isatty() else None
            res = service.build_index_now(args.user, args.dataset, args.model, args.name, progress=progress)
            if progress:
                sys.stderr.write("\n")
            _print_json(res) if args.json else print(f"index {res['name']} built: {res['count']} images")
            return 0
        from core import jobs

        job_id = jobs.submit(args.user, "index", config)
        if args.wait:
            return follow_job(args.user, job_id, args.json)
        _print_json({"job": job_id}) if args.json else print(f"job {job_id} queued (follow: jobs wait {job_id})")
        return 0
    if action == "list":
        listed = service.list_indexes(args.user, args.dataset)
        if args.json:
            _print_json(listed)
        else:
            print("\n".join(_index_line(f) for f in listed) or "no indexes yet")
        return 0
    if action == "show":
        facts = service.index_facts(args.user, args.name)
        _print_json(facts) if args.json else print(_index_line(facts))
        return 0
    if action == "sync":
        synced = service.sync_index(args.user, args.name)
        _print_json(synced) if args.json else print(
            f"index {synced['index']}: {synced['added']} added, {synced['removed']} removed, {synced['count']} images")
        return 0
    if action == "delete":
        service.delete_index(args.user, args.name)
        _print_json({"deleted": "index", "name": args.name}) if args.json else print(f"index {args.name} deleted")
        return 0
    if action == "export":
        from core.search.bundle import export_bundle

        res = export_bundle(args.user, args.name, args.out)
        _print_json(res) if args.json else print(
            f"index {res['index']} exported to {res['path']}: {res['items']:,} images, {res['dim']}-d embeddings of "
            f"{res['model']} ({res['bytes']:,} bytes; unzip it and run search_example.py)")
        return 0
    if action == "duplicates":
        pairs = service.near_duplicates(args.user, args.name, args.threshold, args.limit)
        if args.json:
            _print_json(pairs)
        else:
            for p in pairs:
                print(f"{p['score']:.4f}  item {p['a']} ({', '.join(p['a_concepts'])})  "
                      f"item {p['b']} ({', '.join(p['b_concepts'])})")
            print(f"{len(pairs)} pair(s) at or above {args.threshold}")
        return 0
    raise UserError(f"Unknown index command {action!r}")


def cmd_search(args: argparse.Namespace) -> int:
    """Nearest images of an image file, a dataset item or a concept, best first."""
    from core.search import service

    if sum(x is not None for x in (args.image, args.item, args.concept)) != 1:
        raise UserError("Give exactly one query: an IMAGE file, --item ID or --concept NAME")
    results = service.search(args.user, args.index, image=args.image, item_id=args.item, concept=args.concept,
                             k=args.k, concept_filter=args.filter)
    if args.json:
        _print_json(service.result_json(results))
    else:
        for r in results:
            print(f"{r['score']:.4f}  item {r['item']:<8} {', '.join(r['concepts']):<24} {r['path']}")
    return 0


# ---------------------------------------------------------------- doctor
def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the store, its files, disk, jobs and settings; exit 1 when the store is damaged, 0 otherwise."""
    from core import doctor

    report = doctor.run(hash_files=not args.fast, collect=args.collect)
    _print_json(report) if args.json else doctor.print_report(report)
    return 1 if report["errors"] else 0


# ---------------------------------------------------------------- the HTTP API and its keys
def _key_line(k: dict) -> str:
    import time as _time

    def when(t: float | None) -> str:
        return _time.strftime("%Y-%m-%d %H:%M", _time.localtime(t)) if t else "never"

    state = "active" if k["active"] else f"revoked {when(k['revoked_at'])}"
    return (f"{k['name']:<24} {k['prefix']}...  {','.join(k['scopes']) or 'all':<20} created {when(k['created_at'])}  "
            f"last used {when(k['last_used_at'])}  {state}")


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys: create (the key is printed once), list, revoke."""
    from core import keys

    if args.keys_command == "create":
        made = keys.create_key(args.user, args.name, args.scope)
        if args.json:
            _print_json(made)
        else:
            print(f"{made['key']}\n(shown once: keep it now; send it as Authorization: Bearer KEY)")
        return 0
    if args.keys_command == "list":
        _print_rows(keys.list_keys(args.user), args.json, _key_line)
        return 0
    revoked = keys.revoke_key(args.user, args.name)
    _print_json(revoked) if args.json else print(f"key {revoked['name']} revoked")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API (FastAPI on uvicorn) until interrupted."""
    from core.api import serve

    serve(args.host, args.port)
    return 0


# ---------------------------------------------------------------- store
def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy the store's rows into an empty PostgreSQL database, checked by counts (files stay where they are)."""
    from core.database import copy_store

    def progress(table: str, rows: int) -> None:
        if not args.json:
            print(f"  {table:<16} {rows:>10,} rows", file=sys.stderr)

    report = copy_store(args.to, progress=progress)
    if args.json:
        _print_json(report)
        return 0
    print(f"copied {report['source']} -> {report['target']} in {report['seconds']} s; counts checked:")
    for table, n in report["tables"].items():
        print(f"  {table:<16} {n['source']:>10,} -> {n['target']:,}")
    print("Files stay in the data directory: run the studio on the copy with the same DEEPTRAIN_HOME and "
          "DEEPTRAIN_DB_URL set to the --to URL.")
    return 0


# ---------------------------------------------------------------- sharing and settings
def cmd_share(args: argparse.Namespace) -> int:
    """Share a dataset, model, index or job with the team (read-only for others), or make it private again."""
    visibility = "private" if args.private else "team"
    if args.what == "dataset":
        from core.data import service

        service.share_dataset(args.user, args.name, visibility)
    elif args.what == "model":
        from core.evaluation import service as models

        models.share_model(args.user, args.name, visibility)
    elif args.what == "index":
        from core.search import service as search

        search.share_index(args.user, args.name, visibility)
    else:
        from core import jobs

        jobs.share_job(args.user, args.name, visibility)
    if args.json:
        _print_json({"shared": args.what, "name": args.name, "visibility": visibility})
    else:
        print(f"{args.what} {args.name} is now {visibility}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting with its value and where it came from (environment, settings.toml or default)."""
    from core import settings

    rows = settings.describe()
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['key']:<26} {r['value']!s:<40} ({r['source']})  {r['help']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Deep Training Studio command line")
    parser.add_argument("--user", default=None, metavar="NAME",
                        help="act as this user (default: the setting `user`, DEEPTRAIN_USER, else local); paths "
                        "given on the command line are the operator's")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("templates", help="list the template catalog")
    p.add_argument("--kind", choices=["classifier", "embedder", "detector"], help="only templates of this kind")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_templates)
    p = sub.add_parser("validate", help="validate a template's hyperparameters and print them as JSON")
    p.add_argument("kind", help="classifier, embedder or detector")
    p.add_argument("name", help="template name (see `templates`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    p.set_defaults(func=cmd_validate)
    p_ds = sub.add_parser("dataset", help="import, list, show, export and delete datasets")
    ds_sub = p_ds.add_subparsers(dest="dataset_command", required=True)
    p = ds_sub.add_parser("import", help="import a folder, zip, CSV/JSON manifest, COCO file or video")
    p.add_argument("source", help="folder, .zip, .csv, .json (manifest or COCO) or video file")
    p.add_argument("--name", required=True, help="dataset name (unique per user; an existing one gets the new images)")
    p.add_argument("--format", default="auto", choices=["auto", "folder", "zip", "csv", "json", "coco", "video"])
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each concept for val (0 to 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_import)
    p = ds_sub.add_parser("samples", help="import sample data: fashion-mnist, digits, or scenes (detection: "
                          "Caltech-101 objects pasted onto real backgrounds, COCO boxes)")
    p.add_argument("which", choices=["fashion-mnist", "digits", "scenes"])
    p.add_argument("--name", default=None)
    p.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST training images per class")
    p.add_argument("--count", type=int, default=200, help="scenes: how many (320 px each)")
    p.add_argument("--concepts", type=int, default=5, help="scenes: how many Caltech-101 categories (the largest)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_samples)
    p = ds_sub.add_parser("list", help="the user's datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_list)
    p = ds_sub.add_parser("show", help="one dataset with its counts and last import report")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_show)
    p = ds_sub.add_parser("delete", help="delete a dataset (images no other dataset uses are removed)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print what was deleted as JSON")
    p.set_defaults(func=cmd_dataset_delete)
    p = ds_sub.add_parser("export", help="export a dataset as a zip")
    p.add_argument("name")
    p.add_argument("--format", default="folder", choices=["folder", "csv", "coco"])
    p.add_argument("--out", required=True, help="the zip file to write")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_dataset_export)
    p = ds_sub.add_parser("split", help="re-draw the stratified train/val split (test stays)")
    p.add_argument("name")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the new split counts as JSON")
    p.set_defaults(func=cmd_dataset_split)
    p = ds_sub.add_parser("issues", help="rank label mistakes, outliers and near-duplicates (a background job)")
    p.add_argument("name")
    p.add_argument("--model", default=GENERAL, help=f"embedder: '{GENERAL}' or a trained model's name or id")
    p.add_argument("--limit", type=int, default=0, help="print only the first N rows (0: all)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_dataset_issues)
    p = sub.add_parser("train", help="train a template on a dataset")
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--template", required=True, help="template name (see: templates --json)")
    p.add_argument("--kind", required=True, choices=["classifier", "embedder", "detector"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    p.add_argument("--name", help="model name (default: TEMPLATE-DATASET, numbered when taken)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=0, help="early stopping after this many epochs without "
                   "improvement (0: off)")
    p.add_argument("--base-model", help="a trained embedder (id or name) or 'general' as the frozen base")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training forward pass (1.1-1.2x for resnet50 on a CPU after ~80 s of "
                   "compiling; bench/README.md); default: only when over 30 minutes of training are left")
    p.add_argument("--foreground", action="store_true", help="train in this process with a progress bar")
    p.add_argument("--wait", action="store_true", help="queue a background job and follow it with a progress bar")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("worker")  # started by the queue: python -m core worker JOB_ID
    p.add_argument("job_id", type=int)
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("jobs", help="background jobs: list, show, cancel, resume, extend, logs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", action="store_true", help="also the jobs others shared with the team (an admin: all)")
    p.set_defaults(func=cmd_jobs, jobs_action="list")
    jsub = p.add_subparsers(dest="jobs_action")
    for name, text in (("show", "state, progress, metrics so far, error"), ("cancel", "stop a queued or running job"),
                       ("resume", "continue an interrupted, cancelled or failed job from its checkpoint"),
                       ("extend", "train a finished job for more epochs (a new job)"),
                       ("logs", "print the end of a job's log"), ("wait", "follow a job to its end")):
        q = jsub.add_parser(name, help=text)
        q.add_argument("id", type=int, help="job id")
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        if name in ("resume", "extend"):
            q.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
        if name == "extend":
            q.add_argument("--epochs", type=int, required=True, help="how many more epochs")
        if name == "logs":
            q.add_argument("--tail", type=int, default=200, help="lines (default 200)")
    p = sub.add_parser("models", help="list trained models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("evaluate", help="evaluate a model on its dataset's held-out split (cached)")
    p.add_argument("model", help="model name or id")
    p.add_argument("--json", action="store_true", help="every figure, as JSON")
    p.add_argument("--threshold", type=float, default=0.5, help="prediction threshold of the per-concept table")
    p.add_argument("--refresh", action="store_true", help="recompute even when a cached evaluation is current")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="predict concepts (or boxes) on image files")
    p.add_argument("model", help="model name or id")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--top-k", type=int, default=5, dest="top_k")
    p.add_argument("--threshold", type=float, default=0.5, help="logreg models: every concept at or above this")
    p.add_argument("--score-threshold", type=float, default=None, dest="score_threshold",
                   help="detectors: the boxes scoring above this (default the model's detection_score_threshold)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="detectors: also write each photo with its boxes drawn into DIR (NAME_boxes.png)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="export a model as zip (safetensors), TorchScript or ONNX")
    p.add_argument("model", help="model name or id")
    p.add_argument("--format", choices=["zip", "torchscript", "onnx"], default="zip")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_export)
    p_ix = sub.add_parser("index", help="visual-search indexes: build, list, show, sync, delete, duplicates, "
                          "export")
    ix_sub = p_ix.add_subparsers(dest="index_command", required=True)
    q = ix_sub.add_parser("build", help="embed a dataset and build its index (a background job)")
    q.add_argument("--dataset", required=True)
    q.add_argument("--model", default=GENERAL, help=f"'{GENERAL}' or a trained model's name or id")
    q.add_argument("--name", default=None, help="index name (default: DATASET-MODEL)")
    q.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    q.add_argument("--foreground", action="store_true", help="build in this process, without the job queue")
    q.add_argument("--json", action="store_true")
    q = ix_sub.add_parser("list", help="the user's indexes")
    q.add_argument("--dataset", default=None)
    q.add_argument("--json", action="store_true")
    for name, text in (("show", "one index's facts"), ("sync", "embed new images, drop deleted ones"),
                       ("delete", "delete an index")):
        q = ix_sub.add_parser(name, help=text)
        q.add_argument("name")
        q.add_argument("--json", action="store_true")
    q = ix_sub.add_parser("export", help="a portable search bundle: the embedder as ONNX, the FAISS index, the "
                          "items as CSV and search_example.py (onnxruntime, FAISS, PIL and NumPy only)")
    q.add_argument("name")
    q.add_argument("--out", required=True, help="the zip file to write")
    q.add_argument("--json", action="store_true")
    q = ix_sub.add_parser("duplicates", help="near-duplicate pairs in an index's dataset")
    q.add_argument("name")
    q.add_argument("--threshold", type=float, default=0.95)
    q.add_argument("--limit", type=int, default=1000)
    q.add_argument("--json", action="store_true")
    p_ix.set_defaults(func=cmd_index)
    p = sub.add_parser("search", help="find similar images in an index: by image file, --item or --concept")
    p.add_argument("index")
    p.add_argument("image", nargs="?", default=None)
    p.add_argument("--item", type=int, default=None)
    p.add_argument("--concept", default=None)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--filter", default=None, help="keep only results labelled with this concept")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("doctor", help="check the store, its images, disk, caches, jobs and settings (exit 1: damaged)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--fast", action="store_true", help="check each image's size instead of hashing its content")
    p.add_argument("--collect", action="store_true", help="then remove orphans: files no row refers to, abandoned "
                   "imports, temporary files, expired exports and uploads")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("serve", help="run the HTTP API (FastAPI on uvicorn) beside the app, on the same store")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)
    p_keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    q = keys_sub.add_parser("create", help="a new key (printed once; stored hashed)")
    q.add_argument("--name", required=True, help="what the key is for (unique among your active keys)")
    q.add_argument("--scope", action="append", choices=["predict", "search", "read"],
                   help="limit the key to this (repeatable); none: everything you may do")
    q.add_argument("--json", action="store_true", help="print JSON (the key in \"key\")")
    q = keys_sub.add_parser("list", help="your keys (never the keys themselves)")
    q.add_argument("--json", action="store_true")
    q = keys_sub.add_parser("revoke", help="revoke a key: refused from the next request on")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    p_keys.set_defaults(func=cmd_keys)
    p = sub.add_parser("store", help="the store's database: copy it to PostgreSQL")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("copy", help="copy every row into an empty PostgreSQL database, checked by counts "
                             "(images, models and indexes stay in the data directory)")
    q.add_argument("--to", required=True, metavar="URL", help="postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_store_copy)
    p = sub.add_parser("share", help="share a dataset, model, index or job with the team (others: read-only)")
    p.add_argument("what", choices=["dataset", "model", "index", "job"])
    p.add_argument("name", help="its name or id (a job: its id)")
    p.add_argument("--private", action="store_true", help="make it private again")
    p.add_argument("--json", action="store_true", help="print what changed as JSON")
    p.set_defaults(func=cmd_share)
    p = sub.add_parser("settings", help="every setting with its value and where it came from")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_settings)
    return parser


# commands that read no stored data as a user (doctor examines the store itself, and must not write to it first)
_NO_STORE = ("templates", "validate", "worker", "settings", "doctor", "serve", "store")  # store copy: the operator's


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from core import settings
        from core.users import check_user_name

        args.user = check_user_name(args.user if args.user is not None else settings.get("user"))
        if args.command not in _NO_STORE:  # acting on stored data: who, with which role (core.accounts)
            from core import accounts

            args.user = accounts.identify(args.user, "cli")
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
