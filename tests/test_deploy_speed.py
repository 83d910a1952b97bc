"""The deploy benchmarks run as docs/deploy.md shows them (shortened by their own options): ``deploy_speed.py``
trains, exports, times every variant in fresh processes and prints one table row per variant, with the spread;
``onnx_rewrites.py`` prints the export rewrites' tables (GAN and VAE, per backend); ``conv_kernels.py`` the per-layer conv kernel table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_speed.py"


def test_deploy_speed_prints_every_variant_over_trial_processes(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(SCRIPT),
        "--train",
        "vae",
        "--quick",
        "--no-quality",
        "--repeats",
        "4",
        "--rounds",
        "2",
        "--trials",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.count("a fresh process") == 2 and sorted(p.name for p in tmp_path.glob("trial*.json")) == [
        "trial0.json",
        "trial1.json",
    ]
    assert "OMP_WAIT_POLICY PASSIVE" in out and "warning: OMP_WAIT_POLICY=PASSIVE" in out
    rows = [line for line in out.splitlines() if line.startswith("| vae |")]
    assert [row.split(" | ")[1:3] for row in rows] == [
        [run, backend]
        for run in ("vae_dense", "vae_structured50")
        for backend in ("torch fp32 eager", "onnxruntime fp32", "onnxruntime int8")
    ]
    assert rows[0].split(" | ")[6] == "1.00"  # the baseline against itself
    ratio = re.compile(r"^\d+\.\d\d( \(\d+\.\d\d-\d+\.\d\d\))?$")
    for row in rows:
        cells = row.split(" | ")
        assert float(cells[5]) > 0 and ratio.match(cells[6]) and ratio.match(cells[8]), row
    params = [int(row.split(" | ")[3].replace(",", "")) for row in rows]
    assert params[3] < params[0]  # the structured run really lost channels


@pytest.mark.parametrize("nets", [["gan", "vae"], ["vae"]])
def test_onnx_rewrites_prints_each_rewrite_per_backend(tmp_path: Path, nets: list[str]) -> None:
    script = SCRIPT.parent / "onnx_rewrites.py"
    command = [sys.executable, str(script), "--trials", "2", "--repeats", "2", "--rounds", "1"]
    command += ["--channels", "8", "--nets", *nets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    tables = re.split(r"\n(?:gan|vae):\n", done.stdout)[1:]
    assert len(tables) == len(nets) and ("\ngan:\n" in done.stdout) == ("gan" in nets)
    openvino = (
        "OpenVINO bf16" if "avx512_bf16" in done.stdout or "amx_bf16" in done.stdout else "OpenVINO fp32"
    )
    expected = {
        "gan": ["as torch.onnx writes it", "first layer as one Gemm", "Gemm + sub-pixel convs"],
        "vae": ["as torch.onnx writes it", "sub-pixel convs"],
    }
    for table, net in zip(tables, nets, strict=True):
        labels = expected[net]
        rows = [
            line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line
        ]
        names = [row[0].removeprefix("| ") for row in rows[1:]]  # after the header
        assert names == ["torch fp32 eager"] + [
            f"{r}, {label}" for r in ("ORT", openvino) for label in labels
        ], net
        assert all(float(row[1]) > 0 and float(row[4]) > 0 for row in rows[1:])
    assert "2 processes" in done.stdout and "GAN generator 8 channels" in done.stdout


def test_conv_kernels_checks_each_rewrite_against_torch_and_prints_every_layer(tmp_path: Path) -> None:
    script = SCRIPT.parent / "conv_kernels.py"
    command = [
        sys.executable,
        str(script),
        "--trials",
        "1",
        "--repeats",
        "2",
        "--rounds",
        "1",
        "--batch",
        "4",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]  # a rewrite that differs from torch by > 1e-4 exits 1
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith(("| gan", "| vae"))]
    assert [row[0][2:] for row in rows] == [
        "gan ConvT 128->64 k4s2 @4x4",
        "gan ConvT 64->1 k4s2 @8x8",
        "vae ConvT 64->32 k4s2 @4x4",
        "vae ConvT 32->16 k4s2 @8x8",
        "vae Conv 1->32 k4s2 @16x16",
        "vae Conv 32->64 k4s2 @8x8",
        "vae Conv 16->1 k3s1 @16x16",
    ]
    for row in rows:
        assert row[2] == "1.00" and float(row[3]) > 0  # torch against itself; ORT's kernel timed
        transposed = "ConvT" in row[0]
        assert all(
            (cell != "–") == transposed for cell in row[5:11]
        )  # the rewrites exist for k4s2 ConvT only
        assert (0 < float(row[11].rstrip(" |")) < 0.1) if transposed else row[11].startswith("–")
    assert "batch 4" in done.stdout and "1 processes" in done.stdout
