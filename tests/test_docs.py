"""README.md and docs/*.md hold what a newcomer copies: every link and anchor resolves, the front page stays a
front page, every ``genexp-*`` command shown composes into a config, and each command shown (a line of a ``bash``
block, or an inline ``genexp-train ...`` / ``python benchmarks/...`` with its arguments) is run by a named test
(``COVERED``) or, for the long benchmarks, has its options checked (``ARGUMENTS_ONLY``).

``tests/test_readme.py`` runs README.md's "Everyday commands" as written; ``tests/test_onnx_export.py`` runs the
numpy snippets of docs/deploy.md; the tests named in ``COVERED`` run the other commands at a tiny scale.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from conftest import CONF, REPO, shell_commands

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
FRONT_PAGE_LINES = 300
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CONFIG_OF = {
    "genexp-train": "train",
    "genexp-eval": "eval",
    "genexp-export": "export",
    "genexp-optimize": "optimize",
}

# Each command shown -> the test that runs it, by the patterns it matches (re.search). The tests run the same
# options at a tiny scale (FAST overrides, small models, a few batches); ".ci/run" runs pytest. A command that
# matches no pattern fails test_every_command_shown_is_run_by_a_named_test.
COVERED: dict[str, tuple[str, ...]] = {
    "tests/test_install.py::test_wheel_in_a_fresh_venv_trains_one_epoch_from_a_temp_folder": (
        r"^pip install ",
    ),
    ".ci/run": (r"^pytest\b",),
    "tests/test_readme.py::test_every_everyday_command_works_as_written": (
        r"^genexp-train model\.latent_dim=8 optimizer=sgd",
        r"^genexp-train -m optimizer=adam,adagrad,momentum",
        r"^genexp-train --(cfg job|help)$",
        r"^tensorboard --logdir outputs/$",
        r"^genexp-eval ckpt_path=\S+/last\.ckpt$",
    ),
    "tests/test_own_model.py::test_own_model_exports_to_onnx_and_is_measured_there": (
        r"^genexp-export target=\S+ trust=\[mypkg\.\]$|^genexp-eval target=\S+/model\.onnx trust=\[mypkg\.\]$",
    ),
    "tests/test_own_model.py::test_own_model_trains_resumes_compresses_and_is_trusted_only_when_asked": (
        r"--config-dir myconf|trust=\[mypkg\.\]",
    ),
    "tests/test_train_cost.py::test_time_to_target_and_curve": (
        r"^genexp-train target\.metric=val/loss target\.value=110$",
    ),
    "tests/test_optimizer_defaults.py::test_every_optimizer_trains_every_family": (
        r"^genexp-train experiment=gan_digits$",
        r"^genexp-train experiment=gpt_shakespeare_cpu($| data\.path=)",
    ),
    "tests/test_gan.py::test_gan_trains_through_the_config_with_sample_quality": (
        r"^genexp-train callbacks=quality$",
    ),
    "tests/test_train.py::test_eval_rebuilds_from_checkpoint": (r"^genexp-eval ckpt_path=\S+/<best>\.ckpt$",),
    "tests/test_gpt.py::test_cli_train_then_eval_prints_samples_with_the_saved_vocab": (
        r"num_samples=3 prompt=|^genexp-train model=gpt data=text",
    ),
    "tests/test_train_cost.py::test_optimizer_study_end_to_end": (r"experiment=optimizer_study",),
    "tests/test_prune_cli.py::test_resume_mid_schedule_ends_like_an_uninterrupted_run": (
        r"^genexp-train compression=\[prune\] compression\.prune\.final_sparsity=0\.8",
    ),
    "tests/test_structured.py::test_a_structured_run_resumes_evaluates_quantizes_and_exports": (
        r"prune\.method=ln_structured|^genexp-export target=\S+ quantize=int8$",
    ),
    "tests/test_quantize.py::test_quantize_backend_onnxruntime_exports_the_int8_graph_at_fit_end": (
        r"compression\.quantize\.backend=onnxruntime",
    ),
    "tests/test_report.py::test_gpt_sweep_recipe_is_eight_runs_and_int8_compounds_with_pruning": (
        r"compression\.quantize\.mode=ptq|experiment=gpt_compress_sweep",
    ),
    "tests/test_quantize.py::test_qat_fake_quant_from_start_epoch_and_artifact_round_trips_in_a_fresh_process": (
        r"compression\.quantize\.mode=qat|^genexp-eval ckpt_path=\S+/quantized$",
    ),
    "tests/test_report.py::test_a_quantized_artifact_is_what_a_run_ships": (
        r"^genexp-train compression=\[prune,quantize\]",
    ),
    "tests/test_report.py::test_report_agrees_with_compression_json_and_a_fresh_measurement": (
        r"^genexp-eval target=outputs/train/runs/<stamp>$",
    ),
    "tests/test_report.py::test_sweep_ends_with_table_plot_and_hparams": (
        r"^genexp-eval compare=(outputs/train/multiruns/|<sweep>$)|experiment=vae_compress_sweep",
    ),
    "tests/test_distill.py::test_gan_and_gpt_students_distil": (
        r"compression=\[distill\] compression\.distill\.teacher=\S+/last\.ckpt",
    ),
    "tests/test_onnx_export.py::test_eval_measures_an_onnx_graph_like_a_checkpoint": (
        r"^genexp-eval target=\S+/model\.int8\.onnx$",
    ),
    "tests/test_onnx_export.py::test_compare_mixes_torch_and_onnx_rows": (r"^genexp-eval compare=\[",),
    "tests/test_onnx_export.py::test_the_diffusion_graph_is_measured_through_onnxruntime": (
        r"^genexp-eval target=\S+/export/model\.onnx$",
    ),
    "tests/test_diffusion.py::test_cli_fit_test_and_resume": (r"^genexp-train experiment=diffusion_digits$",),
    "tests/test_diffusion.py::test_distillation_runs_in_the_fit_from_the_teachers_weights": (
        r"^genexp-train experiment=diffusion_digits_distill ",
    ),
    # docs/scaling.md's GPU sweep: the same launcher and DDP on the CI's one-node cluster, on CPUs
    "tests/test_slurm.py::test_two_jobs_each_ddp_with_two_tasks": (r"hydra/launcher=slurm",),
    "tests/test_scale.py::test_ddp_cpu_two_processes_one_run_folder": (
        r"^genexp-train trainer=ddp_cpu trainer\.devices=2$",
    ),
    "tests/test_scale.py::test_ddp_cpu_multirun_runs_each_job_once": (r"^genexp-train -m trainer=ddp_cpu ",),
    "tests/test_scale.py::test_torchrun_two_ranks_one_run_folder": (
        r"^torchrun --nproc_per_node=2 -m genexp\.train trainer=ddp_cpu$",
    ),
    "tests/test_scale.py::test_optuna_preset_samples_lr_for_three_trials": (
        r"^genexp-train -m hparams_search=optuna ",
    ),
    "tests/test_scale.py::test_gpu_ddp_one_device": (  # CUDA only
        r"^genexp-train trainer=ddp trainer\.devices=4 ",
    ),
    "tests/test_deploy_speed.py::test_deploy_speed_prints_every_variant_over_trial_processes": (
        r"^python benchmarks/deploy_speed\.py ",
    ),
    "tests/test_train_cost.py::test_gpu_check_says_there_is_no_gpu_and_exits_0": (
        r"^python benchmarks/gpu_check\.py$",
    ),
    "tests/test_generation.py::test_generation_benchmark_prints_tokens_per_s_with_and_without_the_cache_and_the_quality": (
        r"^python benchmarks/generation\.py ",
    ),
    "tests/test_generation.py::test_the_256_recipe_is_the_baby_gpt_with_a_4x_context_and_trains": (
        r"^genexp-train experiment=gpt_shakespeare_256 ",
    ),
    "tests/test_deploy_speed.py::test_onnx_rewrites_prints_each_rewrite_per_backend": (
        r"^python benchmarks/onnx_rewrites\.py( --nets vae --channels 32)?$",
    ),
    "tests/test_deploy_speed.py::test_conv_kernels_checks_each_rewrite_against_torch_and_prints_every_layer": (
        r"^python benchmarks/conv_kernels\.py$",
    ),
    "tests/test_int8_scheme.py::test_the_scheme_benchmark_prints_each_graph_under_each_scheme": (
        r"^python benchmarks/int8_schemes\.py ",
    ),
    "tests/test_int8_scheme.py::test_on_an_avx2_cpu_without_vnni_the_export_picks_7bit_weights_and_stays_exact": (
        r"^genexp-export quantize=int8$",
    ),
    "tests/test_search.py::test_the_search_writes_the_study_table_plot_and_best": (
        r"^genexp-optimize base=\S+ budget=0\.02 objective=latency$",
    ),
    "tests/test_int8_scheme.py::test_a_graph_for_another_kind_of_cpu_asks_for_7bit_weights": (
        r"int8_scheme=7bit$",
    ),
}

# Benchmarks that take minutes to an hour: no test runs them; test_benchmark_options_exist checks that each
# option the docs pass is one the script accepts (its --help also proves that the script imports).
ARGUMENTS_ONLY = {
    "optimize",
    "vae_baseline",
    "sample_quality",
    "train_cost",
    "gpt_speed",
    "compress_sweep",
    "diffusion",
    "prune_tradeoff",
    "quantize_gpt",
    "distill",
    "ddp_cpu",
}
SHOWN = re.compile(r"(genexp-(train|eval|export|optimize)|torchrun) \S|python benchmarks/\w+\.py\b")


def fenced(path: Path, language: str | None = None) -> list[str]:
    """The bodies of the fenced blocks of ``path`` (of one language, or all), indented blocks included."""
    blocks = FENCE.findall(path.read_text(encoding="utf-8"))
    return [body for lang, body in blocks if language is None or lang == language]


def prose(path: Path) -> str:
    """``path`` without its fenced blocks and inline code: what links and headings are read from."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(heading)
        out.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return out


