"""Tile plans: where tiles start, how far they overlap, and which part each keeps.

A tile keeps the centre of what the model saw and drops a halo on each side, so
every kept pixel had at least ``halo`` pixels of real context.  Tiles start on a
multiple of the network's downsampling step, so that pooling grids line up with a
whole-image pass and the tiled result matches it away from the image border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_zoo.errors import OncoAIError


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis of length ``size`` is cut into tiles.

    Attributes
    ----------
    size : int
        Image length along the axis, in input pixels.
    tile : int
        Tile length the model sees.
    halo : int
        Context dropped on each inner side of a tile.
    starts : tuple of int
        Where each tile starts; the image is padded where a tile runs past it.
    keep : tuple of (int, int)
        The image range ``[lo, hi)`` each tile writes; together they cover
        ``[0, size)`` exactly once.
    """

    size: int
    tile: int
    halo: int
    starts: tuple[int, ...]
    keep: tuple[tuple[int, int], ...]


def valid_size(target: int, minimum: int, step: int, fixed: bool) -> int:
    """The smallest size the model accepts that is at least ``target``."""
    if fixed:
        return minimum
    if target <= minimum or step == 0:
        return minimum
    return minimum + math.ceil((target - minimum) / step) * step


def plan_axis(size: int, tile: int, halo: int, align: int) -> AxisPlan:
    """Cut an axis into tiles of length ``tile`` that overlap by ``2 * halo``.

    Parameters
    ----------
    size : int
        Image length.
    tile : int
        Tile length.
    halo : int
        Context to drop on each inner side.
    align : int
        Tiles start on multiples of this.

    Returns
    -------
    AxisPlan
    """
    if size <= tile:
        return AxisPlan(size, tile, halo, (0,), ((0, size),))
    step = ((tile - 2 * halo) // align) * align
    if step <= 0:
        raise OncoAIError(
            f"tile {tile} leaves no room inside a halo of {halo} on each side; use a "
            f"larger --tile (at least {2 * halo + align}) or a smaller --halo"
        )
    padded = math.ceil(size / align) * align
    starts = [0]
    while starts[-1] + tile < padded:
        nxt = starts[-1] + step
        if nxt + tile >= padded:
            nxt = max(starts[-1] + align, ((padded - tile) // align) * align)
        starts.append(nxt)
    keep = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else _split(starts[i - 1], start, tile)
        hi = size if i == len(starts) - 1 else _split(start, starts[i + 1], tile)
        keep.append((lo, min(hi, size)))
    return AxisPlan(size, tile, halo, tuple(starts), tuple(keep))


def _split(a: int, b: int, tile: int) -> int:
    """Where the tile starting at ``a`` hands over to the one at ``b``.

    The middle of their overlap, so that both keep at least the halo.
    """
    return (b + a + tile) // 2
