"""The synthetic world's geometry: shapes of equal area (`shape_mask`, `SHAPE_EXTENT`) and the
motion directions. Shared by spec sampling (sora_jax/data/world.py) and rendering
(world_render.py)."""

from __future__ import annotations

import math

import numpy as np

# fmt: off
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "up-left": (-1, -1),
              "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
# Shape geometry in units of r = diameter / 2, each scaled to area π (that of the unit circle).
_SQUARE = math.sqrt(math.pi) / 2  # half side
_DIAMOND = math.sqrt(math.pi / 2)  # |u| + |v| bound
_TRI_IN = math.sqrt(4 * math.pi / math.sqrt(3)) / (2 * math.sqrt(3))  # inradius, centroid-centred
_CROSS = math.sqrt(9 * math.pi / 20)  # arm half-length; arms are 2/3 of it thick
_STAR_K = 0.5  # inner / outer radius of the 5-point star (fat enough to survive 10 px)
_STAR_RO = math.sqrt(math.pi / (5 * _STAR_K * math.sin(math.pi / 5)))
_RING_K = 0.55  # hole / outer radius
_RING_RO = 1 / math.sqrt(1 - _RING_K**2)
SHAPE_EXTENT = {  # farthest point from the centre, in r units
    "square": _SQUARE * math.sqrt(2), "circle": 1.0, "triangle": 2 * _TRI_IN, "diamond": _DIAMOND,
    "cross": _CROSS * math.sqrt(10) / 3, "star": _STAR_RO, "ring": _RING_RO,
}
# fmt: on


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u right, v down; units of r, origin at the shape's centroid) are inside.

    u, v broadcast against each other; returns bool of their broadcast shape.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= _DIAMOND
    if shape == "triangle":  # pointing up: outward edge normals at 270°, 30°, 150° with y up
        c, y = math.sqrt(3) / 2, -v
        return (v <= _TRI_IN) & (c * u + 0.5 * y <= _TRI_IN) & (-c * u + 0.5 * y <= _TRI_IN)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return (np.maximum(au, av) <= _CROSS) & (np.minimum(au, av) <= _CROSS / 3)
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= _RING_RO**2) & (d2 >= (_RING_K * _RING_RO) ** 2)
    if shape == "star":  # fold the angle to [0, 36°] from the nearest tip, test that tip's edge
        sector = 2 * math.pi / 5
        phi = np.mod(np.arctan2(u, -v), sector)
        a = sector / 2 - np.abs(phi - sector / 2)
        rho = np.sqrt(u * u + v * v)
        ri, s, c = _STAR_K * _STAR_RO, math.sin(sector / 2), math.cos(sector / 2)
        return (rho * np.cos(a) - _STAR_RO) * ri * s + rho * np.sin(a) * (_STAR_RO - ri * c) <= 0
    raise ValueError(f"Unknown shape {shape!r}; expected one of {tuple(SHAPE_EXTENT)}.")
