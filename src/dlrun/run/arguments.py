"""The command line as Hydra must read it: a resumed run's own overrides, read from its folder as data (never as
code unless the user gives it again), its data found where it was and checked, and paths quoted for Hydra."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

from dlrun.errors import ConfigError
from dlrun.run import sweep_resume


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def hydra_value(text: str) -> str:
    """A value as Hydra's override grammar reads it back unchanged: plain when it is plain, else a quoted string
    (a folder with spaces or accents, e.g. /home/josé/runs, would stop Hydra's parser)."""
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", text):
        return text
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)  # escape quotes and the backslashes before
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)  # ... and those that end the string
    return "'" + quoted.replace("${", "\\${") + "'"


def plain_value(value: str) -> str:
    """A value as the user typed it, without Hydra's quotes (resume='/a b/run')."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            return str(OverridesParser.create().parse_override(f"x={value}").value())
        except Exception:  # noqa: BLE001 - not a quoted string after all: take it as typed
            return value
    return value


def quote_paths(args: list[str]) -> list[str]:
    """`key=value` arguments whose value holds spaces or non-ASCII letters (a path such as `tëst ünï/new.csv`),
    which Hydra's parser would refuse, quoted for it; anything else as given."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        odd = any(c.isspace() or ord(c) > 127 for c in value)
        if eq and odd and not key.startswith("-") and not re.search(r"[\[\]{}(),'\"=]", value) and value.strip():
            arg = f"{key}={hydra_value(value)}"
        out.append(arg)
    return out


