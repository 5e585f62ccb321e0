"""Avalanche's own continual-learning strategies as methods: EWC, SI, MAS, LwF, Replay, GEM, A-GEM.

Each is Avalanche's plugin (``EWCPlugin``, ``SynapticIntelligencePlugin``, ``MASPlugin``,
``LwFPlugin``, ``ReplayPlugin``, ``GEMPlugin``, ``AGEMPlugin``) on ``TaskIncrementalStrategy``,
in the task-incremental multi-head setting on the same streams, backbone, pretrained start and
optimiser settings as the other methods: ONE network is trained through all tasks (the
pretrained backbone, continued), with one bias-free head per task (``MultiHeadNet``, an
Avalanche ``MultiTaskModule``; task t's head starts from task t-1's by the shared head rule,
``TaskIncrementalStrategy.task_head``). Options are the plugins' own, under
``--set <name>.<option>=`` (dataclasses below; defaults Avalanche's, except EWC's lambda and
GEM's/A-GEM's memory sizes, which Avalanche leaves to the user: tune them).

What a run stores, i.e. what the method must keep to serve every task and to go on learning:

- ``network.dense``: the final network, the shared backbone and every task's head (fp32),
  rewritten after every task (Replay, LwF, GEM and A-GEM also train old heads), so no file is a
  task's alone: memory is all "assist" (shared), and a run cannot go back to an earlier task's
  state (a lost file means ``--overwrite``);
- ``method-state.<name>``, the method's own state, also shared: EWC the per-task reference
  weights and Fisher importances (mode ``separate``: every past task's; ``online``: one set),
  SI its importances and accumulated path integral, MAS its importances, LwF the classes seen
  per task, Replay its buffer (``mem_size`` samples in all, as the loader yields them, float32,
  with labels), GEM and A-GEM their per-task memories (``patterns_per_experience`` samples per
  task, with labels; GEM's with task ids). A reference copy equal to the stored network
  (SI's/MAS's anchors, EWC's last task's weights, LwF's teacher) is not stored twice: at rest
  it is the network, and it is rebuilt from it. The paper's accounting (``paper_bytes``) counts
  each task's head per task and the backbone and method state as shared.

Task j's accuracy after task t is measured on the network after task t with head j (rebuilt from
the files above), so the accuracy matrices show these methods' forgetting. Deviations: two
Avalanche 0.6 defects are fixed in subclasses (SI's weight snapshots are views of the weights on
CPU, so its penalty was 0; GEM and A-GEM dropped the old heads' part of their projection).
Replay's buffer (experience-balanced random selection, Avalanche's default policy) and A-GEM's
memories are held as tensors, so they are saved and resumed exactly; stored samples are taken
as the training loader yields them (augmented once). MAS's importance pass runs the network in
train mode (Avalanche's code), so the stored BatchNorm statistics include that pass. Mixed-task
mini-batches (Replay, A-GEM's reference batches) pass through the backbone together and each
sample's logits outside its task's head are -inf, so the loss is each sample's own-task CE.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from avalanche.models import MultiTaskModule
from avalanche.training.plugins import (AGEMPlugin, EWCPlugin, GEMPlugin, LwFPlugin, MASPlugin, ReplayPlugin,
                                        SynapticIntelligencePlugin)
from avalanche.training.storage_policy import ExemplarsBuffer
from avalanche.training.utils import ParamData, copy_params_dict

from nws_avalanche.common.errors import ArtifactError, ConfigError
from nws_avalanche.method.task_state import PerTaskEval
from nws_avalanche.nets.models import build_arch, get_head, head_name, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.common.schema import Int, List, Obj
from nws_avalanche.storage.record import CLASSES, MAX_TASKS, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy

NETWORK_FILE = "network.dense"
CL_NETWORK = Obj({"task": Int(0, MAX_TASKS), "num_classes": List(CLASSES, max_len=MAX_TASKS + 1)})


class MultiHeadNet(MultiTaskModule):
    """A shared backbone (the arch without its head) and one head per task, keyed ``"t"``."""

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone, self.feature_dim = backbone, feature_dim
        self.heads = nn.ModuleDict()

    def add_head(self, t: int, head: nn.Linear) -> None:
        self.heads[str(t)] = head
        self.known_train_tasks_labels.add(t)
        self.max_class_label = max(self.max_class_label, head.out_features)

    def forward_single_task(self, x, task_label):
        return self.heads[str(task_label)](self.backbone(x))

    def forward(self, x, task_labels):
        feats = self.backbone(x)  # once for the whole batch, so BatchNorm sees it whole
        if task_labels is None:
            return {t: self.heads[str(t)](feats) for t in sorted(self.known_train_tasks_labels)}
        if isinstance(task_labels, int):
            return self.heads[str(task_labels)](feats)
        tasks = torch.unique(task_labels)
        if len(tasks) == 1:
            return self.heads[str(int(tasks[0]))](feats)
        out = feats.new_full((x.shape[0], self.max_class_label), float("-inf"))
        for t in tasks.tolist():
            mask = task_labels == t
            logits = self.heads[str(t)](feats[mask])
            out[mask, :logits.shape[1]] = logits
        return out


class TensorReplayBuffer(ExemplarsBuffer):
    """Experience-balanced random exemplars, held as tensors: ``{task: (x, y)}``."""

    def __init__(self, max_size: int, seed: int = 0):
        super().__init__(max_size)
        self.seed = seed
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.y_as_tensor = False  # labels in the form the stream's datasets give them (collated together)

    def match_labels(self, sample) -> None:
        """Give labels as the current stream does (int or 0-d tensor): batches mix both sources."""
        as_tensor = isinstance(sample[1], torch.Tensor)
        if as_tensor != self.y_as_tensor:
            self.y_as_tensor = as_tensor
            self._rebuild_dataset()

    def post_adapt(self, agent_state, exp):
        t = exp.current_experience
        data = exp.dataset
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        order = torch.randperm(len(data), generator=gen)[:self.max_size]
        samples = [data[i] for i in order.tolist()]  # one read each (a read may draw an augmentation)
        if samples:
            self.store[t] = (torch.stack([s[0] for s in samples]).float(),
                             torch.tensor([int(s[1]) for s in samples], dtype=torch.long))
        self._rebalance()

    def _rebalance(self) -> None:
        tasks = sorted(self.store)
        share, extra = divmod(self.max_size, max(len(tasks), 1))
        for i, t in enumerate(tasks):  # earlier tasks keep a prefix of their random selection
            n = share + (1 if i < extra else 0)
            x, y = self.store[t]
            self.store[t] = (x[:n].contiguous(), y[:n].contiguous())
        self._rebuild_dataset()

    def _rebuild_dataset(self) -> None:
        from avalanche.benchmarks.utils import concat_datasets
        from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

        parts = [_make_taskaware_classification_dataset(_Pairs(x, y, self.y_as_tensor), task_labels=t,
                                                        targets=y.tolist())
                 for t, (x, y) in sorted(self.store.items()) if len(y)]
        self.buffer = concat_datasets(parts)

    def resize(self, strategy, new_size):
        self.max_size = new_size
        self._rebalance()

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for t, (x, y) in self.store.items():
            out[f"x/{t}"], out[f"y/{t}"] = x, y
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        tasks = sorted({int(k.split("/")[1]) for k in state})
        self.store = {t: (state[f"x/{t}"], state[f"y/{t}"]) for t in tasks}
        self._rebuild_dataset()


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y, y_as_tensor: bool):
        self.x, self.y, self.y_as_tensor = x, y, y_as_tensor

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], (self.y[i] if self.y_as_tensor else int(self.y[i]))


class _TensorReplayPlugin(ReplayPlugin):
    def before_training_exp(self, strategy, *args, **kwargs):
        if len(self.storage_policy.buffer):
            self.storage_policy.match_labels(strategy.adapted_dataset[0])
        super().before_training_exp(strategy, *args, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        self.storage_policy.post_adapt(strategy, strategy.experience)  # (ReplayPlugin's call is deprecated)


# -- parameter dicts <-> flat tensor dicts (the method-state file) ----------------------------
def _flat(prefix: str, params: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": (v.data if isinstance(v, ParamData) else v).detach().cpu().clone()
            for k, v in params.items()}


def _unflat(prefix: str, state: dict[str, torch.Tensor], device, model: nn.Module) -> dict[str, ParamData]:
    """The entries under ``prefix``, in ``model``'s parameter order (Avalanche pairs dicts by
    position, e.g. EWC's online update)."""
    start = prefix + "/"
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    names = sorted((k[len(start):] for k in state if k.startswith(start)), key=lambda n: (order.get(n, len(order)), n))
    return {n: ParamData(n, device=device, init_tensor=state[start + n].clone()) for n in names}


