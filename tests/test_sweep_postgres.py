"""Two ``mlcycle -m`` workers on one study in a real PostgreSQL server; the password never leaks.

``.ci/run`` starts the server and exports ``MLCYCLE_TEST_POSTGRES_URL``. Locally the test skips when
no server answers at the default URL; when that variable is set or ``CI=true`` it must run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from lightning_mlcycle.tuning._storage import mask_url, open_storage

DEFAULT_URL = "postgresql://mlcycle:mlcycle-ci-pw@localhost:5432/mlcycle_test"
FAST = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "num_threads=1",
    "callbacks=model_checkpoint",
    "hydra.sweeper.params=null",
]


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("MLCYCLE_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        open_storage(url)  # connects (and creates Optuna's tables) or raises
    except Exception as err:  # no server (or no driver) here
        promised = "MLCYCLE_TEST_POSTGRES_URL" in os.environ  # .ci/run started a server
        if promised or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must test against PostgreSQL, but {mask_url(url)} does not answer: "
                        f"{type(err).__name__}")
        pytest.skip(f"no PostgreSQL server at {mask_url(url)}")
    return url


@pytest.mark.slow
def test_two_workers_on_postgres_share_the_study_and_hide_the_password(tmp_path: Path,
                                                                       postgres_url: str):
    from sqlalchemy.engine import make_url

    password = make_url(postgres_url).password
    assert password, "the test URL must carry a password (the masking is tested with it)"
    study_name = f"pg_{uuid.uuid4().hex[:8]}"
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lightning_mlcycle.cli.main", "-m", "hparams_search=digits_optuna",
           f"hydra.sweep.dir={sweep}", *FAST, f"hydra.sweeper.storage='{postgres_url}'",
           f"hydra.sweeper.study_name={study_name}", "hydra.sweeper.n_trials=4",
           "model.optimizer.lr=tag(log, interval(1e-4, 1e-1))"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
        outputs.append(out + err)

    study = optuna.load_study(study_name=study_name, storage=open_storage(postgres_url))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert len({t.system_attrs["mlcycle:owner"] for t in study.trials}) == 2  # both worked
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == [0, 1, 2, 3]

    # the password is nowhere: console, logs, saved configs, results, TensorBoard events
    for text in outputs:
        assert password not in text
    leaks = [str(f) for f in sweep.rglob("*") if f.is_file() and f.suffix not in (".ckpt", ".js")
             and password.encode() in f.read_bytes()]
    assert not leaks, leaks
    assert "mlcycle:***@" in (sweep / "optimization_results.yaml").read_text()
    assert "mlcycle:***@" in (sweep / "multirun.yaml").read_text()
