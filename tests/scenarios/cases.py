"""Training scenarios built to have one gradient problem each, or none.

A `Case` names the problem(s) it was built to have (`kinds`, empty when healthy), says why in
one line with its source, builds a fresh model, optimizer factory and deterministic data with
`build(seed)`, and may name a sibling `fix`: the same case with the remedy applied. Whether a case
really behaves as labelled is measured by training it (`tests/scenarios/label.py`), never by
gradwatch's detectors; the outcome is recorded in `tests/scenarios/labels.json`.

All data is made in code or comes from scikit-learn's bundled digits: nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite",
    "saturated_activation",
    "dead_units",
    "stalled_layer",
    "unstable_updates",
    "vanishing_through_time",
    "exploding_through_time",
    "loss_plateau",
)
FAMILIES = ("mlp", "cnn", "resnet", "transformer", "rnn", "lstm", "gru", "gan")
RECURRENT = ("rnn", "lstm", "gru")


@dataclass
class Setup:
    """Everything needed to train one case.

    `batch(step)` is deterministic: the same step gives the same (inputs, target); `batch(0)` is
    the batch an init-time check should use. `chance_loss` is the loss of the best predictor that
    ignores its inputs (None where that means nothing). `train_step`, when set, does one whole
    training step itself (a GAN: discriminator and generator) with `optimizers` and returns the
    generator loss; `quality()` is then the number (lower is better) that says whether it learns.
    """

    model: nn.Module
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    batch: Callable[[int], tuple[Any, Tensor]]
    loss_fn: Callable[[Any, Tensor], Tensor]
    steps: int
    chance_loss: float | None = None
    accuracy: Callable[[Any, Tensor], float] | None = None
    clip_grad_norm: float | None = None
    lr_lambda: Callable[[int], float] | None = None
    train_step: Callable[[int], Tensor] | None = None
    optimizers: tuple[torch.optim.Optimizer, ...] = ()
    quality: Callable[[], float] | None = None

    def check_args(self) -> tuple[Any, Tensor | None, Callable]:
        """(inputs, target, loss_fn) of batch 0 as `gw.check` takes them; a GAN's generator loss
        takes no target."""
        inputs, target = self.batch(0)
        if self.train_step is not None:
            return inputs, None, self.loss_fn
        return inputs, target, self.loss_fn

    def first_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the first training step, built with its scheduler, so its learning rate
        is the first one (a GAN: the generator's)."""
        return self.optimizers[0] if self.train_step is not None else Runner(self).optimizer


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    kinds: frozenset[str]
    description: str
    build: Callable[[int], Setup]
    fix: str | None = None

    @property
    def healthy(self) -> bool:
        return not self.kinds


class Runner:
    """The default training step: zero grads, forward, loss, backward, optional clipping, update.

    Split in two (`backward`, `update`) so a caller can look at gradients and weights between.
    """

    def __init__(self, setup: Setup):
        self.setup = setup
        self.optimizer = setup.make_optimizer(setup.model.parameters())
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, setup.lr_lambda)
            if setup.lr_lambda is not None
            else None
        )

    def backward(self, inputs: Any, target: Tensor) -> tuple[Tensor, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        output = self.setup.model(inputs)
        loss = self.setup.loss_fn(output, target)
        loss.backward()
        if self.setup.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.setup.model.parameters(), self.setup.clip_grad_norm)
        return loss.detach(), output

    def update(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def step(self, step: int) -> Tensor:
        loss, _ = self.backward(*self.setup.batch(step))
        self.update()
        return loss


# ---------------------------------------------------------------------------------------------
# Data: digits (scikit-learn, bundled), the adding problem, token histograms, a Gaussian mixture


@functools.cache
def _digits_raw() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def _digits(scale: float | None = 1.0, image: bool = False) -> tuple[Tensor, Tensor]:
    """Digits standardised per pixel and multiplied by `scale`; raw pixel values 0..16 if None."""
    x, y = _digits_raw()
    if scale is not None:
        std = x.std(0)
        x = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std)) * scale
    if image:
        x = x.view(-1, 1, 8, 8)
    return x, y


