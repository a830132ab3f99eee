"""The workbench in a real headless Chromium, with the bundled model: the main flow end to end.

Starts `streamlit run streamlit_app.py` on a free localhost port (the bundled SmolLM2-135M-Instruct,
a fresh artifact cache that shares the converted weights), drives Debian's /usr/bin/chromium
through playwright (never a downloaded browser) and checks the page content at each step:
load the demo set, pick an example, run IG (m = 4), see the heatmap, switch the example's
irrelevant-exclusive neurons off and compare the answers, save the mask, download it, upload it
back, and mine a small sample as a background job. Screenshots of each step go to
test-output/browser/; with NEURORIT_UPDATE_SCREENSHOTS=1 they are also copied to
docs/screenshots/ (the README's pictures).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "browser"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 1100}
# The test waits for the app's own status (the count of finished script runs that every run writes
# last, app.state.mark_run_finished), never for a clock. This bound only stops a hung app from
# hanging CI: a busy or slow machine passes, however long its work takes below it.
HANG_GUARD = int(os.environ.get("NEURORIT_HANG_GUARD_MS", 30 * 60_000))  # ms; lower it to debug a hang
SCREENSHOTS: list[Path] = []
_FINISHED_RUNS = """() => Math.max(0, ...[...document.querySelectorAll('.neurorit-run-finished')]
    .map(el => Number(el.dataset.run)))"""
_RUN_FINISHED_SINCE = """since => {
    const runs = Math.max(0, ...[...document.querySelectorAll('.neurorit-run-finished')]
        .map(el => Number(el.dataset.run)));
    const running = document.querySelector('[data-testid="stStatusWidget"]');
    return runs > since && !(running && running.innerText.includes('Running'));
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundled_dir: Path) -> Iterator[str]:
    """The app on a free port; its own cache (the converted bundled model linked in, nothing else)."""
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    cache = tmp_path_factory.mktemp("app-cache")
    (cache / "models").mkdir()
    (cache / "models" / bundled_dir.name).symlink_to(bundled_dir, target_is_directory=True)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NEURORIT_MODEL", "NEURORIT_DEVICE", "NEURORIT_DTYPE")}
    env.update(NEURORIT_CACHE=str(cache), NEURORIT_DEVICE="cpu", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # One torch thread: on a shared 2-core machine, two OpenMP threads per process spin against the
    # other processes and make IG 5-20x slower; alone, one thread costs little.
    env.setdefault("OMP_NUM_THREADS", "1")
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        _stop_jobs(cache)


def _stop_jobs(cache: Path) -> None:
    """Cancel any mining job the test left running (they run in their own process group)."""
    env_cache = os.environ.get("NEURORIT_CACHE")
    os.environ["NEURORIT_CACHE"] = str(cache)
    try:
        from neurorit import jobs

        if jobs.db_path().is_file():
            for job in jobs.list_jobs():
                if job.state in ("queued", "running"):
                    jobs.cancel(job.id)
    finally:
        if env_cache is None:
            os.environ.pop("NEURORIT_CACHE", None)
        else:
            os.environ["NEURORIT_CACHE"] = env_cache


@pytest.fixture(scope="module")
def browser_page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(HANG_GUARD)
            yield page
        finally:
            browser.close()


def _shot(page: object, name: str, height: int = 2400) -> None:
    """A screenshot of the whole app (a tall viewport: Streamlit scrolls inside its own container)."""
    page.mouse.move(0, 0)  # type: ignore[attr-defined]  # no tooltip in the picture
    page.evaluate("for (const el of document.querySelectorAll('*')) { if (el.scrollTop) el.scrollTop = 0; }")  # type: ignore[attr-defined]
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})  # type: ignore[attr-defined]
    page.wait_for_timeout(600)  # type: ignore[attr-defined]
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    page.set_viewport_size(VIEWPORT)  # type: ignore[attr-defined]
    SCREENSHOTS.append(path)


def _finished_runs(page: object) -> int:
    """How many script runs the app says it finished in this session (0 before the first)."""
    return int(page.evaluate(_FINISHED_RUNS))  # type: ignore[attr-defined]


def _until_run_finished(page: object, since: int) -> None:
    """Wait until the app reports a script run finished after `since` and none is running now."""
    page.wait_for_function(_RUN_FINISHED_SINCE, arg=since, timeout=HANG_GUARD)  # type: ignore[attr-defined]


