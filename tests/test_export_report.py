"""HTML report: it exists, every picture it links exists, one table row per fitted view."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from export_fixtures import MODEL, make_fit
from flame_prior.export.report import write_report


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.rows, self._in_table = [], 0, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "a") and (a.get("src") or a.get("href")):
            self.links.append(a.get("src") or a.get("href"))
        if tag == "table" and a.get("id") == "per-view":
            self._in_table = True
        if tag == "tr" and self._in_table:
            self.rows += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False


def _parse(path):
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_report_links_and_rows(tmp_path):
    views, result, intr, skipped = make_fit()
    path = write_report(tmp_path, views, result, intr, skipped, {"images": 0.3, "observe": 2.0, "fit": 5.5},
                        model=MODEL)
    assert path == tmp_path / "report.html"
    p = _parse(path)
    files = [link for link in p.links if not link.startswith("#")]
    assert files, "no pictures linked"
    for link in files:
        assert not link.startswith(("/", "file:", "http")), link  # relative links only
        target = tmp_path / link
        assert target.exists(), link
        Image.open(target).verify()
    assert p.rows - 1 == len(result.views)  # minus the header row
    text = path.read_text(encoding="utf-8")
    for sk in skipped:
        assert sk.reason in text
    assert "no expression space" in text and "exif" in text
    assert (tmp_path / "report" / "loss_curves.png").exists()
    assert (tmp_path / "report" / "contact_sheet.jpg").exists()


def test_report_uses_given_renders_and_escapes(tmp_path):
    views, result, intr, skipped = make_fit()
    skipped[0].reason = "<script>alert(1)</script>"
    renders = []
    for v in views:
        r = np.zeros((v.image.height, v.image.width, 4), np.uint8)
        r[..., 0] = 255
        r[: v.image.height // 2, :, 3] = 255  # opaque red on the top half only
        renders.append(r)
    path = write_report(tmp_path, views, result, intr, skipped, {}, renders=renders)
    text = path.read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text
    im = np.asarray(Image.open(tmp_path / "report" / f"{result.views[0].name}_model.jpg"), dtype=float)
    photo = views[0].image.pixels.astype(float)
    h = im.shape[0]
    assert im[: h // 2 - 4, :, 0].mean() > photo[: h // 2 - 4, :, 0].mean() + 40  # red blended in on top
    assert abs(im[h // 2 + 4:, :, 0].mean() - photo[h // 2 + 4:, :, 0].mean()) < 6  # untouched below
    assert re.search(r"rendered model", text)


def test_report_without_skips_or_loss(tmp_path):
    views, result, intr, _ = make_fit()
    for st in result.stages:
        st.loss_history = []
    intr.colmap = None
    path = write_report(tmp_path, views, result, intr, [], {})
    p = _parse(path)
    assert all((tmp_path / link).exists() for link in p.links if not link.startswith("#"))
    assert "no loss history" in path.read_text(encoding="utf-8")


def test_time_card_does_not_add_a_step_to_its_own_parts(tmp_path):
    """The Time card's total is the run's clock (or the sum of the steps), never fit plus its stages."""
    views, result, intr, _ = make_fit()
    timings = {"intake": 1.0, "fit": 200.0, "fit.rigid": 50.0, "fit.photometric": 140.0, "export": 3.0,
               "total": 204.0}
    text = write_report(tmp_path, views, result, intr, [], timings).read_text(encoding="utf-8")
    assert re.search(r"<th>total</th><th class='num'>3\.4 min</th>", text), "total: 204 s"
    assert "10.0 min" not in text and "fit.rigid" not in text  # 598 s: every entry added up
    text = write_report(tmp_path, views, result, intr, [], {k: v for k, v in timings.items() if k != "total"}
                        ).read_text(encoding="utf-8")
    assert re.search(r"<th>total</th><th class='num'>3\.4 min</th>", text), "sum of the steps: 204 s"
