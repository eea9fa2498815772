"""Inference-only forward pass of an :class:`~rlserve.rl.actor_critic.ActorCritic`'s actor, compiled with numba.

Why it exists: a router decides one request at a time, so its network sees a batch of one, in front of every
request the proxy forwards (budget: 100 us per decision, state building included). Eager PyTorch spends ~0.3 ms on
such a call (module dispatch, autograd bookkeeping, the critic branch inference does not need); the same arithmetic
as float32 numpy calls took ~40 us, nearly all of it the overhead of ~35 calls. Here the whole actor path, the
frozen observation normaliser included, is one compiled function call: a few microseconds.

How: the layers are read from the module itself (every child of its ``nn.Sequential`` blocks is turned into an
item by its type; a type this file does not know raises at construction instead of being skipped), folded (below),
and written as a small *program*: one row of integers per operation (linear, LayerNorm, activation, GRU layer)
with offsets into one flat float32 parameter array. :func:`_run` interprets that program; it is compiled once per
process (cached on disk by numba where the package directory is writable). The weights are copied at
construction, so training the module further does not change an actor extracted earlier. The torch module stays
the training model and the reference: ``tests/policies/test_actor_inference.py`` checks both agree to 1e-5.

Load-time folding (exact algebra; only float rounding differs, by ~1e-6): consecutive linear layers are multiplied
into one; a LayerNorm's gain and bias move into the linear layer that follows it; a linear layer feeding a LayerNorm
gets its rows centred (``W - mean(W)``, ``b - mean(b)``), so its outputs already have zero mean and the LayerNorm
skips that reduction. Folding is done in float64, then the weights are stored as float32, torch's precision.

Arithmetic: float32 like torch. The dot products of the matrix-vector products may be reordered by the compiler
(numba's ``reassoc`` and ``contract`` flags, nothing that changes NaN/inf handling) so that they vectorise: like a
BLAS call, the rounding then depends on the CPU's vector width, but the same inputs give the same bits on every
call on one machine (measured: 1.0 us for a 128x128 product, 2.2 us summing in order). Everything else is plain
IEEE; the normaliser step repeats :meth:`RunningNormalizer.normalize`'s float64 operations in the same order, so
the network sees the bits the torch path would.

The hidden state here is the actor GRU's only, shaped ``(gru_layers, hidden_size)`` (the torch model carries the
actor's and the critic's, ``(2 * gru_layers, N, hidden_size)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import nn

from rlserve.rl.actor_critic import ActorCritic, ReplicaSetActorCritic
from rlserve.rl.normalizers import ReplicaSetNormalizer, RunningNormalizer

# operation codes of a program row: (code, n_in, n_out, a, b, c, d)
_LINEAR = 0  # y = W x + b; a: W (n_out x n_in, row-major), b: bias
_NORM = 1  # LayerNorm over n_in; a: gain (-1 = none), b: bias, c: eps, d: 1 if the mean is known to be 0
_GELU = 2
_RELU = 3
_TANH = 4  # tanh(x) * scale; a: scale
_GRU = 5  # one GRU layer; a: W_ih, b: W_hh, c: b_ih, d: b_hh; n_out = hidden size; the layer is implicit
_ROW = 7


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
class _Activation:
    """An element-wise function: one of the program's activation codes."""

    code: int


_Item = _Linear | _Norm | _Activation


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
            raise ValueError(f"compiled actor: only LayerNorm over the last dimension is supported, got {m}")
        n = m.normalized_shape[0]
        return _Norm(_f64(m.weight) if m.weight is not None else np.ones(n),
                     _f64(m.bias) if m.bias is not None else np.zeros(n), m.eps)
    if isinstance(m, nn.GELU) and m.approximate == "none":
        return _Activation(_GELU)
    if isinstance(m, nn.ReLU):
        return _Activation(_RELU)
    raise ValueError(f"compiled actor: no equivalent for {m!r}; add one to rlserve.rl.actor_inference")


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


