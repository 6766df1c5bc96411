"""Faster UNet calls with the same outputs: TorchScript traces cached per input shape.

On a CPU, or with small latents anywhere, a UNet2DConditionModel forward is dominated by Python work
around its ~100 modules, not by arithmetic. A TorchScript trace (frozen) replays the same operators
without that work: on the embedded model's UNet at 16 x 16 latents, one CPU thread, a forward falls from
17 to 10 ms at batch 1 and from 24 to 16 ms at batch 2, bit-identical. Tracing takes under a second
per input shape, so it pays off for an editor that serves many edits (or one edit of 50 steps).

A trace freezes the weights and the attention processors of the moment it was taken: after changing
either, call `DiffEditor.accelerate(None)` (and again with "trace").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

__all__ = ["TracedUNet", "CompiledUNet", "accelerated", "auto_traced", "AUTO_AFTER", "AUTO_CELLS"]


@dataclass
class _Output:
    sample: torch.Tensor


class _Positional(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class TracedUNet:
    """Callable like a UNet2DConditionModel (`unet(x, t, encoder_hidden_states=e).sample`), traced per shape.

    after: calls (of any shape) that run the plain UNet before shapes are traced (0: at once). freeze: inline the
    weights (a little faster; the trace then keeps the weights of its moment). max_cells: trace only CPU inputs of at
    most this many latent cells (None: any input), where a forward is Python-bound. A trace is keyed by the input's
    shape and the attention processors (and, frozen, the weights' versions): setting another processor, or changing
    a frozen trace's weights in place, retraces; replacing the UNet's modules needs `DiffEditor.accelerate` again.
    """

    def __init__(self, unet, *, after: int = 0, freeze: bool = True, max_cells: int | None = None):
        self.unet = unet
        self.after, self.freeze, self.max_cells = after, freeze, max_cells
        self.calls = 0  # calls so far, traced or not
        self._traces: dict[tuple, torch.jit.ScriptModule] = {}
        self._attention = [m for m in unet.modules() if hasattr(m, "processor")]
        self._params = list(unet.parameters())

    def __getattr__(self, name):  # config, device, dtype ... come from the wrapped UNet
        return getattr(self.unet, name)

    def _state(self) -> tuple:
        versions = sum(p._version for p in self._params) if self.freeze else 0  # in-place changes reach an unfrozen trace
        return tuple(id(m.processor) for m in self._attention), versions

    @torch.no_grad()
    def __call__(self, sample, timestep, encoder_hidden_states=None, **kwargs) -> _Output:
        small = self.max_cells is None or (sample.device.type == "cpu" and sample.shape[-2] * sample.shape[-1] <= self.max_cells)
        if kwargs or not small:  # cross_attention_kwargs and the like, or a compute-bound input: not traced
            return _Output(self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0]).to(torch.long)
        key = (tuple(sample.shape), tuple(encoder_hidden_states.shape), sample.dtype, str(sample.device), self._state())
        trace = self._traces.get(key)
        self.calls += 1
        if trace is None:
            if self.calls <= self.after:
                return _Output(self.unet(sample, t, encoder_hidden_states=encoder_hidden_states).sample)
            with warnings.catch_warnings():  # shape checks frozen into the trace: it is keyed by shape
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                trace = torch.jit.trace(_Positional(self.unet).eval(), (sample, t, encoder_hidden_states), check_trace=False)
            trace = self._traces[key] = torch.jit.freeze(trace.eval()) if self.freeze else trace
        return _Output(trace(sample, t, encoder_hidden_states))


def auto_traced(unet) -> TracedUNet:
    """The editor's default on every device: on a CPU, inputs of at most AUTO_CELLS latent cells are traced once the
    editor has made AUTO_AFTER UNet calls (a long-lived editor: a batch, the web UI, a loop of edits), unfrozen (the
    weights stay shared); anything else runs the plain UNet. The outputs are the plain UNet's, bit for bit."""
    return TracedUNet(unet, after=AUTO_AFTER, freeze=False, max_cells=AUTO_CELLS)


AUTO_AFTER = 120  # UNet calls before tracing: a one-off edit never traces (default 42 calls, quality preset 102)
AUTO_CELLS = 32 * 32  # latents of 256 x 256 px and less: Python-bound forwards (the embedded model's are 16 x 16)


class CompiledUNet:
    """Callable like a UNet2DConditionModel, through torch.compile (one graph per input shape).

    On CUDA it uses CUDA graphs (mode "reduce-overhead"): a UNet forward at batch 1 is launch-bound
    (the issue's anchor: 42 ms plain, 4.8 ms with CUDA graphs on an H100). A CUDA graph's outputs are
    overwritten by its next replay, so every call starts a new step and callers use an output before
    the next call (the editor's loops do; the mask pass copies its outputs).
    """

    def __init__(self, unet):
        self.unet = unet
        self.cuda_graphs = unet.device.type == "cuda"
        self.compiled = torch.compile(unet, mode="reduce-overhead" if self.cuda_graphs else None, dynamic=False)

    def __getattr__(self, name):  # config, device, dtype ... come from the wrapped UNet
        return getattr(self.unet, name)

    def __call__(self, *args, **kwargs):
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs)


def accelerated(unet, method: str | None):
    """`unet` behind an accelerate method ("auto", "trace", "compile"), or as it is for None; None for no UNet."""
    if unet is None or method is None:
        return unet
    return {"auto": auto_traced, "trace": TracedUNet, "compile": CompiledUNet}[method](unet)
