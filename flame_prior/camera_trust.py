"""How far each fitted camera can be trusted: an uncertainty per camera and one documented rule.

**Uncertainty** (:func:`pose_uncertainty`): the Gauss-Newton covariance of one camera's pose (3
rotation + 3 translation parameters) given the fitted head's 3D landmarks held fixed, scaled by the
view's own weighted landmark residuals: ``Cov = s^2 (J^T W J)^-1`` with
``s^2 = sum_i w_i |r_i|^2 / (m - 6)`` (``m`` residual components with weight > 0). From it:
``rotation_sigma_deg`` (the square root of the largest eigenvalue of the rotation block, degrees)
and ``centre_sigma_pct`` (the camera centre's standard deviation, ``sqrt(trace Cov_C)``, in % of the
camera's distance from FLAME's origin). It measures how well this view's landmarks pin its camera
(few or clustered landmarks, a small face, large residuals give a large value). It cannot see a
bias every landmark shares (a detector that underestimates yaw moves all points consistently),
so the rule also looks at what is known to cause such biases.

**Rule** (:func:`trust_flags`): a camera is *flagged* (red in the summary and the report, never
"good" or "fair"; kept in the outputs, with the reasons in ``fit_summary.json``) when any of:

* ``rotation_sigma_deg > ROTATION_SIGMA_MAX_DEG`` (0.45°): the landmarks do not pin the rotation.
  Calibrated on the scan's turning-head rig (scripts/benchmark.py --only-scan): views within 2.4° of
  the truth had sigma 0.23-0.34°, views 5-16° off had 0.50-0.86°. The formal sigma underestimates
  the real error (here by 5-20x: the landmarks' shared yaw bias), but it ranks the views;
* ``|yaw| > YAW_MAX_DEG`` (60°, the fitted head's yaw in that view): Face Mesh's landmarks on
  turned faces carry a yaw bias that grows with yaw (measured: 10° camera error at 45°, 32° at 74°);
* the projected outer-eye-corner distance is below ``EYE_MIN_PX`` (25 px): too few pixels;
* the landmark error exceeds ``REL_ERROR_MAX`` (6 %, the report's "poor") of the eye distance.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ROTATION_SIGMA_MAX_DEG", "YAW_MAX_DEG", "EYE_MIN_PX", "REL_ERROR_MAX", "pose_uncertainty", "trust_flags"]

ROTATION_SIGMA_MAX_DEG = 0.45
YAW_MAX_DEG = 60.0
EYE_MIN_PX = 25.0
REL_ERROR_MAX = 0.06


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def pose_uncertainty(points: np.ndarray, detected: np.ndarray, weight: np.ndarray, R: np.ndarray, t: np.ndarray,
                     fx: float, fy: float, cx: float, cy: float) -> tuple[float, float]:
    """``(rotation_sigma_deg, centre_sigma_pct)`` of one camera (module docstring).

    Args:
        points: ``(L, 3)`` fitted 3D landmarks, world frame; ``detected``: ``(L, 2)`` pixels;
        weight: ``(L,)`` the fit's landmark weights (0 = unused).
        R, t: ``(3, 3)``, ``(3,)`` OpenCV world-to-camera; fx, fy, cx, cy: pixels.

    Returns ``(inf, inf)`` when fewer than 4 landmarks carry weight or the normal matrix is singular.
    """
    use = (weight > 0) & np.isfinite(detected).all(1)
    m = 2 * int(use.sum())
    if m < 8:
        return math.inf, math.inf
    P, x, w = points[use], detected[use], weight[use]
    RX = P @ R.T
    pc = RX + t
    Z = pc[:, 2:3]
    uv = np.concatenate([fx * pc[:, :1] / Z + cx, fy * pc[:, 1:2] / Z + cy], 1)
    r = x - uv
    # d(uv)/d(pc) (L, 2, 3); d(pc)/d(omega) = -[R X]_x (left perturbation exp(omega) R), d(pc)/dt = I.
    du = np.zeros((len(P), 2, 3))
    du[:, 0, 0], du[:, 0, 2] = fx / Z[:, 0], -fx * pc[:, 0] / Z[:, 0] ** 2
    du[:, 1, 1], du[:, 1, 2] = fy / Z[:, 0], -fy * pc[:, 1] / Z[:, 0] ** 2
    dpc = np.concatenate([-np.stack([_skew(v) for v in RX]), np.broadcast_to(np.eye(3), (len(P), 3, 3))], 2)
    J = (du @ dpc).reshape(-1, 6)
    W = np.repeat(w, 2)
    s2 = float((W * r.reshape(-1) ** 2).sum() / max(m - 6, 1))
    N = J.T @ (J * W[:, None])
    try:
        cov = s2 * np.linalg.inv(N)
    except np.linalg.LinAlgError:
        return math.inf, math.inf
    if not np.isfinite(cov).all():
        return math.inf, math.inf
    rot = math.degrees(math.sqrt(max(float(np.linalg.eigvalsh(cov[:3, :3]).max()), 0.0)))
    # Camera centre C = -R^T t: dC/domega = -R^T [t]_x, dC/dt = -R^T.
    JC = np.concatenate([-R.T @ _skew(t), -R.T], 1)
    cov_c = JC @ cov @ JC.T
    dist = float(np.linalg.norm(R.T @ t))
    centre = 100 * math.sqrt(max(float(np.trace(cov_c)), 0.0)) / max(dist, 1e-9)
    return rot, centre


def trust_flags(rotation_sigma_deg: float, yaw_deg: float, eye_distance_px: float, landmark_error_px: float) -> list[str]:
    """The reasons (empty: trusted) the rule of the module docstring flags one camera."""
    flags = []
    if not rotation_sigma_deg <= ROTATION_SIGMA_MAX_DEG:
        flags.append(f"rotation uncertainty {rotation_sigma_deg:.2f}° > {ROTATION_SIGMA_MAX_DEG:g}°")
    if abs(yaw_deg) > YAW_MAX_DEG:
        flags.append(f"head turned {abs(yaw_deg):.0f}° (> {YAW_MAX_DEG:g}°): landmarks biased")
    if eye_distance_px < EYE_MIN_PX:
        flags.append(f"face small ({eye_distance_px:.0f} px between the eye corners, < {EYE_MIN_PX:g})")
    if eye_distance_px > 0 and landmark_error_px / eye_distance_px > REL_ERROR_MAX:
        flags.append(f"landmark error {100 * landmark_error_px / eye_distance_px:.1f}% of the eye distance "
                     f"(> {100 * REL_ERROR_MAX:g}%)")
    return flags
