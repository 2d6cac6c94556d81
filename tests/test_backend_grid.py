"""The op x backend grid: every registered backend module offers its op's interface, with the same
signatures as the torch backend's; every module under ia_kernels/kernels/ is registered for some
op, and the registry is the only way to reach one; a backend named for a dtype it does not serve
is an error, never silently replaced; backend=None picks one that serves the dtype."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

import ia_kernels as ik
from ia_kernels import backends

PACKAGE = Path(ik.__file__).resolve().parent
INTERFACE = {
    "logprobs": ("rows_forward", "rows_backward"),
    "ppo": ("terms", "fused_rows"),
    "advantages": ("group_advantages", "length_penalized_rewards"),
    "paged_attention": ("paged_attention",),
}
# backends whose kernel has no float32 form: flash-attention's paged kernel computes in fp16 / bf16
HALF_ONLY = {("paged_attention", "cuda")}


def _params(fn):
    return list(inspect.signature(fn).parameters)


def _registered_modules() -> set[str]:
    return {impl.module for op in backends.ops() for impl in backends.op_backends(op).impls.values()}


def _module_name(path: Path) -> str:
    return ".".join(("ia_kernels",) + path.relative_to(PACKAGE).with_suffix("").parts)


@pytest.mark.parametrize("op", backends.ops())
def test_every_registered_module_offers_the_interface_of_its_op(op):
    entry = backends.op_backends(op)
    reference = entry.impls["torch"].load()
    for name, impl in entry.impls.items():
        if name == "triton" and not backends.triton_installed():
            continue
        family = impl.module.rsplit(".", 1)[1]
        assert impl.module == f"ia_kernels.kernels.{name}.{family}"  # kernels/<backend>/<op>.py
        module = backends.kernel_module(op, name)
        for fn in INTERFACE[family]:
            assert callable(getattr(module, fn, None)), f"{impl.module} lacks {fn}"
            assert _params(getattr(module, fn)) == _params(getattr(reference, fn)), (impl.module, fn)
        assert torch.float32 in impl.dtypes or (op, name) in HALF_ONLY


def test_every_module_under_kernels_is_registered_for_an_op():
    # An unregistered kernel (one no op selects) belongs in ia_kernels/experimental/, not in the grid.
    found = {_module_name(path) for path in (PACKAGE / "kernels").rglob("*.py") if path.name != "__init__.py"}
    assert found, "no backend module found under ia_kernels/kernels/"
    assert found - _registered_modules() == set(), "modules under ia_kernels/kernels/ that no op registers"
    assert _registered_modules() - found == set(), "registered modules missing from ia_kernels/kernels/"


def _from_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of each `from module import name` in a source file, relative imports resolved."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.extend((base, a.name) for a in node.names)
    return out


def _imports(path: Path) -> set[str]:
    """The ia_kernels modules (or names in them) a source file imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    for base, name in _from_imports(path):
        out.update((base, f"{base}.{name}"))
    return {m for m in out if m.startswith("ia_kernels")}


def test_backend_modules_are_reached_only_through_the_registry():
    # No front-end, integration or core module imports a backend module (they ask the registry), and
    # no backend imports another backend's module (what two backends share lives outside the grid).
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for target in _imports(path):
            if not target.startswith("ia_kernels.kernels."):
                continue
            backend = target.split(".")[2]
            assert name.startswith(f"ia_kernels.kernels.{backend}"), f"{name} imports {target}"


def test_no_module_imports_another_modules_private_names():
    # What one module of ia_kernels needs from another is public and named (ia_kernels._native, the
    # loader of the compiled modules, is a module of its own: importing it is fine).
    for path in PACKAGE.rglob("*.py"):
        for base, alias in _from_imports(path):
            private = alias.startswith("_") and not alias.startswith("__")
            is_module = PACKAGE.parent.joinpath(*base.split("."), alias + ".py").exists()
            assert not private or is_module, f"{_module_name(path)} imports {base}.{alias}"


def _float64_calls():
    h = torch.randn(2, 3, 8, dtype=torch.float64)
    w = torch.randn(11, 8, dtype=torch.float64)
    t = torch.randint(0, 11, (2, 3))
    lp = torch.randn(2, 3, dtype=torch.float64) - 2
    return {
        "linear_logprobs": lambda b: ik.linear_logprobs(h, w, t, backend=b),
        "linear_ppo_loss": lambda b: ik.linear_ppo_loss(h, w, t, lp, torch.ones(2, dtype=torch.float64), backend=b)[0],
        "ppo_loss": lambda b: ik.ppo_loss(lp, lp + 0.1, torch.ones(2, dtype=torch.float64), backend=b)[0],
    }


@pytest.mark.parametrize("op", ["linear_logprobs", "linear_ppo_loss", "ppo_loss"])
def test_a_named_backend_that_cannot_serve_float64_raises(op):
    # These used to run the torch backend instead, silently, whatever backend= said.
    call = _float64_calls()[op]
    with pytest.raises(ValueError, match=rf"{op}: backend 'cpu' \(backend\) computes in float32 only, not float64; "
                                         r"for float64 inputs use backend='torch' or backend=None"):
        call("cpu")
    torch.testing.assert_close(call(None), call("torch"), rtol=0, atol=0)


def test_float64_rewards_are_served_by_the_native_advantages():
    r = torch.tensor([1.0, 0, 0, 1], dtype=torch.float64)
    out = ik.group_advantages(r, 4, estimator="passk", k=2, backend="cpu")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ik.group_advantages(r, 4, estimator="passk", k=2, backend="torch"))
