"""Measure one run from outside: UNet evaluations, time inside model forward passes, memory.

`Probe.install` wraps the loaders and DDIM inversion of an imported samedit in the current
process, so no method loop carries measuring code:

- `loaders.place`, which every loader calls on every model, attaches forward hooks to the
  model and its direct children. The children matter because the VAE, CLIP and SAM are called
  through `encode`/`decode`, `get_image_features` or their parts, never through `forward`.
  A depth counter makes nested calls count once.
- the `load_*` functions of the loaders are timed, so model loading can be kept apart from
  the edit's wall time.
- `inversion.ddim_invert` marks the UNet calls made inside it as inversion calls.

With `trace=True`, a `TorchDispatchMode` adds up the bytes of every tensor storage that a
torch operation creates while it is alive, and records the peak per model (see `LiveBytes`).

Install a probe only in a process of its own: it rebinds module attributes for good.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

COUNTED = ("unet", "controlnet")  # models whose calls and batch items are counted


def model_kind(module: torch.nn.Module) -> str:
    """Short name of a model by its class: unet, controlnet, vae, text_encoder, clip, sam."""
    names = {
        "UNet2DConditionModel": "unet",
        "ControlNetModel": "controlnet",
        "AutoencoderKL": "vae",
        "CLIPTextModel": "text_encoder",
        "CLIPModel": "clip",
        "Sam": "sam",
    }
    return names.get(type(module).__name__, type(module).__name__)


def batch_size(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample")
    return int(sample.shape[0]) if isinstance(sample, torch.Tensor) else 0


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created by torch operations, per phase.

    A storage counts from the operation that creates it until Python frees it (a weak
    reference callback). Storages made while a loader runs (the weights) or before the mode
    started are not counted, so on CPU this is the activation memory the operations hold,
    without the allocator's caching or fragmentation.
    """

    def __init__(self, probe: Probe):
        super().__init__()
        self.probe = probe
        self.sizes: dict[int, int] = {}  # storage address -> bytes
        self.current = 0
        self.peaks: Counter = Counter()  # phase -> peak bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = {value.untyped_storage().data_ptr() for value in tree_leaves((args, kwargs))
                  if isinstance(value, torch.Tensor) and value.device.type != "meta"}
        for value in tree_leaves(output):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self._track(value.untyped_storage(), inputs)
        return output

    def _track(self, storage, inputs: set[int]) -> None:
        address = storage.data_ptr()
        if not address or address in inputs or address in self.sizes or self.probe.loading:
            return  # empty, a view or in-place result of an input, counted already, or weights
        self.sizes[address] = storage.nbytes()
        self.current += storage.nbytes()
        phase = self.probe.phase()
        self.peaks[phase] = max(self.peaks[phase], self.current)
        weakref.finalize(storage, self._free, address)

    def _free(self, address: int) -> None:
        self.current -= self.sizes.pop(address)