def inline_commands(page: Path) -> list[str]:
    """Whole commands written inline (```genexp-train a=b```), not elided ones (``...``, ``<same overrides>``)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text))
    return [s for s in spans if SHOWN.match(s) and not re.search(r"\.\.\.|<\w+ \w+>| \[", s)]


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command line of every ``bash`` block, and every inline command, of the docs."""
    return [
        (page.relative_to(REPO).as_posix(), command)
        for page in PAGES
        for command in [
            *(c for block in fenced(page, "bash") for c in shell_commands(block)),
            *inline_commands(page),
        ]
    ]


def test_the_front_page_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= FRONT_PAGE_LINES, f"README.md has {len(lines)} lines; move long sections to docs/"
    linked = {Path(target.split("#")[0]).name for target in LINK.findall(prose(README))}
    unlinked = [p.name for p in PAGES[1:] if p.name not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or REPO not in file.parents:
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_slugs_follow_github() -> None:
    assert slug("Which optimizer trains fastest: `experiment=optimizer_study`") == (
        "which-optimizer-trains-fastest-experimentoptimizer_study"
    )
    assert slug("Diffusion on digits, and progressive distillation to ¼ of the sampling steps") == (
        "diffusion-on-digits-and-progressive-distillation-to-¼-of-the-sampling-steps"
    )
    assert slug("Quantization at set epochs (torchao)") == "quantization-at-set-epochs-torchao"


def test_every_command_shown_is_run_by_a_named_test() -> None:
    commands = documented_commands()
    assert len(commands) > 40, "the bash blocks were not found"
    patterns = [pattern for node in COVERED.values() for pattern in node]
    used, orphans = set(), []
    for page, command in commands:
        bench = re.match(r"python benchmarks/(\w+)\.py\b", command)
        hits = [pattern for pattern in patterns if re.search(pattern, command)]
        used.update(hits)
        if not hits and not (bench and bench.group(1) in ARGUMENTS_ONLY):
            orphans.append(f"{page}: {command}")
    assert not orphans, "commands no test runs (add a test and a COVERED entry):\n" + "\n".join(orphans)
    assert not set(patterns) - used, f"COVERED patterns no command matches: {set(patterns) - used}"
    for node in COVERED:
        file, _, name = node.partition("::")
        source = (REPO / file).read_text(encoding="utf-8")
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"{node}: no such test"
        assert name or "pytest" in source, f"{file} does not run pytest"


def genexp_invocations() -> list[tuple[str, list[str]]]:
    """(config name, overrides) of every ``genexp-*`` command in the bash blocks, placeholders filled in, a
    multirun's sweeps reduced to their first value; ``--help`` and ``--config-dir`` (a folder of the reader's
    own, see tests/test_own_model.py) are left out."""
    out = []
    for _, command in documented_commands():
        for part in command.split("&&"):
            args = shlex.split(re.sub(r"<[^<>]+>", "X", part))
            if args[:1] == ["torchrun"]:  # torchrun [its options] -m genexp.train overrides
                args = ["genexp-train", *args[args.index("genexp.train") + 1 :]]
            if not args or args[0] not in CONFIG_OF or {"--help", "--config-dir"} & set(args):
                continue
            overrides = [a for a in args[1:] if a not in ("-m", "--multirun", "--cfg", "job")]
            out.append((CONFIG_OF[args[0]], first_of_each_sweep(overrides)))
    return out


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    kept = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            kept.append(override.input_line)
        elif override.is_discrete_sweep():  # a,b,c: the first; interval(...) is Optuna's to sample
            kept.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}")
    return kept


