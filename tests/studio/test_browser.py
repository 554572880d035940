"""The real app in headless Chromium: sign in, mark a span with the mouse, correct it, submit, export.

Skipped where Debian's chromium / chromium-driver are missing, unless MMALIGN_REQUIRE_BROWSER=1
(set by .ci/run, which installs them): then a missing browser fails the test.
"""

import json
import os

import pytest

from mmalign.data_builders.storage import load_preference_dataset
from mmalign.studio import export_project
from mmalign.studio.project import shown_swapped
from mmalign.studio.screenshot import (
    browser_available,
    drag_select,
    serving,
    sign_in,
    start_chromium,
)

from .conftest import ANSWERS, PAIR

if not browser_available():
    if os.environ.get("MMALIGN_REQUIRE_BROWSER") == "1":
        pytest.fail("MMALIGN_REQUIRE_BROWSER=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing",
                    pytrace=False)
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


def wait_for_url(driver, fragment):
    WebDriverWait(driver, 10).until(expected_conditions.url_contains(fragment))


def test_correct_a_span_label_a_pair_and_export(studio, tmp_path):
    project, tokens = studio
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, tokens["alice"])
        assert driver.current_url.endswith("/item/1")
        answer = driver.find_element(By.ID, "answer")
        assert answer.text == ANSWERS[0]
        # "a red cup and a cat on a table.": drag over "red" [2, 5), then over "a cat" [14, 19)
        drag_select(driver, answer, 2, 5)
        marks = driver.find_elements(By.CSS_SELECTOR, "#answer mark")
        assert [m.text for m in marks] == ["red"]
        box = driver.switch_to.active_element
        assert box.get_attribute("class") == "correction" and box.get_attribute("value") == "red"
        box.clear()
        box.send_keys("blue")
        drag_select(driver, answer, 14, 19)
        box = driver.switch_to.active_element
        box.clear()
        box.send_keys("a plate")
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#answer mark")] == ["red", "a cat"]
        box.send_keys(Keys.ENTER)  # Enter submits
        wait_for_url(driver, "/item/2")

        driver.find_element(By.TAG_NAME, "body").send_keys("s")  # s skips item 2
        wait_for_url(driver, "/item/3")
        # model text with markup is shown as text and never runs
        assert driver.find_element(By.ID, "answer").text == ANSWERS[2]
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018
        driver.find_element(By.ID, "submit").click()  # no marks: the answer is right as it is
        wait_for_url(driver, "/item/4")

        # half the pairs are shown in swapped order (against position bias); alice's item 4 is one
        alice = project.annotators()[0]
        swapped = shown_swapped(4, alice.id)
        assert swapped
        safe, harmful = ("b", "a") if swapped else ("a", "b")
        assert driver.find_element(By.ID, f"answer-{safe}").text == PAIR[0]
        assert driver.find_element(By.ID, f"answer-{harmful}").text == PAIR[1]
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ENTER)  # nothing chosen yet: a message, no submission
        assert "Still to choose" in driver.find_element(By.ID, "message").text
        for field, value in [(f"{safe}_harmless", "3"), (f"{harmful}_harmless", "-3"), (f"{safe}_helpful", "2"),
                             (f"{harmful}_helpful", "0")]:
            Select(driver.find_element(By.ID, field)).select_by_value(value)
        body.send_keys({"a": "1", "b": "2"}[safe])  # the safe answer is more helpful ...
        body.send_keys({"a": "3", "b": "4"}[safe])  # ... and safer
        body.send_keys(Keys.ENTER)
        wait_for_url(driver, "/item/2")  # the skipped item comes back last
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "queue-done"))
        assert "4 of 4 items submitted" in driver.find_element(By.ID, "queue-done").text

    report = export_project(project, tmp_path / "out")
    assert (report.corrections, report.pairs, report.unchanged) == (1, 1, 2)
    rows = load_preference_dataset(tmp_path / "out")
    first = rows[0]
    assert first["chosen"] == "a blue cup and a plate on a table." and first["rejected"] == ANSWERS[0]
    assert first["chosen_spans"] == [[2, 6], [15, 22]] and first["rejected_spans"] == [[2, 5], [14, 19]]
    assert json.loads(first["meta"])["annotator"] == "alice"
    pair = rows[1]
    assert (pair["chosen"], pair["more_helpful"], pair["safer"]) == (PAIR[0], "chosen", "chosen")
    assert (pair["chosen_harmless_rate"], pair["rejected_harmless_rate"]) == (3, -3)
    assert (pair["chosen_helpful_rate"], pair["rejected_helpful_rate"]) == (2, 0)


