"""AQD-style quantised fine-tuning (Chen et al., CVPR 2021): one ``bits``-bit network per task.

Each task fine-tunes its own copy of the pretrained network with the weights and the input
activations of every conv (the first conv and the head excepted by default) quantised by a
learned step size, LSQ style (the LSQ path of the AQD code, GitHub ``aim-uofa/model-quantization``,
``models/quant.py`` with keyword ``lsq``; ``models/dorefa.py``: ``LSQ``, ``GradientScale``):

    q    = round(clamp(x / s, Qn, Qp))       x_hat = q * s
    weights: Qn = -2^(b-1), Qp = 2^(b-1) - 1        activations: Qn = 0, Qp = 2^b - 1
             (signed activations, if a warm-up batch of the layer has negatives, use the weight range)
    steps:   weights one per output channel (``weight_steps=channel``, the reference's default
             ``quant_group``) or one per layer (``layer``); activations one per layer
    training: rounding is straight-through. The reference learns the clip value ``c = Qp * s`` with an
              unscaled gradient (``grad_scale=none``, its default); learning s with its gradient scaled by
              1 / Qp^2 gives the same SGD (momentum, Nesterov) trajectory, ``s_t = c_t / Qp`` (the default
              here). ``grad_scale=lsq`` scales the gradient reaching s by 1 / sqrt(n * Qp) instead (n:
              elements per step; the LSQ paper's rule)

Step initialisation, as the reference's ``init_based_on_warmup``: the first ``warmup_batches``
training batches of a task (all of them) run in full precision while each layer averages ``max|w|`` (over the
whole layer, also for per-channel steps, as the reference does) and ``max|x|`` of its input; then
``s_w = mean max|w| / Qp`` and ``s_a = mean max|x| / Qp``, so the grid spans the range seen and
(nearly) all ``2^b`` levels are in use. (The reference's weight grid is ``2^b`` levels spread
symmetrically over ``[-clip, clip]`` without a zero; ours is the signed integer grid ``q * s``,
which a rebuild needs: the stored integers times the step.) If a task has fewer batches, the
steps come from those it had.

In eval mode rounding is plain ``round``, so a model rebuilt from the stored integers gives
bit-identical logits. Stored per task (``taskNNN.aqd``): the integer weights entropy-coded with
the run's integer codec (alphabet ``2^bits``), the step sizes, the full-precision layers,
BatchNorm and head. Nothing is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nws_avalanche.common.errors import ArtifactError, ConfigError
from nws_avalanche.nets.models import build_arch, get_head, head_name, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.storage.codecs import CODECS, DEFAULT_CODEC
from nws_avalanche.common.schema import Bool, Int, List, Obj, Str
from nws_avalanche.storage.record import CLASSES, SHAPE, Ints, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy, state_copy

from .surgery import layers_of, replace_layers

WEIGHT_STEPS = ("channel", "layer")
# what an AQD task file's header holds (checked before a value is used)
AQD_TASK = Obj({"arch": Str(), "num_classes": CLASSES, "bits": Int(2, 16), "full_precision_first": Bool(),
                "full_precision_last": Bool(), "layers": List(Obj({"name": Str(), "shape": SHAPE}))})
GRAD_SCALES = ("none", "lsq")


@dataclass
class AQDOptions:
    bits: int = 9                      # weight and activation bit width
    full_precision_first: bool = True  # keep the first conv in fp32
    full_precision_last: bool = True   # keep the head in fp32
    weight_steps: str = "channel"      # channel (reference default) | layer: one weight step per output channel or layer
    warmup_batches: int = 20           # full-precision batches whose ranges set the steps (reference: --stable 20)
    grad_scale: str = "none"           # none (reference default): the clip Qp*s learned unscaled | lsq: x 1/sqrt(n Qp)
    codec: str = DEFAULT_CODEC         # how the integer weights are stored (nws_avalanche.storage.codecs)

    def __post_init__(self):  # checked by the runner before anything is written
        if not 2 <= self.bits <= 16:
            raise ConfigError(f"aqd.bits must be in 2..16 (got {self.bits}); the paper's setting is 9")
        if self.weight_steps not in WEIGHT_STEPS:
            raise ConfigError(f"aqd.weight_steps must be one of {', '.join(WEIGHT_STEPS)} (got {self.weight_steps!r})")
        if self.grad_scale not in GRAD_SCALES:
            raise ConfigError(f"aqd.grad_scale must be one of {', '.join(GRAD_SCALES)} (got {self.grad_scale!r})")
        if self.warmup_batches < 1:
            raise ConfigError(f"aqd.warmup_batches must be >= 1 (got {self.warmup_batches})")
        if self.codec not in CODECS:
            raise ConfigError(f"aqd.codec must be one of {', '.join(CODECS.names())} (got {self.codec!r})")


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def _grad_scaled(s: torch.Tensor, g: float) -> torch.Tensor:
    return (s - s * g).detach() + s * g


def quantize(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float | None) -> torch.Tensor:
    """``round(clamp(x/s)) * s``; straight-through with LSQ step gradient when ``grad_scale`` is given."""
    if grad_scale is None:
        return torch.clamp(x / step, qn, qp).round() * step
    s = _grad_scaled(step, grad_scale)
    return _round_ste(torch.clamp(x / s, qn, qp)) * s


class QuantMixin:
    """Learned-step quantisation of a layer's weight and input, steps initialised by a warm-up."""

    def _init_quant(self, opts: AQDOptions):
        self.bits, self.warmup, self.grad_mode = opts.bits, opts.warmup_batches, opts.grad_scale
        channels = opts.weight_steps == "channel"
        self.w_step = nn.Parameter(torch.ones(self.weight.shape[0] if channels else ()))
        self.a_step = nn.Parameter(torch.ones(()))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # warm-up batches seen this task
        self.register_buffer("w_clip", torch.zeros(()))  # running means of max|w| and max|x| over them
        self.register_buffer("a_clip", torch.zeros(()))

    @property
    def w_range(self) -> tuple[int, int]:
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

    @property
    def a_range(self) -> tuple[int, int]:
        return self.w_range if bool(self.a_signed) else (0, (1 << self.bits) - 1)

    def _w_step(self) -> torch.Tensor:
        """The weight step broadcast over the weight (one per output channel, or one)."""
        return self.w_step.view(-1, *[1] * (self.weight.dim() - 1)) if self.w_step.dim() else self.w_step

    def reset_steps(self) -> None:
        """A new task: steps from its own warm-up (the weight step from the weights until then)."""
        with torch.no_grad():
            self.seen.zero_()
            self.a_signed.fill_(False)
            self.w_clip.copy_(self.weight.abs().max())
            self.a_clip.zero_()
            self.w_step.fill_(float(self.w_clip.clamp_min(1e-8)) / self.w_range[1])

    def _observe(self, x: torch.Tensor) -> None:
        """One warm-up batch: running means of the ranges, as the reference's init_based_on_warmup."""
        with torch.no_grad():
            i = int(self.seen) + 1
            self.w_clip.mul_(i - 1).add_(self.weight.abs().max()).div_(i)
            self.a_clip.mul_(i - 1).add_(x.abs().max()).div_(i)
            self.a_signed.logical_or_(x.min() < 0)
            self.seen.fill_(i)
            if i == self.warmup:
                self._set_steps()

    def _set_steps(self) -> None:
        with torch.no_grad():
            self.w_step.fill_(float(self.w_clip.clamp_min(1e-8)) / self.w_range[1])
            self.a_step.fill_(float(self.a_clip.clamp_min(1e-8)) / self.a_range[1])

    def warming_up(self) -> bool:
        return int(self.seen) < self.warmup

    def finish_warmup(self) -> None:
        """Training ended inside the warm-up: steps from the batches seen (if any)."""
        if 0 < int(self.seen) < self.warmup:
            self._set_steps()
            self.seen.fill_(self.warmup)

    def _grad_scale(self, n: int, qp: int) -> float | None:
        """The step's gradient factor: lsq 1/sqrt(n Qp); none (the reference) 1/Qp^2, because SGD on
        ``s = c / Qp`` with that factor moves s exactly as the reference's SGD moves its clip ``c``."""
        if not self.training:
            return None
        return 1.0 / (n * qp) ** 0.5 if self.grad_mode == "lsq" else 1.0 / qp ** 2

    def weight_q(self) -> torch.Tensor:
        qn, qp = self.w_range
        n = self.weight.numel() // max(self.w_step.numel(), 1)
        return quantize(self.weight, self._w_step(), qn, qp, self._grad_scale(n, qp))

    def int_weight(self) -> torch.Tensor:
        self.finish_warmup()
        qn, qp = self.w_range
        with torch.no_grad():
            return torch.clamp(self.weight / self._w_step(), qn, qp).round().to(torch.int32)

    def act_q(self, x: torch.Tensor) -> torch.Tensor:
        qn, qp = self.a_range
        return quantize(x, self.a_step, qn, qp, self._grad_scale(x[0].numel(), qp))

    def quantised_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, weight) for the forward: full precision during the warm-up, quantised after."""
        if self.training and self.warming_up():  # every warm-up batch in fp32, as the reference's `stable`
            self._observe(x)
            return x, self.weight
        elif not self.training:
            self.finish_warmup()
        return self.act_q(x), self.weight_q()


class QuantConv2d(QuantMixin, nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, opts: AQDOptions):
        nn.Conv2d.__init__(self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self._init_quant(opts)

    def forward(self, x):
        x, w = self.quantised_inputs(x)
        return self._conv_forward(x, w, self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    def __init__(self, lin: nn.Linear, opts: AQDOptions):
        nn.Linear.__init__(self, lin.in_features, lin.out_features, lin.bias is not None)
        with torch.no_grad():
            self.weight.copy_(lin.weight)
            if lin.bias is not None:
                self.bias.copy_(lin.bias)
        self._init_quant(opts)

    def forward(self, x):
        x, w = self.quantised_inputs(x)
        return F.linear(x, w, self.bias)


def quantize_model(model: nn.Module, opts: AQDOptions) -> nn.Module:
    """Swap the quantised layers in (in place): every conv but the first, and the head if asked."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    first = convs[0] if convs and opts.full_precision_first else None
    replace_layers(model, nn.Conv2d, lambda name, conv: QuantConv2d(conv, opts), skip=lambda n: n == first)
    if not opts.full_precision_last:
        _quantize_head(model, opts)
    return model


