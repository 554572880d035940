"""A real server on 127.0.0.1: concurrent submissions and a SIGKILL mid-write lose nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmalign.studio import StudioProject, integrity_check

from .conftest import HttpSession

ANNOTATORS = ["ann", "ben", "cat", "dan"]
PER_ANNOTATOR = 25


def answer(i: int) -> str:
    return f"answer {i:03d}: a red cup and a cat on a table."


def numbered_project(root: Path, n_items: int, annotators=ANNOTATORS) -> tuple[StudioProject, dict[str, str]]:
    project = StudioProject.create(root)
    tokens = {name: project.add_annotator(name) for name in annotators}
    project.add_items([{"kind": "correction", "images": [], "prompt": "Describe the image.", "answer": answer(i)}
                       for i in range(n_items)])
    project.assign(overlap=0.0)
    return project, tokens


def correction(name: str) -> dict:
    return {"corrections": [{"start": 14, "end": 17, "text": f"blue ({name})"}]}  # "red"


def stored(project: StudioProject) -> list[tuple[int, str, dict]]:
    return [(n.item_id, n.annotator, n.payload) for n in project.annotations()]


def test_concurrent_submissions_are_each_stored_exactly_once(tmp_path, live_server):
    """4 annotators x 25 items, every submission sent twice at the same time by 8 client threads."""
    project, tokens = numbered_project(tmp_path / "p", len(ANNOTATORS) * PER_ANNOTATOR)
    base = live_server(project, threads=8)
    sessions = {name: HttpSession(base) for name in ANNOTATORS}
    for name, session in sessions.items():
        assert session.sign_in(tokens[name]) == 303
    queues = {name: s.queue()["pending"] for name, s in sessions.items()}
    assert all(len(q) == PER_ANNOTATOR for q in queues.values())
    tasks = [(name, item) for name, queue in queues.items() for item in queue for _ in range(2)]
    random.Random(0).shuffle(tasks)

    def send(task):
        name, item = task
        return name, item, sessions[name].post_json(f"/api/items/{item}/annotation", correction(name))[0]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, tasks))
    elapsed = time.perf_counter() - start
    assert len(results) == 200
    by_key: dict[tuple[str, int], list[int]] = {}
    for name, item, status in results:
        by_key.setdefault((name, item), []).append(status)
    assert all(sorted(statuses) == [200, 409] for statuses in by_key.values()), by_key
    rows = stored(project)
    assert len(rows) == 100 and len({(item, name) for item, name, _ in rows}) == 100
    assert all(payload == correction(name) for _, name, payload in rows)
    assert all(s.queue()["pending"] == [] for s in sessions.values())
    assert integrity_check(project.path) == "ok"
    print(f"200 concurrent submissions in {elapsed:.2f} s")


def test_sigkill_mid_submissions_loses_nothing_acknowledged(tmp_path):
    project, tokens = numbered_project(tmp_path / "p", 3 * 40, annotators=ANNOTATORS[:3])
    server = subprocess.Popen([sys.executable, "-m", "mmalign", "studio", "serve", "--project", str(project.path),
                               "--port", "0", "--threads", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = server.stdout.readline()
        assert "serving" in line, line + server.stderr.read()
        base = line.strip().rsplit(" ", 1)[-1]
        acknowledged: list[tuple[int, str]] = []
        lock = threading.Lock()

        def annotate(name: str) -> None:
            session = HttpSession(base)
            assert session.sign_in(tokens[name]) == 303
            for item in session.queue()["pending"]:
                try:
                    status, _ = session.post_json(f"/api/items/{item}/annotation", correction(name))
                except OSError:
                    return  # the server is gone
                if status == 200:
                    with lock:
                        acknowledged.append((item, name))

        threads = [threading.Thread(target=annotate, args=(name,)) for name in ANNOTATORS[:3]]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=30)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert 30 <= len(acknowledged) < 120, "the kill came after every submission: nothing was interrupted"
    assert integrity_check(project.path) == "ok"
    rows = {(item, name) for item, name, _ in stored(StudioProject(project.path))}
    assert set(acknowledged) <= rows
    assert len(rows) - len(acknowledged) <= 3 * 1  # at most one unacknowledged write in flight per client
    print(json.dumps({"acknowledged": len(acknowledged), "stored": len(rows)}))
