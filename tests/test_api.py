"""The HTTP API against a live server: ``python -m core serve`` on a free loopback port, over a data directory where
alice has a dataset of real photos, a classifier ``my-classifier`` and an index ``my-index``; bob has nothing of his
own. Keys are made and revoked with the command line, as a user would; requests go over HTTP with httpx and curl."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser import free_port, served
from tests.conftest import ROOT, caltech_slice

MODEL, INDEX = "my-classifier", "my-index"
MAX_UPLOAD = 3_000_000  # the server's max_upload_bytes: small enough to send a body over it quickly
MAX_PIXELS = 4_000_000  # the server's import_max_pixels


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict]:
    """Alice's dataset (3 concepts x 6 photos), classifier and general-embedder index, and a server over them."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("api")
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        from core.data.importer import import_dataset
        from core.search import service as search
        from core.store import datasets as ds_store
        from core.training import train

        src = caltech_slice(tmp_path_factory.mktemp("src"), per_class=6)
        report = import_dataset("alice", src, "photos", workers=1)
        res = train({"owner": "alice", "dataset": "photos", "kind": "classifier",
                     "template": "Studio_EfficientNetLite0_Transfer", "name": MODEL, "seed": 0,
                     "params": {"pretrained_weights": "None", "image_size": 64, "num_epochs": 1, "batch_size": 8}},
                    home / "run-clf")
        search.build_index_now("alice", "photos", "general", INDEX)
        items = ds_store.find_items(report["dataset_id"], limit=100)
        port = free_port()
        env = {**os.environ, "DEEPTRAIN_HOME": str(home), "DEEPTRAIN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
               "DEEPTRAIN_IMPORT_MAX_PIXELS": str(MAX_PIXELS)}
        env.pop("DEEPTRAIN_API_RATE_PER_MINUTE", None)
        url = f"http://127.0.0.1:{port}"
        with served([sys.executable, "-m", "core", "serve", "--port", str(port)], env, home / "serve.log",
                    url + "/openapi.json"):
            yield {"home": home, "url": url, "env": env, "model_id": res.model_id, "items": items,
                   "photo": items[0]["path"], "src": src}
    finally:
        mp.undo()


@pytest.fixture
def home(world, monkeypatch) -> Path:
    """This process on the server's data directory (the autouse fixture gave it an empty one)."""
    monkeypatch.setenv("DEEPTRAIN_HOME", str(world["home"]))
    return world["home"]


def cli(world, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, env=world["env"],
                          cwd=ROOT, timeout=120)


def new_key(world, user: str, name: str, *scopes: str) -> str:
    out = cli(world, "--user", user, "keys", "create", "--name", name, "--json", *[f"--scope={s}" for s in scopes])
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["name"] == name and made["scopes"] == sorted(scopes) and made["active"]
    return made["key"]


@pytest.fixture(scope="module")
def keys(world) -> dict[str, str]:
    return {"alice": new_key(world, "alice", "main"), "bob": new_key(world, "bob", "main")}


def client(world, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=world["url"], headers=headers, timeout=120)


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buf, "PNG")
    return buf.getvalue()


