"""Inference-only forward pass of an :class:`~rlserve.rl.actor_critic.ActorCritic`'s actor, in numpy.

Why it exists: a router decides one request at a time, so its network sees a batch of one. Eager PyTorch spends
~0.3 ms on such a call (measured on the shipped 100k-parameter router: module dispatch, autograd bookkeeping and
the critic branch, which inference does not need), while the arithmetic is a few matrix-vector products. The same
arithmetic on float32 numpy vectors takes a few tens of microseconds, nearly all of it per-call overhead, so the
fewer numpy calls the faster.

What it computes: the actor path of ``ActorCritic.forward`` for one step --
``feature_proj → shared_mlp → actor GRU → actor_mlp → actor_out [→ LayerNorm → tanh × logit_scale]`` -- from weights
copied once out of the module (training the module further does not change this copy). The layers are read from
the module itself: every child of those ``nn.Sequential`` blocks is turned into a step by its type, and a type this
file does not know raises at construction instead of being skipped. The torch module stays the training model and
the reference; ``tests/policies/test_actor_inference.py`` checks both agree to 1e-5 on several network shapes.

Load-time folding (exact algebra; only float rounding differs, by ~1e-6): consecutive linear layers are multiplied
into one; a LayerNorm's gain and bias move into the linear layer that follows it; a linear layer feeding a LayerNorm
gets its rows centred (``W - mean(W)``, ``b - mean(b)``), so its outputs already have zero mean and the LayerNorm
skips that reduction. Folding is done in float64, then the weights are stored as float32, torch's precision.

The hidden state here is the actor GRU's only, shaped ``(gru_layers, hidden_size)`` (the torch model carries the
actor's and the critic's, ``(2 * gru_layers, N, hidden_size)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf, expit
from torch import nn

from rlserve.rl.actor_critic import ActorCritic

Step = Callable[[np.ndarray], np.ndarray]


def _f64(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a parameter (never a view of torch memory that training could change)."""
    return t.detach().cpu().numpy().astype(np.float64)


@dataclass
class _Linear:
    """``w @ x + b`` (float64 while folding)."""

    w: np.ndarray
    b: np.ndarray


@dataclass
class _Norm:
    """LayerNorm over the vector: ``(x - mean) / sqrt(var + eps) * gain + bias``; ``centred``: mean is known 0."""

    gain: np.ndarray
    bias: np.ndarray
    eps: float
    centred: bool = False


@dataclass
class _Pointwise:
    """An element-wise function (activation)."""

    fn: Step


_Item = _Linear | _Norm | _Pointwise
_SQRT_HALF = np.float32(math.sqrt(0.5))


def _flatten(*modules: nn.Module | None) -> Iterator[nn.Module]:
    for m in modules:
        if isinstance(m, nn.Sequential):
            yield from _flatten(*m)
        elif m is not None:
            yield m


def _item(m: nn.Module) -> _Item:
    """One module of the actor path as a foldable item."""
    if isinstance(m, nn.Linear):
        return _Linear(_f64(m.weight), _f64(m.bias) if m.bias is not None else np.zeros(m.out_features))
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            raise ValueError(f"numpy actor: only LayerNorm over the last dimension is supported, got {m}")
        n = m.normalized_shape[0]
        return _Norm(_f64(m.weight) if m.weight is not None else np.ones(n),
                     _f64(m.bias) if m.bias is not None else np.zeros(n), m.eps)
    if isinstance(m, nn.GELU) and m.approximate == "none":
        return _Pointwise(lambda x: x * (0.5 + 0.5 * erf(x * _SQRT_HALF)))
    if isinstance(m, nn.ReLU):
        return _Pointwise(lambda x: np.maximum(x, 0))
    raise ValueError(f"numpy actor: no numpy equivalent for {m!r}; add one to rlserve.rl.actor_inference")


def _fold(items: list[_Item]) -> list[_Item]:
    """Apply the load-time folds of the module docstring (in this order: each keeps the previous ones valid)."""
    out: list[_Item] = []
    for it in items:  # a norm's gain and bias into the linear layer after it
        prev = out[-1] if out else None
        if isinstance(it, _Linear) and isinstance(prev, _Norm):
            it = _Linear(it.w * prev.gain, it.w @ prev.bias + it.b)
            out[-1] = _Norm(np.ones_like(prev.gain), np.zeros_like(prev.bias), prev.eps, prev.centred)
        out.append(it)
    merged: list[_Item] = []
    for it in out:  # linear after linear: one product
        prev = merged[-1] if merged else None
        if isinstance(it, _Linear) and isinstance(prev, _Linear):
            merged[-1] = _Linear(it.w @ prev.w, it.w @ prev.b + it.b)
        else:
            merged.append(it)
    for i in range(1, len(merged)):  # a linear layer feeding a norm: centred rows, the norm skips the mean
        prev, it = merged[i - 1], merged[i]
        if isinstance(it, _Norm) and isinstance(prev, _Linear):
            merged[i - 1] = _Linear(prev.w - prev.w.mean(axis=0), prev.b - prev.b.mean())
            merged[i] = _Norm(it.gain, it.bias, it.eps, centred=True)
    return merged