class LiveNetworkEval(PerTaskEval):
    """These methods keep one network for every task, so Avalanche evaluates it as it is now (its
    forgetting shows); after ``use_artifacts`` (the runner) the network rebuilt from the files."""

    def after_training_exp(self, strategy, **kw):
        pass

    def has_state(self, label: int) -> bool:
        return self.rebuild is not None and label in self._known


class AvalancheMethod(TaskIncrementalStrategy):
    """Common to the Avalanche strategies: the multi-head network, its files and the state file."""

    def __init__(self, *, model, optimizer, criterion=None, options=None, plugins=(), seed: int = 0, **kw):
        """``model``: the plain network with task 0's head (as every method gets it); it becomes
        the backbone of a multi-head network whose head 0 is that head."""
        opts = options if options is not None else self.Options()
        head0 = get_head(model)
        set_head(model, nn.Identity())
        net = MultiHeadNet(model, model.feature_dim)
        net.add_head(0, head0)
        self.cl_plugin = self.make_plugin(opts, seed)
        kw.setdefault("task_eval", LiveNetworkEval())
        super().__init__(model=net, optimizer=optimizer, criterion=criterion, options=opts,
                         plugins=[self.cl_plugin, *plugins], seed=seed, **kw)

    def make_plugin(self, opts, seed: int):
        raise NotImplementedError

    def prepare_task(self, t, num_classes):
        if str(t) not in self.model.heads:  # the shared rule, carrying over the previous task's head
            self.model.add_head(t, self.task_head(t, num_classes, previous=self.model.heads[str(t - 1)]))

    # -- what is stored -----------------------------------------------------------------------
    def method_state(self) -> dict[str, torch.Tensor]:
        """Tensors the method keeps besides the network (written as ``method-state.<name>``)."""
        return {}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def _state_path(self, directory) -> Path:
        return Path(directory) / f"method-state.{self.name}"

    def export_task(self, t, directory):
        """Rewrites the shared files; no file is task t's alone (its head is in the network file,
        which later tasks rewrite), so the list is empty."""
        directory = Path(directory)
        write_record(directory / NETWORK_FILE, "cl-network", State(self.model.state_dict()), task=t,
                     header={"arch": self.cfg.arch, "method": self.name, "num_classes": self.task_classes[:t + 1]})
        state = self.method_state()
        if state:
            write_record(self._state_path(directory), f"{self.name}-state", State(state), task=t,
                         header={"method": self.name})
        return []

    def _read_network(self, directory) -> tuple[dict, dict[str, torch.Tensor]]:
        rec = read_record(Path(directory) / NETWORK_FILE, "cl-network", schema=CL_NETWORK)
        if len(rec.header["num_classes"]) != rec.header["task"] + 1:
            raise ArtifactError(f"{rec.path}: field num_classes lists {len(rec.header['num_classes'])} heads for "
                                f"tasks 0..{rec.header['task']}; rerun with --overwrite to redo the run")
        return rec.header, rec.state

    def rebuild_task(self, t, directory):
        header, state = self._read_network(directory)
        if t > header["task"]:
            raise ArtifactError(f"{Path(directory) / NETWORK_FILE} holds tasks 0..{header['task']}, not task {t}")
        model = build_arch(self.cfg.arch, header["num_classes"][t], self.assets.in_channels)
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        model.load_state_dict({**backbone, f"{head_name(model)}.weight": state[f"heads.{t}.weight"]})
        return model.eval()

    def restore_from_files(self, t, directory):
        """The state after task ``t`` from the shared files, which hold the state after their last
        task only: an earlier task's state is gone (the network moved on), so that is an error."""
        header, state = self._read_network(directory)
        if header["task"] != t:
            raise ArtifactError(f"{Path(directory) / NETWORK_FILE} holds the network after task {header['task']}; "
                                f"{self.name} keeps no earlier state, so the run cannot continue from task {t}: "
                                f"rerun with --overwrite to redo it")
        for j in range(t + 1):
            self.prepare_task(j, self.task_classes[j])
        self.model.load_state_dict(state)
        self.model.to(self.device)
        path = self._state_path(directory)
        self.load_method_state(read_record(path, f"{self.name}-state").state if path.is_file() else {})
        self.clock.train_exp_counter = t + 1  # what the plugins count past tasks with

    # -- the paper's accounting (nws_avalanche.storage.paper_memory): a head per task, the rest shared ----
    def paper_bytes(self, t, directory) -> int:
        _, state = self._read_network(directory)
        return paper.torch_save_bytes({"weight": state[f"heads.{t}.weight"]})

    def paper_assist_bytes(self, directory) -> int:
        _, state = self._read_network(directory)
        total = paper.bn_and_rest_bytes({k: v for k, v in state.items() if k.startswith("backbone.")})
        path = self._state_path(directory)
        if path.is_file():
            total += paper.torch_save_bytes(read_record(path, f"{self.name}-state").state)
        return total

    def assist_files(self, directory):
        state = self._state_path(directory)
        return [Path(directory) / NETWORK_FILE] + ([state] if state.is_file() else [])

    def task_summary(self, t):
        """Bytes of the tensors stored after task t, by kind (network, heads, method state)."""
        params = lambda tensors: sum(v.numel() * v.element_size() for v in tensors)  # noqa: E731
        return {"stored_tensor_bytes": {
            "network": params(self.model.backbone.state_dict().values()),
            "heads": params([self.model.heads[str(j)].weight for j in range(t + 1)]),
            "method_state": params(self.method_state().values())}}

    # -- resume ---------------------------------------------------------------------------------
    def restore_checkpoint_state(self, state):
        for j in range(state["task"] + 1):  # every head the saved model has
            self.prepare_task(j, self.task_classes[j])
        super().restore_checkpoint_state(state)

    def extra_state(self):
        return {"method_state": self.method_state()}

    def load_extra_state(self, extra):
        self.load_method_state(extra.get("method_state", {}))


