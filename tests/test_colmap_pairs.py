"""Which view pairs COLMAP matches: head poses read off the landmarks, pairs chosen by their angle."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from flame_prior.colmap_pairs import (
    _mean_head_landmarks,
    landmark_head_rotations,
    pairs_by_head_pose,
    relative_angles_deg,
)


def _rotation(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """FLAME head to OpenCV camera: a head facing the camera (FLAME y up, z towards the viewer) turned by
    yaw (about y), pitch (about x) and roll (about z)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, -1.0])  # FLAME (y up, z out of the face) to OpenCV (y down, z into the scene)
    return flip @ Rz @ Rx @ Ry


def _view(landmarks: np.ndarray, fmt: str = "mediapipe478"):
    return SimpleNamespace(detection=SimpleNamespace(landmarks=landmarks, landmark_format=fmt),
                           image=SimpleNamespace(name="view"))


def _projected_view(R: np.ndarray, scale: float = 3000.0, shift=(500.0, 700.0), noise_px: float = 0.0, seed: int = 0):
    """A view whose 478 MediaPipe landmarks are the mean head's points seen by a scaled orthographic camera."""
    X, index = _mean_head_landmarks()
    x = np.full((478, 2), np.nan)
    x[index] = scale * (X @ R.T)[:, :2] + np.asarray(shift)
    x += np.random.default_rng(seed).normal(0, noise_px, x.shape)
    return _view(x.astype(np.float32))


class TestLandmarkHeadRotations:
    def test_recovers_the_rotation_of_exact_landmarks(self):
        truth = [_rotation(0), _rotation(35, 10), _rotation(-50, -15, 8)]
        R = landmark_head_rotations([_projected_view(r) for r in truth])
        assert R is not None
        for r, t in zip(R, truth):
            assert np.degrees(np.arccos(np.clip((np.trace(r @ t.T) - 1) / 2, -1, 1))) < 1e-3

    def test_noisy_landmarks_give_the_angle_between_views_to_a_degree(self):
        # 2 px of noise on a face ~500 px wide: far below the detector's own bias on real photos.
        a, b = _rotation(-20, 5), _rotation(25, -5)
        R = landmark_head_rotations([_projected_view(a, noise_px=2.0, seed=1), _projected_view(b, noise_px=2.0, seed=2)])
        truth = relative_angles_deg(np.stack([a, b]))[0, 1]
        assert relative_angles_deg(R)[0, 1] == pytest.approx(truth, abs=1.0)

    def test_no_pose_without_mediapipe_landmarks(self):
        good = _projected_view(_rotation(0))
        assert landmark_head_rotations([good, _view(np.zeros((68, 2), np.float32), "ibug68")]) is None
        assert landmark_head_rotations([good, _view(np.zeros((0, 2), np.float32))]) is None
        assert landmark_head_rotations([good, _view(np.full((478, 2), np.nan, np.float32))]) is None


class TestPairsByHeadPose:
    def test_close_pairs_and_nearest_neighbours(self):
        yaws = [0, 10, 20, 30, 40, 50, 60, 150]  # the last one far from every other
        R = np.stack([_rotation(y) for y in yaws])
        pairs = pairs_by_head_pose(R, max_angle_deg=25.0, min_neighbours=2)
        assert all(i < j for i, j in pairs) and pairs == sorted(set(pairs))
        # Every pair within 25 degrees, no pair beyond it among the first seven...
        for i in range(7):
            for j in range(i + 1, 7):
                assert ((i, j) in pairs) == (abs(yaws[i] - yaws[j]) <= 25), (i, j)
        # ...and the lone view still gets its two nearest.
        assert [p for p in pairs if 7 in p] == [(5, 7), (6, 7)]

    def test_every_pair_when_the_angle_allows(self):
        R = np.stack([_rotation(y) for y in (0, 30, 60, 90)])
        assert len(pairs_by_head_pose(R, max_angle_deg=180.0, min_neighbours=1)) == 6

    def test_relative_angles(self):
        R = np.stack([_rotation(0), _rotation(30), _rotation(0, 40)])
        A = relative_angles_deg(R)
        np.testing.assert_allclose(A, A.T, atol=1e-9)
        np.testing.assert_allclose(np.diag(A), 0.0, atol=1e-5)
        assert A[0, 1] == pytest.approx(30.0) and A[0, 2] == pytest.approx(40.0)
