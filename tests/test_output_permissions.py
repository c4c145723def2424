"""The output directory gets the mode the user's umask asks for (not the 0700 of a temporary directory)."""

from __future__ import annotations

import os
import stat

import pytest

from flame_prior.export import output_dir


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_output_dir_mode_follows_umask(tmp_path, umask, mask):
    umask(mask)
    out = tmp_path / "out"
    with output_dir.atomic_output_dir(out, overwrite=False) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "fit_summary.json").write_text("{}")
    expected_dir, expected_file = 0o777 & ~mask, 0o666 & ~mask
    assert stat.S_IMODE(out.stat().st_mode) == expected_dir
    assert stat.S_IMODE((out / "sub").stat().st_mode) == expected_dir
    assert stat.S_IMODE((out / "fit_summary.json").stat().st_mode) == expected_file


def test_overwritten_output_dir_mode_follows_umask(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    (out / "fit_summary.json").write_text("{}")
    with output_dir.atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "fit_summary.json").write_text("{}")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