class _ProgramWriter:
    """Collects program rows and the flat float32 parameter array they point into."""

    def __init__(self, width: int) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.params: list[np.ndarray] = []
        self.size = 0
        self.width = width  # the vector width entering the next operation

    def put(self, values: np.ndarray | float) -> int:
        """Append parameters (float32); their offset."""
        arr = np.asarray(values, np.float64).astype(np.float32).ravel()
        offset, self.size = self.size, self.size + arr.size
        self.params.append(arr)
        return offset

    def row(self, code: int, n_out: int, a: int = -1, b: int = -1, c: int = -1, d: int = -1) -> None:
        self.rows.append((code, self.width, n_out, a, b, c, d))
        self.width = n_out

    def item(self, it: _Item) -> None:
        if isinstance(it, _Activation):
            self.row(it.code, self.width)
        elif isinstance(it, _Linear):
            self.row(_LINEAR, it.w.shape[0], self.put(it.w), self.put(it.b))
        else:
            affine = not (np.all(it.gain == 1) and not np.any(it.bias))
            self.row(_NORM, self.width, self.put(it.gain) if affine else -1, self.put(it.bias) if affine else -1,
                     self.put(it.eps), int(it.centred))

    def chain(self, *modules: nn.Module | None) -> None:
        for it in _fold([_item(m) for m in _flatten(*modules)]):
            self.item(it)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _affine(params: np.ndarray, w: int, bias: int, x: np.ndarray, n_in: int, n_out: int, y: np.ndarray) -> None:
    """``y = W x + b``, ``W`` row-major at ``params[w:]``; sums may be reordered (vectorised), see module docstring."""
    for i in range(n_out):
        row = params[w + i * n_in: w + (i + 1) * n_in]
        acc = np.float32(0.0)
        for j in range(n_in):
            acc += row[j] * x[j]
        y[i] = acc + params[bias + i]


@numba.njit(cache=True, nogil=True)
def _sigmoid(x: np.float32) -> np.float32:
    return np.float32(1.0) / (np.float32(1.0) + math.exp(-x))


@numba.njit(cache=True, nogil=True)
def _width(program: np.ndarray, width: int) -> int:
    """The scratch width ``program`` needs for an input of ``width`` values."""
    for r in range(program.shape[0]):
        width = max(width, program[r, 2], 3 * program[r, 2] if program[r, 0] == _GRU else 0)
    return width