# -- EWC ------------------------------------------------------------------------------------------
@dataclass
class EWCOptions:
    ewc_lambda: float = 100.0   # penalty weight (Avalanche has no default)
    mode: str = "separate"      # separate: one penalty per past task; online: one, decayed
    decay_factor: float | None = None  # online mode only

    def __post_init__(self):
        if self.mode not in ("separate", "online"):
            raise ConfigError(f"ewc.mode must be separate or online (got {self.mode!r})")
        if (self.mode == "online") != (self.decay_factor is not None):
            raise ConfigError("ewc.decay_factor is needed in online mode and only there "
                              "(e.g. --set ewc.mode=online --set ewc.decay_factor=0.9)")
        if self.ewc_lambda < 0:
            raise ConfigError(f"ewc.ewc_lambda must be >= 0 (got {self.ewc_lambda})")


@METHODS.register("ewc")
class EWC(AvalancheMethod):
    """Avalanche's ``EWCPlugin`` (Kirkpatrick et al. 2017)."""
    name = "ewc"
    Options = EWCOptions

    def make_plugin(self, opts, seed: int):
        return EWCPlugin(opts.ewc_lambda, mode=opts.mode, decay_factor=opts.decay_factor)

    def _last(self) -> int | None:
        return max(self.cl_plugin.importances) if self.cl_plugin.importances else None

    def method_state(self):
        p, last, out = self.cl_plugin, self._last(), {}
        # online mode uses (and Avalanche keeps) only the latest importances
        for e in (sorted(p.importances) if p.mode == "separate" else [last] if last is not None else []):
            out.update(_flat(f"importance/{e}", p.importances[e]))
            if e != last and e in p.saved_params:  # the last task's weights are the stored network
                out.update(_flat(f"params/{e}", p.saved_params[e]))
        return out

    def load_method_state(self, state):
        p, dev = self.cl_plugin, self.device
        tasks = sorted({int(k.split("/")[1]) for k in state if k.startswith("importance/")})
        p.importances, p.saved_params = defaultdict(dict), defaultdict(dict)
        for e in tasks:
            p.importances[e] = _unflat(f"importance/{e}", state, dev, self.model)
            p.saved_params[e] = _unflat(f"params/{e}", state, dev, self.model)
        if tasks:
            p.saved_params[tasks[-1]] = copy_params_dict(self.model)