def test_every_genexp_command_shown_composes(tmp_path: Path) -> None:
    """Each command's groups, options and keys exist: Hydra composes it and every value resolves."""
    invocations = genexp_invocations()
    assert len(invocations) > 30
    failed = []
    for config, overrides in invocations:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose(config_name=config, overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            OmegaConf.to_container(cfg, resolve=True)
        except Exception as error:  # noqa: BLE001 - every failing command is reported at once
            failed.append(f"{config} {' '.join(overrides)}\n    {type(error).__name__}: {error}")
        finally:
            GlobalHydra.instance().clear()
    assert not failed, "\n".join(failed)


def benchmark_options() -> dict[str, set[str]]:
    """Each benchmark script the bash blocks show -> the ``--options`` they pass to it."""
    out: dict[str, set[str]] = {}
    for _, command in documented_commands():
        if match := re.match(r"python benchmarks/(\w+)\.py\b(.*)", command):
            out.setdefault(match.group(1), set()).update(re.findall(r"(?<!\S)(--[\w-]+)", match.group(2)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(ARGUMENTS_ONLY))
def test_benchmark_options_exist(script: str) -> None:
    """The long benchmarks the docs show import and accept every option the docs pass to them."""
    options = benchmark_options()
    assert script in options, f"benchmarks/{script}.py is no longer in the docs: drop it from ARGUMENTS_ONLY"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    unknown = [option for option in options[script] if option not in done.stdout]
    assert not unknown, f"benchmarks/{script}.py --help does not list {unknown}"