def _select(page: object, label: str, option: str) -> None:
    """Pick a selectbox option by typing part of it (opening the list by a click alone is flaky)."""
    box = page.get_by_role("combobox", name=label)  # type: ignore[attr-defined]
    if box.input_value() == option:
        return  # already chosen: no rerun would follow
    since = _finished_runs(page)
    box.click()
    box.fill(option[:40])
    page.get_by_role("option").filter(has_text=option).click()  # type: ignore[attr-defined]
    _until_run_finished(page, since)


def _go(page: object, title: str) -> None:
    since = _finished_runs(page)
    page.get_by_role("link", name=title).click()  # type: ignore[attr-defined]
    _until_run_finished(page, since)
    page.get_by_role("heading", name=title).first.wait_for()  # type: ignore[attr-defined]


def _set_number(page: object, label: str, value: int) -> None:
    """Type a value into a number input and wait for the script run it causes."""
    box = page.get_by_role("spinbutton", name=label)  # type: ignore[attr-defined]
    if box.input_value() == str(value):
        return  # unchanged: Streamlit does not rerun
    since = _finished_runs(page)
    box.fill(str(value))
    box.press("Enter")
    _until_run_finished(page, since)


def _click(page: object, button: str) -> None:
    """Click a button and wait for the script run it causes to finish."""
    since = _finished_runs(page)
    page.get_by_role("button", name=button).click()  # type: ignore[attr-defined]
    _until_run_finished(page, since)


def _timed_click(page: object, button: str, until: str) -> float:
    """Seconds from clicking `button` until `until` shows and the script run finished (a record for
    timings.txt, never a pass/fail bound). For a background job the page polls until it shows."""
    from playwright.sync_api import expect

    start = time.perf_counter()
    _click(page, button)
    expect(page.get_by_text(until)).to_be_visible(timeout=HANG_GUARD)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def _main_text(page: object) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()  # type: ignore[attr-defined]


