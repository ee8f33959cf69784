"""review.html: escaping and self-containment (always), and the page's behaviour in real headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (dev extra).
Locally it skips without them; in CI (``CI`` set) it fails, because .ci/run installs them.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.util
import io
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import in_ci
from PIL import Image

from medsg.explain.review import ReviewCase, render_review_page, write_review_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOSTILE = "<img src=x onerror=alert(1)>\"'&"
CLASSES = ["benign", "malignant", "normal"]
SIG, CAM = "significance (fused)", "Grad-CAM"


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def case(
    case_id: str, fold: int | None, true: str | None, pred: str, prob: float, k: int, **kw
) -> ReviewCase:
    """A case whose image and maps have colours unique to ``k``, so their data URIs differ."""
    heatmaps = {SIG: png((200, k * 20, 0)), CAM: png((0, k * 20, 200))}
    return ReviewCase(case_id, fold, true, pred, prob, png((k * 30, k * 30, k * 30)), heatmaps, **kw)


def six_cases() -> list[ReviewCase]:
    cases = [
        case("a01", 0, "benign", "benign", 0.90, 0),
        case("a02", 0, "benign", "malignant", 0.60, 1),
        case("m01", 1, "malignant", "malignant", 0.80, 2),
        case("m02", 1, "malignant", "benign", 0.55, 3),
        case("n01", 1, "normal", "normal", 0.95, 4),
        case(HOSTILE, None, None, "malignant", 0.70, 5, note="ensemble mean of 5 folds " + HOSTILE),
    ]
    cases[4] = replace(cases[4], heatmaps={SIG: cases[4].heatmaps[SIG]})  # n01 has no Grad-CAM
    return cases


def embedded_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', page, re.S)
    assert match
    return json.loads(match.group(1))


# ------------------------------------------------------------------------------------------ unit tests


def test_hostile_text_is_escaped_everywhere(tmp_path: Path) -> None:
    hostile_map = f"map {HOSTILE}"
    cases = [
        ReviewCase(
            HOSTILE, 0, HOSTILE, "ok", 0.5, png((1, 2, 3)), {hostile_map: png((4, 5, 6))}, note=HOSTILE
        )
    ]
    title = f"Review {HOSTILE}"
    path = write_review_page(
        tmp_path / "out" / "review.html", cases, [HOSTILE, "ok"], title, {hostile_map: HOSTILE}
    )
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "out" / "review.html"
    assert page == render_review_page(cases, [HOSTILE, "ok"], title, {hostile_map: HOSTILE})
    assert "<img src=x onerror" not in page and "onerror=alert(1)>" not in page
    assert html.escape(HOSTILE, quote=True) in page  # shown as text
    assert f"<title>Review {html.escape(HOSTILE, quote=True)}</title>" in page
    data = embedded_data(page)  # the script's data round-trips exactly
    assert data["cases"][0]["id"] == HOSTILE and data["maps"] == [
        {"name": hostile_map, "description": HOSTILE}
    ]
    assert data["classes"] == [HOSTILE, "ok"]


def test_page_is_self_contained(tmp_path: Path) -> None:
    cases = six_cases()
    colorbar = png((9, 9, 9), size=8)
    page = render_review_page(cases, CLASSES, "Review", {SIG: "fused significance"}, colorbar)
    assert not re.search(r"https?:", page, re.I)
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert uri(cases[0].image_png) in sources and uri(colorbar) in sources
    data = embedded_data(page)
    assert data["cases"][0]["overlays"] == [uri(cases[0].heatmaps[SIG]), uri(cases[0].heatmaps[CAM])]
    assert data["cases"][4]["overlays"][1] is None
    assert not re.search(r"\bfetch\(|XMLHttpRequest|<form|<link|@import", page)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    policy = html.unescape(csp.group(1)) if csp else ""
    assert "default-src 'none'" in policy and "connect-src 'none'" in policy and "unsafe-inline" not in policy


def test_ratings_are_stored_under_what_the_reviewer_saw() -> None:
    """The same cases under the same title, remade with other maps (a retrained run), must not show the ratings
    given to the old maps; the same page rendered again must find them."""

    def key(cases: list[ReviewCase]) -> str:
        return embedded_data(render_review_page(cases, CLASSES, "Review"))["storageKey"]

    cases = six_cases()
    assert key(cases) == key(six_cases())
    retrained = [replace(cases[0], heatmaps={SIG: png((1, 2, 3)), CAM: cases[0].heatmaps[CAM]}), *cases[1:]]
    assert key(retrained) != key(cases)
    assert key([replace(cases[0], probability=0.91), *cases[1:]]) != key(cases)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"predicted_class": "cyst"}, "not one of the class names"),
        ({"true_class": "cyst"}, "not one of the class names"),
        ({"probability": 1.5}, "not in \\[0, 1\\]"),
        ({"probability": float("nan")}, "not in \\[0, 1\\]"),
        ({"image_png": b"GIF89a" + bytes(30)}, "not a PNG"),
        ({"heatmaps": {SIG: png((1, 1, 1), size=16)}}, "not the size of the image"),
        ({"heatmaps": {}}, "no case has a heatmap"),
    ],
)
def test_refuses_cases_it_would_show_wrongly(change: dict, message: str) -> None:
    bad = replace(case("x", 0, "benign", "benign", 0.5, 1), **change)
    with pytest.raises(ValueError, match=message):
        render_review_page([bad], CLASSES, "t")


def test_refuses_duplicates_and_empty_input() -> None:
    one = case("x", 0, "benign", "benign", 0.5, 1)
    with pytest.raises(ValueError, match="twice"):
        render_review_page([one, one], CLASSES, "t")
    with pytest.raises(ValueError, match="no cases"):
        render_review_page([], CLASSES, "t")
    with pytest.raises(ValueError, match="unique"):
        render_review_page([one], ["benign", "benign"], "t")
    render_review_page([one, replace(one, fold=1)], CLASSES, "t")  # same image, other fold: fine


# ---------------------------------------------------------------------------------------- browser test


def browser_or_skip() -> None:
    """Skip without Chromium, chromedriver or selenium; in CI fail instead, since .ci/run installs them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    reason = "browser test needs " + ", ".join(missing) + " (apt-get install chromium chromium-driver)"
    if in_ci():
        pytest.fail(f"{reason}; .ci/run should have installed them", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def driver(tmp_path: Path):
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        chrome.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        chrome.downloads = downloads  # type: ignore[attr-defined]
        yield chrome
    finally:
        chrome.quit()


def wait_for_file(path: Path, seconds: float = 10.0) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and not list(path.parent.glob("*.crdownload")):
            return path.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"{path.name} not downloaded within {seconds} s: {list(path.parent.iterdir())}")