def resume_arguments(args: list[str]) -> list[str]:
    """`resume=<run dir>` re-runs that run's own overrides in its own directory, plus any new ones given; the run's
    files are read as data: they may not name code (a `_target_`, Hydra's own settings) unless given again."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    run_dir = Path(plain_value(resume[-1].split("=", 1)[1])).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"'resume={run_dir}': no such directory. Give the run directory that dl-run printed "
                          f"at the end of the run (outputs/<date>/<time>_<pid>), or a sweep's "
                          f"(outputs/multirun/<date>/<time>_<pid>).", key="resume")
    given = [a for a in args if not a.startswith("resume=")]
    if sweep_resume.is_sweep(run_dir):
        return sweep_arguments(run_dir, given)
    checkpoints = run_dir / "checkpoints"
    if not saved.is_file() or not any((checkpoints / name).is_file() for name in ("last.pt", "previous.pt")):
        raise ConfigError(f"'resume={run_dir}' is neither a dl-run run directory with a checkpoint (expected "
                          f"{saved} and {checkpoints / 'last.pt'}) nor a sweep's folder (expected "
                          f"{run_dir / sweep_resume.RECORD}). Nothing in it was changed.", key="resume")
    if any(a in ("-m", "--multirun") for a in given):
        raise ConfigError(f"'resume={run_dir}' is one run, not a sweep: -m continues a sweep's folder (the one "
                          f"holding {sweep_resume.RECORD}). Continue this run without -m.", key="resume")
    given_keys = {override_key(a) for a in given if "=" in a}
    try:
        recorded = yaml.safe_load(saved.read_text()) or []
    except yaml.YAMLError as err:
        raise ConfigError(f"'resume={run_dir}': {saved} is not a YAML list of overrides ({err}).",
                          key="resume") from None
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise ConfigError(f"'resume={run_dir}': {saved} is not a list of overrides.", key="resume")
    original = [o for o in map(_renamed, recorded) if override_key(o) not in given_keys | {"resume", "hydra.run.dir"}]
    _refuse_saved_code(original, saved)
    mode = next((a.split("=", 1)[1] for a in reversed(given) if a.startswith("mode=")), "train")
    logging = _writable_run(run_dir, mode)
    data = _data_arguments(run_dir, original, given_keys)
    # hydra.output_subdir=null: Hydra must not rewrite the run's .hydra/ before the new overrides are checked;
    # run() records them itself once the config has proved valid.
    folder = hydra_value(str(run_dir.resolve()))
    options, given = _options_first(given)
    return options + _config_dir_of(run_dir, options) + original + data + given + logging + [
        f"hydra.run.dir={folder}", "hydra.output_subdir=null", f"resume={folder}"]


def sweep_arguments(sweep_dir: Path, given: list[str]) -> list[str]:
    """`resume=<sweep dir>` re-launches the sweep into its own folder with its own recorded overrides (the jobs',
    and its launcher's and sweeper's), `sweep.resume=true` telling each job to keep, resume or run itself; new
    values are refused, and so is a folder whose jobs another dl-run is running."""
    content = sweep_resume.recorded(sweep_dir)
    task, recorded_hydra = sweep_resume.recorded_overrides(content)
    options, overrides = _options_first(given)
    again = [o for o in overrides if o in recorded_hydra]  # the sweep's Hydra settings, given again: trusted
    given_keys = {override_key(o) for o in overrides}
    hydra_overrides = [o for o in recorded_hydra if override_key(o) not in given_keys]  # a launcher given now wins
    sweep_resume.refuse_recorded_code(sweep_dir, hydra_overrides)
    added = again + sweep_resume.refuse_new_values(sweep_dir, task, [o for o in overrides if o not in again])
    holder = sweep_resume.lock_holder(sweep_dir)
    if holder is not None:
        raise ConfigError(sweep_resume.locked_message(sweep_dir, holder), key="resume")
    if not os.access(sweep_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"'resume={sweep_dir}': cannot write in {sweep_dir} (it is read-only for you), and the "
                          f"sweep's jobs write there. Make it writable, or copy the sweep elsewhere.", key="resume")
    multirun = [] if any(o in ("-m", "--multirun") for o in options) else ["-m"]
    folder = hydra_value(str(sweep_dir.resolve()))
    # hydra.output_subdir=null: Hydra must not rewrite a kept job's .hydra/; a job that runs records its own.
    return multirun + options + _config_dir_of(sweep_dir, options) + hydra_overrides + task + added + [
        f"hydra.sweep.dir={folder}", "hydra.output_subdir=null", "sweep.resume=true"]


# Hydra's command-line options that take a value (the rest are flags).
_VALUED_OPTIONS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--cfg", "-c", "--package",
                   "-p", "--experimental-rerun")


def _options_first(args: list[str]) -> tuple[list[str], list[str]]:
    """The command's options (--config-dir DIR, -m, ...) and its overrides, apart: options go before the overrides,
    or Hydra's argument parser refuses the overrides that follow one."""
    options, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):  # an override never starts with '-' (+key and ~key do not)
            takes = arg in _VALUED_OPTIONS and i + 1 < len(args)
            options += args[i:i + 2] if takes else [arg]
            i += 2 if takes else 1
        else:
            overrides.append(arg)
            i += 1
    return options, overrides


def _refuse_saved_code(original: list[str], saved: Path) -> None:
    """A run folder's saved overrides are data: one that names code to call (`_target_`) or changes Hydra itself
    (its callbacks, launchers, environment) is used only when the user gives it again on the command line."""
    for override in original:
        key = override_key(override)
        if "_target_" in override or key.startswith("hydra"):
            raise ConfigError(f"The run's saved override '{override}' (in {saved}) names code to call or changes "
                              f"Hydra's own settings, and dl-run runs nothing a run folder names unless you say so: "
                              f"if you trust it, give '{override}' again on the command line with resume=.", key=key)


def _writable_run(run_dir: Path, mode: str) -> list[str]:
    """Training on writes in the run's folder: refused when it is read-only. A mode writes its own file (checked
    where it does); Hydra's log then goes to the terminal instead of the read-only folder."""
    if os.access(run_dir, os.W_OK | os.X_OK):
        return []
    if mode == "train":
        raise ConfigError(f"'resume={run_dir}': cannot write in {run_dir} (it is read-only for you), and resuming "
                          f"writes its checkpoints and metrics there. Make it writable, or copy the run elsewhere.",
                          key="resume")
    return ["hydra/job_logging=stdout"]


