"""genexp-export: each family's graphs match torch, int8 graphs are checked, the docs/deploy.md snippets run without torch
or genexp, genexp-eval measures a .onnx like a checkpoint, compare mixes torch and ONNX rows, bad input is refused."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import CONF, FAST, REPO, run_cli
from genexp.checkpoints.rebuild import load_any

pytestmark = pytest.mark.xdist_group("onnx_export")  # one worker builds the module's shared runs

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nO Romeo, Romeo, wherefore art thou?\n"
) * 40
RUNS = {
    "vae": ["model.latent_dim=4", "model.hidden_channels=8"],
    "gan": ["model=gan", "model.g_channels=8", "model.d_channels=8", "model.ema_decay=0.9"],
    "gpt": [
        "model=gpt",
        "data=text",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=4",
        "data.block_size=16",
        "data.batches_per_epoch=3",
        "data.val_batches=2",
    ],
    "diffusion": [
        "model=diffusion",
        "model.channels=8",
        "model.channel_mults=[1,2]",
        "model.sample_steps=4",
        "model.num_samples=4",
        "data.image_size=8",
        "data.batch_size=16",
    ],
}
EXPORT_FAST = [
    "callbacks.sample_quality=null",
    "report.repeats=4",
    "report.rounds=2",
    "report.warmup=1",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "calibration_batches=2",
]


def compose_cfg(config_name: str, overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.data_dir = str(out.parent / "data")
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny trained run per family (in-process), each exported once with quantize=int8."""
    from genexp.export import export
    from genexp.train import train

    root = tmp_path_factory.mktemp("onnx")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    out = {}
    for name, extra in RUNS.items():
        overrides = [*FAST, "model.sample_every_n_epochs=0", "logger=csv", "test=false", *extra]
        if name == "gpt":
            overrides.append(f"data.path={root / 'text.txt'}")
        run = root / name
        cfg = compose_cfg("train", overrides, run)
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what genexp-train's Hydra writes
        train(cfg)
        measure = "measure=true" if name in ("gpt", "diffusion") else "measure=false"
        export(
            compose_cfg(
                "export", [f"target={run}", "quantize=int8", measure, *EXPORT_FAST], root / f"x_{name}"
            )
        )
        out[name] = run
    return out


