"""Peak tensor memory of a training step without running it at full size: FakeTensorMode tracing + a live-bytes tracker.

- :class:`LiveBytes` (a ``TorchDispatchMode``) adds the bytes of every new tensor storage an op returns and subtracts
  them when the storage is freed (weak references, as ``torch.distributed._tools.mem_tracker.MemTracker`` does; that
  tracker itself refuses modules called several times per step, which the decoder is), rounding each allocation up
  to 512 bytes as the CUDA caching allocator does. Its ``peak`` is the step's peak of live tensor bytes; ``at_peak``
  splits that peak by the op that made each tensor.
- :func:`fake_step`: the same step on fake tensors (``FakeTensorMode``: shapes, dtypes and autograd as in a real run,
  no data, no compute), so a 1024² step with 64 masks x 8 decoder passes is traced in seconds on a CPU. The few
  data-dependent Python decisions of a step (the prompt sampler's ``torch.rand(()) < p``) run on real tensors
  (:class:`RealWhenNoFake`), the prompt encoder's label check is skipped as under tracing.
- The same tracker on real tensors gives the real peak at a size that fits, which cross-checks the fake trace
  (``step_memory.py --cross-check``).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

BLOCK = 512  # CUDA caching allocator rounding


class LiveBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active; ``peak`` and its split by op (``at_peak``)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.by_op: Counter[str] = Counter()
        self.at_peak: dict[str, int] = {}
        self._seen = WeakIdKeyDictionary()

    def _free(self, n: int, op: str) -> None:
        self.live -= n
        self.by_op[op] -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        grew = False
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            if st in self._seen:
                continue
            n = (st.nbytes() + BLOCK - 1) // BLOCK * BLOCK
            op = func.overloadpacket.__name__
            self._seen[st] = n
            weakref.finalize(st, self._free, n, op)
            self.live += n
            self.by_op[op] += n
            self.created(st, n)
            grew = True
        if grew and self.live > self.peak:
            if self.live > self.peak * 1.01 or not self.at_peak:  # snapshot the split on 1 % growth
                self.at_peak = {k: v for k, v in self.by_op.items() if v > 0}
            self.peak = self.live
            self.new_peak()
        return out

    def created(self, storage, n: int) -> None:  # noqa: ANN001
        """Called for every storage an op creates (``n`` bytes, rounded); subclasses attribute it."""

    def new_peak(self) -> None:
        """Called when the live bytes reach a new peak."""


class RealWhenNoFake(TorchDispatchMode):
    """Inside FakeTensorMode: run an op on real tensors when none of its inputs is fake (RNG draws, small constants),
    so Python decisions on their values work; everything derived from fake inputs stays fake."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(x, FakeTensor) for x in flat):
            return func(*args, **kwargs)
        with unset_fake_temporarily():
            return func(*args, **kwargs)


def fake_module(module: nn.Module, mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer of ``module`` by a fake tensor of the same shape, dtype and grad flag."""
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = mode.from_tensor(b)


def traced_peak(step: Callable[[], Any], fake: FakeTensorMode | None) -> LiveBytes:
    """Run ``step`` (forward + backward) under a :class:`LiveBytes` tracker, on fake tensors when ``fake`` is given
    (the caller made the module and the batch fake with the same mode)."""
    import edgetam_train.models.prompt_encoder as prompt_encoder

    tracker = LiveBytes()
    check = prompt_encoder._is_tracing
    with ExitStack() as stack:
        if fake is not None:
            prompt_encoder._is_tracing = lambda: True  # the label check reads values: skipped, as under tracing
            stack.callback(setattr, prompt_encoder, "_is_tracing", check)
            stack.enter_context(fake)
        stack.enter_context(tracker)
        if fake is not None:
            stack.enter_context(RealWhenNoFake())
        step()
    return tracker
