"""The exports' options (:class:`ExportConfig`, ``--export.*``), used by :mod:`flame_prior.export`.

A module of its own, importing nothing heavy, so that building ``fit``'s config (and ``--help``)
does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flame_prior.errors import check_option

#: The views the report draws at full size: see :attr:`ExportConfig.report_full_views`.
ReportFullViews = Literal["flagged", "all", "none"]


@dataclass
class ExportConfig:
    """What the exports write beyond the data set: the report's pictures."""

    report_full_views: ReportFullViews = "flagged"
    """Views the report shows at full size (landmarks, textured model, alignment check, 640 px each);
    every view gets a thumbnail of its alignment check on the contact sheet. flagged: the cameras the
    trust rule flags and the report-worst-views worst by landmark error; all: every view (3 renders
    and pictures per view: seconds per view on a CPU); none: thumbnails only."""
    report_worst_views: int = 4
    """With report-full-views flagged: how many views with the largest landmark error (relative to
    the eye-corner distance) are also shown at full size."""

    def check(self, prefix: str = "export.") -> None:
        """Refuse impossible values before any work (:func:`flame_prior.errors.check_option`)."""
        check_option(self.report_full_views in ("flagged", "all", "none"), prefix + "report_full_views",
                     self.report_full_views, "flagged, all or none")
        check_option(self.report_worst_views >= 0, prefix + "report_worst_views", self.report_worst_views, "0 or more")
