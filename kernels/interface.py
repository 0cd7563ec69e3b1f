"""The backend contract: what the training loop, evaluation and Model ask of a backend, and the Net it trains.

Every backend (the reference array code, the Numba CPU and CUDA kernels, or a third party's) provides the
members of `Backend`; `fastmnist.register` makes it selectable by name and by `auto`. The reference backend
(reference.py) implements all of them in plain array code and is the oracle every kernel is checked
against; a new backend usually subclasses it and replaces the operations it accelerates.

Conventions: samples are rows, so a layer's weights are (inputs, units) and its bias is (units,).
`segments` is a tuple of (start, stop, activation) that splits a layer's units into branches. A dropout
mask is an array broadcastable to the layer's output holding the scale applied to each unit (0 for a
dropped unit); the forward and backward masks may differ (seed 000 rescales only forwards). Arrays are the
backend's own (numpy, cupy, ...); `asarray`, `to_float`, `parameter` and `to_numpy` move data in and out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy


@runtime_checkable
class Backend(Protocol):
    """The members fastmnist uses. Operations return the backend's arrays; scalars may be device scalars
    (the loop converts them with float() / int() only when it reports)."""

    name: str                   # the registry name, e.g. "numba-cpu"
    device: str                 # "cpu" or "gpu"
    host_masks: bool            # dropout masks are drawn from the host RandomState exactly as the reference does

    # -- moving data ------------------------------------------------------------------------------------
    def asarray(self, a, dtype=None) -> Any:
        """`a` as a C-contiguous array of this backend (a copy only where needed)."""

    def to_float(self, images, dtype) -> Any:
        """Pixels 0..255 as a new float32 / float64 array of this backend scaled to [0, 1]."""

    def parameter(self, a, dtype) -> Any:
        """A new, writeable, C-contiguous array holding the values of `a`: a trainable parameter or its
        optimiser state."""

    def to_numpy(self, a) -> numpy.ndarray:
        """A host copy (or view) of a backend array."""

    def synchronize(self) -> None:
        """Waits for queued device work (a no-op on the CPU)."""

    # -- layer operations -------------------------------------------------------------------------------
    def dense_forward(self, X, W, b, segments, mask=None) -> tuple[Any, Any]:
        """(A, H): H = act(X @ W + b) per segment, A = H * mask (A is H without a mask)."""

    def dense_backward(self, dA, X, W, H, segments, mask=None, l2=None, need_dx=True) -> tuple[Any, Any, Any]:
        """(dX or None, dW, db) from dA: dZ = dA * act'(Z) * mask, dW = X.T @ dZ + l2 * W, db = sum of dZ,
        dX = dZ @ W.T. `l2` is a per-unit vector or None."""

    def loss(self, kind, out, labels, eps=0.0, need_grad=True) -> tuple[Any, Any, Any]:
        """(summed loss, number correct, gradient of the mean loss or None); kind "mse" or "softmax_ce"."""

    def l2_penalty(self, W, segments, factors) -> Any:
        """Sum over branches of factor * mean(W_branch ** 2) / 2."""

    def dropout_mask(self, rng, rows, keep_probs, kind, dtype) -> tuple[Any, Any]:
        """(forward mask, backward mask) for one layer; kind "unit" (1, units) or "element" (rows, units)."""

    def update(self, kind, params, grads, state, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step=1) -> None:
        """Updates every parameter (and its (v, s) state) in place; kind "sgd", "adam_like" or "adam"."""

    # -- whole steps ------------------------------------------------------------------------------------
    def forward(self, net: Net, X, chunk=8192) -> Any:
        """Output-layer values (before any softmax) without dropout."""

    def evaluate(self, net: Net, X, labels, chunk=8192) -> tuple[Any, Any]:
        """(summed loss, number correct) without dropout."""

    def train_step(self, net: Net, X, labels, rng) -> tuple[Any, Any]:
        """One forward / backward / update on a batch; (summed loss, number correct)."""

    def train_epoch(self, net: Net, X, labels, batch_size, rng, order=None) -> tuple[Any, Any]:
        """One pass in batches of `batch_size` (None: the full batch; a remainder that does not fill a batch
        is dropped), rows permuted by `order` if given; (summed loss, number correct)."""

    def epoch_path(self, net: Net, rows: int, batch_size, shuffled: bool) -> str:
        """Which code path train_epoch takes for this net and batching, in words (e.g. "batch-1 epoch",
        "reference operations: <why>"): what a user is told ran."""


class SettingError(ValueError):
    """A backend cannot be built because a setting the user made for it (an environment variable) is invalid;
    fastmnist's `auto` then stops and says so instead of passing over the backend."""


CONTRACT = tuple(name for name in Backend.__dict__ if not name.startswith("_")) + tuple(Backend.__annotations__)


@dataclass
class Net:
    """A network being trained: its arrays on the backend's device and the static facts about its layers.
    Plain data: kernels read it and update its arrays in place; nothing here knows about recipes or files."""

    weights: list                      # per layer, (inputs, units), on the backend's device
    biases: list                       # per layer, (units,) or None
    segments: list                     # per layer, ((start, stop, activation), ...)
    loss: str                          # "mse" or "softmax_ce"
    loss_eps: float = 0.0
    optimizer: str = "sgd"             # "sgd", "adam_like" or "adam"
    lr: float = 0.005
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    dropout: str = "unit"              # "unit" or "element"
    keep: list = field(default_factory=list)   # per layer, host vector of keep probabilities or None
    l2: list = field(default_factory=list)     # per layer, host vector of L2 factors or None
    repeat_update: bool = False        # seed 000's batch quirk: apply each batch's update batch-size times
    state: list = field(default_factory=list)  # per parameter, (v, s) on the device
    step: int = 0
    workspace: dict = field(default_factory=dict, repr=False, compare=False)  # a backend's scratch arrays

    @property
    def dtype(self):
        return self.weights[0].dtype

    def params(self) -> list:
        out = []
        for W, b in zip(self.weights, self.biases):
            out.append(W)
            if b is not None:
                out.append(b)
        return out

    def has_dropout(self) -> bool:
        return any(k is not None for k in self.keep)

    def l2_coefficients(self, layer: int, rows: int):
        """Per-unit c with dW += c * W, or None: seed 004's reg_fact * W / m."""
        factors = self.l2[layer] if self.l2 else None
        if factors is None or not numpy.any(factors):
            return None
        return factors / rows
