"""Drawing in millimetres: rotations, ellipsoids, tubes, morphology, blur and smooth noise."""

from __future__ import annotations

import numpy as np


def mm_grid(shape, spacing) -> list[np.ndarray]:
    """Voxel-centre coordinates in mm, relative to the volume centre: (x,1,1), (1,y,1), (1,1,z) arrays."""
    return [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s)).reshape(
            [-1 if i == ax else 1 for i in range(3)]
        )
        for ax, (n, s) in enumerate(zip(shape, spacing))
    ]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (from a random unit quaternion)."""
    a, b, c, d = rng.standard_normal(4)
    n = np.sqrt(a * a + b * b + c * c + d * d)
    a, b, c, d = a / n, b / n, c / n, d / n
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _local(grid, center, rot):
    """Coordinates of every voxel in the frame of a rotated body centred at ``center`` (mm)."""
    d = [g - c for g, c in zip(grid, center)]
    return [rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2] for k in range(3)]


def _ellipsoid_q(grid, center, semi, rot=None, lobes=None):
    """Normalised radius: < 1 inside the (optionally rotated and lobulated) ellipsoid."""
    if rot is None:
        loc = [g - c for g, c in zip(grid, center)]
    else:
        loc = _local(grid, center, rot)
    q = np.sqrt(sum((x / a) ** 2 for x, a in zip(loc, semi)))
    if lobes is not None:  # low-order radial perturbation: r_surface(u) = 1 + lin.u + quad.(u*u - 1/3)
        lin, quad = lobes
        r = np.sqrt(sum(x * x for x in loc)) + 1e-6
        u = [x / r for x in loc]
        pert = sum(lin[k] * u[k] + quad[k] * (u[k] * u[k] - 1 / 3) for k in range(3))
        q = q / (1.0 + pert)
    return q


def _shift_reduce(mask: np.ndarray, op) -> np.ndarray:
    """Combine ``mask`` with its 26 neighbours (``np.logical_or``: dilation, ``np.logical_and``: erosion)."""
    pad = np.pad(mask, 1, mode="constant", constant_values=op is np.logical_and)
    out = mask.copy()
    nx, ny, nz = mask.shape
    for i in range(3):
        for j in range(3):
            for k in range(3):
                if (i, j, k) != (1, 1, 1):
                    op(out, pad[i : i + nx, j : j + ny, k : k + nz], out=out)
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _shift_reduce(mask, np.logical_or)


def _erode(mask: np.ndarray) -> np.ndarray:
    return _shift_reduce(mask, np.logical_and)


def _blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing along every axis, ``passes`` times (edge-padded)."""
    a = a.astype(np.float32, copy=True)
    for _ in range(passes):
        for ax in range(3):
            p = np.moveaxis(np.pad(a, [(1, 1) if i == ax else (0, 0) for i in range(3)], mode="edge"), ax, 0)
            a = np.moveaxis(0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:], 0, ax)
    return np.ascontiguousarray(a)


def _smooth_noise(rng: np.random.Generator, shape, passes: int) -> np.ndarray:
    """Zero-mean, unit-std spatially correlated noise."""
    n = _blur(rng.standard_normal(shape, dtype=np.float32), passes)
    return (n - n.mean()) / (n.std() + 1e-12)


def _tube_distance(grid, points: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel to the polyline through ``points`` (K x 3)."""
    best = None
    for p0, p1 in zip(points[:-1], points[1:]):
        seg = p1 - p0
        length2 = float(seg @ seg) + 1e-12
        d = [g - p for g, p in zip(grid, p0)]
        t = np.clip((d[0] * seg[0] + d[1] * seg[1] + d[2] * seg[2]) / length2, 0.0, 1.0)
        dist2 = sum((d[k] - t * seg[k]) ** 2 for k in range(3))
        best = dist2 if best is None else np.minimum(best, dist2)
    return np.sqrt(best)
