"""The layer order of docs/architecture.md, enforced: no module imports a package of a
higher layer, and there are no import cycles between modules, counting the imports
written inside functions. Reads the sources (ast); imports nothing."""

import ast
import collections
import os

from helpers import ROOT

# Lowest first. A module may import modules of its own package, of lower layers and
# of other packages of its own layer (no cycles).
LAYERS = (
    ("errors", "registry", "fileio", "images", "nn", "sharding"),
    ("config", "data", "models", "losses", "samplers", "convert", "frozen"),
    ("eval", "conditioning", "text_encoders"),
    ("train",),
    ("tokenizers",),
    ("paradigms",),
    ("generate", "info", "run_eval", "importer"),
    ("api", "cli", "__init__"),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules():
  out = {}
  src = os.path.join(ROOT, "jaxgen")
  for dirpath, _, files in os.walk(src):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


def _imports(name, path, modules):
  """jaxgen modules ``name`` imports anywhere in its source (functions included)."""
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split(".")[0] == "jaxgen")
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      else:
        base = node.module or ""
      if base.split(".")[0] != "jaxgen":
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.add(sub if sub in modules else base)
  return {m for m in found if m in modules and m != name}


def _package(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_package_has_a_layer():
  packages = {_package(m) for m in _modules()}
  assert packages - set(RANK) == set(), "add the new package to LAYERS (and the doc)"


def test_no_import_goes_up_a_layer():
  up = [f"{m} ({_package(m)}) imports {i} ({_package(i)})"
        for m, deps in sorted(_graph().items()) for i in sorted(deps)
        if RANK[_package(i)] > RANK[_package(m)]]
  assert not up, "\n".join(up)


def test_no_import_cycles():
  """Between modules, and between packages (a package cycle hides in imports inside
  functions: the reason the test reads them)."""
  graph = _graph()
  pkg_graph = collections.defaultdict(set)
  for m, deps in graph.items():
    for i in deps:
      if _package(i) != _package(m):
        pkg_graph[_package(m)].add(_package(i))
  for g, what in ((graph, "modules"), (pkg_graph, "packages")):
    cycle = _find_cycle(g)
    assert cycle is None, f"import cycle between {what}: {' -> '.join(cycle)}"


def _find_cycle(graph):
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for d in sorted(graph.get(n, ())):
      if state.get(d) == 1:
        return stack[stack.index(d):] + [d]
      if d not in state:
        found = visit(d)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_every_registering_module_is_found_without_a_list():
  """A module that registers a model, paradigm, dataset, text encoder, preprocessing
  op or model fields is imported by `registry.import_all` because it lives in a
  registering package (nothing lists modules by hand)."""
  import re
  from jaxgen import registry
  pattern = re.compile(r"(\b[A-Z_]+\.register\(|@register_op\(|register_op\(\"|"
                       r"register_variants\(|register_model_fields\()")
  registering = {m for m, path in _modules().items()
                 if m != "jaxgen.registry" and pattern.search(open(path).read())}
  assert registering  # the pattern finds them
  outside = {m for m in registering
             if not any(m == p or m.startswith(p + ".") for p in registry.REGISTERING_PACKAGES)}
  assert not outside, f"registering modules outside REGISTERING_PACKAGES: {sorted(outside)}"
