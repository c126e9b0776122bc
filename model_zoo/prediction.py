"""OncoAI's tiled, streamed prediction.

One :class:`PredictionJob` runs one model on one image:

1. map the user's axes onto the model's (``YX``, ``CYX``, ``YXS``, ``ZYX``, ``TYX``,
   ``TCZYX`` ...); axes the model does not take (time for every model, z for 2D
   models) are run frame by frame;
2. compute the normalisation statistics over each whole frame, in a streamed pass;
3. cut the frame into tiles with a halo, batch them through the model under
   ``torch.inference_mode``, apply the model's own pre- and post-processing with
   the whole-frame statistics, and keep each tile's centre;
4. write the kept parts into the output, tile by tile.

Peak memory depends on the tile and batch size, not on the image size, when the
output goes to an on-disk store (see :mod:`model_zoo.outputs`).

Known limitations: post-processing steps that need statistics of the output
(rare) are applied after all tiles, over the whole output held in memory; outputs
without spatial axes (image-level classes) are not tiled and need the image in one
piece.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from model_zoo.config import PredictionConfig
from model_zoo.errors import CancelledError, OncoAIError
from model_zoo.images import ImageData, read_image
from model_zoo.result import PredictionResult
from model_zoo.tiling import AxisPlan, plan_axis, valid_size

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
# At least the model's declared halo, and at least this.  On the shared U-Net,
# 32 px matched a whole-image pass at 1024² to 2.4e-3, with 0.006% of pixels off
# by more than 1e-3; 48 px matched to 2e-6 but cost 23% more tiles at 4096².
DEFAULT_HALO = 32
# Small enough that no single numpy call holds the GIL long: hosts such as napari
# keep their event loop running while statistics are computed.
_STATS_CHUNK_VALUES = 1 << 20


class Progress(NamedTuple):
    """How far a job has got: ``done`` of ``total`` steps, with a message."""

    done: int
    total: int
    message: str


# -- models are expensive to load; hosts that run many jobs share them ----------

_models: dict[tuple[str, str | None, str], Any] = {}
_models_lock = threading.Lock()


def get_model(config: PredictionConfig) -> Any:
    """Load the model a config names, or reuse it when it is already loaded."""
    from model_zoo.model import load_model, locate_rdf

    rdf = str(locate_rdf(config.model).resolve())
    key = (rdf, config.weights, config.device)
    with _models_lock:
        if key not in _models:
            if len(_models) >= 4:
                _models.pop(next(iter(_models)))
            _models[key] = load_model(rdf, config.weights, config.device)
        return _models[key]


# -- axes ----------------------------------------------------------------------


@dataclass
class _InputMap:
    """How one user image feeds one model input tensor."""

    image: ImageData
    model_dims: list[str]  # bioimageio axis ids in model order, batch included
    model_letters: list[str]  # the same in OncoAI letters (B for batch)
    loop_axes: str  # user axes run one at a time, in TZ order
    channel_index: list[int] | None  # channels to pick, or None for all
    member: str


def _model_dims(tensor: Any) -> tuple[list[str], list[str]]:
    from model_zoo.model import _axis_letter

    dims = [str(a.id) for a in tensor.axes]
    letters = [_axis_letter(a) for a in tensor.axes]
    return dims, letters


def _map_input(image: ImageData, tensor: Any, channel: str | int | None) -> _InputMap:
    dims, letters = _model_dims(tensor)
    model_set = set(letters) - {"B"}
    user = image.axes.replace("S", "C") if "S" in image.axes else image.axes
    if "S" in image.axes and "C" in image.axes:
        raise OncoAIError(
            f"image axes {image.axes!r} have both C and S; OncoAI reads S (RGB) as "
            "the channels, so give one of them"
        )
    for letter in model_set - {"C"}:
        if letter not in user:
            raise OncoAIError(
                f"the model needs a {letter} axis ({''.join(letters)}) but the image "
                f"has axes {image.axes!r}; give the right axes with --axes"
            )
    loop = "".join(a for a in "TZ" if a in user and a not in model_set)
    n_model = 1
    for axis, letter in zip(tensor.axes, letters):
        if letter == "C":
            n_model = len(axis.channel_names)
    n_user = image.n_channels
    picked = _pick_channels(image, n_user, n_model, channel)
    return _InputMap(image, dims, letters, loop, picked, str(tensor.id))


def _pick_channels(
    image: ImageData, n_user: int, n_model: int, channel: str | int | None
) -> list[int] | None:
    names = image.channel_names or [str(i) for i in range(n_user)]
    if channel is not None:
        if isinstance(channel, str) and not channel.isdigit():
            if channel not in names:
                raise OncoAIError(
                    f"channel {channel!r} not found; the image has channels "
                    f"{', '.join(names)}: pick one with --channel NAME_OR_INDEX"
                )
            index = names.index(channel)
        else:
            index = int(channel)
            if not 0 <= index < n_user:
                raise OncoAIError(
                    f"channel {index} is out of range; the image has {n_user} "
                    f"channel(s) ({', '.join(names)}): use --channel 0..{n_user - 1}"
                )
        if n_model != 1:
            raise OncoAIError(
                f"--channel picks one channel but the model takes {n_model}; leave "
                "--channel out"
            )
        return [index]
    if n_user == n_model:
        return None
    raise OncoAIError(
        f"the model takes {n_model} channel(s) but the image has {n_user} "
        f"({', '.join(names)}); "
        + (
            "pick one with --channel NAME_OR_INDEX"
            if n_model == 1
            else "give an image with the channels the model expects"
        )
    )


# -- reading tiles ---------------------------------------------------------------


def _frame_reader(
    imap: _InputMap, frame: Mapping[str, int]
) -> Callable[[Mapping[str, tuple[int, int]]], np.ndarray]:
    """Return ``read(region)``: the model-ordered tensor of one region, no batch.

    ``region`` maps spatial letters (Z, Y, X) to ``(start, stop)`` within the
    image; the result has the model's axes (without batch) in the model's order.
    """
    image = imap.image
    user = image.axes.replace("S", "C")
    model_letters = [a for a in imap.model_letters if a != "B"]

    def read(region: Mapping[str, tuple[int, int]]) -> np.ndarray:
        index: list[Any] = []
        for letter in user:
            if letter in frame:
                index.append(frame[letter])
            elif letter in region:
                lo, hi = region[letter]
                index.append(slice(lo, hi))
            else:
                index.append(slice(None))
        data = np.asarray(image.array[tuple(index)])
        kept = [a for a in user if a not in frame]
        if "C" not in kept:
            data = data[np.newaxis]
            kept = ["C", *kept]
        if imap.channel_index is not None:
            data = np.take(data, imap.channel_index, axis=kept.index("C"))
        for letter in model_letters:
            if letter not in kept:
                data = data[..., np.newaxis]
                kept.append(letter)
        data = np.transpose(data, [kept.index(a) for a in model_letters])
        return data.astype(np.float32, copy=False)

    return read


# -- the job ---------------------------------------------------------------------


@dataclass
class _OutputMap:
    member: str
    letters: list[str]  # model letters without batch
    ratio: dict[str, float]  # output px per input px, per spatial letter
    shift: dict[str, float]  # output px offset of pixel 0
    halo: dict[str, int]  # in output px


class PredictionJob:
    """One model run on one image, as a generator of progress.

    Parameters
    ----------
    config : PredictionConfig
        The validated parameters; ``config.model`` names the model.
    image : ImageData, str, Path, array, or a mapping of input id to those
        The input.  A bare array needs ``config.axes`` or gets guessed axes.
    model : OncoModel or None
        A model that is already loaded; loaded from ``config`` when None.
    output_factory : callable or None
        ``factory(output_id, shape, dtype)`` returns the array each output is
        written into, tile by tile; in memory when None, on disk with
        :func:`model_zoo.streaming.disk_outputs`.
    offset : tuple of float
        ``(x0, y0)``: where the image's pixel (0, 0) lies on the level-0 slide.

    Examples
    --------
    >>> from model_zoo.config import PredictionConfig
    >>> from model_zoo.prediction import PredictionJob
    >>> job = PredictionJob(PredictionConfig(model="oncoai-nuclei"), "nuclei.tif")
    >>> for progress in job.run():
    ...     pass
    >>> job.result.outputs["probability"].shape
    (1, 512, 512)
    """

    def __init__(
        self,
        config: PredictionConfig,
        image: Any,
        *,
        model: Any | None = None,
        output_factory: Callable[[str, tuple[int, ...], Any], Any] | None = None,
        offset: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.config = config
        self._image = image
        self._model = model
        self._cancel = threading.Event()
        self._output_factory = output_factory or _memory_output
        self.offset = offset
        self.result: PredictionResult | None = None

    def cancel(self) -> None:
        """Ask the job to stop; it stops before the next batch of tiles."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise CancelledError("prediction cancelled; nothing was written")

    def run(self) -> Iterator[Progress]:
        """Run the model, yielding progress; the result is in :attr:`result`.

        Raises
        ------
        OncoAIError
            For bad input; :class:`CancelledError` after :meth:`cancel`.
        """
        yield Progress(0, 1, "loading model")
        model = self._model or get_model(self.config)
        self._check_cancel()
        images = self._images(model)
        maps = [
            _map_input(images[str(t.id)], t, self.config.channel)
            for t in model.descr.inputs
        ]
        yield from _Runner(self, model, maps).run()

    def _images(self, model: Any) -> dict[str, ImageData]:
        ids = model.input_ids
        given = self._image
        if isinstance(given, Mapping):
            missing = [i for i in ids if i not in given]
            if missing:
                raise OncoAIError(
                    f"the model needs inputs {', '.join(ids)}; missing "
                    f"{', '.join(missing)}"
                )
            return {i: self._as_image(given[i]) for i in ids}
        if isinstance(given, (list, tuple)):
            if len(given) != len(ids):
                raise OncoAIError(
                    f"the model needs {len(ids)} input image(s) ({', '.join(ids)}) "
                    f"but {len(given)} were given"
                )
            return {i: self._as_image(g) for i, g in zip(ids, given)}
        if len(ids) != 1:
            raise OncoAIError(
                f"the model needs {len(ids)} input images ({', '.join(ids)}); give "
                "one per input, in that order"
            )
        return {ids[0]: self._as_image(given)}

    def _as_image(self, value: Any) -> ImageData:
        if isinstance(value, ImageData):
            if self.config.axes and self.config.axes != value.axes:
                return ImageData(
                    value.array,
                    self.config.axes,
                    value.pixel_size,
                    value.channel_names,
                    value.path,
                    value.name,
                    value.metadata,
                )
            return value
        if isinstance(value, (str, Path)):
            return read_image(value, self.config.axes)
        array = np.asarray(value)
        return ImageData(array, self.config.axes or "")


