"""A network's parameters, gradients and optimiser moments packed into flat buffers, with one view per
parameter, so that one kernel launch updates every parameter."""

from __future__ import annotations

from dataclasses import dataclass

ALIGN = 32      # elements: every view starts on a 128-byte boundary in float32


@dataclass
class Packed:
    params: object              # flat buffers
    grads: object
    v: object                   # None for SGD
    s: object
    param_views: list
    grad_views: list
    state_views: list           # (v, s) per parameter, (None, None) for SGD

    def holds(self, params) -> bool:
        """Whether `params` are exactly this pack's views, in order."""
        return len(params) == len(self.param_views) and all(p is q for p, q in zip(params, self.param_views))


def pack(xp, params, state, moments: bool) -> Packed:
    """Copies `params` and, when `moments`, their (v, s) moments from `state` (zeros where it holds none)
    into zero-padded flat buffers."""
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += -(-p.size // ALIGN) * ALIGN
    dtype = params[0].dtype

    def views(flat):
        return [flat[o:o + p.size].reshape(p.shape) for o, p in zip(offsets, params)]

    flat_p, flat_g = xp.zeros(total, dtype), xp.zeros(total, dtype)
    param_views, grad_views = views(flat_p), views(flat_g)
    for view, p in zip(param_views, params):
        view[...] = p
    flat_v = flat_s = None
    state_views = [(None, None)] * len(params)
    if moments:
        flat_v, flat_s = xp.zeros(total, dtype), xp.zeros(total, dtype)
        state_views = list(zip(views(flat_v), views(flat_s)))
        for (v, s), (v0, s0) in zip(state_views, state):
            if v0 is not None:
                v[...] = v0
                s[...] = s0
    return Packed(flat_p, flat_g, flat_v, flat_s, param_views, grad_views, state_views)
