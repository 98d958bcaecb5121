"""Guards over the source tree: no deserialisation that can run code, no eval/exec, and
network listeners on localhost unless configured otherwise."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stream.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "store", "encoders", "bench")

#: Modules whose loaders can execute code embedded in the data they read.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "jsonpickle", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile"}


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Unsafe constructs in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func, kwargs = node.func, {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{where}: {func.id}()")
            elif isinstance(func, ast.Name) and func.id == "__import__" and not all(isinstance(a, ast.Constant) for a in node.args):
                found.append(f"{where}: __import__() of a computed name")
            elif isinstance(func, ast.Attribute) and func.attr == "import_module" and not all(isinstance(a, ast.Constant) for a in node.args):
                found.append(f"{where}: import_module() of a computed name")
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if func.attr in ("read_pickle", "to_pickle"):
                    found.append(f"{where}: {func.attr}()")
                elif owner == "yaml" and func.attr in ("load", "load_all", "unsafe_load") and "Loader" not in kwargs:
                    found.append(f"{where}: yaml.{func.attr}() without a safe Loader")
                elif owner == "torch" and func.attr == "load" and not _is_true(kwargs.get("weights_only")):
                    found.append(f"{where}: torch.load() without weights_only=True")
                elif func.attr == "load" and _is_true(kwargs.get("allow_pickle")):
                    found.append(f"{where}: load(allow_pickle=True)")
    return found


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from pickle import loads",
        "import marshal as m",
        "x = eval(payload)",
        "exec(code)",
        "torch.load(path)",
        "np.load(f, allow_pickle=True)",
        "yaml.load(text)",
        "df = pd.read_pickle(p)",
        "__import__(name)",
        "importlib.import_module(record['module'])",
    ],
)
def test_the_scanner_catches_each_construct(snippet):
    assert violations(snippet), snippet


def test_the_scanner_allows_lookalikes():
    assert violations("model.eval()\n__import__('os')\nnp.load(f)\ntorch.load(p, weights_only=True)\nyaml.safe_load(t)\norjson.loads(b)") == []


#: Files allowed an unsafe load, and why. Not part of recstream's runtime; keep this short.
EXEMPT = {
    "bench/sasrec.py": "RecBole's checkpoints pickle its Config; the runner loads only the ones its own "
                       "run wrote, in a separate venv, never data from outside",
}


def test_no_code_executing_deserialisation_or_eval_in_the_source_tree():
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20  # the scan really covers the tree
    found = {str(p.relative_to(ROOT)): violations(p.read_text("utf-8"), str(p.relative_to(ROOT))) for p in files}
    assert [v for name, vs in found.items() if name not in EXEMPT for v in vs] == []
    assert all(found.get(name) for name in EXEMPT)  # an exemption nothing needs any more goes


def test_http_binds_to_localhost_by_default(tmp_path):
    from stream.app import create_app
    from stream.broker import EmbeddedBroker

    assert Settings().web_host == "127.0.0.1"
    app, _ = create_app(load_settings(None, store={"path": tmp_path / "s.lmdb"}, web_port=6066))
    assert app.conf.web_bind == "127.0.0.1" and app.conf.web_enabled
    app, _ = create_app(load_settings(None, store={"path": tmp_path / "s.lmdb"}, web_host="0.0.0.0"))
    assert app.conf.web_bind == "0.0.0.0"  # only when asked
    assert EmbeddedBroker.__init__.__defaults__[0] == "127.0.0.1"