def test_workbench_flow(browser_page: object, server: str) -> None:
    from playwright.sync_api import expect

    page = browser_page
    expect.set_options(timeout=HANG_GUARD)  # the conditions below wait on the app, which may be busy
    timings: dict[str, float] = {}

    # 1. Model & data: the bundled model loads, the demo set, pick an example, see the exact prompt
    start = time.perf_counter()
    page.goto(server)
    _until_run_finished(page, 0)
    expect(page.get_by_text("context 8192 tokens")).to_be_visible()
    expect(page.get_by_text("SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers x 1536 neurons)")).to_be_visible()
    timings["model load"] = time.perf_counter() - start
    _click(page, "Load the demo set")
    expect(page.get_by_text("demo set · 42 examples")).to_be_visible()
    _select(page, "Example", "What is the capital city of Australia?")
    prompt = page.locator('[data-testid="stCode"]').first
    expect(prompt).to_contain_text("Question: What is the capital city of Australia?")
    expect(page.get_by_text("of 8192 context tokens")).to_be_visible()
    _shot(page, "1-model-data", 2200)

    # 2. Explore: IG with m = 4 on both views, heatmap with hover data, answers, sets, top neurons
    _go(page, "Explore one example")
    _set_number(page, "IG steps (m)", 4)
    timings["IG, both views"] = _timed_click(page, "Run IG (m = 4)", "Answers and gold log-probabilities")
    text = _main_text(page)
    assert "Showing the IG result" in text and "completeness gap" in text
    assert "irrelevant-exclusive" in text and "Top neurons" in text
    heatmap = page.locator(".js-plotly-plot").first
    expect(heatmap).to_be_visible()
    expect(heatmap).to_contain_text("IG scores, relevant view")
    expect(heatmap.locator(".xtitle")).to_have_text("neuron")
    expect(heatmap.locator(".ytitle")).to_have_text("layer")
    expect(page.locator('[data-testid="stDataFrame"]').nth(1)).to_be_visible()  # the top-neuron table
    _shot(page, "2-explore", 3000)

    # 3. Ablate: switch this example's irrelevant-exclusive neurons off; answers before / after
    _go(page, "Ablate (what-if)")
    expect(page.get_by_text("From the ig result of example")).to_be_visible()
    summary = page.get_by_text("neurons in").first.inner_text()
    assert "irrelevant-exclusive of" in _main_text(page), summary
    start = time.perf_counter()
    since = _finished_runs(page)
    page.get_by_role("button", name="Run what-if").click()
    page.get_by_text("After:").first.wait_for(state="visible")  # the noisy view, drawn first
    # (wait_for watches the page as it changes; expect() re-checks at 0.1-1 s intervals)
    timings["what-if, first (noisy) view on screen"] = time.perf_counter() - start
    expect(page.get_by_text("Answered in")).to_be_visible()
    _until_run_finished(page, since)
    timings["what-if, all 3 views"] = time.perf_counter() - start
    computed = re.search(r"Answered in ([\d.]+) s \(the noisy view, shown first, in ([\d.]+) s\)", _main_text(page))
    assert computed, _main_text(page)
    timings["what-if, noisy view, computed in the page"] = float(computed.group(2))
    timings["what-if, all 3 views, computed in the page"] = float(computed.group(1))
    text = _main_text(page)
    assert "Before:" in text and "After:" in text and "gold log-prob" in text
    assert "noisy view" in text and "irrelevant view" in text
    _set_number(page, "Examples (from the start of the dataset)", 2)
    timings["batch of 2, 3 views, base + masked + control"] = _timed_click(
        page, "Run the batch (2 examples)", "Accuracy without the mask, with it, and with a random mask")
    _click(page, "Save the mask")
    expect(page.get_by_text("Saved mask")).to_be_visible()
    _shot(page, "3-ablate", 3000)

    # 4. Masks: the saved mask is listed; download it, upload it back, see it validated
    _go(page, "Masks")
    expect(page.get_by_text("Masks in the cache")).to_be_visible()
    expect(page.get_by_role("combobox", name="Mask", exact=True)).to_have_value(re.compile(r"irrelevant-exclusive of demo-02 · \d+ neurons"))
    expect(page.locator('[data-testid="stMain"]')).to_contain_text("Provenance")  # waits for the rerun
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download mask (.zip)").click()
    download = download_info.value
    zipped = OUT / download.suggested_filename
    download.save_as(zipped)
    with zipfile.ZipFile(zipped) as zf:
        assert sorted(zf.namelist()) == ["mask.json", "mask.safetensors"]
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(zipped))
    importer = page.get_by_role("button", name="Validate and import")
    expect(importer).to_be_enabled()  # the upload reached the server (the button waits for a file)
    importer.click()
    expect(page.get_by_text("imported and valid for SmolLM2-135M-Instruct")).to_be_visible()
    _shot(page, "4-masks", 2400)

    # 5. Mine: a small sample as a background job; the page polls it and shows the sets when done
    _go(page, "Mine a dataset")
    since = _finished_runs(page)
    page.get_by_text("a random sample").click()
    _until_run_finished(page, since)
    _set_number(page, "Sample size", 3)
    _set_number(page, "IG steps (m)", 2)
    timings["mining job, 3 examples, m = 2"] = _timed_click(
        page, "Start mining job (3 examples)", "Set sizes per layer")
    text = _main_text(page)
    assert "3 examples on SmolLM2-135M-Instruct" in text, text[-2000:]
    assert "Stability" in text or page.get_by_text("Stability").count()
    _shot(page, "5-mine", 2600)

    _go(page, "Train")
    expect(page.get_by_role("button", name="Start training")).to_be_visible()
    _shot(page, "6-train", 1800)

    (OUT / "timings.txt").write_text("".join(f"{k}: {v:.2f} s\n" for k, v in timings.items()))
    if os.environ.get("NEURORIT_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for path in SCREENSHOTS:
            shutil.copy2(path, DOCS_SHOTS / path.name)


def test_a_heatmap_cell_opens_the_neuron_card_its_url_reopens_it_and_back_returns(browser_page: object, server: str) -> None:
    """Explore's heatmap -> click a cell -> the card of that neuron (/neuron?n=L:i) -> Back returns to
    Explore -> the card's URL, loaded afresh, opens the same card. (Written with the card page; the
    heatmap's click targets are app/card_view.clickable_heatmap's invisible markers.)"""
    from playwright.sync_api import expect

    page = browser_page
    expect.set_options(timeout=HANG_GUARD)
    if not page.url.startswith(server):  # type: ignore[attr-defined]  # run alone (-k): a fresh page
        page.goto(server)  # type: ignore[attr-defined]
        _until_run_finished(page, 0)
    _go(page, "Explore one example")
    if page.get_by_role("button", name="Run preview").count() and "Run the preview" in _main_text(page):
        _click(page, "Run preview")  # run alone (-k): this session has no attribution yet
    heatmap = page.locator(".js-plotly-plot").first
    expect(heatmap.locator(".xtitle")).to_have_text("neuron")
    target = heatmap.locator("rect.nsewdrag").first
    box = target.bounding_box()
    since = _finished_runs(page)
    target.click(position={"x": box["width"] * 0.37, "y": box["height"] * 0.5})  # a cell: the nearest target answers
    _until_run_finished(page, since)
    expect(page.get_by_role("heading", name="Neuron card")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/neuron\?n=\d+(:|%3A)\d+$"))  # Streamlit writes the colon %3A
    card_url = page.url
    neuron = urllib.parse.unquote(re.search(r"n=([^&]+)$", card_url).group(1))  # type: ignore[union-attr]
    expect(page.get_by_role("heading", name=f"Neuron {neuron}")).to_be_visible()
    expect(page.get_by_text("What it writes")).to_be_visible()
    _shot(page, "7-neuron-card", 2600)

    since = _finished_runs(page)
    page.go_back()  # the browser's Back button
    _until_run_finished(page, since)
    expect(page.get_by_role("heading", name="Explore one example")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/explore"))
    expect(page.get_by_role("heading", name="Neuron card")).to_have_count(0)  # no stale click re-opens the card

    page.goto(card_url)  # the address alone reopens the card (a new session)
    _until_run_finished(page, 0)
    expect(page.get_by_role("heading", name=f"Neuron {neuron}")).to_be_visible()
    if os.environ.get("NEURORIT_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(OUT / "7-neuron-card.png", DOCS_SHOTS / "7-neuron-card.png")


def test_a_passage_with_script_or_html_shows_as_text_and_runs_nothing(
    browser_page: object, server: str, tmp_path: Path
) -> None:
    """A dataset whose passages hold <script> and an <img onerror> is loaded from disk; the neuron
    card draws its prompt token by token (HTML the page renders itself): the markup shows as text,
    and neither the script nor the handler runs (the page never sees the global they would set)."""
    import json

    from playwright.sync_api import expect

    from neurorit.data import Passage, RagExample

    hostile = RagExample(
        id="hostile-1", question="What is the capital of France?", answers=("Paris",),
        passages=(Passage("Paris is the capital and largest city of France.", "France", True),
                  Passage('<script>window.__neurorit_xss = 1</script> Lyon is a city. '
                          '<img src=x onerror="window.__neurorit_xss = 2">', "<b>Lyon</b>", False)),
    )
    data = tmp_path / "hostile.jsonl"
    data.write_text(json.dumps(hostile.to_dict()) + "\n")
    page = browser_page
    expect.set_options(timeout=HANG_GUARD)
    page.goto(server)  # type: ignore[attr-defined]
    _until_run_finished(page, 0)
    since = _finished_runs(page)
    page.get_by_text("File on disk").click()  # type: ignore[attr-defined]
    _until_run_finished(page, since)
    box = page.get_by_role("textbox", name="Dataset file (.jsonl or .jsonl.gz)")  # type: ignore[attr-defined]
    since = _finished_runs(page)
    box.fill(str(data))
    box.press("Enter")
    _until_run_finished(page, since)
    _click(page, "Load the file")
    expect(page.get_by_text("hostile.jsonl (1 examples)")).to_be_visible()  # type: ignore[attr-defined]

    search = page.get_by_role("textbox", name="Go to a neuron")  # type: ignore[attr-defined]
    search.fill("0:0")
    _click(page, "Open its card")
    expect(page.get_by_role("heading", name="Neuron 0:0")).to_be_visible()  # type: ignore[attr-defined]
    page.get_by_text("The prompt, token by token").click()  # type: ignore[attr-defined]
    main = page.locator('[data-testid="stMain"]')  # type: ignore[attr-defined]
    expect(main).to_contain_text("window.__neurorit_xss = 1")  # the script's text, shown
    expect(main).to_contain_text("onerror")
    assert page.evaluate("() => window.__neurorit_xss === undefined")  # type: ignore[attr-defined]
    assert page.locator("img[src='x']").count() == 0  # type: ignore[attr-defined]
    _shot(page, "8-card-escapes-html", 2600)
