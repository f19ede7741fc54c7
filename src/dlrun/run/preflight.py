"""Check command-line overrides before Hydra runs, so a typo gets one clear line with a suggestion.

Hydra refuses unknown options and keys too, but with a search-path dump and no "did you mean";
this check says which key, which value, what is valid and the closest match. Anything it cannot
judge (sweeps over keys, the user's own groups) is left to Hydra.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from dlrun.errors import ConfigError
from dlrun.registry import closest

CONFIG_PACKAGE = "dlrun.configs"

# Hydra plugins behind options: (module, pip package, dl-run extra). The core install does not need them.
_JOBLIB = ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "sweep")
_SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm")
_OPTUNA = ("optuna", "optuna", "sweep")  # the sweeper is dl-run's own (hydra_plugins.dlrun_optuna_sweeper)
PLUGINS = {("hydra/launcher", "joblib"): _JOBLIB, ("hydra/launcher", "submitit_local"): _SUBMITIT,
           ("hydra/launcher", "submitit_slurm"): _SUBMITIT, ("hydra/sweeper", "optuna"): _OPTUNA,
           ("hparams_search", "optuna"): _OPTUNA}


def config_options(config_dir: str | None = None) -> dict[str, list[str]]:
    """Every config group and its options: the shipped configs plus the user's --config-dir."""
    roots = [resources.files(CONFIG_PACKAGE)]
    if config_dir:
        roots.append(Path(config_dir))
    groups: dict[str, set[str]] = {}
    for root in roots:
        for group in root.iterdir():
            if group.is_dir() and not group.name.startswith(("_", ".")) and group.name != "hydra":
                names = {f.name[:-5] for f in group.iterdir() if f.name.endswith(".yaml")}
                groups.setdefault(group.name, set()).update(names)
    return {g: sorted(o) for g, o in groups.items()}


def describe_options(config_dir: str | None = None) -> dict[str, dict[str, str]]:
    """Every group's options with the first line of their YAML's leading comment."""
    roots = [resources.files(CONFIG_PACKAGE)] + ([Path(config_dir)] if config_dir else [])
    out: dict[str, dict[str, str]] = {}
    for group, options in config_options(config_dir).items():
        for option in options:
            text = ""
            for root in roots:
                f = root / group / f"{option}.yaml"
                if f.is_file():
                    lines = [ln[1:].strip() for ln in f.read_text().splitlines() if ln.startswith("#")]
                    text = next((ln for ln in lines if ln and not ln.startswith(("@package", "dl-run"))), "")
            out.setdefault(group, {})[option] = text
    return out


def _suggest(value: str, valid: list[str]) -> str:
    guess = closest(value, valid)
    return f" Did you mean '{guess}'?" if guess else ""


def _choices(override: Override) -> list[str]:
    if override.is_interval_sweep():  # a search's continuous range, e.g. hydra.sweeper.params.x=interval(0,1)
        return [override.input_line.split("=", 1)[1]]
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]  # logger=[tensorboard,mlflow]


def check_plugins(overrides: list[Override]) -> None:
    """Raise ConfigError, with the pip command, for a launcher or sweeper whose Hydra plugin is not installed."""
    from importlib.util import find_spec

    for o in overrides:
        for choice in _choices(o) if o.type is not OverrideType.DEL else []:
            plugin = PLUGINS.get((o.key_or_group, choice))
            if plugin is not None and find_spec(plugin[0]) is None:
                raise ConfigError(
                    f"'{o.key_or_group}={choice}' needs the Hydra plugin {plugin[1]}, which is not installed. Install "
                    f"it with:  pip install {plugin[1]}  (or, in a dl-run checkout, pip install -e \".[{plugin[2]}]\")",
                    key=o.key_or_group)


def check_pruner(overrides: list[Override]) -> None:
    """A search's pruner named on the command line that does not exist is refused before anything is written."""
    for o in overrides:
        if o.key_or_group == "hydra.sweeper.pruner" and o.type is OverrideType.CHANGE:
            from hydra_plugins.dlrun_optuna_sweeper.pruning import check_pruner_name

            for choice in _choices(o):
                check_pruner_name(choice)


