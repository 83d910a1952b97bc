"""conf/tuning/ is visible: the composed config names the file that applied (``tuning_applied``, also in
``--cfg job``), train.log says it with the keys it set, and ``~tuning`` turns it off."""

from __future__ import annotations

import subprocess
import sys

from conftest import FAST, run_dirs
from genexp.runtime.startup import tuning_summary


def test_the_composed_config_names_the_tuning_file(compose_train) -> None:
    tuned = compose_train(["optimizer=sgd"])
    assert tuned.tuning_applied == "tuning/vae_sgd.yaml"
    assert tuned.trainer.gradient_clip_val == 100
    assert tuning_summary(tuned) == "tuning/vae_sgd.yaml (sets optimizer.lr, trainer.gradient_clip_val)"

    untuned = compose_train(["optimizer=adam"])  # no conf/tuning/vae_adam.yaml
    assert untuned.tuning_applied is None and tuning_summary(untuned).startswith("none")

    off = compose_train(["optimizer=sgd", "~tuning"])
    assert off.tuning_applied is None and off.trainer.gradient_clip_val is None


def test_cfg_job_shows_the_tuning_file() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "genexp.train", "--cfg", "job", "model=gan", "optimizer=sgd"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "tuning_applied: tuning/gan_sgd.yaml" in shown.stdout


def test_train_log_says_which_tuning_applied(cli, tmp_path) -> None:
    done = cli([*FAST, "optimizer=sgd", "test=false", "logger=csv"])
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    log = (run / "train.log").read_text()
    assert "Tuning: tuning/vae_sgd.yaml (sets optimizer.lr, trainer.gradient_clip_val)" in log