def test_offsets_are_code_points_like_python(tmp_path):
    """An emoji is two UTF-16 units in the page but one character in Python: spans must still agree."""
    from mmalign.studio import StudioProject

    project = StudioProject.create(tmp_path / "p")
    token = project.add_annotator("alice")
    text = "🙂 café: a cat on a mat."
    project.add_items([{"kind": "correction", "images": [], "prompt": "Describe.", "answer": text}])
    project.assign()
    utf16 = len(text[:text.index("cat")].encode("utf-16-le")) // 2
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, token)
        drag_select(driver, driver.find_element(By.ID, "answer"), utf16, utf16 + 3)
        box = driver.switch_to.active_element
        assert box.get_attribute("value") == "cat"
        box.clear()
        box.send_keys("dog" + Keys.ENTER)
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "queue-done"))
    (note,) = project.annotations()
    start = text.index("cat")
    assert note.payload == {"corrections": [{"start": start, "end": start + 3, "text": "dog"}]}


def test_a_refused_submission_shows_its_message_and_can_be_fixed(studio):
    """The server's 400 message reaches the annotator; nothing is stored; a fixed correction goes through."""
    project, tokens = studio
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, tokens["alice"])
        assert driver.current_url.endswith("/item/1")
        drag_select(driver, driver.find_element(By.ID, "answer"), 2, 5)  # "red"
        box = driver.switch_to.active_element
        box.clear()
        box.send_keys("\u200b")  # a zero-width space: shows nothing
        box.send_keys(Keys.ENTER)
        message = driver.find_element(By.ID, "message")
        WebDriverWait(driver, 10).until(lambda d: message.text)
        assert "has no visible character (U+200B)" in message.text and "corrections[0].text" in message.text
        assert driver.current_url.endswith("/item/1") and project.annotations() == []
        box = driver.find_element(By.CSS_SELECTOR, "input.correction")
        box.clear()
        box.send_keys("blue" + Keys.ENTER)
        wait_for_url(driver, "/item/2")
    (note,) = project.annotations()
    assert note.payload == {"corrections": [{"start": 2, "end": 5, "text": "blue"}]}


def big_image_project(tmp_path):
    """One correction item on a 1280x960 photo-sized image (text on it needs the full resolution)."""
    import io

    from PIL import Image

    from mmalign.studio import StudioProject

    buffer = io.BytesIO()
    Image.new("RGB", (1280, 960), "white").save(buffer, format="PNG")
    project = StudioProject.create(tmp_path / "big")
    token = project.add_annotator("alice")
    project.add_items([{"kind": "correction", "images": [buffer.getvalue()], "prompt": "Read the sign.",
                        "answer": "the sign says stop."}])
    project.assign()
    return project, token