# -- SI --------------------------------------------------------------------------------------------
@dataclass
class SIOptions:
    si_lambda: float = 1.0
    eps: float = 1e-7  # damping of the path integral's denominator

    def __post_init__(self):
        if self.si_lambda < 0 or self.eps <= 0:
            raise ConfigError(f"si.si_lambda must be >= 0 and si.eps > 0 (got {self.si_lambda}, {self.eps})")


class _CopyingSIPlugin(SynapticIntelligencePlugin):
    """Avalanche 0.6's SI with its weight snapshots copied. Its ``extract_weights`` stores
    ``param.detach().cpu().flatten()``, which on CPU is a view of the live parameter, so the
    anchor and the pre-step weights move with the weights: the penalty and the path integral
    stay 0 (on a GPU ``.cpu()`` copies and the plugin works). Here they are copies everywhere."""

    def _copy(self, target: dict) -> None:
        for name, param in self.allowed_parameters(self._model, self.excluded_parameters):
            target[name].data = param.detach().flatten().clone().cpu()

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self._model = strategy.model
        self._copy(self.ewc_data[0])

    def before_training_iteration(self, strategy, **kwargs):
        self._model = strategy.model
        self._copy(self.syn_data["old_theta"])


@METHODS.register("si")
class SI(AvalancheMethod):
    """Avalanche's ``SynapticIntelligencePlugin`` (Zenke et al. 2017), snapshots copied (see above)."""
    name = "si"
    Options = SIOptions

    def make_plugin(self, opts, seed: int):
        return _CopyingSIPlugin(opts.si_lambda, eps=opts.eps)

    def method_state(self):
        p = self.cl_plugin
        return {**_flat("importance", p.ewc_data[1]), **_flat("cum_trajectory", p.syn_data["cum_trajectory"])}

    def load_method_state(self, state):
        if not state:
            return
        p = self.cl_plugin
        imp, cum = _unflat("importance", state, "cpu", self.model), _unflat("cum_trajectory", state, "cpu", self.model)
        # the anchors are the stored network; the per-step buffers restart every task
        anchor = {n: ParamData(n, init_tensor=v.detach().cpu().flatten().clone())
                  for n, v in self.model.named_parameters() if n in imp}
        p.ewc_data = (anchor, imp)
        zeros = lambda: {n: ParamData(n, shape=v.shape, device="cpu") for n, v in imp.items()}  # noqa: E731
        p.syn_data = {"cum_trajectory": cum, **{k: zeros() for k in ("old_theta", "new_theta", "grad", "trajectory")}}


