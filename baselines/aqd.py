"""AQD-style quantised fine-tuning (Chen et al., CVPR 2021): one ``bits``-bit network per task.

Each task fine-tunes its own copy of the pretrained network with the weights and the input
activations of every conv (the first conv and the head excepted by default) quantised by a
learned step size per layer, LSQ style:

    q    = round(clamp(x / s, Qn, Qp))       x_hat = q * s
    weights: Qn = -2^(b-1), Qp = 2^(b-1) - 1        activations: Qn = 0, Qp = 2^b - 1
             (signed activations, if the layer's first batch has negatives, use the weight range)
    training: rounding is straight-through; the gradient reaching s is scaled by
              1 / sqrt(numel * Qp) (numel of the weight, or of one sample's activation)
    init: s_w = 2 mean|w| / sqrt(Qp); s_a = 2 mean|x| / sqrt(Qp) on the first training batch.

In eval mode rounding is plain ``round``, so a model rebuilt from the stored integers gives
bit-identical logits. Stored per task (``taskNNN.aqd``): the integer weights packed at ``bits``
bits, the step sizes, the full-precision layers, BatchNorm and head. Nothing is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nws_avalanche.artifact import load_state_artifact, save_state_artifact
from nws_avalanche.codecs import BitPack
from nws_avalanche.config import method_options
from nws_avalanche.errors import ArtifactError, ConfigError
from nws_avalanche.methods import METHODS
from nws_avalanche.models import build_arch, get_head, head_name, set_head
from nws_avalanche.template import TaskIncrementalStrategy, pretrained_with_head

from .surgery import layers_of, replace_layers


@dataclass
class AQDOptions:
    bits: int = 9                      # weight and activation bit width
    full_precision_first: bool = True  # keep the first conv in fp32
    full_precision_last: bool = True   # keep the head in fp32

    def __post_init__(self):  # checked by the runner before anything is written
        if not 2 <= self.bits <= 16:
            raise ConfigError(f"aqd.bits must be in 2..16 (got {self.bits}); the paper's setting is 9")


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
    """Learned-step quantisation of a layer's weight and input."""

    def _init_quant(self, bits: int):
        self.bits = bits
        self.w_step = nn.Parameter(torch.ones(()))
        self.a_step = nn.Parameter(torch.ones(()))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("a_ready", torch.zeros((), dtype=torch.bool))

    @property
    def w_range(self) -> tuple[int, int]:
        return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1

    @property
    def a_range(self) -> tuple[int, int]:
        return self.w_range if bool(self.a_signed) else (0, (1 << self.bits) - 1)

    def reset_steps(self) -> None:
        with torch.no_grad():
            self.w_step.fill_(2 * self.weight.abs().mean().clamp_min(1e-8) / self.w_range[1] ** 0.5)
            self.a_ready.fill_(False)

    def weight_q(self) -> torch.Tensor:
        qn, qp = self.w_range
        g = 1.0 / (self.weight.numel() * qp) ** 0.5 if self.training else None
        return quantize(self.weight, self.w_step, qn, qp, g)

    def int_weight(self) -> torch.Tensor:
        qn, qp = self.w_range
        with torch.no_grad():
            return torch.clamp(self.weight / self.w_step, qn, qp).round().to(torch.int32)

    def act_q(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.a_ready):
            with torch.no_grad():
                self.a_signed.fill_(bool(x.min() < 0))
                self.a_step.fill_(2 * x.abs().mean().clamp_min(1e-8) / self.a_range[1] ** 0.5)
                self.a_ready.fill_(True)
        qn, qp = self.a_range
        g = 1.0 / (x[0].numel() * qp) ** 0.5 if self.training else None
        return quantize(x, self.a_step, qn, qp, g)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, bits: int):
        nn.Conv2d.__init__(self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        self._init_quant(bits)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x):
        return self._conv_forward(self.act_q(x), self.weight_q(), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    def __init__(self, lin: nn.Linear, bits: int):
        nn.Linear.__init__(self, lin.in_features, lin.out_features, lin.bias is not None)
        self._init_quant(bits)
        with torch.no_grad():
            self.weight.copy_(lin.weight)
            if lin.bias is not None:
                self.bias.copy_(lin.bias)

    def forward(self, x):
        return F.linear(self.act_q(x), self.weight_q(), self.bias)


def quantize_model(model: nn.Module, opts: AQDOptions) -> nn.Module:
    """Swap the quantised layers in (in place): every conv but the first, and the head if asked."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    first = convs[0] if convs and opts.full_precision_first else None
    replace_layers(model, nn.Conv2d, lambda name, conv: QuantConv2d(conv, opts.bits), skip=lambda n: n == first)
    if not opts.full_precision_last:
        _quantize_head(model, opts)
    return model


def _quantize_head(model: nn.Module, opts: AQDOptions) -> None:
    head = get_head(model)
    if type(head) is nn.Linear:
        set_head(model, QuantLinear(head, opts.bits))


def quant_layers(model: nn.Module) -> list[tuple[str, QuantMixin]]:
    return list(layers_of(model, QuantMixin))


@METHODS.register("aqd")
class AQD(TaskIncrementalStrategy):
    name = "aqd"
    Options = AQDOptions

    def __init__(self, *, cfg, assets, task_classes, progress=None):
        opts = method_options(cfg, "aqd", AQDOptions)
        model = pretrained_with_head(assets, task_classes[0], cfg.seed, cfg.head_init)
        quantize_model(model, opts)
        super().__init__(cfg=cfg, assets=assets, task_classes=task_classes, model=model, options=opts,
                         progress=progress)

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
        layers, blobs = [], {}
        for name, m in quant_layers(self.model):
            q = m.int_weight().cpu().numpy().reshape(-1)
            blobs[f"q/{name}"] = BitPack.encode(q - m.w_range[0], K)
            layers.append({"name": name, "shape": list(m.weight.shape)})
        skip = {f"{n}.weight" for n, _ in quant_layers(self.model)}
        state = {k: v for k, v in self.model.state_dict().items() if k not in skip}
        path = self.task_file(directory, t, "aqd")
        save_state_artifact(path, state, kind="aqd-task", task=t, extra_blobs=blobs,
                            header={"arch": self.cfg.arch, "num_classes": self.task_classes[t], "bits": self.opts.bits,
                                    "full_precision_first": self.opts.full_precision_first,
                                    "full_precision_last": self.opts.full_precision_last, "layers": layers})
        return [path]

    def rebuild_task(self, t, directory):
        header, state, blobs = load_state_artifact(self.task_file(directory, t, "aqd"), "aqd-task")
        opts = AQDOptions(header["bits"], header["full_precision_first"], header["full_precision_last"])
        model = quantize_model(build_arch(header["arch"], header["num_classes"], self.assets.in_channels), opts)
        layers = dict(quant_layers(model))
        if set(layers) != {lay["name"] for lay in header["layers"]}:
            raise ArtifactError(f"task {t}: quantised layers in the AQD artifact differ from {header['arch']}'s")
        try:
            model.load_state_dict(state, strict=False)
            with torch.no_grad():
                for lay in header["layers"]:
                    m = layers[lay["name"]]
                    n = m.weight.numel()
                    q = BitPack.decode(blobs[f"q/{lay['name']}"], n, 1 << header["bits"]) + m.w_range[0]
                    m.weight.copy_(torch.from_numpy(q).to(torch.float32).view(lay["shape"]) * m.w_step)
        except (RuntimeError, ValueError) as e:
            raise ArtifactError(f"task {t}: AQD artifact does not fit {header['arch']}: {e}") from None
        missing = set(model.state_dict()) - set(state) - {f"{n}.weight" for n in layers}
        if missing:
            raise ArtifactError(f"task {t}: AQD artifact lacks state entries {sorted(missing)[:5]}")
        return model.eval()
