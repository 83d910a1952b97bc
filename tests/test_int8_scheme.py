"""The int8 weight scheme follows the CPU that quantizes: 7-bit weights on x86 without VNNI (ONNX Runtime's
u8×s8 AVX2 kernels saturate int16 pair sums with 8-bit weights), 8-bit where VNNI sums in int32. The branch
this machine cannot take is covered twice: with mocked CPU flags, and with ONNX Runtime's real AVX2 kernels
under ``qemu-x86_64 -cpu Haswell`` (Debian's qemu-user, installed by ``.ci/run``), which hides AVX-512 and VNNI
from every library in the process. An int8 graph that misses its tolerance is a line and a model.json entry,
not a traceback."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, run_cli
from genexp.deploy import latency
from genexp.deploy.onnx_quantize import int8_scheme
from genexp.runtime.errors import ConfigError

pytestmark = pytest.mark.xdist_group("int8_scheme")  # one worker trains the module's run
AVX512_VNNI = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]


@pytest.mark.parametrize(
    ("flags", "machine", "bits"),
    [
        (AVX512_VNNI, "x86_64", 8),  # the AVX-512 VNNI EPYC
        (["avx2", "avx_vnni"], "x86_64", 8),  # AVX-VNNI without AVX-512 (Alder Lake and later)
        (["avx2"], "x86_64", 7),  # the AVX2-only EPYC
        (["avx2", "avx512f"], "AMD64", 7),  # AVX-512 without VNNI (Skylake-SP): still vpmaddubsw
        ([], "x86_64", 7),  # flags unknown: the scheme that is exact everywhere
        ([], "aarch64", 8),  # ARM's int8 dot products sum in int32
    ],
)
def test_the_scheme_follows_the_cpu_flags(flags: list[str], machine: str, bits: int) -> None:
    scheme = int8_scheme("auto", flags, machine)
    assert scheme["weights_bits"] == bits and scheme["reduce_range"] is (bits == 7)
    assert ("saturate" in scheme["reason"]) is (bits == 7)


def test_an_asked_scheme_wins_over_the_cpu_and_a_bad_one_names_the_key() -> None:
    assert int8_scheme("7bit", AVX512_VNNI, "x86_64")["reduce_range"] is True
    assert int8_scheme("8bit", ["avx2"], "x86_64")["reduce_range"] is False
    with pytest.raises(ConfigError, match="int8_scheme.*'auto', '8bit', '7bit'"):
        int8_scheme("int4")


def test_cpu_flags_come_from_cpuid_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = {"avx2": True, "avx512_f": True, "avx512_vnni": False, "avx512_bf16": True, "cpu_name": "x"}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert latency.cpu_flags() == ["avx2", "avx512f", "avx512_bf16"]
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # an older torch: /proc/cpuinfo
    if Path("/proc/cpuinfo").is_file():
        assert "avx2" in latency.cpu_flags() or platform.machine() not in ("x86_64", "AMD64")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch default VAE (the architecture the AVX2 kernels saturated on), trained through the CLI."""
    root = tmp_path_factory.mktemp("int8")
    done = run_cli([*FAST, "logger=csv", f"hydra.run.dir={root / 'vae'}"], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "vae"


def export_int8(run: Path, folder: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``genexp-export target=<run> quantize=int8 <extra>`` into ``run/folder``, which must succeed."""
    out = run / folder
    args = [f"target={run}", "quantize=int8", "measure=false", f"out={out}", *extra]
    done = run_cli(args, cwd=run, module="genexp.export")
    assert done.returncode == 0, done.stderr[-2000:]
    return done, out


def test_an_int8_graph_that_misses_its_tolerance_is_a_line_and_the_fp32_graphs_ship(vae_run: Path) -> None:
    done, out = export_int8(vae_run, "strict", "tolerance=1e-9")
    assert (
        "Traceback" not in done.stderr
        and "int8 not written: model.onnx at a relative error of" in done.stdout
    )
    info = json.loads((out / "model.json").read_text())
    assert info["variants"] == ["fp32"] and not list(out.glob("*.int8.onnx"))
    assert set(info["graphs"]) == {
        f"{stem}{layout}.onnx" for stem in ("model", "decoder") for layout in ("", ".subpixel")
    }
    assert info["int8"]["written"] is False and info["int8"]["missed"]["relative_error"] > 1e-9
    assert info["int8"]["scheme"] == int8_scheme()


def test_a_bad_scheme_is_one_line_before_anything_loads(vae_run: Path) -> None:
    done = run_cli(
        [f"target={vae_run}", "quantize=int8", "int8_scheme=6bit"], cwd=vae_run, module="genexp.export"
    )
    assert done.returncode != 0 and "int8_scheme" in done.stderr and "Traceback" not in done.stderr
    assert not (vae_run / "export").exists()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the emulated AVX2 CPU is an x86_64 one")
def test_on_an_avx2_cpu_without_vnni_the_export_picks_7bit_weights_and_stays_exact(vae_run: Path) -> None:
    """genexp-export as a user runs it, every library in the process seeing an AVX2 CPU without VNNI."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 (Debian's qemu-user) is not installed: .ci/run installs it")
    out = vae_run / "haswell"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [
        qemu,
        "-cpu",
        "Haswell",
        sys.executable,
        "-m",
        "genexp.export",
        f"target={vae_run}",
        "quantize=int8",
        "measure=false",
        f"out={out}",
    ]
    done = subprocess.run(command, cwd=vae_run, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "model.json").read_text())
    assert info["int8"]["scheme"]["weights_bits"] == 7 and "without VNNI" in info["int8"]["scheme"]["reason"]
    for name in ("model.int8.onnx", "decoder.int8.onnx"):
        assert info["graphs"][name]["quantization"]["check"]["relative_error"] <= 0.05, name