# -- MAS -------------------------------------------------------------------------------------------
@dataclass
class MASOptions:
    lambda_reg: float = 1.0
    alpha: float = 0.5  # weight of the previous importances when merging in a task's

    def __post_init__(self):
        if self.lambda_reg < 0 or not 0 <= self.alpha <= 1:
            raise ConfigError(f"mas.lambda_reg must be >= 0 and mas.alpha in [0, 1] "
                              f"(got {self.lambda_reg}, {self.alpha})")


@METHODS.register("mas")
class MAS(AvalancheMethod):
    """Avalanche's ``MASPlugin`` (Aljundi et al. 2018)."""
    name = "mas"
    Options = MASOptions

    def make_plugin(self, opts, seed: int):
        return MASPlugin(lambda_reg=opts.lambda_reg, alpha=opts.alpha)

    def method_state(self):
        return _flat("importance", self.cl_plugin.importance) if self.cl_plugin.importance else {}

    def load_method_state(self, state):
        if state:
            self.cl_plugin.importance = _unflat("importance", state, self.device, self.model)
            self.cl_plugin.params = dict(copy_params_dict(self.model))  # the anchors are the stored network


# -- LwF -------------------------------------------------------------------------------------------
@dataclass
class LwFOptions:
    alpha: float = 1.0        # weight of the distillation loss
    temperature: float = 2.0

    def __post_init__(self):
        if self.alpha < 0 or self.temperature <= 0:
            raise ConfigError(f"lwf.alpha must be >= 0 and lwf.temperature > 0 (got {self.alpha}, {self.temperature})")


