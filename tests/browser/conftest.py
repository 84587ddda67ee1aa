"""Fixtures for the browser tests: a real analysed run, the explorer served from a thread, headless Chromium.

The run is the session's tiny organism (``tiny_run``) copied into a temporary directory, then analysed by the real
commands, in-process and with small settings: ``analysis.probe`` on the base and the backdoored checkpoints,
``analysis.patch`` on the backdoored one and ``analysis.compare`` on the run; a command that is missing or fails
is an error, never a skip. Chromium is Debian's ``chromium`` driven by Playwright (``executable_path``);
never ``playwright install``. Without a browser the tests skip, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

PROBE_ARGS = ["--n", "12", "--n_random", "50", "--n_boot", "50", "--max_new_tokens", "16"]
PATCH_ARGS = ["--n_pairs", "4", "--n_boot", "50", "--methods", "exact"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        msg = ("Debian's chromium is not installed (`apt-get install chromium`); the explorer's browser tests need it "
               "(Playwright drives it through executable_path; `playwright install` is never used)")
        if _in_ci():
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def analysed_run(tiny_run, tmp_path_factory) -> dict:
    """A copy of the tiny run with probe (base, backdoored), patch (backdoored) and compare results in it.

    Returns ``{"run": Path, "seconds": {command: s}}``.
    """
    run = tmp_path_factory.mktemp("explorer") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "compare.json", "report.html"))
    seconds: dict[str, float] = {}

    def cmd(module: str, argv: list[str], name: str) -> None:
        mod = importlib.import_module(module)
        t = time.time()
        rc = mod.main(argv)
        seconds[name] = round(time.time() - t, 1)
        assert rc == 0, f"{module} {' '.join(argv)} failed with exit code {rc}"

    ck = run / "checkpoints"
    cmd("analysis.probe", ["--ckpt", str(ck / "base"), *PROBE_ARGS], "probe base")
    cmd("analysis.probe", ["--ckpt", str(ck / "backdoored"), *PROBE_ARGS], "probe backdoored")
    cmd("analysis.patch", ["--ckpt", str(ck / "backdoored"), *PATCH_ARGS, "--no_html"], "patch backdoored")
    cmd("analysis.compare", ["--run", str(run)], "compare")
    return {"run": run, "seconds": seconds}


class _Server:
    """The explorer's WSGI app served by werkzeug from a daemon thread on 127.0.0.1 and a free port."""

    def __init__(self, app):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # one line per asset is noise in test output
                pass

        self.app = app
        self.httpd = make_server("127.0.0.1", 0, app.server, threaded=True, request_handler=Quiet)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="explorer-test-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def serve():
    """``serve(run_dir) -> _Server``; every server started is shut down at the end of the module."""
    from apps.explorer.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    servers: list[_Server] = []

    def start(run: Path) -> _Server:
        s = _Server(create_app(run))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageLog:
    """Console errors, uncaught page errors and every requested URL of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))


@pytest.fixture
def new_page(browser):
    """``new_page() -> (page, PageLog)``; pages are closed after the test."""
    ctxs = []

    def make():
        c = browser.new_context(viewport={"width": 1400, "height": 1000})
        ctxs.append(c)
        page = c.new_page()
        page.set_default_timeout(30_000)
        return page, PageLog(page)

    yield make
    for c in ctxs:
        c.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
