"""Take the README's screenshots with headless Chromium: the demo in a temporary data folder, the Dagster UI's
experiments overview and one verdict page, and one HTML experiment report. Writes docs/*.png.

    .venv/bin/python docs/take_screenshots.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experimenttracker_pipeline_tests.support.browser import HeadlessChromium  # noqa: E402

# Dismiss the UI's first-visit modal, open the latest materialization's metadata, then wait for it to render.
SKIP_MODAL = """(() => { for (const b of document.querySelectorAll('button'))
  if (/skip|dismiss|close/i.test(b.innerText)) b.click(); return true })()"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
        env.update(EXPERIMENTTRACKER_DATA_DIR=str(data), DAGSTER_HOME=str(data / "dagster_home"))
        subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", "demo"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml",
                                   "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                    break
                except OSError:
                    time.sleep(1)
            base = f"http://127.0.0.1:{port}"
            # The UI scrolls inside its own panes: a tall window shows the metadata below the fold.
            with HeadlessChromium(width=1500, height=2600) as browser:
                for name, url in (("ui_overview", f"{base}/assets/experiments_overview"),
                                  ("ui_verdict", f"{base}/assets/verdicts?view=partitions&partition=exp_esports_ll")):
                    browser.visit(url, settle_ms=6000)
                    browser.visit(url, SKIP_MODAL, settle_ms=6000)  # second load: code location ready, modal gone
                    browser.visit(url, SKIP_MODAL, screenshot=REPO / "docs" / f"{name}.png", settle_ms=3000)
            with HeadlessChromium(width=1200, height=900) as browser:
                browser.visit((data / "reports" / "exp_esports_ll.html").as_uri(),
                              screenshot=REPO / "docs" / "html_report.png")
        finally:
            server.terminate()
            server.wait(timeout=60)
    print("wrote docs/ui_overview.png, docs/ui_verdict.png, docs/html_report.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