@METHODS.register("lwf")
class LwF(AvalancheMethod):
    """Avalanche's ``LwFPlugin`` (Li & Hoiem 2017): distils the previous network's old heads."""
    name = "lwf"
    Options = LwFOptions

    def make_plugin(self, opts, seed: int):
        return LwFPlugin(alpha=opts.alpha, temperature=opts.temperature)

    def method_state(self):
        """The classes seen per task (which old-head units are distilled); the teacher is the network."""
        return {f"classes/{t}": torch.tensor(sorted(int(c) for c in cs), dtype=torch.long)
                for t, cs in sorted(self.cl_plugin.lwf.prev_classes_by_task.items())}

    def load_method_state(self, state):
        lwf = self.cl_plugin.lwf
        lwf.prev_classes_by_task = defaultdict(set, {int(k.split("/")[1]): set(v.tolist()) for k, v in state.items()})
        lwf.expcount = len(lwf.prev_classes_by_task)
        lwf.prev_model = copy.deepcopy(self.model) if lwf.expcount else None


# -- Replay ----------------------------------------------------------------------------------------
@dataclass
class ReplayOptions:
    mem_size: int = 200              # samples kept over all tasks (Avalanche's default)
    batch_size_mem: int | None = None  # replayed samples per mini-batch (default: batch_size)

    def __post_init__(self):
        if self.mem_size < 1:
            raise ConfigError(f"replay.mem_size must be >= 1 (got {self.mem_size})")
        if self.batch_size_mem is not None and self.batch_size_mem < 1:
            raise ConfigError(f"replay.batch_size_mem must be >= 1 (got {self.batch_size_mem})")


@METHODS.register("replay")
class Replay(AvalancheMethod):
    """Avalanche's ``ReplayPlugin`` with an experience-balanced buffer of ``mem_size`` samples."""
    name = "replay"
    Options = ReplayOptions

    def make_plugin(self, opts, seed: int):
        self.buffer = TensorReplayBuffer(opts.mem_size, seed=seed)
        return _TensorReplayPlugin(mem_size=opts.mem_size, batch_size_mem=opts.batch_size_mem,
                                  storage_policy=self.buffer)

    def method_state(self):
        return self.buffer.state()

    def load_method_state(self, state):
        if state:
            self.buffer.load(state)



# -- GEM -------------------------------------------------------------------------------------------
@dataclass
class GEMOptions:
    patterns_per_experience: int = 256  # samples kept per task (the GEM paper's 256)
    memory_strength: float = 0.5        # gamma: margin that favours backward transfer

    def __post_init__(self):
        if self.patterns_per_experience < 1 or self.memory_strength < 0:
            raise ConfigError(f"gem.patterns_per_experience must be >= 1 and gem.memory_strength >= 0 "
                              f"(got {self.patterns_per_experience}, {self.memory_strength})")


class _AllParamsGEMPlugin(GEMPlugin):
    """Avalanche 0.6's GEM writes the projected gradient only into parameters that have a gradient;
    with one head per task the old heads have none in a new task's step, so their part of the
    projection was dropped and steps could still raise a past task's memory loss. Zero gradients
    are given to every parameter first, so the whole projection is applied."""

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter > 0:
            for p in strategy.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        super().after_backward(strategy, **kwargs)


