"""The closures that decide what the FlashInfer baseline bundle keeps
(microbench/flashinfer_bundle.py), on small fixture trees: no network, no flashinfer."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "microbench" / "flashinfer_bundle.py"
spec = importlib.util.spec_from_file_location("flashinfer_bundle", SCRIPT)
bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bundle)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_header_closure_follows_quoted_and_angle_includes_through_the_search_path(tmp_path):
    write(tmp_path, {
        "csrc/op.cu": '#include "local.cuh"\n#include <lib/a.h>\n',
        "csrc/local.cuh": "#if __CUDA_ARCH__ >= 1000\n#  include <lib/blackwell.h>\n#endif\n",
        "inc/lib/a.h": '#include "b.h"\n#include <cublasLt.h>\n',
        "inc/lib/b.h": "",
        "inc/lib/blackwell.h": "",
        "inc/lib/unused.h": "",
    })
    files, missing = bundle.header_closure([tmp_path / "csrc/op.cu"], [tmp_path / "inc"])
    names = {str(f.relative_to(tmp_path.resolve())) for f in files}
    # conditional includes are kept (any arch), unreachable headers are not
    assert names == {"csrc/op.cu", "csrc/local.cuh", "inc/lib/a.h", "inc/lib/b.h",
                     "inc/lib/blackwell.h"}
    assert missing == {"cublasLt.h"}  # left to the toolkit


def test_header_closure_follows_cutlass_macro_includes(tmp_path):
    write(tmp_path, {
        "csrc/op.cu": "#include <cutlass/fast_math.h>\n",
        "inc/cutlass/fast_math.h": "#ifndef X\n#include CUDA_STD_HEADER(utility)\n#endif\n",
        "inc/cuda/std/utility": "#include <cuda/std/__utility/pair.h>\n",
        "inc/cuda/std/__utility/pair.h": "",
    })
    files, missing = bundle.header_closure([tmp_path / "csrc/op.cu"], [tmp_path / "inc"])
    names = {str(f.relative_to(tmp_path.resolve())) for f in files}
    assert "inc/cuda/std/utility" in names and "inc/cuda/std/__utility/pair.h" in names
    assert not missing


def test_include_dirs_reads_both_flag_spellings_then_the_toolkit(monkeypatch):
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda")
    dirs = bundle.include_dirs("nvcc -c x.cu -I/a/cub -isystem /b/include -o x.o")
    assert [str(d) for d in dirs[:2]] == ["/a/cub", "/b/include"]
    assert str(dirs[2]).endswith("targets/x86_64-linux/include")


def test_python_closure_follows_function_imports_only_in_op_modules(tmp_path):
    write(tmp_path, {
        "flashinfer/__init__.py": "from .norm import rmsnorm\nfrom . import moe\n",
        "flashinfer/norm.py": "def rmsnorm():\n    from .jit import build\n",
        "flashinfer/jit.py": "",
        "flashinfer/moe.py": "def run():\n    from .moe_kernels import k\n",
        "flashinfer/moe_kernels.py": "",
        "flashinfer/unused.py": "",
    })
    files = bundle.python_closure(tmp_path, ["flashinfer"], follow_nested=("flashinfer.norm",))
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert names == {"flashinfer/__init__.py", "flashinfer/norm.py", "flashinfer/jit.py",
                     "flashinfer/moe.py"}


def test_the_trimmed_moe_module_loads_by_path_without_flashinfer():
    # the specs step runs in the isolated site (flashinfer, no fuseinfer): only the file
    build = bundle.moe_build()
    assert bundle.MOE_BUILD.is_file() and build.MODULE_NAME.startswith("fused_moe_90")
    assert build.INSTANTIATION.endswith(".cu") and build.BINDING.endswith(".cu")
    assert "flashinfer" not in {m.split(".")[0] for m in vars(build) if not m.startswith("_")}
    assert {"fused_moe.core", "jit.fused_moe"} <= {m.removeprefix("flashinfer.")
                                                   for m in bundle.OP_MODULES}