def check(argv: list[str]) -> None:
    """Raise ConfigError for an unknown group option or an unknown key among the overrides in argv."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info or args.config_name:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:
        return  # a syntax error: Hydra's own message points at the character
    check_plugins(overrides)
    check_pruner(overrides)
    groups = config_options(args.config_dir)
    picked: list[str] = []
    for o in overrides:
        if o.key_or_group in groups and o.package is None and o.type is not OverrideType.DEL:
            valid = groups[o.key_or_group]
            for choice in _choices(o):
                if choice not in valid and choice != "null":
                    raise ConfigError(f"Unknown option '{o.key_or_group}={choice}'. Valid {o.key_or_group} options: "
                                      f"{', '.join(valid)}.{_suggest(choice, valid)}", key=o.key_or_group)
            listed = not o.is_sweep_override() and isinstance(o.value(), list)  # several options of one group
            picked.append(f"{o.key_or_group}=[{','.join(_choices(o))}]" if listed
                          else f"{o.key_or_group}={_choices(o)[0]}")
    keys = [o for o in overrides if o.type is OverrideType.CHANGE and o.key_or_group not in groups
            and not o.key_or_group.startswith(("hydra.", "hydra/")) and not o.package]
    if not keys:
        return  # nothing to look up: no compose here, Hydra's own is the only one (issue #21)
    if not args.config_dir and _found_in_the_yamls(keys, overrides, groups):
        return
    cfg = _compose(picked, args.config_dir)
    if cfg is None:
        return
    for o in keys:
        key = o.key_or_group
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf in parent:
            continue
        valid = [str(k) for k in parent.keys()]
        where = f"'{parent_key}'" if parent_key else "the top level"
        raise ConfigError(
            f"Unknown key '{key}' (value {_choices(o)[0]!r}). Valid keys in {where}: {', '.join(valid)}."
            f"{_suggest(leaf, valid)} (To add a key that is not in the config, write +{key}=...)", key=key
        )


_ABSENT = object()
_REGROUPING = ("experiment", "hparams_search")  # presets that pick other groups' options


def _found_in_the_yamls(keys: list[Override], overrides: list[Override], groups: dict[str, list[str]]) -> bool:
    """Whether every key is in train.yaml or in the shipped YAML its group's option comes from, read directly:
    a few milliseconds where a compose costs 0.4 CPU s (issue #21). Only a yes is final; where the reading could
    miss a key (a preset or search picking other options, an option with a defaults list of its own, several
    options of one group), it says no and the compose decides."""
    root = resources.files(CONFIG_PACKAGE)
    train = OmegaConf.load(root / "train.yaml")
    chosen = {group: option for entry in train.defaults if isinstance(entry, DictConfig)
              for group, option in entry.items()}
    for o in overrides:
        if o.key_or_group in groups and o.package is None:
            value = o.value() if o.type is OverrideType.CHANGE and not o.is_sweep_override() else _choices(o)[0]
            chosen[o.key_or_group] = value if o.type is not OverrideType.DEL else None
    if any(chosen.get(group) is not None for group in _REGROUPING) or any(isinstance(v, list) for v in chosen.values()):
        return False
    options = {}
    for o in keys:
        top, _, rest = o.key_or_group.partition(".")
        nodes = [train.get(top)]
        if chosen.get(top) is not None and top in groups:
            if top not in options:
                options[top] = OmegaConf.load(root / top / f"{chosen[top]}.yaml")
                if "defaults" in options[top]:
                    return False
            nodes.append(options[top])
        if not any(isinstance(n, DictConfig) and OmegaConf.select(n, rest, default=_ABSENT) is not _ABSENT
                   for n in nodes):
            return False
    return True


def _compose(overrides: list[str], config_dir: str | None) -> DictConfig | None:
    """The config as the chosen options make it, without the key overrides; None if it does not compose."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if config_dir:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    try:
        with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
