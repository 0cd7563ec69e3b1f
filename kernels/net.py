"""What a backend needs to train a network: its arrays and the static facts about its layers.

Plain data: kernels read it and update its arrays in place; nothing here knows about recipes or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy


@dataclass
class Net:
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
