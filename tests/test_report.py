"""The HTML report: self-contained, escaped, deterministic, and it renders in a real browser.

The browser checks drive headless Chromium (Debian package `chromium`). They fail, not skip,
when it is missing: install it with `apt-get install -y chromium` (CI does).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from jobs.report import render_report, write_report

XSS = "<script>alert(1)</script>"
SEGMENT_THEMES = [
    ("electronics", ["battery", "camera", "charging", "firmware", "bluetooth", "screen"]),
    ("fashion", ["size", "wardrobe", "shirt", "jacket", "dress", "length"]),
    ("film", ["film", "movie", "drama", "scene", "actor", "plot"]),
    ("food", ["recipe", "tasted", "ingredient", "fresh", "spice", "sweet"]),
    ("travel", ["tour", "view", "room", "hotel", "beach", "flight"]),
    ("parenting", ["baby", "toddler", "diaper", "stroller", "seat", "toy"]),
    ("film", ["有点", "这部", "推荐", "好评", "很快", "方便"]),
    ("books", ["price", "arrived", "delivery", "seller", "quick", "days"]),
]
CATEGORIES = ["electronics", "fashion", "film", "food", "travel", "parenting", "books", "sports"]


def make_inputs(n_segments: int = 8, n_points: int = 500, seed: int = 7):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(30, 170, size=n_segments)
    total = int(sizes.sum())
    segments = []
    for i in range(n_segments):
        theme, terms = SEGMENT_THEMES[i % len(SEGMENT_THEMES)]
        label = "frequent reviewer" if i % 3 == 0 else ("buyer" if i % 3 == 1 else "browser")
        name = f"{theme} · {terms[0]}, {terms[1]} · {label}"
        if i >= len(SEGMENT_THEMES):
            name += f" #{i}"
        texts = [f"I really like the {terms[0]}, and the {terms[1]} was great for the price.",
                 f"Second order in this shop: {terms[2]} & {terms[3]} both fine.\nWould buy again."]
        if i == 6:
            texts = ["这部电影有点长，但是很推荐，好评！", "物流很快，包装方便，五星好评。"]
        if i == 3:
            texts.append(f"Tasty! {XSS} <b>bold</b> & \"quoted\"")
        cats = [CATEGORIES[(i + j) % len(CATEGORIES)] for j in range(3)]
        segments.append({
            "segment_id": i, "name": name, "size": int(sizes[i]), "share": float(sizes[i] / total),
            "parent_segment_id": None if i < 2 else int(i % 2),
            "top_terms": terms, "term_scores": [round(float(x), 4) for x in sorted(rng.random(6), reverse=True)],
            "representative_texts": texts,
            "typical_users": [f"u{i:02d}{j:03d}" for j in range(5)],
            "top_items": [f"item-{i}-{j}" for j in range(4)] + (["<i>odd&item</i>"] if i == 0 else []),
            "events_per_user": float(rng.uniform(3, 40)), "texts_per_user": float(rng.uniform(1, 9)),
            "purchase_share": float(rng.uniform(0.02, 0.3)),
            "mean_rating": None if i == 7 else float(rng.uniform(2.5, 4.9)),
            "top_categories": cats, "top_category_shares": [0.52, 0.21, 0.09],
            "top_category_lifts": [3.1, 1.4, 0.8],
        })
    k_selection = []
    for k in range(4, 11):
        k_selection.append({
            "k": k, "silhouette": 0.35 + 0.2 * math.exp(-((k - 8) ** 2) / 4), "wssse": 400.0 / k ** 0.6,
            "davies_bouldin": 1.4 - 0.05 * k + (0.08 * (k - 8) ** 2 if k > 8 else 0),
            "calinski_harabasz": 150 + 20 * k - 1.5 * k * k, "min_share": 0.05, "max_share": 0.3,
            "size_entropy": 0.9 + 0.005 * k, "sample_size": 660, "chosen": k == 8,
        })
    centres = rng.normal(0, 4, size=(n_segments, 2))
    labels = rng.integers(0, n_segments, size=n_points)
    xy = centres[labels] + rng.normal(0, 0.8, size=(n_points, 2))
    projection = [{"x": float(x), "y": float(y), "segment_id": int(s)} for (x, y), s in zip(xy, labels)]
    run = {
        "run_id": "demo-report", "started_at": datetime(2026, 11, 22, 15, 0, 0, tzinfo=timezone.utc),
        "finished_at": "2026-11-22T15:02:25+00:00", "algorithm": "kmeans", "distance": "cosine", "k": 8,
        "silhouette": 0.5284, "wssse": 223.1, "davies_bouldin": 0.91, "calinski_harabasz": 412.5,
        "min_share": float(sizes.min() / total), "max_share": float(sizes.max() / total), "size_entropy": 0.973,
        "stability_ari": 0.41, "stable": False, "users": total, "users_text_only": 33, "users_events_only": 13,
        "texts_read": 8785, "texts_kept": 8659, "events_read": 17107, "events_kept": 16594, "quarantined": 639,
        "quarantine_reasons": {"texts:empty_after_cleaning": 90, "texts:missing_user_id": 36,
                               "events:missing_user_id": 205, "events:unknown_event_type": 308},
        "stage_seconds": {"ingest": 9.5, "embed": 53.1, "user_vectors": 15.5, "cluster": 57.5, "profile": 6.8,
                          "write": 1.8},
        "embed_texts_per_s": 156.0, "embedding_model": "all-MiniLM-L6-v2",
    }
    return run, k_selection, segments, projection


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.body_attrs: dict = {}

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "body":
            self.body_attrs = dict(attrs)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    inputs = make_inputs()
    html = render_report(*inputs)
    path = write_report(html, str(tmp_path_factory.mktemp("report") / "nested" / "dir" / "report.html"))
    return inputs, html, path


def test_html_is_self_contained_and_escaped(report):
    (run, _, segments, _), html, path = report
    assert os.path.isabs(path) and Path(path).read_text(encoding="utf-8") == html
    assert '<meta charset="utf-8">' in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"(?i)@import|@font-face|url\(", html)
    parsed = _parse(html)
    assert len(parsed.imgs) == 4  # k curves, sizes, projection, behaviour
    for img in parsed.imgs:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:40]
    for tag in ("link", "iframe", "object", "embed"):
        assert f"<{tag}" not in html
    # every segment name is shown, escaped (names hold '·' and, for one, Chinese)
    import html as htmllib
    for s in segments:
        assert htmllib.escape(s["name"]) in html
    assert "有点" in html and "这部电影有点长" in html
    # user content is text, never markup: only the report's own script is a <script>
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    # the segment's recommended items (from segment_recommendations), escaped too
    assert "item-3-2" in html and "&lt;i&gt;odd&amp;item&lt;/i&gt;" in html
    assert len(parsed.scripts) == 1 and "alert" not in parsed.scripts[0]
    # the unstable banner, quarantine reasons and timings are there
    assert 'id="unstable-warning"' in html
    for reason in run["quarantine_reasons"]:
        assert reason in html
    for stage in run["stage_seconds"]:
        assert f"<td>{stage}</td>" in html


def test_render_is_deterministic():
    a = render_report(*make_inputs())
    b = render_report(*make_inputs())
    assert a == b


def test_edge_cases_render_cleanly(tmp_path):
    run, _, segments, _ = make_inputs(n_segments=40, n_points=0)
    # missing values everywhere, k given, no events, no projection, stability not computed
    run.update(stable=None, stability_ari=None, events_read=None, events_kept=None, silhouette=float("nan"),
               davies_bouldin=None, calinski_harabasz=np.float64("nan"), quarantine_reasons={}, quarantined=0,
               stage_seconds={}, started_at=None, finished_at=None)
    for s in segments[::2]:
        s.update(mean_rating=None, purchase_share=float("nan"), events_per_user=None, term_scores=[],
                 top_category_shares=None, top_category_lifts=None, representative_texts=[], typical_users=None)
    segments[5]["name"] = "price $5 and $10 · 50% off · a_b^c"  # no mathtext in plots
    segments[6]["segment_id"] = np.int64(6)
    html = render_report(run, [], segments, [])
    parsed = _parse(html)
    assert len(parsed.imgs) == 2  # sizes and behaviour only
    assert "unstable-warning" not in html and "Stability was not computed" in html
    assert "no events input" in html and "No projection of users available" in html
    assert "price $5 and $10" in html and 'id="seg-39"' in html
    # nothing at all still gives a page
    empty = render_report({}, [], [], [])
    assert "<!DOCTYPE html>" in empty and "<img" not in empty and "No segments." in empty
    # a URL inside user text is shown as text but never written as a URL
    segments[0]["representative_texts"] = ["see https://example.com/x and http://a.b"]
    html = render_report(run, [], segments[:3], [{"x": 0, "y": 1, "segment_id": 0}])
    assert "https://" not in html and "http://" not in html and "example.com/x" in html


# ---- the real browser ----------------------------------------------------------------------------

def _chromium() -> str:
    exe = os.environ.get("SEGLAKE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail("headless Chromium is required for the report tests and was not found: install it with "
                    "`apt-get install -y chromium` (Debian package; or set SEGLAKE_CHROMIUM to its binary)",
                    pytrace=False)
    return exe


def _run_chromium(args: list[str], profile: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def test_report_loads_in_chromium(report, tmp_path):
    _, html, path = report
    proc = _run_chromium(["--virtual-time-budget=5000", "--dump-dom", Path(path).as_uri()],
                         tempfile.mkdtemp(dir=tmp_path))
    dom = proc.stdout
    assert proc.returncode == 0 and "<body" in dom, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    body = re.search(r"<body([^>]*)>", dom).group(1)
    n_img = len(_parse(html).imgs)
    assert 'data-images-ok="true"' in body, f"images did not all load: {body}"
    assert f'data-images-count="{n_img}"' in body, body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert len(re.findall(r"<script\b", dom)) == 1 and "alert(1)</script>" not in dom


def test_report_screenshot_in_chromium(report, tmp_path):
    _, _, path = report
    shot = tmp_path / "report.png"
    proc = _run_chromium([f"--screenshot={shot}", "--window-size=1280,2000", "--virtual-time-budget=5000",
                          Path(path).as_uri()], tempfile.mkdtemp(dir=tmp_path))
    assert proc.returncode == 0 and shot.exists(), f"no screenshot ({proc.returncode}): {proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1280, 2000)
    assert len(data) > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    # not a flat page: many distinct colours, with the dark header at the top
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb[::7], axis=0)) > 50
    assert pixels[20, 640, :3].mean() < 0.4 and pixels[1000, 5, :3].mean() > 0.8
    if os.environ.get("SEGLAKE_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SEGLAKE_KEEP_SCREENSHOT"])


def test_csp_blocks_a_script_that_escaping_missed(report, tmp_path):
    """Defence in depth: only the report's own script (allowed by its hash) runs."""
    _, html, _ = report
    injected = html.replace("<footer>", "<script>document.body.dataset.pwned='yes'</script><footer>", 1)
    path = write_report(injected, str(tmp_path / "injected.html"))
    proc = _run_chromium(["--virtual-time-budget=5000", "--dump-dom", Path(path).as_uri()],
                         tempfile.mkdtemp(dir=tmp_path))
    body = re.search(r"<body([^>]*)>", proc.stdout).group(1)
    assert 'data-images-ok="true"' in body and "pwned" not in body, body