def _sampler(x: Tensor, y: Tensor, seed: int, batch_size: int) -> Callable[[int], tuple]:
    def batch(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randperm(len(x), generator=g)[:batch_size]
        return x[idx], y[idx]

    return batch


def _entropy(labels: Tensor) -> float:
    """Cross-entropy of the best input-independent predictor: the entropy of the labels (nats)."""
    p = torch.bincount(labels.flatten()).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def _adding(seed: int, length: int, batch_size: int) -> Callable[[int], tuple]:
    """Hochreiter & Schmidhuber 1997: (value, marker) pairs, two marked, target 0.5 + (X1+X2)/4."""

    def batch(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        values = torch.rand(batch_size, length, generator=g) * 2 - 1
        first = torch.randint(0, length // 2, (batch_size,), generator=g)
        second = torch.randint(length // 2, length, (batch_size,), generator=g)
        markers = torch.zeros(batch_size, length)
        rows = torch.arange(batch_size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = 0.5 + (values[rows, first] + values[rows, second]) / 4
        return torch.stack([values, markers], -1), target.unsqueeze(-1)

    return batch


ADDING_CHANCE = 1 / 24  # MSE of always predicting 0.5: Var((X1 + X2) / 4) with X ~ U[-1, 1]


def _histogram(seed: int, length: int, vocab: int, batch_size: int) -> Callable[[int], tuple]:
    """Weiss et al. 2021 (RASP): for each token, how many times it occurs in its sequence."""

    def batch(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        tokens = torch.randint(0, vocab, (batch_size, length), generator=g)
        counts = (tokens.unsqueeze(-1) == tokens.unsqueeze(-2)).sum(-1) - 1
        return tokens, counts

    return batch


@functools.cache
def _histogram_chance(length: int, vocab: int) -> float:
    return _entropy(_histogram(12345, length, vocab, 4096)(0)[1])


def _mixture(n: int, g: torch.Generator, modes: int = 8, radius: float = 2.0, std: float = 0.05):
    """Metz et al. 2017: a ring of `modes` 2-D Gaussians."""
    k = torch.randint(0, modes, (n,), generator=g)
    angle = 2 * math.pi * k / modes
    centre = torch.stack([angle.cos(), angle.sin()], -1) * radius
    return centre + std * torch.randn(n, 2, generator=g)


# ---------------------------------------------------------------------------------------------
# Losses and accuracies


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def cross_entropy(output: Any, target: Tensor) -> Tensor:
    logits = _first(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def class_accuracy(output: Any, target: Tensor) -> float:
    return float((_first(output).argmax(-1) == target).float().mean())


def mse(output: Any, target: Tensor) -> Tensor:
    return F.mse_loss(_first(output), target)


def adding_accuracy(output: Any, target: Tensor) -> float:
    return float(((_first(output) - target).abs() < 0.04).float().mean())


def naive_bce(output: Any, target: Tensor) -> Tensor:
    """Binary cross-entropy written out on sigmoid probabilities: log(0) once σ rounds to 0 or 1."""
    p = torch.sigmoid(_first(output)).squeeze(-1)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


def stable_bce(output: Any, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(_first(output).squeeze(-1), target)


def binary_accuracy(output: Any, target: Tensor) -> float:
    return float(((_first(output).squeeze(-1) > 0).float() == target).float().mean())


# ---------------------------------------------------------------------------------------------
# Initialisation


def init_weights(model: nn.Module, scheme: str, gain: float = 1.0, bias: float = 0.0) -> nn.Module:
    """Re-initialise every Linear and Conv weight; biases set to `bias`.

    Schemes: "he" (normal, std √(2/fan_in)), "xavier" (uniform, Glorot & Bengio's normalised
    init), "lecun" (normal, std √(1/fan_in)), "fan_in" (normal, std 1/√fan_in), "randn"
    (normal, std 1), "orthogonal". Every std is multiplied by `gain`.
    """
    for m in model.modules():
        if not isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            continue
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
        with torch.no_grad():
            if scheme == "he":
                nn.init.normal_(m.weight, 0.0, gain * math.sqrt(2.0 / fan_in))
            elif scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=gain)
            elif scheme in ("lecun", "fan_in"):
                nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
            elif scheme == "randn":
                nn.init.normal_(m.weight, 0.0, gain)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            if m.bias is not None:
                m.bias.fill_(bias)
    return model


# ---------------------------------------------------------------------------------------------
# Models


def mlp(
    n_in: int,
    width: int,
    depth: int,
    n_out: int,
    act: Callable[[], nn.Module],
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Sequential:
    """`depth` Linear layers: depth-1 blocks of Linear[, norm], activation, then a Linear head."""
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth - 1):
        layers.append(nn.Linear(d, width))
        if norm is not None:
            layers.append(norm(width))
        layers.append(act())
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def plain_cnn(depth: int, channels: int, act: Callable[[], nn.Module], bn: bool) -> nn.Sequential:
    """`depth` 3x3 convolutions on 8x8 images (stride 2 at a third and two thirds), then a head."""
    layers: list[nn.Module] = []
    c_in, c = 1, channels
    for i in range(depth):
        stride = 2 if i in (depth // 3, 2 * depth // 3) else 1
        c_out = c * 2 if stride == 2 else c
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(act())
        c_in = c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """He et al. 2016: relu(x + conv-bn-relu-conv-bn(x)); Fixup (Zhang et al. 2019) without BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.norm = norm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none")
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm == "none")
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        if norm == "bn":
            self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)
        else:
            self.bn1 = self.bn2 = nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out) if norm == "bn" else nn.Identity(),
            )
        if norm == "fixup":
            self.bias1a, self.bias1b, self.bias2a, self.bias2b = (
                nn.Parameter(torch.zeros(1)) for _ in range(4)
            )
            self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "fixup":
            out = self.relu1(self.conv1(x + self.bias1a) + self.bias1b)
            out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
            return self.relu2(out + self.shortcut(x + self.bias1a))
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016) for 8x8 digits: 3 stages of `blocks` BasicBlocks."""

    def __init__(self, blocks: int, width: int, norm: str):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=norm != "bn")
        self.stem_bn = nn.BatchNorm2d(width) if norm == "bn" else nn.Identity()
        self.stem_relu = nn.ReLU()
        layers, c = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(blocks):
                layers.append(BasicBlock(c, c_out, 2 if (stage > 0 and i == 0) else 1, norm))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)
        init_weights(self, "he")
        if norm == "fixup":
            # Fixup: scale each branch's first conv by L^(-1/2) (m = 2 layers per branch), zero its
            # last conv and the classifier, so every block starts as the identity.
            for block in self.layers:
                block.conv1.weight.data.mul_(len(self.layers) ** -0.5)
                block.conv2.weight.data.zero_()
            self.fc.weight.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        return self.fc(self.pool(self.layers(x)).flatten(1))


class Encoder(nn.Module):
    """Token and position embeddings, `n_layer` nn.TransformerEncoderLayer, a per-token head."""

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        n_classes: int,
        d: int,
        heads: int,
        n_layer: int,
        norm_first: bool,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.layers = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    d,
                    heads,
                    dim_feedforward=4 * d,
                    dropout=0.0,
                    batch_first=True,
                    norm_first=norm_first,
                )
                for _ in range(n_layer)
            )
        )
        self.norm = nn.LayerNorm(d) if norm_first else nn.Identity()
        self.head = nn.Linear(d, n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.layers(self.embed(tokens) + self.pos(positions))))


class SeqRegressor(nn.Module):
    """A recurrent layer read out at the last time step."""

    def __init__(self, kind: str, n_in: int, hidden: int, nonlinearity: str = "tanh"):
        super().__init__()
        if kind == "rnn":
            self.rnn = nn.RNN(n_in, hidden, batch_first=True, nonlinearity=nonlinearity)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class GAN(nn.Module):
    """Generator and discriminator; forward(z) = D(G(z)), the logit the generator is trained on."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, z: Tensor) -> Tensor:
        return self.discriminator(self.generator(z))


# ---------------------------------------------------------------------------------------------
# Builders: one per model family; each case is a builder with its settings fixed


def _sgd(lr: float, momentum: float = 0.9) -> Callable:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def _adam(lr: float) -> Callable:
    return lambda params: torch.optim.Adam(params, lr=lr)


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "gelu": nn.GELU,
}
_NORMS: dict[str, Callable[[int], nn.Module]] = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm}


def digits_mlp(
    seed: int,
    *,
    depth: int,
    act: str,
    init: str | None,
    gain: float = 1.0,
    bias: float = 0.0,
    width: int = 128,
    norm: str | None = None,
    optimizer: Callable | None = None,
    steps: int = 300,
    scale: float | None = 1.0,
    batch_size: int = 128,
    tiny_first: int = 0,
    tiny_last: int = 0,
) -> Setup:
    """An MLP classifying the 64-pixel digits into 10 classes with cross-entropy; the first
    `tiny_first` and the last `tiny_last` Linear layers get their weights multiplied by 1e-2."""
    torch.manual_seed(seed)
    model = mlp(64, width, depth, 10, _ACTS[act], _NORMS[norm] if norm else None)
    if init is not None:
        init_weights(model, init, gain, bias)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in linears[:tiny_first] + linears[len(linears) - tiny_last :]:
            layer.weight.mul_(1e-2)
    x, y = _digits(scale)
    return Setup(
        model=model,
        make_optimizer=optimizer or _sgd(0.05),
        batch=_sampler(x, y, seed, batch_size),
        loss_fn=cross_entropy,
        steps=steps,
        chance_loss=_entropy(y),
        accuracy=class_accuracy,
    )


def digits_binary_mlp(seed: int, *, loss: Callable, lr: float, steps: int = 200) -> Setup:
    """A ReLU MLP telling digits 0-4 from 5-9 with one logit and binary cross-entropy."""
    torch.manual_seed(seed)
    model = init_weights(mlp(64, 128, 6, 1, nn.ReLU), "he")
    x, y = _digits()
    return Setup(
        model=model,
        make_optimizer=_sgd(lr),
        batch=_sampler(x, (y >= 5).float(), seed, 128),
        loss_fn=loss,
        steps=steps,
        chance_loss=math.log(2),
        accuracy=binary_accuracy,
    )


def digits_cnn(
    seed: int,
    *,
    depth: int,
    act: str,
    bn: bool,
    init: str | None = None,
    gain: float = 1.0,
    channels: int = 16,
    optimizer: Callable | None = None,
    steps: int = 200,
) -> Setup:
    torch.manual_seed(seed)
    model = plain_cnn(depth, channels, _ACTS[act], bn)
    if init is not None:
        init_weights(model, init, gain)
    x, y = _digits(image=True)
    return Setup(
        model=model,
        make_optimizer=optimizer or _sgd(0.05),
        batch=_sampler(x, y, seed, 64),
        loss_fn=cross_entropy,
        steps=steps,
        chance_loss=_entropy(y),
        accuracy=class_accuracy,
    )


def digits_resnet(
    seed: int,
    *,
    blocks: int,
    norm: str,
    width: int = 16,
    optimizer: Callable | None = None,
    steps: int = 150,
) -> Setup:
    torch.manual_seed(seed)
    model = ResNet(blocks, width, norm)
    x, y = _digits(image=True)
    return Setup(
        model=model,
        make_optimizer=optimizer or _sgd(0.05),
        batch=_sampler(x, y, seed, 64),
        loss_fn=cross_entropy,
        steps=steps,
        chance_loss=_entropy(y),
        accuracy=class_accuracy,
    )


def _warmup(steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / steps)


def histogram_transformer(
    seed: int,
    *,
    n_layer: int,
    norm_first: bool,
    lr: float,
    warmup: int | None = None,
    d: int = 32,
    steps: int = 300,
    length: int = 12,
    vocab: int = 6,
    batch_size: int = 64,
) -> Setup:
    torch.manual_seed(seed)
    model = Encoder(vocab, length, length, d, 4, n_layer, norm_first)
    return Setup(
        model=model,
        make_optimizer=_adam(lr),
        batch=_histogram(seed, length, vocab, batch_size),
        loss_fn=cross_entropy,
        steps=steps,
        chance_loss=_histogram_chance(length, vocab),
        accuracy=class_accuracy,
        lr_lambda=_warmup(warmup) if warmup else None,
    )


def adding_rnn(
    seed: int,
    *,
    kind: str,
    length: int,
    lr: float,
    recurrent: str | None = None,
    gain: float = 1.0,
    nonlinearity: str = "tanh",
    clip: float | None = None,
    optimizer: str = "adam",
    steps: int = 400,
    hidden: int = 64,
    forget_bias: float | None = None,
) -> Setup:
    """A recurrent net on the adding problem; `recurrent` re-initialises W_hh ("orthogonal",
    "identity") times `gain`; `forget_bias` sets an LSTM's forget-gate bias (Gers et al. 2000)."""
    torch.manual_seed(seed)
    model = SeqRegressor(kind, 2, hidden, nonlinearity)
    if forget_bias is not None:
        with torch.no_grad():
            model.rnn.bias_ih_l0[hidden : 2 * hidden].fill_(forget_bias)
            model.rnn.bias_hh_l0[hidden : 2 * hidden].zero_()
    if recurrent is not None:
        w = model.rnn.weight_hh_l0
        with torch.no_grad():
            if recurrent == "orthogonal":
                nn.init.orthogonal_(w, gain=gain)
            elif recurrent == "identity":
                w.copy_(torch.eye(hidden) * gain)
                model.rnn.bias_hh_l0.zero_()
                model.rnn.bias_ih_l0.zero_()
            else:
                raise ValueError(recurrent)
    return Setup(
        model=model,
        make_optimizer=_adam(lr) if optimizer == "adam" else _sgd(lr),
        batch=_adding(seed, length, 64),
        loss_fn=mse,
        steps=steps,
        chance_loss=ADDING_CHANCE,
        accuracy=adding_accuracy,
        clip_grad_norm=clip,
    )


def mixture_gan(seed: int, *, saturating: bool, steps: int = 500) -> Setup:
    """Goodfellow et al. 2014 on a ring of 8 Gaussians, both nets trained by SGD with momentum.

    The discriminator is first trained alone (300 steps) until it rejects the untrained
    generator's samples with logits around -10: the situation early in GAN training in which the
    saturating loss gives the generator (almost) no gradient.
    """
    torch.manual_seed(seed)
    generator = nn.Sequential(
        nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2)
    )
    discriminator = nn.Sequential(
        nn.Linear(2, 128),
        nn.LeakyReLU(0.2),
        nn.Linear(128, 128),
        nn.LeakyReLU(0.2),
        nn.Linear(128, 1),
    )
    model = GAN(generator, discriminator)
    g_opt = torch.optim.SGD(generator.parameters(), lr=0.01, momentum=0.5)
    d_opt = torch.optim.SGD(discriminator.parameters(), lr=0.05, momentum=0.5)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return torch.randn(128, 8, generator=g), _mixture(128, g)

    def generator_loss(logit: Tensor, _target: Tensor | None = None) -> Tensor:
        if saturating:
            return -F.softplus(logit).mean()  # log(1 - D(G(z))), minimised
        return F.softplus(-logit).mean()  # -log D(G(z))

    def discriminator_step(z: Tensor, real: Tensor) -> None:
        d_opt.zero_grad(set_to_none=True)
        fake = generator(z).detach()
        loss = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake)).mean()
        loss.backward()
        d_opt.step()

    for step in range(300):
        discriminator_step(*batch(10_000_000 + step))

    def train_step(step: int) -> Tensor:
        z, real = batch(step)
        discriminator_step(z, real)
        g_opt.zero_grad(set_to_none=True)
        loss = generator_loss(model(z))
        loss.backward()
        g_opt.step()
        return loss.detach()

    eval_g = torch.Generator().manual_seed(seed * 1_000_003 + 999_999)
    eval_z = torch.randn(1024, 8, generator=eval_g)
    angle = 2 * math.pi * torch.arange(8) / 8
    modes = torch.stack([angle.cos(), angle.sin()], -1) * 2.0

    def quality() -> float:
        """Chamfer distance between samples and the 8 modes: mean distance of a sample to its
        nearest mode plus mean distance of a mode to its nearest sample (0 = perfect)."""
        with torch.no_grad():
            d = torch.cdist(generator(eval_z), modes)
        return float(d.min(1).values.mean() + d.min(0).values.mean())

    return Setup(
        model=model,
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.5),
        batch=batch,
        loss_fn=generator_loss,
        steps=steps,
        train_step=train_step,
        optimizers=(g_opt, d_opt),
        quality=quality,
    )


