"""Pipeline stages of an MLP, each owning its layers, run in-process or as Ray actors.

A plan from ``pipeline_schedule`` is executed in cycle order. On Ray, every step is an actor call
whose input is the object ref of the step it depends on (the previous stage's forward, the next
stage's backward); an actor runs its calls in submission order, so a forward submitted after a
backward sees that backward's update, exactly as the plan's ``version`` says.

Updates: ``synchronous`` plans accumulate the micro-batch gradients and apply one step per stage
at the flush (the mean over micro-batches, as one mini-batch step of autograd would);
``asynchronous`` plans step after every backward. Weights step by digital SGD or, with a device,
by Analog SGD's expected increment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .devices import Device
from .optim import expected_increment
from .pipeline_schedule import Op, Plan


@dataclass
class Layer:
    weight: torch.Tensor  # out × in
    bias: torch.Tensor


def split_layers(sizes: list[int], stages: int, seed: int) -> list[list[Layer]]:
    """An MLP of ``sizes`` (input, hidden…, output) cut into ``stages`` contiguous groups."""
    n_layers = len(sizes) - 1
    if stages > n_layers:
        raise ValueError(f"more stages ({stages}) than layers ({n_layers})")
    gen = torch.Generator().manual_seed(seed)
    layers = [Layer(torch.randn(o, i, generator=gen, dtype=torch.float64) * (2.0 / i) ** 0.5,
                    torch.zeros(o, dtype=torch.float64)) for i, o in zip(sizes[:-1], sizes[1:])]
    bounds = np.linspace(0, n_layers, stages + 1).round().astype(int)
    return [layers[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class Stage:
    """One pipeline stage: forward/backward per micro-batch, SGD or analog updates."""

    def __init__(self, layers: list[Layer], last: bool, lr: float, synchronous: bool, micro_batches: int,
                 device: Device | None = None, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.layers = [Layer(l.weight.clone(), l.bias.clone()) for l in layers]
        self.last, self.lr, self.sync, self.micro_batches = last, lr, synchronous, micro_batches
        self.device = device
        self.saved: dict[int, list[torch.Tensor]] = {}  # micro -> inputs of each layer
        self.labels: dict[int, torch.Tensor] = {}
        self.acc = [(torch.zeros_like(l.weight), torch.zeros_like(l.bias)) for l in self.layers]

    def forward(self, micro: int, x: Any, labels: Any = None) -> np.ndarray:
        h = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        inputs = []
        for j, layer in enumerate(self.layers):
            inputs.append(h)
            h = h @ layer.weight.T + layer.bias
            if not (self.last and j == len(self.layers) - 1):
                h = torch.relu(h)
        self.saved[micro] = inputs
        if self.last:
            self.labels[micro] = torch.as_tensor(np.asarray(labels))
            self.saved[micro].append(h)  # logits
        return h.numpy()

    def backward(self, micro: int, grad_out: Any = None) -> np.ndarray:
        inputs = self.saved.pop(micro)
        if self.last:
            logits = inputs.pop()
            p = torch.softmax(logits, -1)
            g = (p - F.one_hot(self.labels.pop(micro), p.shape[-1]).double()) / logits.shape[0]
        else:
            g = torch.as_tensor(np.asarray(grad_out), dtype=torch.float64)
        grads = []
        for j in reversed(range(len(self.layers))):
            layer, x = self.layers[j], inputs[j]
            if not (self.last and j == len(self.layers) - 1):
                # ReLU mask from this layer's own output, recomputed with the current weights
                g = g * ((x @ layer.weight.T + layer.bias) > 0)
            grads.append((j, g.T @ x, g.sum(0)))
            g = g @ layer.weight
        for j, gw, gb in grads:
            if self.sync:
                self.acc[j] = (self.acc[j][0] + gw / self.micro_batches, self.acc[j][1] + gb / self.micro_batches)
            else:
                self._apply(j, gw, gb)
        return g.numpy()

    def update(self) -> None:
        """The flush of a synchronous plan: one step with the mean micro-batch gradient."""
        for j, (gw, gb) in enumerate(self.acc):
            self._apply(j, gw, gb)
        self.acc = [(torch.zeros_like(l.weight), torch.zeros_like(l.bias)) for l in self.layers]

    def _apply(self, j: int, gw: torch.Tensor, gb: torch.Tensor) -> None:
        layer = self.layers[j]
        if self.device is None:
            layer.weight = layer.weight - self.lr * gw
        else:
            layer.weight = expected_increment(self.device, layer.weight, -self.lr * gw)
        layer.bias = layer.bias - self.lr * gb  # biases stay digital (periphery)

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(l.weight.numpy().copy(), l.bias.numpy().copy()) for l in self.layers]

    def node(self) -> str:
        from ..placement import node_id

        return node_id()


def execute(plan: Plan, stages: list[Any], xs: list[np.ndarray], ys: list[np.ndarray], remote: bool) -> None:
    """Run ``plan`` over micro-batches ``xs``/``ys`` on ``stages`` (objects, or Ray actor handles)."""
    import ray

    act: dict[tuple[int, int], Any] = {}
    grad: dict[tuple[int, int], Any] = {}
    last = len(stages) - 1
    pending = []
    for st in sorted(plan.steps, key=lambda s: (s.cycle, s.op is Op.UPDATE, s.stage)):
        target = stages[st.stage]
        call = (lambda name: getattr(target, name).remote) if remote else (lambda name: getattr(target, name))
        if st.op is Op.FORWARD:
            x = xs[st.micro] if st.stage == 0 else act[(st.stage - 1, st.micro)]
            act[(st.stage, st.micro)] = call("forward")(st.micro, x, ys[st.micro] if st.stage == last else None)
        elif st.op is Op.BACKWARD:
            g = None if st.stage == last else grad[(st.stage + 1, st.micro)]
            grad[(st.stage, st.micro)] = call("backward")(st.micro, g)
        else:
            pending.append(call("update")())
    if remote:
        ray.get(list(grad.values()) + pending)