def test_images_fit_the_panel_and_zoom_to_their_own_resolution(tmp_path):
    project, token = big_image_project(tmp_path)
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, token)
        img = driver.find_element(By.CSS_SELECTOR, ".image-view img")
        viewport = driver.find_element(By.CSS_SELECTOR, ".image-view .viewport")
        WebDriverWait(driver, 10).until(lambda d: img.get_attribute("naturalWidth") == "1280")

        def width():
            return driver.execute_script("return arguments[0].getBoundingClientRect().width", img)

        def scrolls():
            return driver.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", viewport)

        panel = driver.execute_script("return arguments[0].clientWidth", viewport)
        # by default the whole image fits the panel's width: far larger than 256 px, no scrolling
        assert 256 < panel < 1280 and abs(width() - panel) <= 1 and not scrolls()
        driver.find_element(By.CSS_SELECTOR, ".zoom-actual").click()
        assert width() == 1280 and scrolls()  # 1:1, one image pixel per screen pixel; the panel scrolls
        assert "100% of 1280×960" in driver.find_element(By.CSS_SELECTOR, ".zoom-level").text
        driver.find_element(By.CSS_SELECTOR, ".zoom-in").click()
        assert width() == 1920
        driver.find_element(By.CSS_SELECTOR, ".zoom-out").click()
        driver.find_element(By.CSS_SELECTOR, ".zoom-out").click()
        assert abs(width() - 1280 / 1.5) <= 1
        driver.find_element(By.CSS_SELECTOR, ".zoom-fit").click()
        assert abs(width() - panel) <= 1
        img.click()  # click toggles fit <-> actual size
        assert width() == 1280
        img.click()
        assert abs(width() - panel) <= 1


def test_a_drag_over_part_of_a_word_marks_the_whole_word(studio):
    project, tokens = studio
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, tokens["alice"])
        answer = driver.find_element(By.ID, "answer")
        # "a red cup and a cat on a table.": drag over "ed cu" [3, 8): the mark grows to "red cup" [2, 9)
        drag_select(driver, answer, 3, 8)
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#answer mark")] == ["red cup"]
        box = driver.switch_to.active_element
        assert box.get_attribute("value") == "red cup"
        box.clear()
        box.send_keys("blue mug" + Keys.ENTER)
        wait_for_url(driver, "/item/2")
    (note,) = project.annotations()
    assert note.payload == {"corrections": [{"start": 2, "end": 9, "text": "blue mug"}]}


def test_undo_with_the_u_key_and_the_button_brings_the_item_back_filled_in(studio):
    project, tokens = studio
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, tokens["alice"])
        assert not driver.find_element(By.ID, "undo").is_enabled()  # nothing submitted yet
        drag_select(driver, driver.find_element(By.ID, "answer"), 2, 5)  # "red"
        box = driver.switch_to.active_element
        box.clear()
        box.send_keys("blue" + Keys.ENTER)
        wait_for_url(driver, "/item/2")
        assert len(project.annotations()) == 1
        driver.find_element(By.TAG_NAME, "body").send_keys("u")
        wait_for_url(driver, "/item/1")
        assert project.annotations() == []
        # the undone correction is back on the page, ready to fix and submit again
        assert [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#answer mark")] == ["red"]
        box = driver.find_element(By.CSS_SELECTOR, "input.correction")
        assert box.get_attribute("value") == "blue"
        box.clear()
        box.send_keys("green" + Keys.ENTER)
        wait_for_url(driver, "/item/2")
        driver.find_element(By.ID, "undo").click()
        wait_for_url(driver, "/item/1")
        assert driver.find_element(By.CSS_SELECTOR, "input.correction").get_attribute("value") == "green"
    assert [s.dropped.by for s in project.submissions(state="dropped")] == ["alice", "alice"]


def test_both_equally_on_a_pair_where_the_rubric_allows_ties(studio):
    project, tokens = studio
    project.set_allow_ties(True)
    with serving(project) as base, start_chromium() as driver:
        sign_in(driver, base, tokens["alice"])
        driver.get(base + "/item/4")
        for field, value in [("a_harmless", "1"), ("b_harmless", "1"), ("a_helpful", "2"), ("b_helpful", "2")]:
            Select(driver.find_element(By.ID, field)).select_by_value(value)
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("5")  # equally helpful
        body.send_keys("6")  # equally safe
        body.send_keys(Keys.ENTER)
        wait_for_url(driver, "/item/1")
    (note,) = project.annotations()
    assert (note.payload["more_helpful"], note.payload["safer"]) == ("tie", "tie")
