"""Screenshot of the studio's annotation page, taken in headless Chromium (docs/images/studio-annotate.png).

Builds a small project from held-out scene-world images with the shipped scene VLM's own
answers, serves it on 127.0.0.1, signs in, opens the first answer that names an object the
scene does not hold, marks that word with the mouse and types the right object, then saves
the page. Needs Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` package (the ``test`` extra)::

    python -m mmalign.studio.screenshot --out docs/images/studio-annotate.png

:func:`start_chromium` and :func:`drag_select` are shared with the browser test.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextmanager
def start_chromium(width: int = 1200, height: int = 900) -> Iterator[Any]:
    """A selenium driver for Debian's headless Chromium with a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="studio-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def serving(project: Any) -> Iterator[str]:
    """The studio app on a free port of 127.0.0.1 in a background thread; yields its base URL."""
    from waitress import create_server

    from mmalign.studio import create_app

    server = create_server(create_app(project), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=10)


def sign_in(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(base + "/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 10).until(expected_conditions.url_contains("/item/"))


def drag_select(driver: Any, element: Any, start: int, end: int) -> None:
    """Select characters [start, end) of the element's text with a real mouse drag.

    The script only measures where the characters are on screen; the press, move and
    release are mouse events, so the page sees what a person's selection produces.
    """
    from selenium.webdriver.common.action_chains import ActionChains

    rects = driver.execute_script(
        """const el = arguments[0], start = arguments[1], end = arguments[2];
        const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
        function point(offset) {
          let node, seen = 0;
          while ((node = walker.nextNode())) {
            if (offset < seen + node.length) { const r = document.createRange();
              r.setStart(node, offset - seen); r.setEnd(node, offset - seen + 1); return r.getBoundingClientRect(); }
            seen += node.length;
          }
        }
        const a = point(start); walker.currentNode = el; const b = point(end - 1);
        const box = el.getBoundingClientRect();
        return [a.left - box.left, a.top - box.top + a.height / 2, b.right - box.left, b.top - box.top + b.height / 2,
                box.width, box.height];""", element, start, end)
    x0, y0, x1, y1, width, height = rects
    # offsets are from the element's centre in selenium 4
    ActionChains(driver).move_to_element_with_offset(element, int(x0 - width / 2) + 1, int(y0 - height / 2)) \
        .click_and_hold().move_to_element_with_offset(element, int(x1 - width / 2) - 1, int(y1 - height / 2)) \
        .release().perform()


def demo_project(root: Path, scenes: int = 8, model: str = "scene-vlm") -> tuple[Any, str]:
    """A project with the scene VLM's descriptions of held-out scene-world images; returns it and a token."""
    from mmalign import load_adapter
    from mmalign.benchmarks.runner import GenerationConfig
    from mmalign.scene.feedback import scene_prompt_records
    from mmalign.scene.world import WorldConfig
    from mmalign.studio import StudioProject, load_prompt_set

    project = StudioProject.create(root)
    token = project.add_annotator("alice")
    records = scene_prompt_records(WorldConfig(seed=0), scenes, split="eval", kinds=["describe"])
    load_prompt_set(project, records, load_adapter(model), GenerationConfig(batch_size=scenes, max_new_tokens=128),
                    model_name=model, progress=False)
    project.assign()
    return project, token


def first_hallucination(project: Any) -> tuple[int, str, int, int, str]:
    """The first item whose answer names an object category the scene does not hold:
    ``(item id, answer, start, end, a category the scene holds)``; the category is one the
    answer left out where there is one, as an annotator would correct it."""
    import re

    from mmalign.scene.world import WorldConfig, scene_at

    config = WorldConfig(seed=0)
    for item in project.items():
        present = [o.category for o in scene_at(config, item.meta["row"] + 1, "eval").objects]
        for category in config.categories:
            found = re.search(rf"\b{category}s?\b", item.answer)
            if found and category not in present:
                missed = [c for c in present if not re.search(rf"\b{c}s?\b", item.answer)]
                return item.id, item.answer, found.start(), found.end(), (missed or present)[0]
    raise RuntimeError("the model named no missing object in these scenes; try more --scenes")


def take_screenshot(out: Path, scenes: int = 8) -> str:
    """Mark an object the model made up, with the mouse, and type the right one."""
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp:
        project, token = demo_project(Path(tmp) / "project", scenes)
        item_id, answer, start, end, truth = first_hallucination(project)
        with serving(project) as base, start_chromium(1100, 1000) as driver:
            sign_in(driver, base, token)
            driver.get(f"{base}/item/{item_id}")
            drag_select(driver, driver.find_element(By.ID, "answer"), start, end)
            box = driver.find_element(By.CSS_SELECTOR, "input.correction")
            box.clear()
            box.send_keys(truth)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
    return f"{answer!r}: {answer[start:end]!r} -> {truth!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/studio-annotate.png", help="PNG to write")
    parser.add_argument("--scenes", type=int, default=8, help="held-out scene-world images to answer")
    args = parser.parse_args(argv)
    shown = take_screenshot(Path(args.out), args.scenes)
    print(f"wrote {args.out} ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