def _compile(item: _Item) -> Step:
    """The float32 numpy function of one folded item."""
    if isinstance(item, _Pointwise):
        return item.fn
    if isinstance(item, _Linear):
        w, b = item.w.astype(np.float32), item.b.astype(np.float32)
        return lambda x: w @ x + b
    n, eps = np.float32(len(item.gain)), np.float32(item.eps)
    if np.all(item.gain == 1) and not np.any(item.bias):
        if item.centred:
            return lambda x: x / np.sqrt(x @ x / n + eps)
        return lambda x: (d := x - x.sum() / n) / np.sqrt(d @ d / n + eps)
    gain, bias = item.gain.astype(np.float32), item.bias.astype(np.float32)
    if item.centred:
        return lambda x: x * (gain / np.sqrt(x @ x / n + eps)) + bias
    return lambda x: (d := x - x.sum() / n) * (gain / np.sqrt(d @ d / n + eps)) + bias


def _chain(*modules: nn.Module | None) -> list[Step]:
    return [_compile(it) for it in _fold([_item(m) for m in _flatten(*modules)])]


class _GruLayer:
    """One step of one GRU layer: torch's gate order (reset, update, new) and update ``h' = n + z * (h - n)``."""

    __slots__ = ("w_ih", "w_hh", "b_ih", "b_hh", "h")

    def __init__(self, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor) -> None:
        self.w_ih, self.w_hh = _f64(w_ih).astype(np.float32), _f64(w_hh).astype(np.float32)
        self.b_ih, self.b_hh = _f64(b_ih).astype(np.float32), _f64(b_hh).astype(np.float32)
        self.h = w_hh.shape[1]

    def __call__(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        gi = self.w_ih @ x + self.b_ih
        gh = self.w_hh @ h + self.b_hh
        two = 2 * self.h
        rz = expit(gi[:two] + gh[:two])
        n = np.tanh(gi[two:] + rz[: self.h] * gh[two:])
        return n + rz[self.h:] * (h - n)


class NumpyActor:
    """The actor of ``model`` as numpy arrays and functions (see module docstring).

    Example::

        actor = NumpyActor(model)
        h = actor.initial_state()
        logits, h = actor.step(obs, h)      # obs: (state_dim,) float32, already normalised
    """

    def __init__(self, model: ActorCritic) -> None:
        gru = model.actor_gru
        if gru.bidirectional or gru.proj_size or not gru.bias or gru.batch_first:
            raise ValueError("numpy actor: only unidirectional GRUs with biases (torch defaults) are supported")
        self.state_dim, self.action_dim = model.state_dim, model.action_dim
        self.gru_layers, self.hidden_size = gru.num_layers, gru.hidden_size
        self._before_gru = _chain(model.feature_proj, model.shared_mlp)
        self._gru = [_GruLayer(*weights) for weights in gru.all_weights]
        self._after_gru = _chain(model.actor_mlp, model.actor_out, model.logit_norm)
        if model.logit_norm is not None:  # the bounded head, as ActorCritic.forward applies it
            scale = np.float32(model.logit_scale)
            self._after_gru.append(lambda x: np.tanh(x) * scale)

    def initial_state(self) -> np.ndarray:
        """Zero hidden state (the start of an episode), ``(gru_layers, hidden_size)`` float32."""
        return np.zeros((self.gru_layers, self.hidden_size), np.float32)

    def step(self, obs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Untempered logits ``(action_dim,)`` and the next hidden state for one observation ``(state_dim,)``.

        ``obs`` should be float32 (what :meth:`RunningNormalizer.normalize` returns); other dtypes are computed in
        float64 and may differ from torch in the last bits.
        """
        x = obs
        for f in self._before_gru:
            x = f(x)
        new_hidden = np.empty_like(hidden)
        for k, layer in enumerate(self._gru):
            x = new_hidden[k] = layer(x, hidden[k])
        for f in self._after_gru:
            x = f(x)
        return x, new_hidden