def _memory_output(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


class _Runner:
    """The tiling loop of one job; split out to keep the job readable."""

    def __init__(self, job: PredictionJob, model: Any, maps: list[_InputMap]) -> None:
        self.job = job
        self.cfg = job.config
        self.model = model
        self.maps = maps
        self.descr = model.descr
        self.first = maps[0]
        self._setup_processing()
        self.outputs = [self._output_map(t) for t in self.descr.outputs]
        self.spatial = [a for a in self.first.model_letters if a in "ZYX"]
        self._check_shapes()

    # -- set-up ----------------------------------------------------------------

    def _setup_processing(self) -> None:
        from bioimageio.core.proc_ops import get_proc

        self.pre = [get_proc(p, t) for t in self.descr.inputs for p in t.preprocessing]
        self.post = [
            get_proc(p, t) for t in self.descr.outputs for p in t.postprocessing
        ]
        output_ids = set(self.model.output_ids)
        self.post_needs_stats = any(
            str(m.member_id) in output_ids
            for op in self.post
            for m in op.required_measures
        )

    def _output_map(self, tensor: Any) -> _OutputMap:
        from model_zoo.model import _axis_letter

        letters, ratio, shift, halo = [], {}, {}, {}
        inputs = {str(t.id): t for t in self.descr.inputs}
        for axis in tensor.axes:
            letter = _axis_letter(axis)
            if letter == "B":
                continue
            letters.append(letter)
            if letter not in "ZYX":
                continue
            size = axis.size
            ref = getattr(size, "tensor_id", None)
            if ref is None:
                raise OncoAIError(
                    f"output {tensor.id!r} has a {letter} axis whose size does not "
                    "follow an input; OncoAI cannot tile such a model"
                )
            ref_axis = next(
                a for a in inputs[str(ref)].axes if str(a.id) == str(size.axis_id)
            )
            r = float(ref_axis.scale) / float(axis.scale)
            ratio[letter] = r
            shift[letter] = -float(size.offset) / 2.0
            halo[letter] = int(getattr(axis, "halo", 0) or 0)
        return _OutputMap(str(tensor.id), letters, ratio, shift, halo)

    def _check_shapes(self) -> None:
        ref = {a: self.first.image.size(a) for a in self.spatial}
        for imap in self.maps[1:]:
            other = {a: imap.image.size(a) for a in self.spatial}
            if other != ref:
                raise OncoAIError(
                    f"all inputs must have the same size; {imap.member!r} is {other} "
                    f"but {self.first.member!r} is {ref}"
                )
        for letter, size in ref.items():
            if size < 8:
                raise OncoAIError(
                    f"the image is only {size} px along {letter}; OncoAI needs at "
                    "least 8"
                )

    # -- tile plan ---------------------------------------------------------------

    def _plans(self, tile_override: int | None = None) -> dict[str, AxisPlan]:
        tensor = self.descr.inputs[0]
        plans = {}
        needed_halo = self._input_halo()
        for axis in tensor.axes:
            letter = self._letter(axis)
            if letter not in self.spatial:
                continue
            n = self.first.image.size(letter)
            minimum, step, fixed = _size_rule(axis)
            if minimum > n and not fixed:
                raise OncoAIError(
                    f"the image is {n} px along {letter} but the model needs at "
                    f"least {minimum}; use a larger image or crop less"
                )
            requested = tile_override if tile_override is not None else self.cfg.tile
            if requested == 0:
                tile = valid_size(n, minimum, step, fixed)
                if fixed and n > minimum:
                    raise OncoAIError(
                        f"--tile 0 asks for the whole image in one pass, but this "
                        f"model takes exactly {minimum} px along {letter} and the "
                        f"image is {n}; leave --tile out to tile it"
                    )
            else:
                target = requested or DEFAULT_TILE
                tile = valid_size(
                    min(target, _round_up(n, max(step, 16))), minimum, step, fixed
                )
            halo = max(
                needed_halo.get(letter, 0),
                self.cfg.halo if self.cfg.halo is not None else DEFAULT_HALO,
            )
            align = _alignment(tile, step, fixed)
            halo = min(halo, max(0, (tile - align) // 2))
            declared = needed_halo.get(letter, 0)
            if n > tile and halo < declared:
                # Tiles with less context than the model declares make seams.
                raise OncoAIError(
                    f"a tile of {tile} px along {letter} leaves room for only "
                    f"{halo} px of the model's halo of {declared} px; use a larger "
                    f"--tile (at least {2 * declared + align})"
                )
            plans[letter] = plan_axis(n, tile, halo, align)
        return plans

    def _letter(self, axis: Any) -> str:
        from model_zoo.model import _axis_letter

        return _axis_letter(axis)

    def _input_halo(self) -> dict[str, int]:
        halo: dict[str, int] = {}
        for out in self.outputs:
            for letter, h in out.halo.items():
                need = int(np.ceil(h / out.ratio[letter]))
                halo[letter] = max(halo.get(letter, 0), need)
        return halo

    # -- running ---------------------------------------------------------------

    def run(self) -> Iterator[Progress]:
        job = self.job
        frames = self._frames()
        plans = self._plans()
        store = self._allocate(frames)
        tiles = _tile_grid(plans)
        total = len(frames) * (len(tiles) + 1)
        done = 0
        started = time.perf_counter()
        self.batch_limit: int | None = None
        for frame in frames:
            job._check_cancel()
            yield Progress(done, total, f"statistics{_frame_label(frame)}")
            stats = self._frame_stats(frame)
            done += 1
            frame_start = done
            while True:
                try:
                    for count in self._predict_frame(frame, plans, tiles, stats, store):
                        done += count
                        job._check_cancel()
                        yield Progress(
                            done, total, f"tile {done}/{total}{_frame_label(frame)}"
                        )
                    break
                except _OutOfMemory:
                    plans = self._smaller(plans)
                    tiles = _tile_grid(plans)
                    done = frame_start
        if self.post_needs_stats:
            self._deferred_post(store, frames)
        log.info(
            "predicted %d tile(s) in %.2f s",
            total - len(frames),
            time.perf_counter() - started,
        )
        job.result = self._result(store)
        yield Progress(total, total, "done")

    def _smaller(self, plans: dict[str, AxisPlan]) -> dict[str, AxisPlan]:
        """After an out-of-memory error: halve the batch, then the tile."""
        self._release_memory()
        batch = self.batch_limit or self._last_batch
        if batch > 1:
            self.batch_limit = batch // 2
            log.warning(
                "out of memory: retrying with %d tile(s) per batch", self.batch_limit
            )
            return plans
        tile = min(p.tile for p in plans.values()) // 2
        if tile < 64:
            raise OncoAIError(
                "out of memory even with 64 px tiles; use --device cpu or free GPU "
                "memory"
            )
        log.warning("out of memory: retrying with %d px tiles", tile)
        return self._plans(tile_override=tile)

    def _release_memory(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _frames(self) -> list[dict[str, int]]:
        loop = self.first.loop_axes
        sizes = [self.first.image.size(a) for a in loop]
        return [dict(zip(loop, idx)) for idx in np.ndindex(*sizes)] if loop else [{}]

    def _out_shape(self, out: _OutputMap) -> tuple[str, tuple[int, ...]]:
        letters = list(out.letters)
        for a in self.first.loop_axes:
            letters.append(a)
        order = [a for a in "TCZYXI" if a in letters]
        shape = []
        tensor = next(t for t in self.descr.outputs if str(t.id) == out.member)
        for a in order:
            if a in self.first.loop_axes:
                shape.append(self.first.image.size(a))
            elif a in out.ratio:
                n = self.first.image.size(a)
                shape.append(int(round(n * out.ratio[a] - 2 * out.shift[a])))
            else:
                axis = next(x for x in tensor.axes if self._letter(x) == a)
                shape.append(_fixed_len(axis, self.descr))
        return "".join(order), tuple(shape)

    def _allocate(self, frames: list[dict[str, int]]) -> dict[str, Any]:
        store = {}
        self.out_axes: dict[str, str] = {}
        for out in self.outputs:
            axes, shape = self._out_shape(out)
            self.out_axes[out.member] = axes
            store[out.member] = self.job._output_factory(out.member, shape, np.float32)
        return store

    def _frame_stats(self, frame: Mapping[str, int]) -> dict[Any, Any]:

        measures = {
            m
            for op in self.pre
            for m in op.required_measures
            if str(m.member_id) in {im.member for im in self.maps}
        }
        readers = {
            im.member: (_frame_reader(im, frame), im.model_dims) for im in self.maps
        }
        image = self.first.image
        y_len = image.size("Y")
        depth = image.size("Z") if "Z" in self.spatial else 1
        row_values = max(1, image.size("X") * image.n_channels * depth)
        rows = max(1, _STATS_CHUNK_VALUES // row_values)
        total = y_len * row_values

        def chunks() -> Iterator[dict[str, tuple[np.ndarray, Sequence[str]]]]:
            for lo in range(0, y_len, rows):
                region = {"Y": (lo, min(y_len, lo + rows))}
                chunk = {}
                for member, (read, dims) in readers.items():
                    data = read(region)
                    chunk[member] = (self._with_batch(data, dims), dims)
                yield chunk

        if not measures:
            # No statistics to compute, but NaN or Inf would still poison every
            # tile: refuse them before any work.
            from model_zoo.stats import _check_finite

            for chunk in chunks():
                for data, _ in chunk.values():
                    _check_finite(data)
            return {}
        return self._stats_in_order(chunks, total)

    def _stats_in_order(self, chunks, total) -> dict[Any, Any]:
        """Each pre-processing step's statistics, of the tensor as it sees it.

        A step's statistics are taken over the whole frame after the steps before
        it, in one streamed pass per step that needs statistics not yet known.
        """
        from model_zoo.stats import compute_stats

        stats: dict[Any, Any] = {}
        for index, op in enumerate(self.pre):
            need = {m for m in op.required_measures if m not in stats}
            if need:
                source = self._transformed_chunks(chunks, self.pre[:index], stats)
                stats.update(compute_stats(need, source, total))
        return stats

    def _transformed_chunks(self, chunks, ops, stats):
        """Chunks as they look after ``ops``, for statistics that follow them."""
        if not ops:
            return chunks
        frozen = dict(stats)

        def transformed():
            for chunk in chunks():
                yield self._apply_ops_to_chunk(chunk, ops, frozen)

        return transformed

    def _apply_ops_to_chunk(self, chunk, ops, stat):
        sample = self._sample({k: v[0] for k, v in chunk.items()}, stat)
        for op in ops:
            op(sample)
        return {k: (sample.members[k].data.to_numpy(), chunk[k][1]) for k in chunk}

    def _with_batch(self, data: np.ndarray, dims: list[str]) -> np.ndarray:
        """Add the model's batch axis, of length 1, where it has one."""
        if "batch" in dims:
            return np.expand_dims(data, dims.index("batch"))
        return data

    def _sample(
        self, members: Mapping[str, np.ndarray], stat: Mapping[Any, Any]
    ) -> Any:
        from bioimageio.core import Sample, Tensor

        dims_of = {im.member: im.model_dims for im in self.maps}
        dims_of.update(
            {str(t.id): [str(a.id) for a in t.axes] for t in self.descr.outputs}
        )
        tensors = {
            k: Tensor.from_numpy(v, dims=tuple(dims_of[k])) for k, v in members.items()
        }
        return Sample(members=tensors, stat=dict(stat), id=None)

    def _batch_size(self, tile_values: int) -> int:
        if self.cfg.batch_size:
            size = self.cfg.batch_size
        else:
            import psutil

            free = psutil.virtual_memory().available
            # About 60 float32 activations per input value in a U-Net of this size.
            per_tile = tile_values * 4 * 60
            size = int(max(1, min(8, free * 0.25 // max(per_tile, 1))))
            if self.model.device == "cpu":
                from model_zoo.model import cpu_workers

                size = min(size, 2 * cpu_workers()[0])
        if self.model.max_batch:
            size = min(size, self.model.max_batch)
        if "batch" not in self.first.model_dims:
            size = 1
        return size

    def _predict_frame(self, frame, plans, tiles, stats, store) -> Iterator[int]:
        tile_values = int(np.prod([p.tile for p in plans.values()])) * max(
            1, self.first.image.n_channels
        )
        batch = self._batch_size(tile_values)
        if self.batch_limit:
            batch = min(batch, self.batch_limit)
        self._last_batch = batch
        readers = {im.member: _frame_reader(im, frame) for im in self.maps}
        groups = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
        # The next batch is read and normalised while the model runs this one.
        with ThreadPoolExecutor(1, thread_name_prefix="oncoai-read") as reader:
            pending = reader.submit(self._prepare, groups[0], plans, readers, stats)
            for k, group in enumerate(groups):
                ready = pending.result()
                if k + 1 < len(groups):
                    pending = reader.submit(
                        self._prepare, groups[k + 1], plans, readers, stats
                    )
                raw = self._forward(ready, len(group))
                self._store(group, raw, plans, stats, store, frame)
                yield len(group)

    def _prepare(self, group, plans, readers, stats) -> list[np.ndarray]:
        """Read a batch of tiles and apply the model's pre-processing."""
        inputs = {}
        for im in self.maps:
            arrays = [
                _read_padded(readers[im.member], t, plans, im.model_letters)
                for t in group
            ]
            inputs[im.member] = self._stack(arrays, im.model_dims)
        sample = self._sample(inputs, stats)
        for op in self.pre:
            op(sample)
        return [
            sample.members[im.member].data.to_numpy().astype(np.float32, copy=False)
            for im in self.maps
        ]

    def _store(self, group, raw, plans, stats, store, frame) -> None:
        """Apply the model's post-processing and keep each tile's centre."""
        out_sample = self._sample(
            {o.member: r for o, r in zip(self.outputs, raw)}, stats
        )
        if not self.post_needs_stats:
            for op in self.post:
                op(out_sample)
        for out in self.outputs:
            data = out_sample.members[out.member].data.to_numpy()
            tensor = next(t for t in self.descr.outputs if str(t.id) == out.member)
            dims = [str(a.id) for a in tensor.axes]
            for b, tile in enumerate(group):
                piece = (
                    np.take(data, b, axis=dims.index("batch"))
                    if "batch" in dims
                    else data
                )
                self._write_tile(store[out.member], out, piece, tile, plans, frame)

    def _stack(self, arrays: list[np.ndarray], dims: list[str]) -> np.ndarray:
        if "batch" in dims:
            return np.stack(arrays, axis=dims.index("batch"))
        return arrays[0]

    def _forward(self, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        try:
            outputs = self.model.forward(inputs)
        except Exception as exc:  # noqa: BLE001
            if _is_out_of_memory(exc):
                raise _OutOfMemory() from exc
            raise OncoAIError(
                f"the model failed on a tile of shape {inputs[0].shape}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        if len(outputs) != len(self.outputs):
            raise OncoAIError(
                f"the model returned {len(outputs)} outputs but its RDF declares "
                f"{len(self.outputs)}"
            )
        return outputs

    def _write_tile(self, target, out: _OutputMap, piece, tile, plans, frame) -> None:
        """Keep the centre of one tile's output and write it in place."""
        src: list[Any] = []
        dst: dict[str, Any] = {}
        for letter in out.letters:
            if letter in out.ratio:
                plan, t = plans[letter], tile[letter]
                r, shift = out.ratio[letter], out.shift[letter]
                lo, hi = plan.keep[t]
                start = plan.starts[t]
                o_lo = int(round(lo * r - shift)) if lo else 0
                full = int(round(plan.size * r - 2 * shift))
                o_hi = full if hi == plan.size else int(round(hi * r - shift))
                t_lo = o_lo - (int(round(start * r - shift)) if start else 0)
                src.append(slice(t_lo, t_lo + (o_hi - o_lo)))
                dst[letter] = slice(o_lo, o_hi)
            else:
                src.append(slice(None))
                dst[letter] = slice(None)
        data = piece[tuple(src)]
        axes = self.out_axes[out.member]
        index = tuple(frame[a] if a in frame else dst[a] for a in axes)
        order = [out.letters.index(a) for a in axes if a not in frame]
        target[index] = np.transpose(data, order)

    def _deferred_post(self, store: dict[str, Any], frames) -> None:
        from bioimageio.core.stat_calculators import compute_measures

        log.info("applying output post-processing over the whole output")
        for out in self.outputs:
            full = np.asarray(store[out.member])
            axes = self.out_axes[out.member]
            tensor = next(t for t in self.descr.outputs if str(t.id) == out.member)
            dims = [str(a.id) for a in tensor.axes]
            letters = [self._letter(a) for a in tensor.axes]
            for frame in frames:
                index = tuple(frame[a] if a in frame else slice(None) for a in axes)
                part = full[index]
                kept = [a for a in axes if a not in frame]
                part = np.transpose(part, [kept.index(a) for a in letters if a != "B"])
                part = self._with_batch(part, dims)
                sample = self._sample({out.member: part}, {})
                ops = [op for op in self.post if str(op.output) == out.member]
                needed = {m for op in ops for m in op.required_measures}
                sample.stat.update(compute_measures(needed, [sample]))
                for op in ops:
                    op(sample)
                res = sample.members[out.member].data.to_numpy()
                if "batch" in dims:
                    res = np.take(res, 0, axis=dims.index("batch"))
                order = [[a for a in letters if a != "B"].index(a) for a in kept]
                store[out.member][index] = np.transpose(res, order)

    def _result(self, store: dict[str, Any]) -> PredictionResult:
        from model_zoo import __version__

        image = self.first.image
        scale, offset = {}, {}
        for out in self.outputs:
            spatial = [a for a in self.out_axes[out.member] if a in out.ratio]
            scale[out.member] = tuple(1.0 / out.ratio[a] for a in spatial)
            offset[out.member] = tuple((out.shift[a]) / out.ratio[a] for a in spatial)
        provenance = {
            **self.model.provenance(),
            "oncoai_version": __version__,
            "parameters": self.cfg.model_dump(mode="json"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": str(image.path) if image.path else image.name,
        }
        stardist = None
        if self.model.is_stardist:
            stardist = _stardist_settings(self.model)
        return PredictionResult(
            outputs=store,
            output_axes=dict(self.out_axes),
            output_scale=scale,
            output_offset=offset,
            image=image,
            config=self.cfg,
            provenance=provenance,
            offset=self.job.offset,
            task=self.model.task,
            stardist=stardist,
        )


class _OutOfMemory(Exception):
    pass


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or type(exc).__name__ == "OutOfMemoryError"


def _stardist_settings(model: Any) -> dict[str, Any]:
    from model_zoo.model import _config_value

    cfg = _config_value(model.descr, "stardist") or {}
    cfg = dict(cfg) if isinstance(cfg, Mapping) else {}
    thresholds = (
        cfg.get("thresholds", {}) if isinstance(cfg.get("thresholds"), Mapping) else {}
    )
    outputs = model.output_ids
    settings: dict[str, Any] = {
        "prob_output": outputs[0],
        "dist_output": outputs[-1],
        "grid": (cfg.get("config", {}) or {}).get("grid", (1, 1)),
    }
    if "prob" in thresholds:
        settings["prob_threshold"] = float(thresholds["prob"])
    if "nms" in thresholds:
        settings["nms_threshold"] = float(thresholds["nms"])
    return settings


def _frame_label(frame: Mapping[str, int]) -> str:
    if not frame:
        return ""
    return " (" + ", ".join(f"{k.lower()}={v}" for k, v in frame.items()) + ")"


def _size_rule(axis: Any) -> tuple[int, int, bool]:
    size = axis.size
    if isinstance(size, int):
        return size, 0, True
    if hasattr(size, "min") and hasattr(size, "step"):
        return int(size.min), int(size.step), False
    raise OncoAIError(
        f"the model's input axis {axis.id!r} has a size OncoAI cannot tile ({size})"
    )


def _fixed_len(axis: Any, descr: Any) -> int:
    if axis.type == "channel":
        return len(axis.channel_names)
    size = axis.size
    if isinstance(size, int):
        return size
    raise OncoAIError(f"output axis {axis.id!r} has a size OncoAI cannot predict")


def _round_up(n: int, step: int) -> int:
    return int(np.ceil(n / step) * step)


def _alignment(tile: int, step: int, fixed: bool) -> int:
    """Tile starts fall on multiples of this: the network's downsampling step."""
    if not fixed and step:
        align = step
        while align < 16:
            align *= 2
    else:
        align = 1
        while tile % (align * 2) == 0 and align < 32:
            align *= 2
    return min(align, tile)


def _tile_grid(plans: Mapping[str, AxisPlan]) -> list[dict[str, int]]:
    letters = list(plans)
    counts = [len(plans[a].starts) for a in letters]
    return [dict(zip(letters, idx)) for idx in np.ndindex(*counts)]


def _read_padded(read, tile, plans, model_letters) -> np.ndarray:
    region, pads = {}, {}
    for letter, t in tile.items():
        plan = plans[letter]
        start = plan.starts[t]
        stop = min(start + plan.tile, plan.size)
        region[letter] = (start, stop)
        pads[letter] = plan.tile - (stop - start)
    data = read(region)
    letters = [a for a in model_letters if a != "B"]
    widths = [(0, pads.get(a, 0)) for a in letters]
    if any(w[1] for w in widths):
        mode = (
            "reflect"
            if all(data.shape[i] > 1 for i, a in enumerate(letters) if pads.get(a))
            else "edge"
        )
        data = np.pad(data, widths, mode=mode)
    return data


def predict(
    config: PredictionConfig,
    image: Any,
    *,
    model: Any | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> PredictionResult:
    """Run a model on an image to the end and return the result.

    Parameters
    ----------
    config : PredictionConfig
        What to run and how.
    image : ImageData, path or array
        The input image.
    model : OncoModel or None
        A loaded model to reuse.
    progress : callable or None
        Called with each :class:`Progress`.

    Returns
    -------
    PredictionResult
    """
    job = PredictionJob(config, image, model=model)
    for step in job.run():
        if progress is not None:
            progress(step)
    assert job.result is not None
    return job.result
