"""Package discovery only; the metadata lives in pyproject.toml.

kernels/ and conf/ live at the top of the repository (DESIGN.md) and install as the subpackages
pivotrl_nemo.kernels and pivotrl_nemo.conf, which needs ``package_dir`` and a computed package
list that pyproject.toml cannot express together.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pivotrl_nemo", "pivotrl_nemo.*"]) + ["pivotrl_nemo.kernels", "pivotrl_nemo.conf"],
    package_dir={"pivotrl_nemo.kernels": "kernels", "pivotrl_nemo.conf": "conf"},
)
