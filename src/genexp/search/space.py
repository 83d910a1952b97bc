"""A family's search space (``conf/search/<family>.yaml`` or the user's own file) and the recipe a trial draws.

A recipe is a plain dict (``sparsity``, ``scope``, ``distill``, ``alpha``, ``temperature``, ``int8``,
``epochs``, and for a sampler with steps such as the diffusion model ``steps``: its ``model.sample_steps``,
reached by progressive distillation from the base when the recipe distils); ``recipe_overrides`` turns it
into the genexp-train overrides of an ordinary run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genexp.runtime.errors import ConfigError, GenexpError
from genexp.runtime.startup import config_dir

RECIPE_KEYS = ("sparsity", "scope", "distill", "alpha", "temperature", "int8", "epochs", "steps")
_TYPES = ("float", "int", "categorical")


@dataclass
class Space:
    """What a family's trials may vary, the quality metric (lower is better) and the latency batch."""

    family: str
    metric: str
    batch_size: int
    params: dict[str, dict[str, Any]]
    path: Path
    overrides: list[str] = field(default_factory=list)  # genexp-train overrides of every trial of this family


def family_name(model_target: str) -> str:
    """``genexp.models.vae.VAE`` -> ``vae``: the name of a family's space file."""
    return model_target.rsplit(".", 1)[-1].lower()


def load_space(family: str, path: str | None, base: str) -> Space:
    """The space of ``family``: ``path`` when given (``space=``), else ``conf/search/<family>.yaml``."""
    file = Path(path) if path else Path(config_dir()) / "search" / f"{family}.yaml"
    if not file.is_file():
        if path:
            raise ConfigError("space", path, "the path of a search space file (like conf/search/vae.yaml)")
        raise GenexpError(
            f"base={base}: a {family} run has no search space (no {file}); give one with "
            f"space=<your_space.yaml>, written like {Path(config_dir()) / 'search' / 'vae.yaml'}"
        )
    raw = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw.get("metric"):
        raise ConfigError("space", str(file), "a YAML file with metric, batch_size and params")
    for name, spec in raw["params"].items():
        if name not in RECIPE_KEYS or not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            raise ConfigError(
                f"space.params.{name}",
                spec,
                f"a parameter among {list(RECIPE_KEYS)} with type in {list(_TYPES)}",
            )
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError(
            "space", str(file), "overrides: a list of genexp-train overrides (key=value strings)"
        )
    batch = int(raw.get("batch_size", 16))
    return Space(family, str(raw["metric"]), batch, raw["params"], file, overrides)


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw a recipe from ``space`` for an Optuna ``trial`` (distillation's knobs only when it distills)."""
    recipe: dict[str, Any] = {
        "sparsity": 0.0,
        "scope": "global",
        "distill": False,
        "int8": False,
        "epochs": 1,
    }
    for name, spec in space.params.items():
        if name in ("alpha", "temperature") and not recipe.get("distill"):
            continue
        if spec["type"] == "float":
            recipe[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"))
        elif spec["type"] == "int":
            recipe[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            recipe[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return recipe


def recipe_overrides(recipe: dict[str, Any], teacher: Path) -> tuple[list[str], list[str]]:
    """``(compression groups, key=value overrides)`` of ``recipe``: structured pruning, distillation from
    ``teacher``, the fine-tune's epochs, the sampling steps."""
    groups, out = [], [f"trainer.max_epochs={int(recipe['epochs'])}"]
    if "steps" in recipe:
        out.append(f"model.sample_steps={int(recipe['steps'])}")
    if recipe["sparsity"] > 0:
        groups.append("prune")
        out += [
            "compression.prune.method=ln_structured",
            f"compression.prune.final_sparsity={recipe['sparsity']}",
            f"compression.prune.scope={recipe['scope']}",
            "compression.prune.latency_repeats=0",
        ]
    if recipe["distill"]:
        groups.append("distill")
        out += [
            f"compression.distill.teacher={teacher}",
            f"compression.distill.alpha={recipe.get('alpha', 0.5)}",
            f"compression.distill.temperature={recipe.get('temperature', 2.0)}",
        ]
    return groups, out


def describe(recipe: dict[str, Any]) -> str:
    """A short label: ``s0.50g+kd0.6+int8 e2``."""
    parts = [f"s{recipe['sparsity']:.2f}{recipe['scope'][0]}"] if recipe["sparsity"] > 0 else ["dense"]
    if recipe["distill"]:
        parts.append(f"kd{recipe.get('alpha', 0.5):.1f}")
    if recipe["int8"]:
        parts.append("int8")
    steps = f" {recipe['steps']} steps" if "steps" in recipe else ""
    return "+".join(parts) + steps + f" e{recipe['epochs']}"
