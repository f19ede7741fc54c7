"""Print the longest functions under src/ (lines from `def` to the last line of the body) and their parameter counts.

    python scripts/longest_functions.py            # the ten longest
    python scripts/longest_functions.py --top 30
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def functions(root: Path = SRC) -> list[tuple[int, int, str]]:
    """(lines, parameters, 'path:line name') for every function and method below root."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                count -= bool(args.args) and args.args[0].arg in ("self", "cls")
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                found.append((node.end_lineno - start + 1, count,
                              f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=10)
    top = parser.parse_args().top
    print(f"{'lines':>5} {'params':>6}  function")
    for lines, params, where in functions()[:top]:
        print(f"{lines:>5} {params:>6}  {where}")


if __name__ == "__main__":
    main()
