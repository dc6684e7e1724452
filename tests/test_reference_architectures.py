"""Reference architectures as their libraries build them get no warning: at init (gw.check) and,
marked slow, over their first 200 steps of AdamW on a toy task (gw.watch). BERT and GPT-2 from
`transformers` configs (no download), nn.Transformer encoders pre-LN and post-LN, a small ResNet
with BatchNorm, an LSTM classifier with its forget-gate bias at 1."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradwatch as gw

transformers = pytest.importorskip("transformers")


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(cfg)
    x = torch.randint(0, 100, (16, 16))
    return model, {"input_ids": x, "labels": x[:, 0] % 2}, None


def _gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=100,
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(cfg)
    x = torch.randint(0, 100, (16, 16))
    return model, {"input_ids": x, "labels": x}, None


class Encoder(nn.Module):
    def __init__(self, norm_first: bool):
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        layer = nn.TransformerEncoderLayer(
            64, 4, 128, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def _encoder(norm_first: bool):
    def build():
        x = torch.randint(0, 50, (32, 12))
        return Encoder(norm_first), x, x[:, 0] % 2

    return build


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.b2(self.c2(self.relu(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[Block(16) for _ in range(3)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _resnet():
    x = torch.randn(32, 1, 8, 8)
    return ResNet(), x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()


class LSTMClassifier(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.emb = nn.Embedding(20, 32)
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():  # forget gate (second quarter) at 1: b_ih + b_hh = 0.5 + 0.5
            for name, p in self.lstm.named_parameters():
                if "bias" in name:
                    p.zero_()
                    p[hidden : 2 * hidden] = 0.5

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(out[:, -1])


def _lstm():
    x = torch.randint(0, 20, (32, 20))
    return LSTMClassifier(), x, x[:, -1] % 2


MODELS = {
    "bert": _bert,
    "gpt2": _gpt2,
    "transformer_pre_ln": _encoder(True),
    "transformer_post_ln": _encoder(False),
    "resnet_bn": _resnet,
    "lstm_forget_bias_1": _lstm,
}


def _build(name: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MODELS[name]()


def _loss(model, x, y):
    return model(**x).loss if isinstance(x, dict) else nn.functional.cross_entropy(model(x), y)


def _warnings(d) -> list[str]:
    return [f"{f.kind}: {f.summary}" for f in d.findings if f.severity in ("warning", "error")]


@pytest.mark.parametrize("name", list(MODELS))
def test_reference_architecture_gets_no_warning_at_init(name):
    model, x, y = _build(name)
    d = gw.check(model, x) if isinstance(x, dict) else gw.check(model, x, y)
    assert _warnings(d) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_reference_architecture_gets_no_warning_over_200_steps(name):
    model, x, y = _build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gw.watch(model, optimizer=opt) as w:
        for _ in range(200):
            opt.zero_grad()
            loss = _loss(model, x, y)
            w.log_loss(loss)
            loss.backward()
            opt.step()
    assert _warnings(w.diagnose()) == []