def refused(r: httpx.Response, status: int, field: str | None = None, says: str = "") -> dict:
    """The answer is a JSON error with this status (and field), whose message contains ``says``; never a traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "field", "status"} and body["status"] == status, body
    assert "Traceback" not in r.text and ".py" not in r.text
    if field is not None:
        assert body["field"] == field, body
    assert says in body["error"], body
    return body


# ------------------------------------------------------------------------------------------------ keys


def test_keys_create_use_list_revoke_and_wrong_keys(world, home):
    key = new_key(world, "alice", "notebook")
    with client(world, key) as api:
        listed = api.get("/v1/models")
        assert listed.status_code == 200 and [m["name"] for m in listed.json()] == [MODEL]

    rows = json.loads(cli(world, "--user", "alice", "keys", "list", "--json").stdout)
    mine = next(k for k in rows if k["name"] == "notebook")
    assert mine["active"] and mine["last_used_at"] is not None and "key" not in mine
    assert key.startswith(mine["prefix"]) and len(mine["prefix"]) < len(key)
    with open(home / "studio.db", "rb") as fh:  # stored hashed: the key itself is nowhere in the store
        assert key.encode() not in fh.read()

    out = cli(world, "--user", "alice", "keys", "revoke", "notebook")
    assert out.returncode == 0 and "revoked" in out.stdout
    with client(world, key) as api:
        refused(api.get("/v1/models"), 401, "Authorization", "not valid")
    assert cli(world, "--user", "alice", "keys", "revoke", "notebook").returncode == 2  # no such active key

    with client(world, None) as api:
        r = refused(api.get("/v1/models"), 401, "Authorization", "Bearer")
        assert api.get("/v1/models").headers["www-authenticate"] == "Bearer"
    for wrong in ("dts_" + "A" * 43, "not-a-key", key[:-1] + ("A" if key[-1] != "A" else "B")):
        with client(world, wrong) as api:
            refused(api.get("/v1/models"), 401, "Authorization")
    with httpx.Client(base_url=world["url"], headers={"Authorization": f"Basic {key}"}) as api:
        refused(api.get("/v1/models"), 401)
    assert r["error"]


def test_a_key_acts_as_its_owner_and_others_things_answer_as_missing(world, home, keys):
    from core.evaluation import service as models
    from core.search import service as search

    photo = Path(world["photo"]).read_bytes()
    with client(world, keys["bob"]) as bob:
        assert bob.get("/v1/models").json() == [] and bob.get("/v1/indexes").json() == []
        answers = {}
        for name in (MODEL, "no-such-model"):
            answers[name] = refused(bob.post(f"/v1/models/{name}/predict", files={"images": ("a.jpg", photo)}), 404)
        assert answers[MODEL]["error"].replace(MODEL, "X") == answers["no-such-model"]["error"].replace(
            "no-such-model", "X")
        assert refused(bob.get(f"/v1/models/{world['model_id']}"), 404)["error"] == \
            refused(bob.get("/v1/models/999999"), 404)["error"].replace("999999", str(world["model_id"]))
        hidden = refused(bob.post(f"/v1/indexes/{INDEX}/search", json={"concept": "ant"}), 404)
        missing = refused(bob.post("/v1/indexes/no-such-index/search", json={"concept": "ant"}), 404)
        assert hidden["error"].replace(INDEX, "X") == missing["error"].replace("no-such-index", "X")
        embed_hidden = refused(bob.post("/v1/embed", json={"model": MODEL, "images": [base64.b64encode(photo)
                                                                                      .decode()]}), 404)
        assert "alice" not in embed_hidden["error"]

        models.share_model("alice", MODEL, "team")
        search.share_index("alice", INDEX, "team")
        try:
            r = bob.post(f"/v1/models/alice/{MODEL}/predict", files={"images": ("a.jpg", photo)})
            assert r.status_code == 200 and r.json()[0]["image"] == "a.jpg"
            assert bob.post(f"/v1/indexes/alice/{INDEX}/search", json={"concept": "ant", "k": 2}).status_code == 200
        finally:
            models.share_model("alice", MODEL, "private")
            search.share_index("alice", INDEX, "private")


def test_scopes_narrow_a_key(world, home):
    key = new_key(world, "alice", "search-only", "search")
    photo = base64.b64encode(Path(world["photo"]).read_bytes()).decode()
    with client(world, key) as api:
        assert api.post(f"/v1/indexes/{INDEX}/search", json={"concept": "ant", "k": 1}).status_code == 200
        assert api.post("/v1/embed", json={"images": [photo]}).status_code == 200
        refused(api.post(f"/v1/models/{MODEL}/predict", json={"images": [photo]}), 403, "Authorization", "predict")
        refused(api.get("/v1/models"), 403, "Authorization", "read")
        refused(api.post("/v1/jobs", json={"type": "index", "dataset": "photos"}), 403, "Authorization")


# ------------------------------------------------------------------------------------------------ predict and embed


def test_predict_multipart_and_base64_match_the_command_line(world, home, keys, capsys):
    from core.cli import main

    photos = [world["items"][0]["path"], world["items"][7]["path"]]
    assert main(["--user", "alice", "predict", MODEL, *photos, "--json", "--top-k", "2"]) == 0
    expected = json.loads(capsys.readouterr().out)
    with client(world, keys["alice"]) as api:
        multipart = api.post(f"/v1/models/{MODEL}/predict", data={"top_k": "2"},
                             files=[("images", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in photos])
        as_json = api.post(f"/v1/models/{MODEL}/predict", json={"top_k": 2, "images": [
            {"name": Path(p).name, "data": base64.b64encode(Path(p).read_bytes()).decode()} for p in photos]})
    for r in (multipart, as_json):
        assert r.status_code == 200, r.text
        got = r.json()
        assert [e["image"] for e in got] == [Path(p).name for p in photos]
        for g, e in zip(got, expected):
            assert set(g) == set(e) == {"image", "concepts", "boxes"} and g["boxes"] == e["boxes"] == []
            assert [c["name"] for c in g["concepts"]] == [c["name"] for c in e["concepts"]]
            assert [c["probability"] for c in g["concepts"]] == pytest.approx([c["probability"]
                                                                                for c in e["concepts"]], abs=1e-5)


def test_predict_refuses_bad_inputs_with_clear_json(world, home, keys, tmp_path):
    photo = Path(world["photo"]).read_bytes()
    url = f"/v1/models/{MODEL}/predict"
    with client(world, keys["alice"]) as api:
        refused(api.post(url, files={"images": ("notes.txt", b"just some text, not an image")}), 400, None,
                "notes.txt")
        refused(api.post(url, files={"images": ("big.png", png(2100, 2100))}), 400, None, "pixels")
        refused(api.post("/v1/models/no-such-model/predict", files={"images": ("a.jpg", photo)}), 404, None,
                "no-such-model")
        refused(api.post(url, files={"images": ("a.jpg", photo)}, data={"top_k": "0"}), 422, "top_k")
        refused(api.post(url, json={"images": [base64.b64encode(photo).decode()], "threshold": 2}), 422, "threshold")
        refused(api.post(url, json={"images": ["%%% not base64 %%%"]}), 422, "images[0]", "base64")
        refused(api.post(url, json={"images": [{"name": "x.jpg"}]}), 422, "images[0]")
        refused(api.post(url, json={}), 422, "images")
        refused(api.post(url, json={"images": [base64.b64encode(photo).decode()], "topk": 3}), 422, "topk")
        refused(api.post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "body")
        refused(api.post(url, content=b"images", headers={"Content-Type": "text/plain"}), 415, "Content-Type")
        big = os.urandom(MAX_UPLOAD + 1)
        refused(api.post(url, files={"images": ("huge.jpg", big)}), 413, "body", "max_upload_bytes")

        def chunks():  # a streamed body (no Content-Length) is cut off once it passes the limit
            for _ in range(MAX_UPLOAD // 65536 + 2):
                yield b"x" * 65536

        refused(api.post(url, content=chunks(), headers={"Content-Type": "application/json"}), 413, "body")
        refused(api.post(url, json={"images": [base64.b64encode(png(8, 8)).decode()] * 65}), 413, "images", "64")
        assert api.get("/v1/models").status_code == 200  # the server is fine after all that


def test_embed_with_the_general_embedder_and_a_model(world, home, keys):
    from core.search import service

    photo = Path(world["photo"]).read_bytes()
    with client(world, keys["alice"]) as api:
        general = api.post("/v1/embed", files={"images": ("p.jpg", photo)})
        by_model = api.post("/v1/embed", json={"model": MODEL, "images": [base64.b64encode(photo).decode()] * 2})
        refused(api.post("/v1/embed", json={"model": "nope", "images": [base64.b64encode(photo).decode()]}), 404)
        refused(api.post("/v1/embed", json={"model": ["x"], "images": [base64.b64encode(photo).decode()]}), 422,
                "model")
    assert general.status_code == 200 and by_model.status_code == 200, (general.text, by_model.text)
    g = general.json()
    assert (g["model"], g["dim"], g["embeddings"][0]["image"]) == ("general", 1280, "p.jpg")
    vec = np.array(g["embeddings"][0]["vector"])
    assert vec.shape == (1280,) and abs(np.linalg.norm(vec) - 1) < 1e-4
    here = service.embed("alice", "general", [("p.jpg", photo)])["embeddings"][0]["vector"]
    assert np.allclose(vec, here, atol=1e-5)
    m = by_model.json()
    assert m["model"] == f"model:{world['model_id']}" and len(m["embeddings"]) == 2 and m["dim"] == len(
        m["embeddings"][0]["vector"])


# ------------------------------------------------------------------------------------------------ search


def test_search_by_vector_item_concept_and_image(world, home, keys, capsys):
    from core.cli import main
    from core.search import service

    item = world["items"][3]["item_id"]
    assert main(["--user", "alice", "search", INDEX, "--item", str(item), "--k", "4", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    opened = service.open_index("alice", INDEX)
    vector = opened.vectors[opened.position(item)].tolist()
    with client(world, keys["alice"]) as api:
        by_item = api.post(f"/v1/indexes/{INDEX}/search", json={"item": item, "k": 4})
        assert by_item.status_code == 200 and by_item.json() == expected
        by_vector = api.post(f"/v1/indexes/{INDEX}/search", json={"vector": [2 * x for x in vector], "k": 3}).json()
        assert by_vector[0]["item"] == item and by_vector[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert [r["item"] for r in by_vector[1:]] == [r["item"] for r in expected[:2]]
        packed = base64.b64encode(np.asarray([2 * x for x in vector], "<f4").tobytes()).decode()
        assert api.post(f"/v1/indexes/{INDEX}/search", json={"vector": packed, "k": 3}).json() == by_vector
        fields = {"vector": (None, json.dumps([2 * x for x in vector])), "k": (None, "3")}
        as_text = api.post(f"/v1/indexes/{INDEX}/search", files=fields)
        assert [r["item"] for r in as_text.json()] == [r["item"] for r in by_vector]  # a multipart field's JSON
        by_concept = api.post(f"/v1/indexes/{INDEX}/search", json={"concept": "ant", "k": 20, "filter": "anchor"})
        assert by_concept.status_code == 200
        assert by_concept.json() and all(r["concepts"] == ["anchor"] for r in by_concept.json())
        photo = Path(world["items"][3]["path"]).read_bytes()
        by_upload = api.post(f"/v1/indexes/{INDEX}/search", files={"image": ("q.jpg", photo)}, data={"k": "2"})
        assert by_upload.status_code == 200 and by_upload.json()[0]["item"] == item  # the same photo is nearest
        by_b64 = api.post(f"/v1/indexes/{INDEX}/search", json={"image": base64.b64encode(photo).decode(), "k": 2})
        assert by_b64.json() == by_upload.json()
        assert set(by_upload.json()[0]) == {"item", "concepts", "score"}  # no server paths


def test_search_refuses_bad_inputs(world, home, keys):
    url = f"/v1/indexes/{INDEX}/search"
    with client(world, keys["alice"]) as api:
        refused(api.post(url, json={"vector": [0.1] * 7}), 422, "vector", "1280")
        refused(api.post(url, json={"vector": ["a"] * 1280}), 422, "vector")
        refused(api.post(url, json={"vector": [0.0] * 1280}), 422, "vector", "zeros")
        refused(api.post(url, json={"vector": base64.b64encode(bytes(4 * 7)).decode()}), 422, "vector", "1280")
        refused(api.post(url, json={"vector": base64.b64encode(bytes(4 * 1280 + 2)).decode()}), 422, "vector",
                "multiple of 4")
        refused(api.post(url, json={"vector": "not base64!"}), 422, "vector", "base64")
        refused(api.post(url, content=b'{"vector": [NaN' + b", 1" * 1279 + b"]}",
                         headers={"Content-Type": "application/json"}), 422, "vector", "finite")
        refused(api.post(url, json={"concept": "ant", "item": 1}), 422, None, "exactly one")
        refused(api.post(url, json={}), 422, None, "exactly one")
        refused(api.post(url, json={"concept": "ant", "k": 0}), 422, "k")
        refused(api.post(url, json={"concept": "ant", "k": 10**9}), 422, "k")
        refused(api.post(url, json={"item": "seven"}), 422, "item")
        refused(api.post(url, json={"item": 999999}), 400, None, "not in index")
        refused(api.post(url, json={"concept": "unicorn"}), 400, None, "unicorn")
        refused(api.post(url, files={"image": ("a.gif", b"GIF89a-not-really")}), 400, None, "a.gif")
        two = [("image", ("a.png", png(8, 8))), ("image", ("b.png", png(8, 8)))]
        refused(api.post(url, files=two), 422, "image", "one image")
        refused(api.post(url, json={"image": [base64.b64encode(png(8, 8)).decode()] * 2}), 422, "image")
        refused(api.post("/v1/indexes/nope/search", json={"concept": "ant"}), 404, None, "nope")


# ------------------------------------------------------------------------------------------------ lists and jobs


def test_lists_and_job_status_have_the_command_lines_shapes(world, home, keys, capsys):
    from core.cli import main
    from core.store import jobs as job_store

    job = job_store.insert_job("alice", "index", {"dataset": "photos", "model": "general"})
    assert job_store.finish(job, "failed", error="stopped by the test", from_states=("queued",))
    with client(world, keys["alice"]) as api:
        for route, argv in ((f"/v1/jobs/{job}", ["jobs", "show", str(job), "--json"]),
                            ("/v1/models", ["models", "--json"]), ("/v1/indexes", ["index", "list", "--json"]),
                            (f"/v1/indexes/{INDEX}", ["index", "show", INDEX, "--json"])):
            assert main(["--user", "alice", *argv]) == 0
            expected = json.loads(capsys.readouterr().out)
            got = api.get(route)
            assert got.status_code == 200, got.text
            if route.startswith("/v1/jobs"):  # a status read pumps the queue: only its age moves between reads
                got_json = got.json()
                for d in (got_json["progress"], expected["progress"]):
                    d.pop("heartbeat_age_s", None)
                assert got_json == expected
            else:
                assert got.json() == expected, route
        assert job in [j["id"] for j in api.get("/v1/jobs").json()]
        refused(api.get("/v1/jobs/999999"), 404)
        refused(api.get("/v1/jobs/abc"), 422, "job_id")
    with client(world, keys["bob"]) as bob:
        assert refused(bob.get(f"/v1/jobs/{job}"), 404)["error"].replace(str(job), "N") == \
            refused(bob.get("/v1/jobs/999999"), 404)["error"].replace("999999", "N")


def test_job_submit_checks_hyperparameters_like_the_ui(world, home, keys):
    from core import jobs
    from core.store import jobs as job_store

    train = {"type": "train", "dataset": "photos", "kind": "classifier",
             "template": "Studio_EfficientNetLite0_Transfer"}
    before = {j["id"] for j in job_store.list_jobs("alice")}
    try:
        with client(world, keys["alice"]) as api:
            body = refused(api.post("/v1/jobs", json={**train, "params": {"base_gradient_multiplier": 5}}), 422,
                           "params.base_gradient_multiplier", "base_gradient_multiplier")
            assert "expected a number from 0 to 1" in body["error"]
            refused(api.post("/v1/jobs", json={**train, "params": {"lrate": -1}}), 422, "params.lrate", "expected")
            refused(api.post("/v1/jobs", json={**train, "params": {"image_size": 61}}), 422, "params.image_size")
            refused(api.post("/v1/jobs", json={**train, "params": {"num_epochs": "many"}}), 422, "params.num_epochs")
            refused(api.post("/v1/jobs", json={**train, "params": {"no_such": 1}}), 422, None, "no_such")
            refused(api.post("/v1/jobs", json={**train, "seed": "x"}), 422, "seed")
            refused(api.post("/v1/jobs", json={**train, "owner": "bob"}), 422, "owner")
            refused(api.post("/v1/jobs", json={**train, "kind": "painter"}), 422, "kind")
            refused(api.post("/v1/jobs", json={"type": "train", "dataset": "photos"}), 422, "kind")
            refused(api.post("/v1/jobs", json={**train, "dataset": "nope"}), 404, None, "nope")
            assert {j["id"] for j in job_store.list_jobs("alice")} == before  # nothing refused was queued

            queued = api.post("/v1/jobs", json={**train, "params": {"num_epochs": 1, "image_size": 64}})
            assert queued.status_code == 202, queued.text
            st = api.get(f"/v1/jobs/{queued.json()['job']}").json()
            assert st["owner"] == "alice" and st["config"]["params"]["num_epochs"] == 1
    finally:  # a job this test queued is stopped at once (its worker killed), whatever failed above
        for j in job_store.list_jobs("alice"):
            if j["id"] not in before:
                jobs.cancel("alice", j["id"], wait_s=0)


def test_rate_limit_answers_429_per_key(world, home, keys):
    key = new_key(world, "alice", "rate")
    (home / "settings.toml").write_text("api_rate_per_minute = 3\n")
    try:
        with client(world, key) as api:
            assert [api.get("/v1/indexes").status_code for _ in range(3)] == [200, 200, 200]
            r = refused(api.get("/v1/indexes"), 429, None, "api_rate_per_minute")
            assert int(api.get("/v1/indexes").headers["retry-after"]) >= 1
        with client(world, keys["bob"]) as other:  # another key has its own budget
            assert other.get("/v1/indexes").status_code == 200
    finally:
        (home / "settings.toml").unlink()
    time.sleep(0.2)  # back to the default 600 a minute: the empty bucket refills one request per 0.1 s
    with client(world, key) as api:
        assert api.get("/v1/indexes").status_code == 200
    assert "3 requests a minute" in r["error"]


def test_openapi_and_docs(world):
    spec = httpx.get(world["url"] + "/openapi.json").json()
    for path in ("/v1/models", "/v1/models/{model}/predict", "/v1/embed", "/v1/indexes/{index}/search",
                 "/v1/jobs", "/v1/jobs/{job_id}", "/v1/indexes"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/models/{model}/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    docs = httpx.get(world["url"] + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    refused(httpx.get(world["url"] + "/v1/nothing-here"), 404)


# ------------------------------------------------------------------------------------------------ the README's examples


def _readme_examples() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Use it from code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


def test_readme_examples_run_as_written(world, home, keys, tmp_path):
    examples = _readme_examples()
    assert [lang for lang, _ in examples] == ["bash", "python"]
    shutil.copy(world["photo"], tmp_path / "photo.jpg")
    env = {**world["env"], "DEEPTRAIN_API": world["url"], "DEEPTRAIN_KEY": keys["alice"]}
    bash = subprocess.run(["bash", "-euo", "pipefail", "-c", examples[0][1]], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert bash.returncode == 0, bash.stderr
    answers, rest, decoder = [], bash.stdout.strip(), json.JSONDecoder()
    while rest:  # curl prints each answer without a newline
        answer, end = decoder.raw_decode(rest)
        answers.append(answer)
        rest = rest[end:].strip()
    assert len(answers) == 3
    assert answers[0][0]["image"] == "photo.jpg" and len(answers[0][0]["concepts"]) == 3
    assert len(answers[1]) == 5 and len(answers[2]) == 5
    py = subprocess.run([sys.executable, "-c", examples[1][1]], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=120)
    assert py.returncode == 0, py.stderr
    lines = py.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("image-0 [(") and lines[2].startswith("[(")
    assert lines[3] == "True"  # the vector as base64 float32 finds what the JSON list found
