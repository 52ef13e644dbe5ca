"""The HTML leaderboard in a real headless browser: the table and the plot are on screen.

Chromium (Debian's ``chromium`` + ``chromium-driver`` packages) loads the page from disk via
selenium; the test asserts the table is displayed with the adapter names and a failed cell,
that the embedded plot decoded (``naturalWidth > 0``), and that screenshots of both are not
blank. The page screenshot is kept under pytest's ``tmp_path`` for a person to look at.
Where chromium or selenium is missing the test skips and says how to install them.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_leaderboard import write_synthetic_results

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser():
    if not CHROMIUM or not Path(CHROMEDRIVER).exists():
        pytest.skip("chromium not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1600,1400", "--hide-scrollbars"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _not_blank(png: bytes) -> float:
    """The pixel standard deviation of a screenshot (0 for a blank one)."""
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).std())


def test_html_page_shows_table_and_plot_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    from adaptbench.leaderboard import (
        build_leaderboards,
        load_records,
        write_leaderboards,
    )

    results = write_synthetic_results(tmp_path / "results")
    boards = build_leaderboards(load_records([results]))
    [page] = [p for p in write_leaderboards(boards, tmp_path / "out", formats=["html"]) if p.suffix == ".html"]
    driver = _browser()
    try:
        driver.get(page.resolve().as_uri())
        table = driver.find_element(By.CSS_SELECTOR, "table.leaderboard")
        assert table.is_displayed()
        for adapter in ("lora", "ssf", "linear"):
            assert adapter in table.text
        failed = [cell for cell in table.find_elements(By.TAG_NAME, "td") if cell.text.startswith("failed")]
        assert failed and all(cell.is_displayed() for cell in failed)
        plot = driver.find_element(By.CSS_SELECTOR, "figure img")
        assert plot.is_displayed()
        assert plot.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0
        assert _not_blank(table.screenshot_as_png) > 5
        assert _not_blank(plot.screenshot_as_png) > 5
        driver.save_screenshot(str(tmp_path / "leaderboard-page.png"))
    finally:
        driver.quit()
    assert (tmp_path / "leaderboard-page.png").stat().st_size > 0
