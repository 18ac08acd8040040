"""Headless Chromium (Debian's /usr/bin/chromium) driven over the DevTools protocol: open a page, collect console
errors, uncaught exceptions and network requests, evaluate JavaScript, save a full-page screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experimenttracker_pipeline_tests.support.waiting import wait_until

CHROMIUM = os.environ.get("EXPERIMENTTRACKER_TEST_CHROMIUM", "/usr/bin/chromium")


@dataclass
class PageVisit:
    url: str
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    value: Any = None  # what the probe expression returned


class HeadlessChromium:
    """One browser process per context manager; ``visit`` opens a URL in its page."""

    def __init__(self, width: int = 1280, height: int = 900):
        self.width, self.height = width, height
        self.process: subprocess.Popen | None = None
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._id = 0

    def __enter__(self) -> "HeadlessChromium":
        binary = shutil.which(CHROMIUM) or CHROMIUM
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"

        def ready() -> bool:
            assert self.process.poll() is None, f"chromium exited with {self.process.returncode}"
            return port_file.exists() and len(port_file.read_text().splitlines()) >= 2

        wait_until(ready, lambda: port_file.exists(), idle_timeout=60, what="chromium's DevTools port")
        self.port = int(port_file.read_text().splitlines()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=30).read())
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30).__enter__()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            if self.process and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, params: dict | None = None, visit: PageVisit | None = None,
             until_event: str | None = None) -> dict:
        """Send one command; collect events into ``visit`` until its reply (and ``until_event``, when given)."""
        self._id += 1
        ident = self._id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        reply, seen_event = None, until_event is None
        while reply is None or not seen_event:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                reply = message.get("result", {})
            elif "method" in message:
                if message["method"] == until_event:
                    seen_event = True
                if visit is not None:
                    self._record(message["method"], message.get("params", {}), visit)
        return reply

    @staticmethod
    def _record(event: str, params: dict, visit: PageVisit) -> None:
        if event == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            visit.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif event == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            visit.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif event == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            visit.console_errors.append(params["entry"].get("text", ""))
        elif event == "Network.requestWillBeSent":
            visit.requests.append(params.get("request", {}).get("url", ""))
        elif event == "Network.loadingFailed":
            visit.failed_requests.append(params.get("errorText", ""))

    def visit(self, url: str, probe: str = "null", screenshot: Path | None = None, settle_ms: int = 300) -> PageVisit:
        """Open ``url``, wait for its load event, evaluate ``probe`` (a JS expression returning JSON-able data)
        and save a full-page screenshot to ``screenshot``."""
        visit = PageVisit(url)
        self.call("Page.navigate", {"url": url}, visit, until_event="Page.loadEventFired")
        # Late console output and errors of the page: give its timers one settle period.
        self.call("Runtime.evaluate", {"expression": f"new Promise(r => setTimeout(r, {settle_ms}))",
                                       "awaitPromise": True}, visit)
        result = self.call("Runtime.evaluate", {"expression": f"JSON.stringify({probe})", "returnByValue": True}, visit)
        visit.value = json.loads(result.get("result", {}).get("value") or "null")
        if screenshot is not None:
            size = self.call("Page.getLayoutMetrics", visit=visit)["cssContentSize"]
            height = min(int(size["height"]) + 1, 12000)
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": height,
                                                              "deviceScaleFactor": 1, "mobile": False}, visit)
            shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, visit)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            self.call("Emulation.clearDeviceMetricsOverride", visit=visit)
        return visit