@METHODS.register("gem")
class GEM(AvalancheMethod):
    """Avalanche's ``GEMPlugin`` (Lopez-Paz & Ranzato 2017), the projection applied to every
    parameter (see above): no step raises a past task's memory loss to first order."""
    name = "gem"
    Options = GEMOptions

    def make_plugin(self, opts, seed: int):
        return _AllParamsGEMPlugin(opts.patterns_per_experience, opts.memory_strength)

    def method_state(self):
        p = self.cl_plugin
        return {f"{kind}/{t}": getattr(p, f"memory_{kind}")[t].cpu()
                for t in sorted(p.memory_x) for kind in ("x", "y", "tid")}

    def load_method_state(self, state):
        p = self.cl_plugin
        for kind in ("x", "y", "tid"):
            setattr(p, f"memory_{kind}", {int(k.split("/")[1]): v for k, v in state.items()
                                          if k.startswith(kind + "/")})


# -- A-GEM -----------------------------------------------------------------------------------------
@dataclass
class AGEMOptions:
    patterns_per_experience: int = 256  # samples kept per task
    sample_size: int = 256              # memory samples per step for the reference gradient

    def __post_init__(self):
        if self.patterns_per_experience < 1 or self.sample_size < 1:
            raise ConfigError(f"agem.patterns_per_experience and agem.sample_size must be >= 1 "
                              f"(got {self.patterns_per_experience}, {self.sample_size})")


class _TensorAGEMPlugin(AGEMPlugin):
    """Avalanche 0.6's A-GEM with its memory held as tensors ``{task: (x, y)}`` (saved and resumed
    exactly) and each step's reference batch drawn with torch's RNG, which the runner reseeds per
    task: ``sample_size // tasks`` distinct samples of every past task (Avalanche: a group-balanced
    infinite loader over the same memories). As for GEM, the projection reaches every parameter."""

    def __init__(self, patterns_per_experience: int, sample_size: int, seed: int):
        super().__init__(patterns_per_experience, sample_size)
        self.seed = seed
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def after_training_exp(self, strategy, **kwargs):
        t, data = strategy.experience.current_experience, strategy.experience.dataset
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        samples = [data[i] for i in torch.randperm(len(data), generator=gen)[:self.patterns_per_experience].tolist()]
        self.memory[t] = (torch.stack([s[0] for s in samples]).float(),
                          torch.tensor([int(s[1]) for s in samples], dtype=torch.long))
        self.buffers = sorted(self.memory)  # Avalanche's hooks only test that it is non-empty

    def sample_from_memory(self):
        per = max(self.sample_size // len(self.memory), 1)
        xs, ys, ts = [], [], []
        for t, (x, y) in sorted(self.memory.items()):
            idx = torch.randperm(len(y))[:per]
            xs.append(x[idx])
            ys.append(y[idx])
            ts.append(torch.full((len(idx),), t, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if self.memory:
            for p in strategy.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        super().after_backward(strategy, **kwargs)


@METHODS.register("agem")
class AGEM(AvalancheMethod):
    """Avalanche's ``AGEMPlugin`` (Chaudhry et al. 2019): a step that would raise the loss on a
    memory batch is projected onto the half-space where it does not; the memories are its state."""
    name = "agem"
    Options = AGEMOptions

    def make_plugin(self, opts, seed: int):
        return _TensorAGEMPlugin(opts.patterns_per_experience, opts.sample_size, seed)

    def method_state(self):
        return {f"{kind}/{t}": pair[i] for t, pair in sorted(self.cl_plugin.memory.items())
                for i, kind in enumerate(("x", "y"))}

    def load_method_state(self, state):
        tasks = sorted({int(k.split("/")[1]) for k in state})
        self.cl_plugin.memory = {t: (state[f"x/{t}"], state[f"y/{t}"]) for t in tasks}
        self.cl_plugin.buffers = tasks
