"""Packaging. A plain install compiles nothing: CUDA modules are built on first use.

    FUSEINFER_AOT=1 pip install --no-build-isolation .

prebuilds every csrc module (archs from FUSEINFER_AOT_ARCHS, default "9.0a;10.0a") into
fuseinfer/_prebuilt, which the loader prefers when it matches. The build needs the
installed torch and nvidia-cutlass, hence --no-build-isolation."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    """Ship csrc/ and autotune_configs/ inside the package (the JIT needs the sources)."""

    def run(self) -> None:
        super().run()
        editable = getattr(self, "editable_mode", False)
        package = ROOT / "python" / "fuseinfer" if editable else Path(self.build_lib) / "fuseinfer"
        if not editable:
            for folder in ("csrc", "autotune_configs"):
                target = package / "_data" / folder
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(ROOT / folder, target)
        if os.environ.get("FUSEINFER_AOT") == "1":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise SystemExit(
                    "FUSEINFER_AOT=1 builds against your installed torch, which pip's build "
                    "isolation hides: run `FUSEINFER_AOT=1 pip install --no-build-isolation .`"
                ) from None
            sys.path.insert(0, str(ROOT / "python"))
            from fuseinfer.jit.aot import build_all, parse_archs

            build_all(package / "_prebuilt", parse_archs(None), ROOT / "build" / "aot")


setup(
    name="fuseinfer",
    version="0.1.0",
    description="Fused CUDA/CUTLASS/Triton kernels for LLM inference",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"fuseinfer": ["_prebuilt/*.so", "_prebuilt/*.json", "models/tiny/*.json",
                              "models/configs/*/*.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "ninja", "safetensors", "tokenizers"],
    extras_require={
        # Triton runs its kernels under TRITON_INTERPRET=1 in the CPU suite; its
        # interpreter converts 1-element arrays to scalars, which numpy 2.4 refuses.
        # transformers: the models are checked against it on the same checkpoint.
        # openai/httpx: the server is driven by the official client in the CPU suite.
        # pytest-benchmark: the host-side benchmarks (tests/host_bench, `fuseinfer bench host`).
        "test": ["pytest>=7", "pytest-benchmark>=4", "triton>=3.3", "numpy<2.4",
                 "transformers>=4.51", "openai", "httpx", "fastapi", "uvicorn", "jinja2"],
        # uvicorn[standard]: httptools and uvloop, the faster HTTP parser and event loop.
        "serve": ["fastapi", "uvicorn[standard]", "jinja2"],
        # Headers only; install with --no-deps to skip its Python tooling's dependencies.
        "cuda": ["nvidia-cutlass>=3.9"],
        "bench": ["liger-kernel"],
        # `fuseinfer bench summary` draws docs/plots with it; without it, tables only.
        "plot": ["matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["fuseinfer=fuseinfer.cli:main"]},
    cmdclass={"build_py": BuildPy},
)
