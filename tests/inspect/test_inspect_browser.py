"""The inspect page of a short real run, rendered by a real headless browser (Debian's chromium
through chromedriver): every check reads the rendered DOM, not the HTML source.

One tiny `entropy-rl train` run (tiny_run.py) and one browser serve the module. The test fails
(it does not skip) without chromium: .ci/run installs it.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from entropy_rl import cli
from tests.inspect.tiny_run import tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("inspect-browser")]

H_EDGES, P_EDGES = [0.1, 0.5, 1, 2], [0.1, 0.3, 0.6, 0.9]  # the page's entropy / probability classes


@pytest.fixture(scope="session")  # session: other modules interleave on a worker
def page(tmp_path_factory):
    """(the page of a tiny real run, its samples.jsonl rows, a folder for artifacts)."""
    directory = tmp_path_factory.mktemp("inspect")
    run_dir = tiny_run(directory)
    out = directory / "page.html"
    assert cli.main(["inspect", str(run_dir), "-o", str(out)]) == 0
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return out, rows, directory


@pytest.fixture(scope="session")  # session: other modules interleave on a worker
def browser(page):
    """(chromium at the page, the performance log of loading it)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, ("the browser tests need Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(page[0].as_uri())
        _wait_ready(driver)
        yield driver, driver.get_log("performance")
    finally:
        driver.quit()


def _wait_ready(driver):
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _reload(driver):
    driver.refresh()
    _wait_ready(driver)


def _shown(driver) -> list[int]:
    """The indices (samples.jsonl rows) of the responses on the page now."""
    return driver.execute_script("return Array.from(document.querySelectorAll('#responses .response'))"
                                 ".map(e => Number(e.dataset.r))")


def _expected_token(row, i):
    """(text, classes) the page must show for token i of a samples.jsonl row, computed here."""
    special = row["special"].get(str(i))
    piece = row["pieces"][i]
    text = special or ("◌" if piece == "" else piece.replace(" ", "·").replace("\t", "→").replace("\n", "↵"))
    entropy, p = round(row["entropy"][i] * 1000) / 1000, np.exp(round(row["logp"][i] * 1000) / 1000)
    classes = {"t", f"h{np.searchsorted(H_EDGES, entropy, side='right')}",
               f"p{np.searchsorted(P_EDGES, p, side='right')}"}
    classes |= {"k-silenced"} if row["flagged"][i] else set()  # STAPO's spurious tokens
    classes |= {"sp"} if special else {"part"} if piece == "" else set()
    return text, classes


def test_a_responses_tokens_are_shown_in_order_with_their_classes_and_flags(browser, page):
    driver, _ = browser
    _, rows, _ = page
    chosen = max(range(len(rows)), key=lambda i: (sum(rows[i]["flagged"]), len(rows[i]["special"])))
    row = rows[chosen]
    assert sum(row["flagged"]) > 0
    card = driver.find_element(By.CSS_SELECTOR, f'#responses .response[data-r="{chosen}"]')
    shown = driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.tokens .t')).map(e => [e.textContent, e.className])", card)
    expected = [_expected_token(row, i) for i in range(row["length"])]
    assert [text for text, _ in shown] == [text for text, _ in expected]
    assert [set(classes.split()) for _, classes in shown] == [classes for _, classes in expected]
    meta = card.find_element(By.CLASS_NAME, "meta").text
    assert f"step {row['step']}" in meta and f"reference {row['reference']}" in meta
    assert f"{sum(row['flagged'])} flagged (loss/spurious_fraction)" in meta
    every_class = {c for r in rows for i in range(r["length"]) for c in _expected_token(r, i)[1]}
    assert "k-silenced" in every_class and len({c for c in every_class if c[0] in "hp"}) >= 3  # not vacuous

    token = card.find_elements(By.CSS_SELECTOR, ".tokens .t")[0]
    ActionChains(driver).move_to_element(token).perform()
    tip = driver.find_element(By.ID, "tip")
    WebDriverWait(driver, 10).until(lambda d: tip.is_displayed())
    assert f"entropy {row['entropy'][0]:.3f}" in tip.text and f"log-prob {row['logp'][0]:.3f}" in tip.text


def test_filters_and_paging_change_what_is_shown(browser, page):
    driver, _ = browser
    _, rows, _ = page
    _reload(driver)
    assert _shown(driver) == list(range(len(rows)))  # all of them fit one page of 50

    driver.find_element(By.ID, "f-flagged").click()
    assert _shown(driver) == [i for i, r in enumerate(rows) if sum(r["flagged"])] != list(range(len(rows)))
    Select(driver.find_element(By.ID, "f-correct")).select_by_value("wrong")
    assert _shown(driver) == [i for i, r in enumerate(rows) if sum(r["flagged"]) and r["correct"] <= 0]

    _reload(driver)
    step_min = driver.find_element(By.ID, "f-step-min")
    step_min.send_keys("2\t")
    assert _shown(driver) == [i for i, r in enumerate(rows) if r["step"] >= 2] != []

    _reload(driver)
    needle = next(w for r in rows for w in r["response"].split() if len(w) >= 4)
    driver.find_element(By.ID, "f-search").send_keys(needle.upper())
    expected = [i for i, r in enumerate(rows) if needle.upper().lower() in r["response"].lower()]
    WebDriverWait(driver, 10).until(lambda d: _shown(d) == expected)

    _reload(driver)
    Select(driver.find_element(By.ID, "f-page-size")).select_by_visible_text("20")
    assert _shown(driver) == list(range(20))
    driver.find_elements(By.CSS_SELECTOR, "#pager-top button")[2].click()  # next
    assert _shown(driver) == list(range(20, len(rows)))
    assert f"responses 21–{len(rows)} of {len(rows)}" in driver.find_element(By.ID, "pager-top").text

    driver.execute_script("inspectPage.update({preview: 5, pageSize: 50})")  # long responses show 5 tokens first
    tokens = lambda: driver.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('[data-r=\"0\"] .t')).map(e => Number(e.dataset.i))")
    assert tokens() == list(range(5))
    driver.find_element(By.CSS_SELECTOR, '[data-r="0"] button.more').click()
    assert tokens() == list(range(rows[0]["length"]))

    driver.find_element(By.CSS_SELECTOR, 'input[name="colour"][value="prob"]').click()
    assert driver.find_element(By.ID, "responses").get_attribute("class") == "by-prob"


def test_screenshot_of_the_token_browser_is_not_blank(browser, page):
    driver, _ = browser
    _, _, directory = page
    _reload(driver)
    driver.execute_script("document.getElementById('browser').scrollIntoView()")
    path = directory / "inspect_browser.png"
    assert driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape[1] >= 1000
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    print(f"screenshot: {path}")


def test_the_page_made_no_network_request(browser, page):
    driver, load_log = browser
    url = pathlib.Path(page[0]).as_uri()
    events = [json.loads(entry["message"])["message"] for entry in load_log + driver.get_log("performance")]
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert url in requests  # the log does record requests: the page itself
    assert {r for r in requests if not r.startswith("data:")} == {url}
    assert not [e for e in events if e["method"] == "Network.webSocketCreated"]