def _quantize_head(model: nn.Module, opts: AQDOptions) -> None:
    head = get_head(model)
    if type(head) is nn.Linear:
        set_head(model, QuantLinear(head, opts))


def quant_layers(model: nn.Module) -> list[tuple[str, QuantMixin]]:
    return list(layers_of(model, QuantMixin))


@METHODS.register("aqd")
class AQD(TaskIncrementalStrategy):
    name = "aqd"
    Options = AQDOptions

    def __init__(self, *, model, optimizer, criterion=None, options: AQDOptions | None = None,
                 pretrained_state=None, **kw):
        opts = options or AQDOptions()
        pretrained_state = pretrained_state if pretrained_state is not None else state_copy(model)
        quantize_model(model, opts)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, options=opts,
                         pretrained_state=pretrained_state, **kw)

    def prepare_task(self, t, num_classes):
        if t > 0:  # an independent network per task: back to the pretrained weights
            state = {k: v for k, v in self.assets.pretrained_state.items() if not k.startswith(f"{head_name(self.model)}.")}
            self.model.load_state_dict(state, strict=False)
            set_head(self.model, self.task_head(t, num_classes))  # restarts: from the pretrained head
            if not self.opts.full_precision_last:
                _quantize_head(self.model, self.opts)
        for _, m in quant_layers(self.model):
            m.reset_steps()

    def make_optimizer(self, **kwargs):
        steps = [p for _, m in quant_layers(self.model) for p in (m.w_step, m.a_step)]
        ids = {id(p) for p in steps}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        groups = [{"params": rest, "weight_decay": self.cfg.weight_decay}, {"params": steps, "weight_decay": 0.0}]
        if self.cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=self.cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                             nesterov=self.cfg.nesterov and self.cfg.momentum > 0)
        self.optimized_param_id = {}

    # -- storage ----------------------------------------------------------------------------
    def export_task(self, t, directory):
        K = 1 << self.opts.bits
        skip = {f"{n}.weight" for n, _ in quant_layers(self.model)}
        fields, layers = {"state": State({k: v for k, v in self.model.state_dict().items() if k not in skip})}, []
        for name, m in quant_layers(self.model):
            q = m.int_weight().cpu().numpy().reshape(-1).astype(np.int64)
            fields[f"q/{name}"] = Ints(q - m.w_range[0], K)
            layers.append({"name": name, "shape": list(m.weight.shape)})
        path = self.task_file(directory, t, "aqd")
        write_record(path, "aqd-task", fields, task=t, codec=self.opts.codec,
                     header={"arch": self.cfg.arch, "num_classes": self.task_classes[t], "bits": self.opts.bits,
                             "full_precision_first": self.opts.full_precision_first,
                             "full_precision_last": self.opts.full_precision_last, "layers": layers,
                             "weight_steps": self.opts.weight_steps})
        return [path]

    def read_task(self, t, directory) -> tuple[dict, dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """(header, float state, layer -> signed integer weights) of task ``t``."""
        rec = read_record(self.task_file(directory, t, "aqd"), "aqd-task", schema=AQD_TASK)
        bits = rec.header["bits"]
        ints = {lay["name"]: rec.ints(f"q/{lay['name']}", int(np.prod(lay["shape"])), 1 << bits) - (1 << (bits - 1))
                for lay in rec.header["layers"]}
        return rec.header, rec.state, ints

    def rebuild_task(self, t, directory):
        header, state, ints = self.read_task(t, directory)
        opts = AQDOptions(header["bits"], header["full_precision_first"], header["full_precision_last"],
                          weight_steps=header.get("weight_steps", "layer"))
        model = quantize_model(build_arch(header["arch"], header["num_classes"], self.assets.in_channels), opts)
        layers = dict(quant_layers(model))
        if set(layers) != {lay["name"] for lay in header["layers"]}:
            raise ArtifactError(f"task {t}: quantised layers in the AQD artifact differ from {header['arch']}'s")
        try:
            model.load_state_dict(state, strict=False)
            with torch.no_grad():
                for lay in header["layers"]:
                    m = layers[lay["name"]]
                    q = torch.from_numpy(ints[lay["name"]]).to(torch.float32).view(lay["shape"])
                    m.weight.copy_(q * m._w_step())
        except (RuntimeError, ValueError) as e:
            raise ArtifactError(f"task {t}: AQD artifact does not fit {header['arch']}: {e}") from None
        missing = set(model.state_dict()) - set(state) - {f"{n}.weight" for n in layers}
        if missing:
            raise ArtifactError(f"task {t}: AQD artifact lacks state entries {sorted(missing)[:5]}")
        return model.eval()

    # -- the paper's accounting (nws_avalanche.storage.paper_memory) -----------------------------------
    def paper_bytes(self, t, directory) -> int:
        """The integer weights as int16 + LZMA (as the NWS authors store codes) + the float state pickled."""
        _, state, ints = self.read_task(t, directory)
        return paper.lzma_int16_bytes(list(ints.values())) + paper.bn_and_rest_bytes(state)

    def task_summary(self, t):
        levels = {name: int(m.int_weight().unique().numel()) for name, m in quant_layers(self.model)}
        return {"levels_used": levels}