def _data_arguments(run_dir: Path, original: list[str], given_keys: set[str]) -> list[str]:
    """The run's data, found where it was (data_sources.json holds each path as resolved when the run started)
    whatever folder dl-run runs in now, and checked to hold what it held; a path given now wins, unchecked."""
    from dlrun.run.run_directory import RunDirectory, data_changes

    sources = RunDirectory(run_dir).data_sources()
    saved_values = {override_key(o): o.split("=", 1)[1] for o in original if "=" in o}
    out = []
    for key, entry in sources.items():
        group = key.split(".", 1)[0]
        if not isinstance(entry, dict) or key in given_keys or group in given_keys or "resolved" not in entry:
            continue  # a new dataset, or a new path for this one: the user's, as given
        if key in saved_values and plain_value(saved_values[key]) != entry.get("given"):
            continue  # the run was resumed with another path since: that one is in its overrides
        problem = data_changes(key, entry)
        if problem:
            raise ConfigError(f"'{key}={entry.get('given')}': the run {run_dir} trained on {entry['resolved']}, and "
                              f"{problem}. Give {key}=<the file to use> with resume= to use another (it is then "
                              f"taken as given, unchecked).", key=key)
        out.append(f"{key}={hydra_value(entry['resolved'])}")
    return out


def _renamed(override: str) -> str:
    """An override saved by an older dl-run, in today's words (trainer.mixed_precision became trainer.precision)."""
    if override_key(override) == "trainer.mixed_precision":
        return "trainer.precision=" + ("32" if override.split("=", 1)[1].lower() == "false" else "auto")
    return override


# Words in a config file that make Hydra or dl-run import or call something, or change the environment.
CODE_WORDS = ("_target_", "env_set", "searchpath", "callbacks")


def recorded_config_dirs(run_dir: Path) -> list[str]:
    """The --config-dir folders a run was made with, as Hydra recorded them in .hydra/hydra.yaml (a sweep's in its
    multirun.yaml), read as data."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file() and sweep_resume.is_sweep(run_dir):
        hydra_yaml = run_dir / sweep_resume.RECORD
    if not hydra_yaml.is_file():
        return []
    try:
        recorded = yaml.safe_load(hydra_yaml.read_text()) or {}
        sources = recorded.get("hydra", {}).get("runtime", {}).get("config_sources", []) or []
    except (yaml.YAMLError, AttributeError):
        raise ConfigError(f"'resume={run_dir}': {hydra_yaml} is not the file Hydra writes.", key="resume") from None
    return [str(s.get("path")) for s in sources if isinstance(s, dict) and s.get("provider") == "command-line"
            and s.get("schema") == "file"]


def resume_command(run_dir: Path) -> str:
    """The command that continues a run, as printed for the user to copy: with the run's own --config-dir, which
    dl-run takes from a run folder only when the user gives it (its configs may name code)."""
    config_dirs = [arg for folder in recorded_config_dirs(run_dir) for arg in ("--config-dir", folder)]
    return shlex.join(["dl-run", f"resume={run_dir.resolve()}", *config_dirs])


def _config_dir_of(run_dir: Path, given: list[str]) -> list[str]:
    """The run's own --config-dir (Hydra records it), unless one is given again: its configs are the run's. A
    folder whose configs name code is used only when the user gives it again with --config-dir."""
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in given):
        return []
    folders = recorded_config_dirs(run_dir)
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"'resume={run_dir}': the run was made with --config-dir {folder}, which is gone. "
                              f"Give --config-dir <where those configs are now>.", key="--config-dir")
        named = _code_named_in(Path(folder))
        if named:
            raise ConfigError(f"'resume={run_dir}': the run was made with --config-dir {folder}, whose {named}; "
                              f"dl-run runs nothing a run folder names unless you say so. If you trust that folder, "
                              f"give --config-dir {hydra_value(folder)} again on the command line.",
                              key="--config-dir")
    return [arg for folder in folders for arg in ("--config-dir", folder)]


def _code_named_in(folder: Path) -> str | None:
    """What in a config folder names code to import or call, or changes Hydra itself (None: plain settings)."""
    if (folder / "hydra").is_dir():
        return "hydra/ folder changes Hydra's own settings"
    for path in sorted(folder.rglob("*.y*ml"))[:2000]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        word = next((w for w in CODE_WORDS if w in text), None)
        if word:
            return f"file {path.relative_to(folder)} names code ({word})"
    return None