@pytest.mark.parametrize("family", ["vae", "gan", "gpt", "diffusion"])
def test_each_family_exports_graphs_that_match_torch(runs: dict[str, Path], family: str) -> None:
    folder = runs[family] / "export"
    info = json.loads((folder / "model.json").read_text())
    assert info["family"] == family and info["variants"] == ["fp32", "int8"]
    loaded = load_any(runs[family] / "checkpoints" / "last.ckpt")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    main = info["graphs"]["model.onnx"]
    assert main["inputs"][0]["shape"][0] == "batch"  # a dynamic batch axis
    x = loaded.model.example_input(5)  # not the batch it was exported with
    if family == "gpt":
        assert main["inputs"][0]["shape"][1] == "sequence"
        x = x[:, :7]  # nor the sequence length
        assert info["usage"]["vocab"] == loaded.model.vocab and info["usage"]["block_size"] == 16
    inputs = x if isinstance(x, tuple) else (x,)  # diffusion: (z_t, t)
    if family == "diffusion":  # the EMA denoiser, two inputs, the prediction named after its type
        assert [i["name"] for i in main["inputs"]] == ["z_t", "t"] and main["inputs"][1]["shape"] == ["batch"]
        assert [o["name"] for o in main["outputs"]] == ["v"] and info["usage"]["prediction"] == "v"
        assert loaded.model.deployable() is loaded.model.ema
    with torch.no_grad():
        expected = loaded.model.deployable().eval()(*inputs)
    got = session.run(None, {i["name"]: v.numpy() for i, v in zip(main["inputs"], inputs, strict=True)})[0]
    assert np.abs(got - expected.numpy()).max() < 1e-4
    int8 = info["graphs"]["model.int8.onnx"]
    assert int8["quantization"]["check"]["relative_error"] <= 0.1
    import onnx

    ops = {node.op_type for node in onnx.load(str(folder / "model.int8.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear"}, ops  # real int8 ops
    assert int8["quantization"]["method"] == ("dynamic" if family == "gpt" else "static QDQ")
    from genexp.deploy.onnx_quantize import int8_scheme

    assert info["int8"] == {"written": True, "scheme": int8_scheme()}  # the scheme this CPU runs exactly
    if family == "diffusion":  # the UNet's input and output convs stay float
        assert int8["quantization"]["float_nodes"] == ["/conv_in/Conv", "/conv_out/Conv"]
    if family == "vae":  # the decoder samples
        stems = ("model", "decoder")
        assert set(info["graphs"]) == {f"{s}.{v}onnx" for s in stems for v in ("", "int8.", "subpixel.")}
        assert info["usage"]["latent_dim"] == 4 and info["usage"]["sample_graph"] == "decoder.onnx"
    # the conv nets' strided transposed convs also ship as sub-pixel convs: the same function, other kernels
    assert info["layouts"] == (["subpixel"] if family in ("vae", "gan") else [])
    if info["layouts"]:
        path = folder / "model.subpixel.onnx"
        ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
        assert ops["DepthToSpace"] >= 1 and ops["ConvTranspose"] == 0, ops
        sub = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i["name"]: v.numpy() for i, v in zip(main["inputs"], inputs, strict=True)}
        assert np.abs(sub.run(None, feeds)[0] - expected.numpy()).max() < 1e-4


def test_export_records_quality_and_latency_per_backend(runs: dict[str, Path]) -> None:
    info = json.loads((runs["gpt"] / "export" / "model.json").read_text())
    quality = info["quality"]
    assert quality["fp32"]["test/loss"] == pytest.approx(quality["torch"]["test/loss"], rel=1e-5)
    assert quality["int8"]["test/loss"] == pytest.approx(quality["torch"]["test/loss"], rel=0.02)
    latency = info["latency"]
    cells = {(r["backend"], r["batch_size"]) for r in latency["rows"]}
    ort = ("torch fp32 eager", "onnxruntime fp32", "onnxruntime int8")
    # OpenVINO (a dev dependency) reads model.onnx, but has no kernel for ONNX Runtime's QAttention of the
    # GPT's int8 graph: that backend is left out with its reason, not an error
    assert "QAttention" in latency["left_out"]["openvino int8"]
    bf16 = {"avx512_bf16", "amx_bf16"} & set(latency["cpu_flags"])
    openvino = ["openvino fp32", *(["openvino bf16"] if bf16 else [])]
    assert cells == {(b, n) for b in (*ort, *openvino) for n in (1, 16)}
    assert latency["threads"] >= 1 and latency["cpu"]
    assert set(latency["generation_tokens_per_s"]) == set(ort)  # the cached decoders run in ONNX Runtime
    at_16 = [r for r in latency["rows"] if r["batch_size"] == 16]  # backend=auto (the default): the fastest
    fastest = min(at_16, key=lambda r: r["median_ms"])
    assert info["backend"]["name"] == fastest["backend"] and info["backend"]["batch_size"] == 16
    assert info["backend"]["median_ms"] == fastest["median_ms"] and info["backend"]["cpu_flags"] is not None
    if fastest["backend"].startswith("openvino"):  # OpenVINO's own kernels: the chosen backend is scored
        assert quality[fastest["backend"]]["test/loss"] == pytest.approx(
            quality["torch"]["test/loss"], rel=0.02
        )


def test_a_second_export_never_overwrites_the_first(runs: dict[str, Path], tmp_path: Path) -> None:
    from genexp.export import export

    first = (runs["gan"] / "export" / "model.json").read_bytes()
    export(compose_cfg("export", [f"target={runs['gan']}", "measure=false", *EXPORT_FAST], tmp_path / "x"))
    assert (runs["gan"] / "export" / "model.json").read_bytes() == first
    second = json.loads((runs["gan"] / "export-2" / "model.json").read_text())
    assert second["variants"] == ["fp32"]


def _snippet(marker: str) -> str:
    page = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- standalone: {marker} -->\n```python\n(.*?)```", page, re.S)
    assert match, f"docs/deploy.md has no standalone {marker} snippet"
    return match.group(1)


@pytest.mark.parametrize("marker,family", [("text", "gpt"), ("images", "gan"), ("diffusion", "diffusion")])
def test_deploy_doc_snippets_run_with_onnxruntime_and_numpy_alone(
    runs: dict[str, Path], tmp_path: Path, marker: str, family: str
) -> None:
    code = _snippet(marker).replace('"outputs/train/runs/<stamp>/export"', repr(str(runs[family] / "export")))
    code += (
        "\nimport sys\nleaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'genexp'))\n"
        "assert not leaked, leaked\nprint('STANDALONE OK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0 and "STANDALONE OK" in result.stdout, result.stderr[-2000:]
    if marker == "text":
        assert result.stdout.startswith("ROMEO:") and len(result.stdout.split("STANDALONE")[0]) > 150
    else:
        png = (tmp_path / "samples.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 100


def _numpy_ddim(session: ort.InferenceSession, usage: dict, z: np.ndarray) -> np.ndarray:
    """DDIM in numpy from ``model.json`` alone (its precomputed schedule grid), as a user would write it."""
    grid, steps = usage["schedule"]["grid"], usage["sample_steps"]
    alpha, sigma = grid["alpha"], grid["sigma"]  # at t = 1, (N-1)/N, ..., 0
    for k in range(steps):
        t = np.full(len(z), grid["t"][k], dtype=np.float32)
        out = session.run(None, {"z_t": z, "t": t})[0]
        x = np.clip(
            alpha[k] * z - sigma[k] * out if usage["prediction"] == "v" else (z - sigma[k] * out) / alpha[k],
            -1,
            1,
        )
        z = (alpha[k + 1] * x + sigma[k + 1] * (z - alpha[k] * x) / sigma[k]).astype(np.float32)
    return (x + 1) / 2


def test_numpy_ddim_on_the_diffusion_graph_matches_the_models_own_sampler(runs: dict[str, Path]) -> None:
    """Same starting noise: 4 DDIM steps in numpy + ORT land where ``Diffusion.sample`` lands.

    Tolerance 1e-3 in [0, 1] pixels (a quarter of a uint8 level): each ORT call matches torch to ~1e-6 (< 1e-4
    asserted above) and the grid's alpha/sigma are torch's float32 values; a v-prediction DDIM step only mixes
    z and x̂ with coefficients <= 1 (sigma_next / sigma_t < 1, clipping is 1-Lipschitz), so 4 steps can at most
    add up those per-call differences, orders of magnitude below 1e-3.
    """
    from genexp.models.diffusion import alpha_sigma

    folder = runs["diffusion"] / "export"
    usage = json.loads((folder / "model.json").read_text())["usage"]
    model = load_any(runs["diffusion"] / "checkpoints" / "last.ckpt").model.eval()
    assert usage["sample_steps"] == 4 and usage["image_shape"] == [1, 8, 8]
    t = torch.tensor(usage["schedule"]["grid"]["t"])
    assert t.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    a, s = alpha_sigma(t)
    assert np.allclose(usage["schedule"]["grid"]["alpha"], a.flatten().numpy(), atol=1e-7)
    assert np.allclose(usage["schedule"]["grid"]["sigma"], s.flatten().numpy(), atol=1e-7)
    expected = model.sample(6, seed=7).numpy()
    noise = torch.randn(
        (6, *model.image_shape), generator=torch.Generator().manual_seed(7)
    ).numpy()  # sample()'s
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = _numpy_ddim(session, usage, noise)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3
    int8 = _numpy_ddim(
        ort.InferenceSession(str(folder / "model.int8.onnx"), providers=["CPUExecutionProvider"]),
        usage,
        noise,
    )
    assert np.isfinite(int8).all() and 0 <= int8.min() and int8.max() <= 1


def test_the_diffusion_graph_is_measured_through_onnxruntime(runs: dict[str, Path], tmp_path: Path) -> None:
    """genexp-eval's loader installs the graph as both denoisers; the test stage's loss through ORT is the EMA
    denoiser's torch loss on the same split; latency feeds both inputs."""
    import copy
    import dataclasses

    from genexp.deploy.onnx_runtime import OrtModule
    from genexp.report.measure_run import test_quality
    from genexp.report.onnx_target import load_onnx

    folder = runs["diffusion"] / "export"
    info = json.loads((folder / "model.json").read_text())
    through = load_onnx(folder / "model.onnx")
    assert isinstance(through.model.net, OrtModule) and through.model.ema is through.model.net
    quality = info["quality"]
    for variant in ("torch", "fp32", "int8"):
        assert {"test/loss", "test/images_per_s", "test/sample_steps"} <= set(quality[variant]), variant
        assert quality[variant]["test/sample_steps"] == 4
    loaded = load_any(runs["diffusion"])
    ema = copy.deepcopy(loaded.model)
    ema.net = ema.ema  # the torch loss of the denoiser that ships
    cfg = compose_cfg("export", [f"target={runs['diffusion']}", *EXPORT_FAST], tmp_path / "q")
    torch_ema = test_quality(dataclasses.replace(loaded, model=ema), cfg.trainer, [], verbose=False)
    assert quality["fp32"]["test/loss"] == pytest.approx(torch_ema["test/loss"], rel=1e-4)
    assert quality["int8"]["test/loss"] == pytest.approx(torch_ema["test/loss"], rel=0.2)
    backends = {(r["backend"], r["batch_size"]) for r in info["latency"]["rows"]}
    assert ("onnxruntime int8", 16) in backends and ("onnxruntime fp32", 1) in backends


def test_eval_measures_an_onnx_graph_like_a_checkpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    graph = runs["gpt"] / "export" / "model.int8.onnx"
    args = [
        "callbacks.sample_quality=null",
        "report.repeats=4",
        "report.rounds=2",
        "trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
    ]
    result = run_cli(
        [f"target={graph}", *args, "hydra.run.dir=eval"], tmp_path, "genexp.evaluate", env=PASSIVE
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in (
        "quality",
        "latency_ms",
        "throughput_per_s",
        "bytes",
        "params",
        "nonzero",
        "batch_size",
        "threads",
    ):
        assert key in row, key
    assert row["kind"] == "onnx" and row["backend"] == "onnxruntime" and row["quantize"] == "onnxruntime int8"
    assert row["bytes"] == graph.stat().st_size
    assert (
        row["omp_wait_policy"] == "PASSIVE"
    )  # it slows torch eager, not ORT: the report says so beside the figure
    assert "OMP_WAIT_POLICY=PASSIVE" in (tmp_path / "eval" / "report.md").read_text()
    info = json.loads((graph.parent / "model.json").read_text())
    assert row["quality"] == pytest.approx(
        info["quality"]["int8"]["test/loss"], rel=1e-6
    )  # same split, same graph
    assert {r["backend"] for r in row["latency_backends"]["rows"]} >= {"torch fp32 eager", "onnxruntime int8"}
    speeds = row["latency_backends"]["generation_tokens_per_s"]  # with and without the cache, per backend
    assert (
        set(speeds["onnxruntime int8"]) == set(speeds["torch fp32 eager"]) == {"no_cache", "cache", "speedup"}
    )
    report_md = (tmp_path / "eval" / "report.md").read_text()
    assert re.search(
        r"generation onnxruntime int8 \(tokens/s, 256 new\) \| no cache [\d,]+, cache [\d,]+ \(", report_md
    )


def test_compare_mixes_torch_and_onnx_rows(runs: dict[str, Path], tmp_path: Path) -> None:
    from genexp.report.compare import compare_runs
    from genexp.report.measure_run import SpeedSettings

    cfg = compose_cfg(
        "eval",
        ["trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"],
        tmp_path / "c",
    )
    export = runs["gpt"] / "export"
    summary = compare_runs(
        [runs["gpt"], export / "model.onnx", export / "model.int8.onnx"],
        tmp_path / "c",
        cfg.trainer,
        list,
        SpeedSettings(repeats=4, rounds=2, warmup=1),
    )
    rows = {r["short"]: r for r in summary["runs"]}
    assert set(rows) == {"dense", "ORT dense", "ORT int8"} and summary["skipped"] == []
    assert rows["dense"]["is_baseline"] and rows["dense"]["backend"] == "torch"
    assert rows["ORT int8"]["backend"] == "onnxruntime"
    slower = rows["ORT int8"]["latency_p10_ms"] > rows["ORT dense"]["latency_p90_ms"]  # beyond the noise
    assert rows["ORT int8"]["slower_than_dense"] == slower
    table = (tmp_path / "c" / "report.md").read_text()
    assert "onnxruntime" in table and "x dense, same backend" in table


# ----- bad input: one line naming the key or file, exit 2, the run folder unchanged ---------------------------
def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def test_bad_onnx_files_are_refused_by_eval(runs: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a graph at all")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes((runs["gan"] / "export" / "model.onnx").read_bytes())  # a valid graph, no model.json
    for path, words in ((corrupt, "not an ONNX graph"), (foreign, "no model.json beside it")):
        result = run_cli([f"target={path}", "hydra.run.dir=e"], tmp_path, "genexp.evaluate", env=PASSIVE)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith(f"genexp: error: target={path}"), result.stderr
        assert words in lines[-1]


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["quantize=int4"], "quantize='int4': expected one of ['none', 'int8']"),
        (["opset=40"], "opset=40: expected an ONNX opset in [14, 20]"),
        (["fused_attention=maybe"], "fused_attention='maybe': expected true or false"),
        (["backend=fastest"], "backend='fastest': expected one of ['auto', 'none']"),
    ],
)
def test_bad_export_settings_change_nothing(
    runs: dict[str, Path], tmp_path: Path, capsys, overrides, words
) -> None:
    from genexp.export import export

    before = _snapshot(runs["vae"])
    with pytest.raises(SystemExit) as exit_info:
        export(compose_cfg("export", [f"target={runs['vae']}", *overrides], tmp_path / "x"))
    assert exit_info.value.code == 2 and words in capsys.readouterr().err
    assert _snapshot(runs["vae"]) == before


def test_a_run_folder_without_checkpoints_is_refused(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from genexp.export import export

    broken = tmp_path / "broken"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "config.yaml").write_text((runs["vae"] / ".hydra" / "config.yaml").read_text())
    before = _snapshot(broken)
    with pytest.raises(SystemExit):
        export(compose_cfg("export", [f"target={broken}"], tmp_path / "x"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"genexp: error: target={broken}: no checkpoint in") and _snapshot(broken) == before


def test_the_gpt_export_ships_a_cached_decoder_that_matches_torch(runs: dict[str, Path]) -> None:
    import onnx

    folder = runs["gpt"] / "export"
    info = json.loads((folder / "model.json").read_text())
    assert {"decoder_with_past.onnx", "decoder_with_past.int8.onnx"} <= set(info["graphs"])
    main = info["graphs"]["model.onnx"]  # model.onnx as before: tokens in, logits out
    assert [i["name"] for i in main["inputs"]] == ["tokens"] and [o["name"] for o in main["outputs"]] == [
        "logits"
    ]
    cached = info["usage"]["cached"]
    assert cached["inputs"] == ["tokens", "past_0"] and cached["outputs"] == ["logits", "present_0"]
    assert cached["empty_past"] == {"past_0": [2, 1, 4, 0, 8]} and cached["refill"] == 8
    decoder = info["graphs"]["decoder_with_past.onnx"]
    assert decoder["inputs"][1]["shape"] == [2, "batch", 4, "past", 8]
    ops = {node.op_type for node in onnx.load(str(folder / "decoder_with_past.int8.onnx")).graph.node}
    assert {"Attention", "MatMulNBits"} <= ops  # fused attention with past; weight-only int8 MatMuls
    assert info["graphs"]["decoder_with_past.int8.onnx"]["quantization"]["check"]["relative_error"] <= 0.1
    speeds = info["latency"]["generation_tokens_per_s"]
    for backend in ("torch fp32 eager", "onnxruntime fp32", "onnxruntime int8"):
        assert set(speeds[backend]) == {"no_cache", "cache", "speedup"}, backend
        assert speeds[backend]["speedup"] == pytest.approx(
            speeds[backend]["cache"] / speeds[backend]["no_cache"]
        )
    assert info["latency"]["generation"]["new_tokens"] == 256
    # The trained weights, step by step from an empty past, against torch's whole-sequence logits.
    model = load_any(runs["gpt"] / "checkpoints" / "last.ckpt").model.eval()
    session = ort.InferenceSession(str(folder / "decoder_with_past.onnx"), providers=["CPUExecutionProvider"])
    ids = model.encode("ROMEO:\nBut soft, w")[None, :16].cpu()
    with torch.no_grad():
        expected = model.net(ids).numpy()
    past = {name: np.zeros(shape, np.float32) for name, shape in cached["empty_past"].items()}
    for start, end in ((0, 5), (5, 6), (6, 16)):
        logits, *present = session.run(None, {"tokens": ids[:, start:end].numpy(), **past})
        assert np.abs(logits - expected[:, start:end]).max() < 1e-4
        past = dict(zip(cached["inputs"][1:], present, strict=True))


def test_eval_samples_through_the_cached_graph_and_refuses_bad_generation_input(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from genexp.deploy.onnx_export import export_graph
    from genexp.exporters.gpt import GPTExporter
    from genexp.models.gpt import GPT

    graph = runs["gpt"] / "export" / "model.int8.onnx"
    quick = ["report.backends=false", "report.repeats=2", "report.gpu=false", "trainer.limit_test_batches=1"]
    quick += ["trainer.enable_progress_bar=false", "num_samples=1"]

    def evaluate(target: Path, *extra: str) -> subprocess.CompletedProcess:
        args = [f"target={target}", *quick, *extra, f"hydra.run.dir=e{len(list(tmp_path.iterdir()))}"]
        return run_cli(args, tmp_path, "genexp.evaluate", env=PASSIVE)

    done = evaluate(graph, "max_new_tokens=40", "prompt=ROMEO:")
    assert done.returncode == 0, done.stderr[-2000:]
    sample = done.stdout.split("----- sample 0 -----\n")[1]
    assert sample.startswith("ROMEO:") and len(sample.rstrip("\n")) == 46  # past the 16-character window
    copy = tmp_path / "export"
    shutil.copytree(graph.parent, copy)
    vocab = json.loads((copy / "model.json").read_text())["usage"]["vocab"]
    other = GPT(len(vocab), 16, vocab, n_layer=1, n_head=2, n_embd=32)  # the run's has 4 heads of 8
    export_graph(GPTExporter().graphs(other, 1)[1], copy / "decoder_with_past.int8.onnx", 17)
    for target, extra, words in (
        (graph, ["max_new_tokens=-1"], "max_new_tokens=-1: expected an integer >= 0"),
        (graph, ["prompt=" + "ROMEO:" * 3], "prompt='18 characters': expected at most data.block_size=16"),
        (
            copy / "model.int8.onnx",
            [],
            "decoder_with_past graph: its past inputs are [(2, 'batch', 2, 'past', 16)]",
        ),
    ):
        done = evaluate(target, *extra)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert lines[-1].startswith("genexp: error: ") and words in lines[-1], lines[-1]


def test_an_export_from_before_the_cache_still_evaluates(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from genexp.report.onnx_target import load_target
    from genexp.report.tables import generation_text

    old = tmp_path / "export"
    shutil.copytree(runs["gpt"] / "export", old)
    info = json.loads((old / "model.json").read_text())
    for name in ("decoder_with_past.onnx", "decoder_with_past.int8.onnx"):
        (old / name).unlink()
        info["graphs"].pop(name)
    info["usage"].pop("cached")
    (old / "model.json").write_text(json.dumps(info))
    loaded = load_target(old / "model.onnx")
    assert getattr(loaded.model, "cached_decoder", None) is None and loaded.model.cached_step() is None
    ids = loaded.model.encode("ROMEO:")[None]
    got = loaded.model.generate_ids(ids, 30, top_k=1)  # crop-every-step through model.onnx
    torch_model = load_any(runs["gpt"] / "checkpoints" / "last.ckpt").model.eval()
    assert torch.equal(got, torch_model.generate_ids(ids, 30, top_k=1, cache=False))
    assert generation_text(1234.4) == "1,234"  # an old report's single figure


def test_every_family_computes_through_openvino_as_through_onnx_runtime(runs: dict[str, Path]) -> None:
    """The search scores OpenVINO's backends by installing them as the model's graphs (the GPT's cached decoder
    included): the metric through OpenVINO fp32 is the fp32 graph's."""
    from genexp.checkpoints.rebuild import load_any
    from genexp.search.measure import quality, through_backend

    for family, metric in (("gpt", "loss"), ("vae", "nelbo")):
        loaded = load_any(runs[family], key="run")
        export = runs[family] / "export"
        ort = quality(through_backend(loaded, export, "onnxruntime fp32"), metric)
        openvino = quality(through_backend(loaded, export, "openvino fp32"), metric)
        assert openvino == pytest.approx(ort, rel=1e-4), family
