"""Package metadata, dependencies, and the build of the native CPU kernels (kernels/cpu)."""

import shutil
from glob import glob

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class BuildNativeKernels(build_ext):
    """build_ext that names a missing C++ compiler instead of failing deep inside distutils."""

    def build_extensions(self) -> None:
        compiler = (getattr(self.compiler, "compiler_cxx", None) or ["c++"])[0]
        if shutil.which(compiler) is None:
            raise SystemExit(
                f"mindformer_gf: the native kernels (kernels/cpu, kernels/tokenizer) need a C++17 compiler, and "
                f"'{compiler}' was not found. Install one (Debian/Ubuntu: apt-get install g++) or point CXX at it, "
                "then run `make setup` (or `pip install -e .`) again."
            )
        super().build_extensions()


# The CPU kernels are a plain shared library loaded by MindSpore's ops.Custom(func_type="aot"); building it as an
# Extension lets setuptools find the compiler and put the library inside the package (also for `pip install -e .`).
CPU_KERNEL_SOURCES = sorted(glob("kernels/cpu/*.cc"))
ext_modules = []
if CPU_KERNEL_SOURCES:
    ext_modules.append(
        Extension(
            "mindformer_gf.ops._cpu_kernels",
            sources=CPU_KERNEL_SOURCES,
            # Headers too: tile_kernels_lane16.h holds the AVX-512 kernels' code, and a change there must rebuild.
            depends=sorted(glob("kernels/cpu/*.h")),
            include_dirs=["kernels/cpu"],
            # No -march: the AVX2 and AVX-512 code is chosen at run time (kernels/cpu/README.md), so one build runs on
            # any x86-64.
            extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-fvisibility=hidden", "-pthread"],
            extra_link_args=["-pthread"],
            language="c++",
        )
    )
# The tokenizer's rank value encoding kernel: a plain shared library called through ctypes (no Python API), optional
# at run time (mindformer_gf/tokenizer/native.py falls back to numpy). -ffp-contract=off: its float64 arithmetic must
# round exactly as numpy's, so no fused multiply-adds.
TOKENIZER_KERNEL_SOURCES = sorted(glob("kernels/tokenizer/*.cc"))
if TOKENIZER_KERNEL_SOURCES:
    ext_modules.append(
        Extension(
            "mindformer_gf.tokenizer._rank_native",
            sources=TOKENIZER_KERNEL_SOURCES,
            extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden"],
            language="c++",
        )
    )

setup(
    name="mindformer_gf",
    version="0.1.0",
    description="Geneformer on MindSpore (CPU and Ascend): model, numpy reference, converter, tokenizer, training",
    python_requires=">=3.10",
    packages=find_packages(include=["mindformer_gf", "mindformer_gf.*"]),
    package_data={"mindformer_gf": ["resources/*", "resources/**/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildNativeKernels},
    install_requires=[
        "mindspore>=2.10.0",
        # MindSpore 2.10 is built against numpy 1.x (under numpy 2 its bf16 and first eager op fail); pyarrow 22+
        # needs numpy 2.
        "numpy>=1.24,<2",
        "scipy>=1.10",
        "safetensors>=0.4",
        "tqdm>=4.65",
        "psutil>=5.6",  # already a MindSpore requirement; process start times for sharded inference
        "pyyaml>=6.0",
        "anndata>=0.10",
        "loompy>=3.0.7",
        "h5py>=3.8",
        "datasets>=2.16",
        "pyarrow>=15,<22",
        "scikit-learn>=1.3",
        "threadpoolctl>=3.1",
        "matplotlib>=3.7",
        "umap-learn>=0.5.5",
        "optuna>=3.0",  # hyperparameter search of the fine-tuning tasks
        "statsmodels>=0.14",  # FDR of the perturbation statistics
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-xdist>=3.5",
            "ruff>=0.5",
            "torch==2.13.0",
            "transformers>=4.40",
            "peft>=0.18.1",
        ],
    },
    entry_points={"console_scripts": ["gf=mindformer_gf.cli:main"]},
)
