"""``NWSPlugin``: gives Neural Weight Search to any Avalanche ``SupervisedTemplate``.

    strategy = Naive(model=model, optimizer=optimizer, criterion=criterion,
                     plugins=[NWSPlugin(pools=build_pools_kmeans(model, K=64))])

- before training: converts the model's convs, Linears and head(s) to NWS layers if it has none
  (``nwsify``; refused layers stop the run with their name), then moves it to the strategy's
  device, since Avalanche moved the model before this hook ran;
- at each training experience: converts layers Avalanche added (a ``MultiHeadClassifier``'s new
  head takes a sibling head's pool) and updates the optimiser; from the second task on
  initialises the temporary kernels (``previous``: the previous task's rebuilt kernels and BN;
  ``pretrained``: the pretrained network's; ``random``: fresh kaiming kernels (fan-out), the
  head's too, while BatchNorm stays the previous task's, as the authors' ``initial_conv`` does:
  the appendix's NWS-random; a task with another class count gets ``random_head``, drawn over
  its own C) and restarts the searches;
- before backward: adds ``beta * sum_l commitment_l`` to the loss; after it, drops the graph the
  commitments hold (so ``copy.deepcopy(model)``, e.g. LwF's, works);
- after each task: a final search fixes the indices, and the plugin keeps what the task stores
  (indices in the smallest integer type, BatchNorm state, head; ``task_state.PerTaskEval``),
  keyed by task label. Every evaluation then runs each task on its own stored state, so
  Avalanche's accuracy/forgetting metrics show what the task's artifact gives.
Pools are buffers and never reach the optimiser. The default search is the incremental exact one.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..common import pickle_compat  # noqa: F401 - Avalanche's save_checkpoint works (see there)

from .layers import NWSConv2d, commitment_loss, nws_layers
from .nwsify import convertible_layers, nwsify, set_module
from .task_state import PerTaskEval, compact_indices, experience_labels, load_state, resized_head

INITS = ("previous", "pretrained", "random")


class NWSPlugin(PerTaskEval):
    """NWS for any Avalanche strategy.

    ``pools``: a ``PoolSet`` (``build_pools_kmeans``/``PoolSet.load``) or ``{layer: [K, d] table}``;
    needed unless the model already has NWS layers. ``beta``: weight of the commitment loss.
    ``init``: how a new task's temporary kernels start (see module doc); ``pretrained_state``
    is needed for ``init="pretrained"``. ``include_head``: the head(s) as NWS layers too.
    ``search_factory``: the per-layer searcher (default: incremental exact search).
    ``keep_tasks``: keep per-task state and swap it in at evaluation (default True).
    """

    def __init__(self, pools=None, beta: float = 0.5, init: str = "previous",
                 pretrained_state: dict[str, torch.Tensor] | None = None, include_head: bool = True,
                 search_factory=None, seed: int = 0, keep_tasks: bool = True):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if init == "pretrained" and pretrained_state is None:
            raise ValueError("init='pretrained' needs pretrained_state")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if pools is not None and not hasattr(pools, "tables") and not isinstance(pools, dict):
            raise TypeError(f"pools must be a PoolSet or a dict of [K, d] tables, got {type(pools).__name__}")
        self.pools, self.beta, self.init = pools, beta, init
        self.pretrained_state, self.include_head = pretrained_state, include_head
        self.search_factory, self.seed, self.keep_tasks = search_factory, seed, keep_tasks
        self.tasks_seen = 0
        self._trained_labels: dict[int, int] = {}  # task label -> the experience that trained it

    # -- conversion -----------------------------------------------------------------------
    def before_training(self, strategy, **kw):
        _refuse_compiled(strategy.model)
        if not nws_layers(strategy.model):
            if self.pools is None:
                raise ValueError("the model has no NWS layers and the plugin was given no pools "
                                 "(pass pools=build_pools_kmeans(model, K=...))")
            self._convert(strategy)

    def _convert(self, strategy) -> bool:
        todo = [n for n, m in convertible_layers(strategy.model, self.include_head) if not isinstance(m, NWSConv2d)]
        if not todo:
            return False
        if self.pools is None:
            raise ValueError(f"layers {todo} are not NWS layers and the plugin was given no pools")
        names = {id(p): n for n, p in strategy.model.named_parameters()}
        nwsify(strategy.model, self.pools, self.include_head, search_factory=self.search_factory)
        strategy.model.to(strategy.device)  # Avalanche moved the model before this hook
        if getattr(strategy, "optimizer", None) is not None:
            retarget_optimizer(strategy.optimizer, names, strategy.model)
        return True

    def before_train_dataset_adaptation(self, strategy, **kw):
        # Runs before Avalanche's model adaptation and optimiser set-up for the task.
        if self.tasks_seen > 0:
            init_temporary_kernels(strategy.model, self.init, self.pretrained_state,
                                   seed=self.seed + self.tasks_seen)
        for _, m in nws_layers(strategy.model):
            m.reset_search()
            m.assign()

    def before_training_exp(self, strategy, **kw):
        if self.keep_tasks:  # before any training on a stream whose tasks NWS cannot tell apart
            check_task_labels(strategy.experience, self._trained_labels)
            self._trained_labels.update({lb: strategy.experience.current_experience
                                         for lb in experience_labels(strategy.experience)})
        # Avalanche's model adaptation (just run) may have added plain layers, e.g. a new head
        if self.pools is not None and self._convert(strategy):
            for _, m in nws_layers(strategy.model):
                m.assign()
            strategy.make_optimizer(reset_optimizer_state=True, remove_params=True)

    # -- loss ------------------------------------------------------------------------------
    def before_backward(self, strategy, **kw):
        if self.beta:
            strategy.loss = strategy.loss + self.beta * commitment_loss(strategy.model)

    def after_backward(self, strategy, **kw):
        for _, m in nws_layers(strategy.model):
            m.commitment = m.commitment.detach()

    # -- per-task state --------------------------------------------------------------------
    def after_training_exp(self, strategy, **kw):
        for _, m in nws_layers(strategy.model):
            m.assign()
            m.commitment = m.commitment.detach()
        self.tasks_seen += 1
        if self.keep_tasks:
            super().after_training_exp(strategy, **kw)

    def capture(self, strategy, model):
        return task_state(model)

    def apply(self, strategy, model, state):
        load_task_state(model, state, self._replaced)

    def has_state(self, label):
        return self.keep_tasks and super().has_state(label)


def retarget_optimizer(optimizer, names_before: dict[int, str], model: nn.Module) -> None:
    """After conversion: each optimiser entry points at the model's parameter of the same name
    (the NWS layer's temporary kernels for a replaced conv), entries whose name is gone are
    dropped, and parameters new to the model (by name) join the first group; the groups' settings stay.
    Without this the optimiser keeps updating the replaced layers' parameters (stale, unused)."""
    now = dict(model.named_parameters())
    placed = set()
    for group in optimizer.param_groups:
        kept = []
        for p in group["params"]:
            name = names_before.get(id(p))
            if name in now and name not in placed:
                kept.append(now[name])
                placed.add(name)
        group["params"] = kept
    before = set(names_before.values())  # a parameter left out on purpose stays out
    optimizer.param_groups[0]["params"] += [p for n, p in now.items() if n not in before and p.requires_grad]
    optimizer.state.clear()  # momentum of the replaced parameters does not carry over


class TaskLabelError(ValueError):
    """A stream without distinct task labels: NWS keeps one state per task label."""


_HOW = ("NWS stores one state (indices, BatchNorm, head) per task label and evaluates each task on its own; "
        "give each experience its own task label, e.g. nc_benchmark(..., task_labels=True), "
        "or for Avalanche 0.6's class_incremental_benchmark: bm = task_incremental_benchmark(bm, "
        "reset_task_labels=True) (from avalanche.benchmarks.scenarios.task_aware), experience i getting task label i")


def check_task_labels(experience, trained: dict[int, int]) -> None:
    """Refuse a class-incremental stream at its first training experience: an experience without
    task labels, or a stream whose experiences share a task label (``nc_benchmark(task_labels=False)``:
    every old task would be evaluated on the newest state and fall to chance)."""
    if getattr(experience, "task_labels", None) is None:
        raise TaskLabelError(f"experience {getattr(experience, 'current_experience', '?')} has no task labels "
                             f"(a class-incremental stream); {_HOW}")
    index = getattr(experience, "current_experience", None)
    stream = getattr(experience, "origin_stream", None)
    if not trained and stream is not None:  # the whole stream, before the first experience trains
        seen: dict[int, int] = {}
        for i, exp in enumerate(stream):
            for label in experience_labels(exp):
                if label in seen:
                    raise TaskLabelError(f"experiences {seen[label]} and {i} of stream {getattr(stream, 'name', '')!r} "
                                         f"share task label {label} (a class-incremental stream); {_HOW}")
                seen[label] = i
    for label in experience_labels(experience):
        if label in trained and trained[label] != index:
            raise TaskLabelError(f"experience {index} has task label {label}, already trained by experience "
                                 f"{trained[label]} (a class-incremental stream); {_HOW}")


def _nws_owned(model: nn.Module) -> set[str]:
    return {f"{n}.{leaf}" for n, _ in nws_layers(model) for leaf in ("weight", "pool", "indices")}


def task_state(model: nn.Module) -> dict:
    """What an NWS task stores, in memory: indices per NWS layer (compact) and every other entry
    of the state_dict (BatchNorm, biases, dense layers), as ``task_artifact.save_nws_task`` writes it."""
    owned = _nws_owned(model)
    return {"indices": {n: compact_indices(m.indices, m.pool_size) for n, m in nws_layers(model)},
            "state": {k: v.detach().clone() for k, v in model.state_dict().items() if k not in owned}}


@torch.no_grad()
def load_task_state(model: nn.Module, state: dict, replaced: dict) -> None:
    """Put a ``task_state`` in place (heads of another size are swapped for resized ones)."""
    for name, m in nws_layers(model):  # a head of another size: a resized one stands in
        n = state["indices"][name].numel() if name in state["indices"] else m.num_vectors
        if n != m.num_vectors and hasattr(m, "out_features"):
            replaced.setdefault(name, m)
            set_module(model, name, resized_head(m, n * m.group_size // m.in_features))
    layers = dict(nws_layers(model))
    for name, idx in state["indices"].items():
        layers[name].indices.copy_(idx.to(torch.long))
    load_state(model, state["state"], replaced)


def _refuse_compiled(model: nn.Module) -> None:
    if hasattr(model, "_orig_mod") and not nws_layers(model):
        raise ValueError("NWSPlugin got a torch.compile'd model: convert it first and compile after, "
                         "i.e. nwsify(model, pools) then torch.compile(model) (NWS layers run their "
                         "search eagerly, the rest is compiled); or pass the uncompiled model")


@torch.no_grad()
def init_temporary_kernels(model: nn.Module, init: str, pretrained_state=None, seed: int = 0) -> None:
    layers = nws_layers(model)
    if init == "previous":
        for _, m in layers:
            m.load_rebuilt_into_weight()
    elif init == "pretrained":
        own = model.state_dict()
        state = {k: v for k, v in pretrained_state.items()
                 if k in own and own[k].shape == v.shape and not k.endswith((".pool", ".indices"))}
        model.load_state_dict(state, strict=False)
    elif init == "random":
        gen = torch.Generator().manual_seed(seed)
        for _, m in layers:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
        # BatchNorm is left as the previous task trained it (the authors re-draw only the kernels)


def random_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """NWS-random's head for a task with another class count: the authors resize the previous head
    and then ``initial_conv`` re-draws all of it, kaiming-normal with fan-out = ``num_classes``."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(in_features, num_classes, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, in_features, generator=gen) * (2.0 / num_classes) ** 0.5)
    return head