def test_the_deploy_benchmark_prints_a_missed_int8_graph_as_a_row(vae_run: Path, tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "deploy_speed.py"
    command = [
        sys.executable,
        str(script),
        "--run",
        str(vae_run),
        "--tolerance",
        "1e-9",
        "--no-quality",
        "--trials",
        "1",
        "--repeats",
        "2",
        "--rounds",
        "1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| vae |")]
    assert [row[2] for row in rows] == ["torch fp32 eager", "onnxruntime fp32", "onnxruntime int8"]
    assert rows[2][4].startswith("not written: relative error") and "> tolerance 1e-09" in rows[2][4]
    assert float(rows[1][5]) > 0  # the fp32 graph is still timed


def test_the_scheme_benchmark_prints_each_graph_under_each_scheme(vae_run: Path, tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "int8_schemes.py"
    command = [sys.executable, str(script), "--run", str(vae_run), "--no-emulation", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith(f"| {vae_run.name} |")]
    assert [(row[1], row[2]) for row in rows] == [
        (graph, bits) for graph in ("model.onnx", "decoder.onnx") for bits in ("8-bit", "7-bit")
    ]
    assert all(0 < float(row[3].rstrip(" |")) < 0.1 for row in rows)
    assert f"auto picks: {int8_scheme()['reason']}" in done.stdout


def test_a_graph_for_another_kind_of_cpu_asks_for_7bit_weights(vae_run: Path) -> None:
    done, out = export_int8(vae_run, "portable", "int8_scheme=7bit")
    info = json.loads((out / "model.json").read_text())
    assert info["int8"]["scheme"] == {
        "weights_bits": 7,
        "reduce_range": True,
        "reason": "int8_scheme=7bit was asked for",
    }
    assert info["graphs"]["model.int8.onnx"]["quantization"]["weights"] == "int8 (7-bit range) per channel"
    assert "int8 scheme: 7-bit weights" in done.stdout