# ---------------------------------------------------------------------------------------------
# The cases


def _case(name, family, kinds, description, build, fix=None, **settings) -> Case:
    return Case(
        name, family, frozenset(kinds), description, functools.partial(build, **settings), fix
    )


VG, EG, NF, SA, DU, SL, UU, VT, ET, LP = KINDS

CASES: list[Case] = [
    # --- MLPs on digits ---------------------------------------------------------------------
    _case(
        "mlp-sigmoid-10-standard-init",
        "mlp",
        {VG},
        "Glorot & Bengio 2010: 10-layer sigmoid MLP, standard init U[±1/√n] (PyTorch's default); "
        "σ' ≤ 1/4 shrinks the back-propagated signal at every layer",
        digits_mlp,
        fix="mlp-sigmoid-10-batchnorm",
        depth=10,
        act="sigmoid",
        init=None,
    ),
    _case(
        "mlp-sigmoid-10-batchnorm",
        "mlp",
        set(),
        "Ioffe & Szegedy 2015: the same 10-layer sigmoid MLP with BatchNorm before each sigmoid",
        digits_mlp,
        depth=10,
        act="sigmoid",
        init=None,
        norm="bn",
    ),
    _case(
        "mlp-tanh-20-default-init",
        "mlp",
        {VG},
        "Poole et al. 2016: 20-layer tanh MLP with PyTorch's default init (σ_w² = 1/3, ordered "
        "phase, χ₁ ≈ 1/3 per layer)",
        digits_mlp,
        fix="mlp-tanh-20-xavier",
        depth=20,
        act="tanh",
        init=None,
    ),
    _case(
        "mlp-tanh-20-xavier",
        "mlp",
        set(),
        "Glorot & Bengio 2010: 20-layer tanh MLP with normalised (Xavier) init",
        digits_mlp,
        depth=20,
        act="tanh",
        init="xavier",
    ),
    _case(
        "mlp-relu-20-default-init",
        "mlp",
        {VG},
        "He et al. 2015: 20-layer ReLU MLP with PyTorch's default init (variance 1/(3·fan_in)): "
        "the signal shrinks ×1/6 in variance per layer",
        digits_mlp,
        fix="mlp-relu-20-he",
        depth=20,
        act="relu",
        init=None,
        optimizer=_sgd(0.01),
    ),
    _case(
        "mlp-relu-20-he",
        "mlp",
        set(),
        "He et al. 2015: 20-layer ReLU MLP with He init (std √(2/fan_in))",
        digits_mlp,
        depth=20,
        act="relu",
        init="he",
        optimizer=_sgd(0.01),
    ),
    _case(
        "mlp-relu-30-xavier",
        "mlp",
        {VG},
        "He et al. 2015: 30-layer ReLU MLP with Xavier init; variance halves per layer both ways, "
        "so weight gradients look level while the back-propagated signal vanishes",
        digits_mlp,
        fix="mlp-relu-30-he",
        depth=30,
        width=64,
        act="relu",
        init="xavier",
        optimizer=_sgd(0.01),
    ),
    _case(
        "mlp-relu-30-he",
        "mlp",
        set(),
        "He et al. 2015: 30-layer ReLU MLP with He init",
        digits_mlp,
        depth=30,
        width=64,
        act="relu",
        init="he",
        optimizer=_sgd(0.01),
    ),
    _case(
        "mlp-relu-10-large-init",
        "mlp",
        {EG},
        "10-layer ReLU MLP with 2× He std: activations and back-propagated gradients grow ×2 per "
        "layer together, so the first/last weight-gradient ratio stays near 1 while both are huge",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        gain=2.0,
    ),
    _case(
        "mlp-relu-10-he",
        "mlp",
        set(),
        "He et al. 2015: 10-layer ReLU MLP with He init, SGD lr 0.05",
        digits_mlp,
        depth=10,
        act="relu",
        init="he",
    ),
    _case(
        "mlp-relu-10-sgd-lr-too-high",
        "mlp",
        {EG, UU},
        "10-layer He-init ReLU MLP with SGD lr 1.0 (20× too high): each step overshoots, "
        "gradients and the loss blow up",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        optimizer=_sgd(1.0),
    ),
    _case(
        "mlp-relu-10-fp32-overflow",
        "mlp",
        {NF, EG},
        "10-layer He-init ReLU MLP with SGD lr 10: weights and logits grow until fp32 overflows "
        "to inf and the loss becomes NaN",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        optimizer=_sgd(10.0, momentum=0.0),
    ),
    _case(
        "mlp-naive-bce",
        "mlp",
        {NF},
        "Binary cross-entropy written as -log σ(z): σ rounds to exactly 0 or 1 in fp32 once |z| "
        "> 17, log(0) = -inf and the gradient is NaN",
        digits_binary_mlp,
        fix="mlp-stable-bce",
        loss=naive_bce,
        lr=0.1,
    ),
    _case(
        "mlp-stable-bce",
        "mlp",
        set(),
        "The same MLP with binary_cross_entropy_with_logits (log-sum-exp, never log(0))",
        digits_binary_mlp,
        loss=stable_bce,
        lr=0.1,
    ),
    _case(
        "mlp-relu-10-adam-lr-too-high",
        "mlp",
        {UU, DU},
        "10-layer He-init ReLU MLP with Adam lr 0.05 (50× too high): every step moves the weights "
        "by a large fraction of their norm and kills most ReLUs",
        digits_mlp,
        fix="mlp-relu-10-adam",
        depth=10,
        act="relu",
        init="he",
        optimizer=_adam(0.05),
    ),
    _case(
        "mlp-relu-10-adam",
        "mlp",
        set(),
        "10-layer He-init ReLU MLP with Adam lr 1e-3",
        digits_mlp,
        depth=10,
        act="relu",
        init="he",
        optimizer=_adam(1e-3),
    ),
    _case(
        "mlp-relu-10-dying",
        "mlp",
        {DU},
        "Lu et al. 2019 (dying ReLU): 10-layer He-init ReLU MLP with Adam lr 0.02; early large "
        "steps push units negative for every input and they never come back",
        digits_mlp,
        fix="mlp-relu-10-adam",
        depth=10,
        act="relu",
        init="he",
        optimizer=_adam(0.02),
    ),
    _case(
        "mlp-relu-10-negative-bias",
        "mlp",
        {DU},
        "10-layer He-init ReLU MLP with biases -3: almost every unit is zero for every input",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        bias=-3.0,
    ),
    _case(
        "mlp-tanh-8-huge-weights",
        "mlp",
        {SA},
        "LeCun et al. 1998: 8-layer tanh MLP with weights std 5/√fan_in; most units sit in "
        "tanh's flat region",
        digits_mlp,
        fix="mlp-tanh-8-xavier",
        depth=8,
        act="tanh",
        init="fan_in",
        gain=5.0,
    ),
    _case(
        "mlp-tanh-8-xavier",
        "mlp",
        set(),
        "8-layer tanh MLP with Xavier init",
        digits_mlp,
        depth=8,
        act="tanh",
        init="xavier",
    ),
    _case(
        "mlp-sigmoid-6-saturating-bias",
        "mlp",
        {SA},
        "6-layer Xavier-init sigmoid MLP with biases +6: every sigmoid outputs ≈1 with "
        "σ' ≈ 0.0025, the hidden code carries no information and no gradient",
        digits_mlp,
        fix="mlp-sigmoid-6-batchnorm",
        depth=6,
        act="sigmoid",
        init="xavier",
        bias=6.0,
    ),
    _case(
        "mlp-sigmoid-6-batchnorm",
        "mlp",
        set(),
        "The same 6-layer sigmoid MLP (biases +6) with BatchNorm before each sigmoid",
        digits_mlp,
        depth=6,
        act="sigmoid",
        init="xavier",
        bias=6.0,
        norm="bn",
    ),
    _case(
        "mlp-relu-10-tiny-init-first-layers",
        "mlp",
        {SL},
        "10-layer ReLU MLP, He init except the first 3 layers ×1e-2: their gradients pass "
        "through the other tiny layers and the early layers look frozen",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        tiny_first=3,
    ),
    _case(
        "mlp-relu-10-tiny-init-last-layers",
        "mlp",
        {SL},
        "10-layer ReLU MLP, He init except the last 3 layers ×1e-2 (an over-cautious small head): "
        "the signal reaching the early layers is ×1e-6 and they stay frozen while the head moves",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        tiny_last=3,
    ),
    _case(
        "mlp-relu-10-zero-init",
        "mlp",
        {LP},
        "10-layer ReLU MLP with all weights zero: every hidden gradient is exactly zero and the "
        "net predicts the class prior forever (loss = chance)",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        gain=0.0,
    ),
    _case(
        "mlp-relu-10-lr-too-small",
        "mlp",
        {LP},
        "10-layer He-init ReLU MLP with SGD lr 1e-5: the loss sits at its initial level",
        digits_mlp,
        fix="mlp-relu-10-he",
        depth=10,
        act="relu",
        init="he",
        optimizer=_sgd(1e-5),
    ),
    _case(
        "mlp-selu-20-lecun",
        "mlp",
        set(),
        "Klambauer et al. 2017: 20-layer SELU MLP with LeCun-normal init self-normalises",
        digits_mlp,
        depth=20,
        act="selu",
        init="lecun",
        optimizer=_sgd(0.01),
    ),
    _case(
        "mlp-gelu-12-layernorm",
        "mlp",
        set(),
        "Ba et al. 2016: 12-layer GELU MLP with LayerNorm before each activation, Adam",
        digits_mlp,
        depth=12,
        act="gelu",
        init=None,
        norm="ln",
        optimizer=_adam(1e-3),
    ),
    # --- CNNs and ResNets on 8x8 digits ------------------------------------------------------
    _case(
        "cnn-sigmoid-10-plain",
        "cnn",
        {VG},
        "10-layer plain sigmoid CNN, PyTorch default init: σ' ≤ 1/4 at every layer",
        digits_cnn,
        fix="cnn-sigmoid-10-batchnorm",
        depth=10,
        act="sigmoid",
        bn=False,
    ),
    _case(
        "cnn-sigmoid-10-batchnorm",
        "cnn",
        set(),
        "The same 10-layer sigmoid CNN with BatchNorm before each sigmoid",
        digits_cnn,
        depth=10,
        act="sigmoid",
        bn=True,
    ),
    _case(
        "cnn-relu-10-batchnorm",
        "cnn",
        set(),
        "10-layer ReLU CNN with BatchNorm, default init",
        digits_cnn,
        depth=10,
        act="relu",
        bn=True,
    ),
    _case(
        "resnet-20-batchnorm",
        "resnet",
        set(),
        "He et al. 2016: ResNet-20 (3 stages × 3 BasicBlocks) with BatchNorm",
        digits_resnet,
        blocks=3,
        norm="bn",
    ),
    _case(
        "resnet-32-no-norm",
        "resnet",
        {EG},
        "Zhang et al. 2019: ResNet-32 without normalisation, He-init branches: every block adds "
        "its branch's variance, so activations and gradients grow with depth",
        digits_resnet,
        fix="resnet-32-fixup",
        blocks=5,
        norm="none",
    ),
    _case(
        "resnet-32-fixup",
        "resnet",
        set(),
        "Zhang et al. 2019: ResNet-32 without normalisation, Fixup init (scaled, zeroed branches)",
        digits_resnet,
        blocks=5,
        norm="fixup",
    ),
    # --- transformers on token histograms --------------------------------------------------
    _case(
        "transformer-preln-6",
        "transformer",
        set(),
        "Xiong et al. 2020: 6-layer Pre-LN encoder trains at Adam lr 3e-3 without warm-up",
        histogram_transformer,
        n_layer=6,
        norm_first=True,
        lr=3e-3,
    ),
    _case(
        "transformer-postln-6-warmup",
        "transformer",
        set(),
        "Vaswani et al. 2017: 6-layer Post-LN encoder, Adam lr 3e-3 with 100 steps of warm-up",
        histogram_transformer,
        n_layer=6,
        norm_first=False,
        lr=3e-3,
        warmup=100,
    ),
    _case(
        "transformer-postln-6-no-warmup",
        "transformer",
        {UU},
        "Xiong et al. 2020: 6-layer Post-LN encoder at Adam lr 1e-2 without warm-up: the "
        "first updates move weights by a large fraction of their norm and it never recovers",
        histogram_transformer,
        fix="transformer-postln-6-warmup",
        n_layer=6,
        norm_first=False,
        lr=1e-2,
    ),
    # --- recurrent nets on the adding problem (T = 30) -------------------------------------
    _case(
        "rnn-tanh-adding-small-recurrent",
        "rnn",
        {VT},
        "Bengio et al. 1994: tanh RNN with W_hh orthogonal × 0.5 (largest singular value < 1): "
        "∂L/∂h_t shrinks ≥ ×2 per step back, the net stays at the 1/24 baseline",
        adding_rnn,
        fix="lstm-adding",
        kind="rnn",
        length=30,
        lr=1e-3,
        recurrent="orthogonal",
        gain=0.5,
    ),
    _case(
        "rnn-tanh-adding-default-init",
        "rnn",
        {VT},
        "Hochreiter & Schmidhuber 1997: tanh RNN with PyTorch's default init on the adding "
        "problem stays at the 1/24 baseline",
        adding_rnn,
        fix="gru-adding",
        kind="rnn",
        length=30,
        lr=1e-3,
    ),
    _case(
        "lstm-adding",
        "lstm",
        set(),
        "Hochreiter & Schmidhuber 1997; Gers et al. 2000: LSTM (forget-gate bias 1) on the adding "
        "problem",
        adding_rnn,
        kind="lstm",
        length=30,
        lr=3e-3,
        forget_bias=1.0,
    ),
    _case(
        "gru-adding",
        "gru",
        set(),
        "Cho et al. 2014: GRU on the adding problem",
        adding_rnn,
        kind="gru",
        length=30,
        lr=3e-3,
        steps=300,
    ),
    _case(
        "rnn-relu-adding-scaled-identity",
        "rnn",
        {ET},
        "Le et al. 2015 gone wrong: ReLU RNN with W_hh = 1.2·I: h_t and ∂L/∂h_t grow ×1.2 per "
        "step (×240 over 30 steps); the remedy is a gated unit",
        adding_rnn,
        fix="gru-adding",
        kind="rnn",
        length=30,
        lr=1e-2,
        recurrent="identity",
        gain=1.2,
        nonlinearity="relu",
        optimizer="sgd",
    ),
    _case(
        "rnn-tanh-adding-large-recurrent",
        "rnn",
        {ET},
        "Pascanu et al. 2013: tanh RNN with W_hh orthogonal × 3: chaotic dynamics, gradients "
        "grow backwards in time; the remedy is a gated unit",
        adding_rnn,
        fix="lstm-adding",
        kind="rnn",
        length=30,
        lr=1e-2,
        recurrent="orthogonal",
        gain=3.0,
        optimizer="sgd",
    ),
    # --- GAN ------------------------------------------------------------------------------------
    _case(
        "gan-saturating",
        "gan",
        {VG},
        "Goodfellow et al. 2014: generator trained on log(1 - D(G(z))) against a discriminator "
        "that rejects its samples: D(G(z)) ≈ 0 and the generator's gradient vanishes",
        mixture_gan,
        fix="gan-non-saturating",
        saturating=True,
    ),
    _case(
        "gan-non-saturating",
        "gan",
        set(),
        "Goodfellow et al. 2014: the same GAN with the non-saturating generator loss -log D(G(z))",
        mixture_gan,
        saturating=False,
    ),
]

CASES_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