def test_review_page_in_chromium(driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cases = six_cases()
    page = write_review_page(
        tmp_path / "review.html", cases, CLASSES, f"Review {HOSTILE}", {CAM: "gradients"}
    )
    driver.get(page.as_uri())
    by_css = driver.find_elements

    def shown() -> list:
        return [card for card in by_css(By.CSS_SELECTOR, ".card") if card.is_displayed()]

    def count_text() -> str:
        return driver.find_element(By.ID, "count").text

    def card(i: int):
        return driver.find_element(By.CSS_SELECTOR, f'.card[data-index="{i}"]')

    def overlay_src(i: int) -> str | None:
        return card(i).find_element(By.CSS_SELECTOR, ".overlay").get_attribute("src")

    assert len(shown()) == 6 and count_text() == "6 of 6 cases shown"
    assert driver.title == f"Review {HOSTILE}"
    assert card(5).find_element(By.CSS_SELECTOR, ".case-id").text == HOSTILE  # text, not markup
    assert not card(5).find_elements(By.CSS_SELECTOR, "img:not(.original):not(.overlay)")

    # Filters: true class, outcome relative to a class (unlabelled cases drop out), confidence range.
    Select(driver.find_element(By.ID, "f-true")).select_by_visible_text("malignant")
    assert len(shown()) == 2 and count_text() == "2 of 6 cases shown"
    Select(driver.find_element(By.ID, "f-true")).select_by_visible_text("any")
    Select(driver.find_element(By.ID, "f-outcome-class")).select_by_visible_text("malignant")
    Select(driver.find_element(By.ID, "f-outcome")).select_by_visible_text("FP")
    assert [c.get_attribute("data-index") for c in shown()] == ["1"]  # a02: benign predicted malignant
    Select(driver.find_element(By.ID, "f-outcome")).select_by_visible_text("any")
    low = driver.find_element(By.ID, "f-min")
    low.clear()
    low.send_keys("75")
    assert [c.get_attribute("data-index") for c in shown()] == ["0", "2", "4"]
    low.clear()
    low.send_keys("0")
    assert len(shown()) == 6

    # Map toggle: every card's overlay follows; a case without that map says so and cannot be rated.
    assert overlay_src(0) == uri(cases[0].heatmaps[SIG])
    assert driver.find_element(By.ID, "map-description").text == ""
    driver.find_element(By.CSS_SELECTOR, 'input[name="map"][value="1"]').click()
    assert overlay_src(0) == uri(cases[0].heatmaps[CAM]) and overlay_src(5) == uri(cases[5].heatmaps[CAM])
    assert driver.find_element(By.ID, "map-description").text == "gradients"
    assert card(4).find_element(By.CSS_SELECTOR, ".missing").is_displayed()
    assert not card(4).find_element(By.CSS_SELECTOR, ".overlay").is_displayed()

    # Rating of the shown (Grad-CAM) overlay of the hostile case, kept per map type.
    note = '=cmd, "quoted"\nline2'
    card(5).find_element(By.CSS_SELECTOR, 'input[value="implausible"]').click()
    card(5).find_element(By.CSS_SELECTOR, ".rating-note").send_keys(note)
    driver.find_element(By.CSS_SELECTOR, 'input[name="map"][value="0"]').click()
    assert not card(5).find_element(By.CSS_SELECTOR, 'input[value="implausible"]').is_selected()
    assert card(5).find_element(By.CSS_SELECTOR, ".rating-note").get_attribute("value") == ""
    driver.find_element(By.CSS_SELECTOR, 'input[name="map"][value="1"]').click()
    assert card(5).find_element(By.CSS_SELECTOR, 'input[value="implausible"]').is_selected()

    driver.find_element(By.ID, "download").click()
    text = wait_for_file(driver.downloads / "ratings.csv").decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [
        ["case_id", "fold", "true_class", "predicted_class", "map_type", "rating", "note"],
        [HOSTILE, "", "", "malignant", CAM, "implausible", "'" + note],  # formula guard
    ]

    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def test_browser_test_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium"):
        browser_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium"):
        browser_or_skip()


# ------------------------------------------------------------------------- overlays a clinician can read


def layered_case() -> ReviewCase:
    """A grey image; a map that is low on the left half and high on the right; a square lesion outline."""
    import numpy as np

    from medsg.explain.overlay import heatmap_rgba, outline_rgba, png_bytes

    values = np.zeros((64, 64), dtype=np.float32)
    values[:, 32:] = 1.0
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    grey = np.full((64, 64, 3), 120, dtype=np.uint8)
    return ReviewCase(
        "layered",
        0,
        "malignant",
        "malignant",
        0.8,
        png_bytes(grey),
        {SIG: png_bytes(heatmap_rgba(values))},
        outline_png=png_bytes(outline_rgba(mask)),
        calibrated=False,
    )


def test_heatmap_low_end_is_transparent_and_the_outline_is_a_layer_above() -> None:
    import numpy as np

    from medsg.explain.overlay import heatmap_rgba, outline_rgba

    rgba = heatmap_rgba(np.linspace(0, 1, 100).reshape(10, 10))
    assert rgba[0, 0, 3] == 0 and rgba[-1, -1, 3] == 255 and (np.diff(rgba[..., 3].ravel()) >= 0).all()
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    outline = outline_rgba(mask)
    assert outline[5, 10, 3] == 255 and outline[10, 10, 3] == 0 and outline[0, 0, 3] == 0
    assert tuple(outline[5, 10, :3]) == (255, 59, 48)
    page = render_review_page([layered_case()], CLASSES, "t", critical_class="malignant")
    stack = re.search(r'<div class="stack">(.*?)</div>', page, re.S).group(1)
    assert stack.index('class="original"') < stack.index('class="overlay"') < stack.index('class="outline"')
    assert (
        '<option value="1" selected>malignant</option>' in page
    )  # outcome filter starts on the critical class
    assert "<dt>P(malignant), uncalibrated</dt><dd>80.0%</dd>" in page
    with pytest.raises(ValueError, match="outline is not the size"):
        render_review_page([replace(layered_case(), outline_png=png((0, 0, 0), size=8))], CLASSES, "t")


def test_colour_bar_is_large_and_labelled() -> None:
    from medsg.explain.overlay import colorbar_png

    bar = Image.open(io.BytesIO(colorbar_png()))
    assert bar.size[0] >= 500 and bar.size[1] >= 100  # readable, not a 14-pixel strip


def test_overlays_in_chromium_keep_anatomy_and_outline_visible(driver, tmp_path: Path) -> None:
    """Screenshots of a card: where the map is low the image shows through at full opacity, where it is high
    the map covers it, and the lesion outline stays red at every opacity."""
    from selenium.webdriver.common.by import By

    from medsg.explain.overlay import colorbar_png

    page = write_review_page(
        tmp_path / "review.html", [layered_case()], CLASSES, "t", None, colorbar_png(), "malignant"
    )
    driver.get(page.as_uri())
    assert driver.find_element(By.ID, "f-outcome-class").get_attribute("value") == "1"
    bar = driver.find_element(By.CSS_SELECTOR, ".colorbar img")
    assert bar.size["width"] >= 300 and bar.size["height"] >= 50
    screenshots = {}
    for opacity in (0, 100):
        slider = driver.find_element(By.ID, "opacity")
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
            slider,
            opacity,
        )
        stack = driver.find_element(By.CSS_SELECTOR, ".stack")
        shot = Image.open(io.BytesIO(stack.screenshot_as_png)).convert("RGB")
        shot.save(tmp_path / f"stack_{opacity}.png")
        screenshots[opacity] = shot
    full = screenshots[100]
    w, h = full.size

    def at(img: Image.Image, fx: float, fy: float) -> tuple[int, int, int]:
        return img.getpixel((int(fx * (w - 1)), int(fy * (h - 1))))

    def close(a, b, tol=12) -> bool:
        return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))

    assert close(at(full, 0.1, 0.1), (120, 120, 120))  # low map: transparent, the anatomy shows
    assert not close(at(full, 0.9, 0.1), (120, 120, 120), tol=40)  # high map: coloured
    for shot in screenshots.values():  # the outline (left edge of the square, x = 16/64) is red at both
        r, g, b = at(shot, 16.5 / 64, 0.5)
        assert r > 200 and g < 100 and b < 100, (r, g, b)
