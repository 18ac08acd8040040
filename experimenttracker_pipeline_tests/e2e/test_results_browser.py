"""The results as people open them: the generated HTML reports in headless Chromium (results table and charts
present, no console error, no network request, a screenshot saved), and the Dagster webserver, started on a free
port, serving the experiments overview table through the UI's GraphQL API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experimenttracker_pipeline_tests.support.browser import HeadlessChromium
from experimenttracker_pipeline_tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PROBE = """({
  tables: [...document.querySelectorAll('table')].map(t => t.id),
  resultRows: [...document.querySelectorAll('#results tbody tr')].map(r => r.innerText),
  overviewRows: document.querySelectorAll('#experiments tbody tr').length,
  charts: [...document.querySelectorAll('img.chart')].map(i => [i.id, i.naturalWidth, i.naturalHeight]),
  links: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => !u.startsWith('data:')),
})"""


def _env(data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME"))}
    env.update({"EXPERIMENTTRACKER_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")})
    return env


def _cli(data: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experimenttracker_pipeline.cli", *args], capture_output=True, text=True,
                          env=_env(data), cwd=data.parent, timeout=900)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("results") / "data"
    done = _cli(data, "demo")
    assert done.returncode == 0, done.stderr[-3000:]
    return data


def test_html_reports_open_cleanly_in_headless_chromium(demo_data, tmp_path):
    out = tmp_path / "exp_esports_ll.html"
    done = _cli(demo_data, "report", "exp_esports_ll", "--out", str(out))
    assert done.returncode == 0, done.stderr
    written = sorted((demo_data / "reports").glob("exp_*.html"))
    # The verdict stage wrote one per evaluated experiment, and one per comparison of the A/B/n one.
    assert len(written) == 8 and (demo_data / "reports" / "exp_tennis_abn--wide.html") in written
    pages = [out, *written, demo_data / "reports" / "index.html"]
    with HeadlessChromium() as browser:
        for page in pages:
            shot = tmp_path / "shots" / f"{page.parent.name}-{page.stem}.png"
            visit = browser.visit(page.as_uri(), PROBE, screenshot=shot)
            assert visit.console_errors == [] and visit.exceptions == [], (page, visit)
            assert [u for u in visit.requests if not u.startswith(("file:", "data:"))] == []  # self-contained
            assert visit.failed_requests == []
            assert all(link.endswith(".html") for link in visit.value["links"]), visit.value["links"]
            assert shot.stat().st_size > 20_000
            if page.name == "index.html":
                assert visit.value["overviewRows"] == 9 and "experiments" in visit.value["tables"]
                assert all((page.parent / link.rsplit("/", 1)[-1]).is_file() for link in visit.value["links"])
                assert visit.value["charts"] and visit.value["charts"][0][1] >= 800
                continue
            assert "results" in visit.value["tables"]
            assert visit.value["resultRows"][0].startswith("deciding CI")
            assert all(r.startswith("supporting evidence") for r in visit.value["resultRows"][1:])
            charts = {name: (w, h) for name, w, h in visit.value["charts"]}
            assert charts["ci-over-time"][0] >= 800 and charts["ci-over-time"][1] >= 400, charts
        esports = browser.visit(out.as_uri(), "document.body.innerText")
        assert "HARMED" in esports.value and "keeps collecting" not in esports.value
        assert "segments" in browser.visit(out.as_uri(), PROBE).value["tables"]


def test_the_browser_check_sees_console_errors(tmp_path):
    """The check above can fail: a page that logs an error and throws is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.error('broken page');"
                    "setTimeout(() => { throw new Error('late failure') }, 10)</script></body></html>")
    with HeadlessChromium() as browser:
        visit = browser.visit(page.as_uri())
    assert visit.console_errors == ["broken page"] and "late failure" in visit.exceptions[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OVERVIEW_QUERY = """
query Overview($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label
      ... on TableMetadataEntry { table { records schema { columns { name type } } } }
      ... on MarkdownMetadataEntry { mdStr } } } }
  }
}"""


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", method="POST",
                                     data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def test_dagster_webserver_serves_the_overview_table(demo_data, tmp_path):
    port = _free_port()
    log = tmp_path / "webserver.log"
    with open(log, "w") as sink:
        server = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"),
                                   "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=_env(demo_data),
                                  stdout=sink, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10):
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(up, lambda: log.stat().st_size, idle_timeout=180, what="the Dagster webserver",
                   describe=lambda: log.read_text()[-2000:])
        data = _graphql(port, OVERVIEW_QUERY, {"key": {"path": ["experiments_overview"]}})
        (materialization,) = data["assetOrError"]["assetMaterializations"]
        entries = {e["label"]: e for e in materialization["metadataEntries"]}
        table = entries["experiments"]["table"]
        rows = {r["experiment_id"]: r for r in map(json.loads, table["records"])}
        assert set(rows) == {"exp_sports_v2", "exp_crypto_v3", "exp_politics_aa", "exp_weather_small", "exp_esports_ll",
                             "exp_tennis_abn", "exp_tennis_abn/fast", "exp_tennis_abn/safe", "exp_tennis_abn/wide"}
        assert [c["name"] for c in table["schema"]["columns"]][:3] == ["experiment_id", "verdict", "deciding_ci"]
        assert rows["exp_sports_v2"]["verdict"] == "variant_wins" and rows["exp_sports_v2"]["deciding_ci"] == "[+2.55, +5.81] bps"
        assert rows["exp_esports_ll"]["ci_method"] == "aipw_always_valid" and rows["exp_esports_ll"]["srm_p_value"] > 0.001
        assert "data:image/png;base64," in entries["forest_plot"]["mdStr"]
        # The UI page itself renders in the browser (a screenshot of the overview asset).
        with HeadlessChromium(width=1400, height=1000) as browser:
            shot = tmp_path / "overview.png"
            visit = browser.visit(f"http://127.0.0.1:{port}/assets/experiments_overview", "document.title",
                                  screenshot=shot, settle_ms=5000)
            assert shot.stat().st_size > 20_000 and visit.value
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_report_all_renders_only_the_reports_behind_their_verdict(demo_data):
    done = _cli(demo_data, "report", "--all")
    assert done.returncode == 0 and "wrote 0 report(s)" in done.stdout, done.stdout + done.stderr
    (demo_data / "reports" / "exp_sports_v2.html").unlink()
    done = _cli(demo_data, "report", "--all")
    assert done.returncode == 0 and "wrote 1 report(s)" in done.stdout, done.stdout + done.stderr
    assert (demo_data / "reports" / "exp_sports_v2.html").is_file()
    assert _cli(demo_data, "report").returncode == 2  # neither an experiment nor --all
