"""The package list, the one part of the build configuration that pyproject.toml cannot express (the rest is there).

Every package under src/ is found as `[tool.setuptools.packages.find] where = ["src"]` would find it, so a new
subpackage needs no listing. `dlrun.configs` is added by name: it lives in configs/ at the top of the repository
(mapped by `package-dir` in pyproject.toml), outside src/, and pyproject.toml cannot add a package to what `find`
returns.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(where="src"), "dlrun.configs"])
