"""HTML report: it exists, every picture it links exists, one table row per fitted view."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from export_fixtures import MODEL, VIEW_SPECS, make_fit
from flame_prior.errors import InputError
from flame_prior.export.alignment import alignment_overlay
from flame_prior import render
from flame_prior.export.alignment import feature_lines
from flame_prior.export.report import THUMB_SIDE, full_size_views, write_report
from flame_prior.export.view_render import ViewMesh, view_surface
from flame_prior.export_config import ExportConfig


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
    result.views[2].flags = ["rotation uncertainty 0.60° > 0.45°"]
    result.views[0].landmark_error_px = 50.0  # the worst
    result.views[1].uncertainty_source = "tracks"  # a camera that follows COLMAP (camera_trust)
    path = write_report(tmp_path, views, result, intr, skipped, {"images": 0.3, "observe": 2.0, "fit": 5.5},
                        model=MODEL, worst_views=1)
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
    assert text.count("&deg; (tracks)") == 1 and text.count("&deg; (landmarks)") == len(result.views) - 1
    assert (tmp_path / "report" / "loss_curves.png").exists()
    full = set(full_size_views(result, "flagged", 1))
    assert full == {0, 2}  # the flagged camera and the worst by landmark error
    text_links = set(files)
    for i, (v, vf) in enumerate(zip(views, result.views)):
        thumb = Image.open(tmp_path / "report" / f"{vf.name}_thumb.jpg")  # every view has its thumbnail
        assert f"report/{vf.name}_thumb.jpg" in text_links
        assert max(thumb.size) == THUMB_SIDE
        assert abs(thumb.size[0] / thumb.size[1] - v.image.width / v.image.height) < 0.02
        for kind in ("landmarks", "model", "alignment"):  # full-size pictures for the chosen views only
            assert (tmp_path / "report" / f"{vf.name}_{kind}.jpg").exists() == (i in full), (vf.name, kind)
        assert (f"id='view-{vf.name}'" in text) == (i in full)
    assert "class='flagged'" in text


def test_report_uses_given_renders_and_escapes(tmp_path):
    views, result, intr, skipped = make_fit()
    skipped[0].reason = "<script>alert(1)</script>"
    renders = []
    for v in views:
        r = np.zeros((v.image.height, v.image.width, 4), np.uint8)
        r[..., 0] = 255
        r[: v.image.height // 2, :, 3] = 255  # opaque red on the top half only
        renders.append(r)
    path = write_report(tmp_path, views, result, intr, skipped, {}, renders=renders, full_views="all")
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


def test_full_size_views_choice():
    """flagged: the flagged cameras and the k worst relative landmark errors (no value counts as worst);
    all / none: every view / no view."""
    _, result, _, _ = make_fit()
    n = len(result.views)
    for k, vf in enumerate(result.views):
        vf.landmark_error_px, vf.eye_distance_px = 1.0 + k, 100.0  # the last views are the worst
        vf.flags = []
    assert full_size_views(result, "all") == list(range(n))
    assert full_size_views(result, "none") == []
    assert full_size_views(result, "flagged", 1) == [n - 1]
    assert full_size_views(result, "flagged", 0) == []
    result.views[0].flags = ["face small"]
    assert full_size_views(result, "flagged", 2) == [0, n - 2, n - 1]
    result.views[1].landmark_error_px = float("nan")
    assert full_size_views(result, "flagged", 1) == [0, 1]
    assert full_size_views(result, "flagged", 10) == list(range(n))


def test_shared_view_rasterization_matches_the_alignment_check_of_each_view():
    """The rasterization a view's pictures share (view_surface, at thumbnail size) draws the same alignment
    picture as the alignment check rasterizing its view alone, and that picture shows the model over the photo."""
    specs = [VIEW_SPECS[0], (320, 240, 520.0, 520.0, 165.0, 118.0, 25.0, 3.0), VIEW_SPECS[3]]
    views, result, _, _ = make_fit(specs)
    mesh = ViewMesh.of(result, feature_lines(result.vertices, result.faces))
    for i, v in enumerate(views):
        scale = THUMB_SIDE / max(v.image.width, v.image.height)
        w, h = round(v.image.width * scale), round(v.image.height * scale)
        surface = view_surface(mesh, i, (w, h))
        rast = surface.rast
        assert tuple(rast.shape) == (1, h, w, 4) and surface.uv.shape == (len(surface.pixels), 2)
        assert surface.normals.norm(dim=-1).sub(1).abs().max() < 1e-4
        shared = np.asarray(alignment_overlay(v.image.pixels, result, i, scale, surface=surface, mesh=mesh), float)
        alone = np.asarray(alignment_overlay(v.image.pixels, result, i, scale), float)
        assert np.abs(shared - alone).max() <= 1.0
        covered = rast[0, ..., 3].numpy() > 0
        assert 0.02 < covered.mean() < 0.98  # the head is in the picture, not all of it
        photo = np.asarray(Image.fromarray(v.image.pixels).resize((w, h)), float)
        assert np.abs(shared - photo)[covered].mean() > 10  # the model is drawn over the photo there


def test_front_faces_cover_what_both_sides_cover():
    """The report rasterizes front faces only: on the fitted head that shows the same pixels as both sides."""
    views, result, _, _ = make_fit()
    mesh = ViewMesh.of(result, feature_lines(result.vertices, result.faces))
    for i, v in enumerate(views):
        rast = view_surface(mesh, i, (v.image.width, v.image.height)).rast
        cam = mesh.cameras.subset([i])
        pc = mesh.verts @ cam.R.transpose(1, 2) + cam.t[:, None]
        both = render.rasterize(render.pinhole_to_clip(pc, cam.fx, cam.fy, cam.cx, cam.cy, v.image.width, v.image.height),
                                mesh.faces, (v.image.height, v.image.width))
        front, any_side = rast[0, ..., 3] > 0, both[0, ..., 3] > 0
        assert front.sum() > 0 and (front != any_side).float().mean() < 0.002


def test_export_config_refuses_bad_values():
    ExportConfig().check()
    with pytest.raises(InputError, match="report-full-views"):
        ExportConfig(report_full_views="some").check()
    with pytest.raises(InputError, match="report-worst-views"):
        ExportConfig(report_worst_views=-1).check()


def test_loss_plot_draws_each_stage_falling_where_the_loss_falls(tmp_path):
    """One panel per stage with a history; a falling loss is drawn falling (the blue line's pixels lower
    on the right), on ticks that are round numbers inside the plotted range."""
    from types import SimpleNamespace

    from flame_prior.export.loss_plot import LINE, PANEL_W, nice_ticks, write_loss_plot

    stages = [SimpleNamespace(name="a", iterations=50, seconds=1.0, loss_history=list(np.geomspace(10.0, 0.01, 50))),
              SimpleNamespace(name="b", iterations=0, seconds=0.0, loss_history=[]),
              SimpleNamespace(name="c", iterations=20, seconds=2.0, loss_history=list(np.linspace(5.0, -1.0, 20)))]
    path = write_loss_plot(stages, tmp_path / "loss.png")
    im = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert im.shape[1] == 2 * PANEL_W  # stage b has no history: no panel
    for k in range(2):
        panel = im[:, k * PANEL_W:(k + 1) * PANEL_W]
        rows, cols = np.nonzero((np.abs(panel - np.array(LINE)).sum(-1) < 60))
        assert len(cols) > 50
        left, right = rows[cols < np.percentile(cols, 20)].mean(), rows[cols > np.percentile(cols, 80)].mean()
        assert right > left + 100  # image rows grow downwards
    assert write_loss_plot([stages[1]], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    ticks = nice_ticks(0.0123, 0.0871)
    assert 3 <= len(ticks) <= 8 and ticks.min() >= 0.0123 and ticks.max() <= 0.0871
    assert np.allclose(ticks / 0.01, np.round(ticks / 0.01))
