"""The code's shape, as issue #16 set it: short functions, one object per concept, no model class in a task."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from dlrun.logger import LOGGERS, Logger, NullLogger, TensorBoardLogger

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "dlrun"


def _longest_functions():
    spec = importlib.util.spec_from_file_location("longest_functions", REPO / "scripts" / "longest_functions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.functions()


def _registered_builders() -> set[str]:
    """'path:line' of every function a registry maps a config name to (decorated with <REGISTRY>.register)."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", None) == "register" for d in node.decorator_list):
                found.add(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_function_in_the_package_is_over_60_lines_or_10_parameters_but_registered_builders():
    builders = _registered_builders()
    too_long = [(lines, params, where) for lines, params, where in _longest_functions()
                if (lines > 60 or params > 10) and where.split()[0] not in builders]
    assert not too_long, too_long


def test_tensorboard_and_the_null_logger_implement_the_logger_protocol(tmp_path):
    tensorboard = LOGGERS.build({"name": "tensorboard"}, run_dir=tmp_path)
    try:
        assert isinstance(tensorboard, TensorBoardLogger) and isinstance(tensorboard, Logger)
    finally:
        tensorboard.close()
    assert isinstance(NullLogger(), Logger)
    assert not isinstance(object(), Logger)  # the protocol checks something


def test_no_task_imports_a_model_class():
    """A task asks the model what it needs through dlrun.tasks.protocols; it names no model class."""
    imports = re.compile(r"^\s*from dlrun\.models\.(\w+) import (.+)$", re.M)
    for path in (SRC / "tasks").glob("*.py"):
        for module, names in imports.findall(path.read_text()):
            assert not any(name.strip()[:1].isupper() for name in names.split(",")), (path.name, module, names)


def test_no_module_level_mutable_state_in_the_cli_or_the_dataset_cache():
    import dlrun.cli as cli
    import dlrun.data.reuse as reuse

    for module in (cli, reuse):
        mutable = [name for name, value in vars(module).items()
                   if not name.startswith("__") and isinstance(value, (list, dict, set)) and name.isupper() is False]
        assert not mutable, (module.__name__, mutable)
