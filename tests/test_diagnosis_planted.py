"""Plant one fault per run in a small real training run and check FitDiagnosis names it.

The model is a plain user LightningModule (not ours) that logs ``val_loss``: FitDiagnosis must
work with any module. Data: scikit-learn's bundled digits (no download), 64 features, 10 classes.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle import FitDiagnosis, Symptom
from lightning_mlcycle.diagnosis import FitState


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    b = load_digits()
    x, y = torch.tensor(b.data, dtype=torch.float32), torch.tensor(b.target)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[p], y[p]


X, Y = _digits()


class UserClassifier(pl.LightningModule):
    """What a user writes: a net, cross-entropy, Adam or SGD, ``val_loss`` logged."""

    def __init__(self, net: nn.Module, lr: float = 3e-3, opt: str = "adam") -> None:
        super().__init__()
        self.net, self.lr, self.opt = net, lr, opt

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.opt == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.opt == "plain_sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def mlp(widths, act=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    w = 64
    for h in widths:
        layers += [nn.Linear(w, h), act()]
        w = h
    return nn.Sequential(*layers, nn.Linear(w, 10))


def biased(net: nn.Module, value: float) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, value)
    return net


def large_init(net: nn.Module, std: float) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
    return net


def fit(net, *, epochs, lr=3e-3, opt="adam", bs=64, n_train=1000, normalize=True,
        shuffle_labels=False, leak=False, **diag_kw) -> FitDiagnosis:
    pl.seed_everything(0, verbose=False)
    x, y = X.clone(), Y.clone()
    xtr, ytr = x[:n_train], y[:n_train]
    xva, yva = (x[:300], y[:300]) if leak else (x[1400:1700], y[1400:1700])
    if shuffle_labels:
        g = torch.Generator().manual_seed(1)
        ytr, yva = ytr[torch.randperm(len(ytr), generator=g)], yva[torch.randperm(len(yva), generator=g)]
    if normalize:
        m, s = xtr.mean(), xtr.std()
        xtr, xva = (xtr - m) / s, (xva - m) / s
    else:
        xtr, xva = xtr * 16, xva * 16  # raw 0-255 pixel range
    diag = FitDiagnosis(write_files=False, log_figure=False, **diag_kw)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[diag], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(UserClassifier(net, lr, opt),
                DataLoader(TensorDataset(xtr, ytr), batch_size=bs, shuffle=True),
                DataLoader(TensorDataset(xva, yva), batch_size=300))
    return diag


# name -> (run, expected symptom, expected fit state)
PLANTED = {
    "huge_learning_rate": (lambda: fit(mlp([64]), epochs=5, lr=5.0, opt="sgd"),
                           Symptom.DIVERGING_LOSS, FitState.UNDERFITTING),
    "deep_sigmoid_mlp": (lambda: fit(mlp([32] * 8, nn.Sigmoid), epochs=5, lr=0.05, opt="sgd"),
                         Symptom.VANISHING_GRADIENTS, FitState.UNDERFITTING),
    "relu_very_negative_bias": (lambda: fit(biased(mlp([64, 64]), -10.0), epochs=5),
                                Symptom.DYING_RELU, FitState.UNDERFITTING),
    "model_far_too_small": (lambda: fit(nn.Sequential(nn.Linear(64, 1), nn.Linear(1, 10)), epochs=15,
                                        lr=0.05, bs=32),
                            Symptom.UNDERFITTING, FitState.UNDERFITTING),
    "big_model_few_samples": (lambda: fit(mlp([512, 512]), epochs=25, lr=1e-3, n_train=150, bs=32),
                              Symptom.OVERFITTING, FitState.OVERFITTING),
    "shuffled_labels": (lambda: fit(mlp([32]), epochs=6, lr=1e-3, shuffle_labels=True),
                        Symptom.NO_LEARNING, FitState.UNDERFITTING),
    "raw_unscaled_inputs": (lambda: fit(mlp([64]), epochs=6, normalize=False),
                            Symptom.UNNORMALIZED_INPUTS, FitState.OVERFITTING),
    "val_repeats_train": (lambda: fit(mlp([64]), epochs=4, leak=True),
                          Symptom.DATA_LEAKAGE, FitState.GOOD_FIT),
    "saturated_sigmoid": (lambda: fit(large_init(mlp([64, 64], nn.Sigmoid), 2.0), epochs=4, lr=1e-3),
                          Symptom.SATURATED_ACTIVATIONS, FitState.UNKNOWN),
    "tiny_learning_rate": (lambda: fit(mlp([64]), epochs=8, lr=2e-3, opt="plain_sgd"),
                           Symptom.SLOW_CONVERGENCE, FitState.UNDERFITTING),
}
FAST = {"relu_very_negative_bias", "val_repeats_train"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in PLANTED],
)
def test_planted_symptom_is_found(name):
    run, symptom, state = PLANTED[name]
    report = run().report
    assert symptom in report.symptoms, (name, report.to_dict())
    assert report.fit_state == state, (name, report.fit_state, report.fit_evidence)
    finding = report.finding(symptom)
    assert finding.evidence and finding.remedies and finding.message
    # the planted cause ranks first among the faults (the states follow the faults)
    if symptom.is_fault:
        assert report.faults[0].symptom == symptom, report.symptoms


def test_healthy_run_has_no_fault_findings():
    report = fit(mlp([64]), epochs=6).report
    assert report.fit_state == FitState.GOOD_FIT, report.fit_evidence
    assert report.faults == [], report.symptoms
    assert report.findings == [], report.symptoms