@numba.njit(cache=True, nogil=True)
def _exec(program: np.ndarray, params: np.ndarray, x_in: np.ndarray, hidden: np.ndarray,
          new_hidden: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Run ``program`` on the float32 vector ``x_in``; GRU rows read ``hidden[layer]`` and write ``new_hidden``.
    ``scratch``: ``(4, >= _width(program, x_in.size))`` float32 work space, reused across calls (no allocation per
    call). Returns the output vector, a view into ``scratch`` (valid until the next call with it)."""
    x, y, gi, gh = scratch[0], scratch[1], scratch[2], scratch[3]
    for i in range(x_in.size):
        x[i] = x_in[i]
    layer = 0
    n = x_in.size  # the width of x
    for r in range(program.shape[0]):
        code, n_in, n_out = program[r, 0], program[r, 1], program[r, 2]
        a, b, c, d = program[r, 3], program[r, 4], program[r, 5], program[r, 6]
        n = n_out
        if code == _LINEAR:
            _affine(params, a, b, x, n_in, n_out, y)
            x, y = y, x
        elif code == _NORM:
            mu = np.float32(0.0)
            if d == 0:
                for i in range(n_in):
                    mu += x[i]
                mu /= np.float32(n_in)
            ss = np.float32(0.0)
            for i in range(n_in):
                x[i] -= mu
                ss += x[i] * x[i]
            inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(n_in) + params[c]))
            if a >= 0:
                for i in range(n_in):
                    x[i] = x[i] * (params[a + i] * inv) + params[b + i]
            else:
                for i in range(n_in):
                    x[i] *= inv
        elif code == _GELU:
            for i in range(n_in):
                x[i] = x[i] * (np.float32(0.5) + np.float32(0.5) * math.erf(x[i] * np.float32(math.sqrt(0.5))))
        elif code == _RELU:
            for i in range(n_in):
                if x[i] < 0:
                    x[i] = 0
        elif code == _TANH:
            for i in range(n_in):
                x[i] = math.tanh(x[i]) * params[a]
        else:  # _GRU, torch's gate order (reset, update, new) and update h' = n + z * (h - n)
            h = hidden[layer]
            _affine(params, a, c, x, n_in, 3 * n_out, gi)
            _affine(params, b, d, h, n_out, 3 * n_out, gh)
            out = new_hidden[layer]
            for i in range(n_out):
                reset = _sigmoid(gi[i] + gh[i])
                update = _sigmoid(gi[n_out + i] + gh[n_out + i])
                new = math.tanh(gi[2 * n_out + i] + reset * gh[2 * n_out + i])
                out[i] = new + update * (h[i] - new)
                x[i] = out[i]
            layer += 1
    return x[:n]


@numba.njit(cache=True, nogil=True)
def _standardise(obs: np.ndarray, mean: np.ndarray, scale: np.ndarray, clip: float, out: np.ndarray) -> None:
    """``out = clip((obs - mean) / scale)`` in float64, stored as float32 (:meth:`RunningNormalizer.normalize`'s
    operations, so the bits agree); ``mean.size == 0``: copy."""
    if mean.size:
        for i in range(obs.size):
            z = (obs[i] - mean[i]) / scale[i]
            if z > clip:
                z = clip
            elif z < -clip:
                z = -clip
            out[i] = z
    else:
        for i in range(obs.size):
            out[i] = obs[i]


@numba.njit(cache=True, nogil=True)
def _run(program: np.ndarray, params: np.ndarray, mean: np.ndarray, scale: np.ndarray, clip: float, obs: np.ndarray,
         hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and next hidden state for one observation (``mean.size == 0``: ``obs`` is already normalised)."""
    x = np.empty(obs.size, np.float32)
    _standardise(obs, mean, scale, clip, x)
    new_hidden = np.empty_like(hidden)
    scratch = np.empty((4, _width(program, obs.size)), np.float32)
    return _exec(program, params, x, hidden, new_hidden, scratch).copy(), new_hidden


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _run_set(encoder: np.ndarray, pool: np.ndarray, gru: np.ndarray, head: np.ndarray, params: np.ndarray,
             g_mean: np.ndarray, g_scale: np.ndarray, r_mean: np.ndarray, r_scale: np.ndarray, clip: float,
             obs: np.ndarray, global_dim: int, replica_dim: int, prior_index: int, prior_weight: np.float32,
             hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (one per replica) and the next hidden state of a replica-set actor for one raw observation
    ``[global | count | replica 0 | ...]`` (:class:`~rlserve.rl.actor_critic.ReplicaSetActorCritic.forward`)."""
    n = int(obs[global_dim])
    g = np.empty(global_dim, np.float32)
    _standardise(obs[:global_dim], g_mean, g_scale, clip, g)
    x_in = np.empty(replica_dim + global_dim, np.float32)
    x_in[replica_dim:] = g
    reps = np.empty((n, replica_dim), np.float32)
    base = global_dim + 1
    for i in range(n):
        _standardise(obs[base + i * replica_dim: base + (i + 1) * replica_dim], r_mean, r_scale, clip, reps[i])
    width = encoder[encoder.shape[0] - 1, 2]
    scratch = np.empty((4, max(_width(encoder, x_in.size), _width(pool, 2 * width), _width(gru, width),
                               _width(head, 3 * width))), np.float32)
    e_rows = np.empty((n, width), np.float32)
    for i in range(n):
        x_in[:replica_dim] = reps[i]
        e_rows[i] = _exec(encoder, params, x_in, hidden, hidden, scratch)  # no GRU rows: hidden is untouched
    pooled_in = np.zeros(2 * width, np.float32)
    for i in range(n):
        e = e_rows[i]
        for j in range(width):
            pooled_in[j] += e[j]
            if i == 0 or e[j] > pooled_in[width + j]:
                pooled_in[width + j] = e[j]
    for j in range(width):
        pooled_in[j] /= np.float32(n)
    pooled = _exec(pool, params, pooled_in, hidden, hidden, scratch).copy()
    new_hidden = np.empty_like(hidden)
    a = _exec(gru, params, pooled, hidden, new_hidden, scratch).copy()
    # the head's first layer reads [e_i | pooled | a]: the pooled and memory part is the same for every replica,
    # so it is computed once (exact: a dot product split in two sums, within the reordering _affine allows)
    hidden_out = head[0, 2]
    shared = np.empty(hidden_out, np.float32)
    w, bias = head[0, 3], head[0, 4]
    for j in range(hidden_out):
        row = w + j * 3 * width
        acc = np.float32(0.0)
        for k in range(width):
            acc += params[row + width + k] * pooled[k] + params[row + 2 * width + k] * a[k]
        shared[j] = acc + params[bias + j]
    first = np.empty(hidden_out, np.float32)
    logits = np.empty(n, np.float32)
    for i in range(n):
        e = e_rows[i]
        for j in range(hidden_out):
            row = w + j * 3 * width
            acc = np.float32(0.0)
            for k in range(width):
                acc += params[row + k] * e[k]
            first[j] = acc + shared[j]
        logit = _exec(head[1:], params, first, hidden, hidden, scratch)[0]
        if prior_index >= 0:
            logit -= prior_weight * reps[i, prior_index]
        logits[i] = logit
    return logits, new_hidden


class CompiledReplicaSetActor:
    """The actor of a :class:`~rlserve.rl.actor_critic.ReplicaSetActorCritic` as one compiled call, for any
    replica count (the per-replica encoder and head run once per replica with the same weights).

    Same folding, arithmetic and weight copying as :class:`CompiledActor`; the normaliser's shared per-replica
    statistics are applied to every replica's block. ``step`` takes the raw replica-set vector
    (``StateBuilder.build_set``) and returns one logit per replica present.
    """

    def __init__(self, model: ReplicaSetActorCritic, normalizer: ReplicaSetNormalizer) -> None:
        gru = model.actor_gru
        if gru.bidirectional or gru.proj_size or not gru.bias or gru.batch_first:
            raise ValueError("compiled actor: only unidirectional GRUs with biases (torch defaults) are supported")
        if (normalizer.global_dim, normalizer.replica_dim) != (model.global_dim, model.replica_dim):
            raise ValueError(f"normaliser widths {(normalizer.global_dim, normalizer.replica_dim)} != the network's "
                             f"{(model.global_dim, model.replica_dim)}")
        self.global_dim, self.replica_dim = model.global_dim, model.replica_dim
        self.gru_layers, self.hidden_size = gru.num_layers, gru.hidden_size
        h = model.hidden_size
        programs = []
        params: list[np.ndarray] = []
        offset = 0
        for width, modules, with_gru in (
                (model.replica_dim + model.global_dim, (model.feature_proj, model.shared_mlp), False),
                (2 * h, (model.pool,), False), (h, (), True), (3 * h, (model.actor_mlp, model.actor_out), False)):
            prog = _ProgramWriter(width)
            prog.size = offset  # one parameter array for all four programs
            prog.chain(*modules)
            if with_gru:
                for w_ih, w_hh, b_ih, b_hh in gru.all_weights:
                    prog.row(_GRU, h, prog.put(_f64(w_ih)), prog.put(_f64(w_hh)), prog.put(_f64(b_ih)),
                             prog.put(_f64(b_hh)))
            programs.append(np.array(prog.rows, np.int64).reshape(-1, _ROW))
            params += prog.params
            offset = prog.size
        self._encoder, self._pool, self._gru, self._head = programs
        if self._head[0, 0] != _LINEAR or self._head[0, 1] != 3 * h:  # _run_set splits this layer's product
            raise ValueError("compiled actor: the replica-set head must start with a linear layer over 3 x hidden")
        self._params = np.concatenate(params)
        self._prior_index = -1 if model.prior_feature is None else model.prior_feature
        self._prior_weight = np.float32(float(torch.nn.functional.softplus(model.prior_weight.detach())))
        self._g_mean, self._g_scale = normalizer.globals.mean.copy(), normalizer.globals.scale.copy()
        self._r_mean, self._r_scale = normalizer.replica.mean.copy(), normalizer.replica.scale.copy()
        self._clip = normalizer.clip
        blank = np.zeros(self.global_dim + 1 + 2 * self.replica_dim)
        blank[self.global_dim] = 2
        self.step(blank, self.initial_state())  # compile now, not on the first decision

    def initial_state(self) -> np.ndarray:
        """Zero hidden state (the start of an episode), ``(gru_layers, hidden_size)`` float32."""
        return np.zeros((self.gru_layers, self.hidden_size), np.float32)

    def step(self, obs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Untempered logits ``(n,)`` float32 for the ``n`` replicas of ``obs`` and the next hidden state."""
        return _run_set(self._encoder, self._pool, self._gru, self._head, self._params, self._g_mean,
                        self._g_scale, self._r_mean, self._r_scale, self._clip, np.asarray(obs, np.float64),
                        self.global_dim, self.replica_dim, self._prior_index, self._prior_weight, hidden)


class CompiledActor:
    """The actor of ``model`` as one compiled function (see module docstring).

    Args:
        model: the trained network; its weights are copied now.
        normalizer: the frozen observation normaliser the network was trained behind; when given, :meth:`step`
            takes raw observations and standardises them inside the compiled call (bit-identical to
            :meth:`RunningNormalizer.normalize`). Statistics are copied now too.

    Example::

        actor = CompiledActor(model, normalizer)
        h = actor.initial_state()
        logits, h = actor.step(state_builder.build(snapshot, request), h)
    """

    def __init__(self, model: ActorCritic, normalizer: RunningNormalizer | None = None) -> None:
        gru = model.actor_gru
        if gru.bidirectional or gru.proj_size or not gru.bias or gru.batch_first:
            raise ValueError("compiled actor: only unidirectional GRUs with biases (torch defaults) are supported")
        self.state_dim, self.action_dim = model.state_dim, model.action_dim
        self.gru_layers, self.hidden_size = gru.num_layers, gru.hidden_size
        prog = _ProgramWriter(model.state_dim)
        prog.chain(model.feature_proj, model.shared_mlp)
        for w_ih, w_hh, b_ih, b_hh in gru.all_weights:
            prog.row(_GRU, gru.hidden_size, prog.put(_f64(w_ih)), prog.put(_f64(w_hh)), prog.put(_f64(b_ih)),
                     prog.put(_f64(b_hh)))
        prog.chain(model.actor_mlp, model.actor_out, model.logit_norm)
        if model.logit_norm is not None:  # the bounded head, as ActorCritic.forward applies it
            prog.row(_TANH, prog.width, prog.put(model.logit_scale))
        self._program = np.array(prog.rows, np.int64).reshape(-1, _ROW)
        self._params = np.concatenate(prog.params)
        self._mean: np.ndarray
        self._scale: np.ndarray
        if normalizer is None:
            self._mean = self._scale = np.empty(0)
            self._clip = math.inf
        else:
            if normalizer.shape != (model.state_dim,):
                raise ValueError(f"normaliser shape {normalizer.shape} != the network's input ({model.state_dim},)")
            self._mean, self._scale = normalizer.mean.copy(), normalizer.scale.copy()
            self._clip = normalizer.clip
        self.step(np.zeros(self.state_dim), self.initial_state())  # compile now, not on the first decision

    def initial_state(self) -> np.ndarray:
        """Zero hidden state (the start of an episode), ``(gru_layers, hidden_size)`` float32."""
        return np.zeros((self.gru_layers, self.hidden_size), np.float32)

    def step(self, obs: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Untempered logits ``(action_dim,)`` float32 and the next hidden state for one observation.

        ``obs``: ``(state_dim,)``, raw if the actor was built with a normaliser, else already normalised (any
        float dtype; float32 inputs are exact in the float64 the call takes).
        """
        return _run(self._program, self._params, self._mean, self._scale, self._clip,
                    np.asarray(obs, np.float64), hidden)