class Probe:
    """Counters, timers and memory of one measured run; `install` before the run starts."""

    def __init__(self, device: torch.device, trace: bool = False):
        self.sync = device.type == "cuda"
        self.tracer = LiveBytes(self) if trace else None
        self.reset()

    def reset(self) -> None:
        self.calls: Counter = Counter()  # (kind, "invert" | "edit") -> calls
        self.items: Counter = Counter()  # (kind, "invert" | "edit") -> sum of batch sizes
        self.model_seconds: Counter = Counter()  # kind -> seconds inside its forward passes
        self.load_seconds = 0.0
        self.load_cpu_seconds = 0.0  # CPU time of all threads while loading
        self.parameters: Counter = Counter()  # kind -> parameters of the models placed
        self.inverting = False
        self._depth = 0  # nesting of instrumented forward passes
        self._kind: str | None = None  # outermost model running now
        self._started = 0.0
        self._loading = 0

    def phase(self) -> str:
        return self._kind or "other"

    @property
    def loading(self) -> bool:
        return self._loading > 0

    # hooks ---------------------------------------------------------------------------------

    def _enter(self, kind: str) -> None:
        if self._depth == 0:
            if self.sync:
                torch.cuda.synchronize()
            self._kind, self._started = kind, time.perf_counter()
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self.sync:
                torch.cuda.synchronize()
            self.model_seconds[self._kind] += time.perf_counter() - self._started
            self._kind = None

    def instrument(self, module: torch.nn.Module) -> None:
        """Hook `module` and its direct children; a module placed twice is hooked once."""
        if getattr(module, "_samedit_probe", False):
            return
        module._samedit_probe = True
        kind = model_kind(module)
        self.parameters[kind] += sum(parameter.numel() for parameter in module.parameters())
        for part in (module, *module.children()):
            part.register_forward_pre_hook(lambda *_: self._enter(kind))
            part.register_forward_hook(lambda *_: self._leave(), always_call=True)
        if kind in COUNTED:
            module.register_forward_pre_hook(self._counter(kind), with_kwargs=True)

    def _counter(self, kind: str):
        def count(module, args, kwargs):
            key = (kind, "invert" if self.inverting else "edit")
            self.calls[key] += 1
            self.items[key] += batch_size(args, kwargs)

        return count

    # patches -------------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap the loaders and `ddim_invert` of every imported samedit module."""
        from sam_edit import inversion
        from sam_edit.models import loaders

        for name, loader in list(vars(loaders).items()):
            if name.startswith("load_") and getattr(loader, "__module__", None) == loaders.__name__:
                rebind(loader, self._timed_loader(loader))
        rebind(loaders.place, self._placing(loaders.place))
        rebind(inversion.ddim_invert, self._inverting(inversion.ddim_invert))
        if self.tracer is not None:
            self.tracer.__enter__()

    def _timed_loader(self, loader):
        def timed(*args, **kwargs):
            self._loading += 1
            started, started_cpu = time.perf_counter(), time.process_time()
            try:
                return loader(*args, **kwargs)
            finally:
                self._loading -= 1
                if self._loading == 0:
                    self.load_seconds += time.perf_counter() - started
                    self.load_cpu_seconds += time.process_time() - started_cpu

        return timed

    def _placing(self, place):
        def placing(module, *args, **kwargs):
            placed = place(module, *args, **kwargs)
            self.instrument(placed)
            return placed

        return placing

    def _inverting(self, ddim_invert):
        def inverting(*args, **kwargs):
            self.inverting = True
            try:
                return ddim_invert(*args, **kwargs)
            finally:
                self.inverting = False

        return inverting

    # results -------------------------------------------------------------------------------

    def record(self) -> dict:
        """Return the counters as a flat JSON-ready dict."""
        def total(counter: Counter, kind: str, phase: str | None = None) -> int:
            return sum(value for (k, p), value in counter.items() if k == kind and phase in (None, p))

        record = {
            "unet_calls": total(self.calls, "unet"),
            "unet_batch_items": total(self.items, "unet"),
            "inversion_unet_calls": total(self.calls, "unet", "invert"),
            "inversion_unet_batch_items": total(self.items, "unet", "invert"),
            "controlnet_calls": total(self.calls, "controlnet"),
            "controlnet_batch_items": total(self.items, "controlnet"),
            "load_seconds": round(self.load_seconds, 3),
            "model_seconds": round(sum(self.model_seconds.values()), 3),
            "model_seconds_by": {kind: round(value, 3) for kind, value in sorted(self.model_seconds.items())},
            "parameters_by": dict(sorted(self.parameters.items())),
        }
        if self.tracer is not None:
            record["peak_tensor_bytes_by"] = dict(sorted(self.tracer.peaks.items()))
        return record


def rebind(original, replacement) -> None:
    """Point every name bound to `original` in an imported samedit module at `replacement`."""
    for name, module in list(sys.modules.items()):
        if name == "sam_edit" or name.startswith("sam_edit."):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, replacement)
