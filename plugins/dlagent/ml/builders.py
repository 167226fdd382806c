"""Your own model: the ``model`` setting names a builder ``package.module:function``.

A builder is a plain function the project ships (in ``include/``, importable as
``include.<module>`` in every task, as on an Astro-style image) or an installed package provides::

    def build(hp: dict, input_shape: tuple, n_outputs: int, task: str) -> keras.Model

``hp`` is the ``model_args`` setting with the tuned values merged in (a search space tunes a
model argument as ``model_args.<key>``); ``task`` is ``"classification"``, for which the model
ends in ``n_outputs`` class probabilities (a softmax), or ``"regression"``, for which it ends in
``n_outputs`` predicted values (a linear layer, in the targets' units: scale them in the model
if they are large). ``include/models/example.py`` is a
documented example.

Naming a module runs its top-level code in the worker, so only modules under the allow-list
(:func:`dlagent.settings.model_modules`, ``DLAGENT_MODEL_MODULES``; by default ``include.``) are
imported, and the check comes before the import. Every refusal is a :class:`ConfigError` on the
field ``model`` that says what is wrong and how to fix it; the first task of the pipeline builds
the model once on the data's shapes (:func:`check_model_on_data`), so a broken builder fails
there, before any tuning or training.

Custom layers are allowed when they are registered serializable
(``@keras.saving.register_keras_serializable``): before a model is loaded back in Keras safe
mode, :func:`import_custom_modules` reads which modules its custom classes come from (the
``.keras`` archive's config) and imports them through the same allow-list, so the registration
is in place in any task (a logged model, a trial checkpoint, the champion, an ``init_from`` file).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.config import MODELS

BUILDER_SIGNATURE = "build(hp: dict, input_shape: tuple, n_outputs: int, task: str) -> keras.Model"


def split_builder_spec(spec: str) -> tuple[str, str]:
    """``"include.models.example:build"`` -> ``("include.models.example", "build")``."""
    module, sep, function = str(spec).partition(":")
    if not sep or not module or not function:
        raise ConfigError("model", f"{spec!r} is neither a built-in model {list(MODELS)} nor a builder 'package.module:function'.",
                          "give e.g. 'cnn' or 'include.models.example:build'.")
    return module, function


def module_allowed(module: str, prefixes) -> bool:
    """Whether ``module`` is under one of the allow-list entries (``pkg.``: anything under ``pkg``;
    ``pkg.mod``: that module and its sub-modules)."""
    for prefix in prefixes:
        if prefix.endswith("."):
            if module.startswith(prefix):
                return True
        elif module == prefix or module.startswith(prefix + "."):
            return True
    return False


def _allowed_modules(allowed_modules) -> list[str]:
    if allowed_modules is not None:
        return list(allowed_modules)
    from dlagent.settings import model_modules

    return model_modules()


def import_builder_module(spec: str, *, allowed_modules=None):
    """Import the module of a builder spec (after the allow-list check); return the module.

    The project root (the folder holding ``dags/`` and ``include/``) is put on ``sys.path`` when
    the module's top-level package is not found without it: Airflow puts the DAGs folder there,
    not its parent. (A notebook or script run from the project root finds ``include`` by itself.)
    """
    module_name, _ = split_builder_spec(spec)
    allowed = _allowed_modules(allowed_modules)
    if not module_allowed(module_name, allowed):
        raise ConfigError("model", f"module {module_name!r} is not on the model allow-list {allowed}; it was not imported.",
                          "put the builder under include/ (include.<module>:<function>), or have an administrator add its "
                          "package to DLAGENT_MODEL_MODULES (comma-separated module prefixes).")
    try:
        return _import(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name != exc.name and not module_name.startswith(exc.name + "."):
            raise ConfigError("model", f"module {module_name!r} imports {exc.name!r}, which is not installed.",
                              f"install {exc.name!r} in every Airflow worker's environment.") from exc
        raise ConfigError("model", f"module {module_name!r} cannot be found.",
                          "check the spelling; include/ modules are named include.<file without .py>, e.g. "
                          "include.models.example:build.") from exc
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError("model", f"importing module {module_name!r} failed ({type(exc).__name__}: {exc}).",
                          "fix the error in that module (import it in a Python shell to see the traceback).") from exc


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        from dlagent.settings import project_root

        top, root = module_name.split(".")[0], project_root()
        if exc.name != top or str(root) in sys.path or not (root / top).exists():
            raise
        sys.path.append(str(root))
        importlib.invalidate_caches()
        return importlib.import_module(module_name)


def load_builder(spec: str, *, allowed_modules=None):
    """The builder function a ``package.module:function`` spec names (allow-listed, imported, callable)."""
    module = import_builder_module(spec, allowed_modules=allowed_modules)
    module_name, function = split_builder_spec(spec)
    builder = getattr(module, function, None)
    if builder is None:
        public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ConfigError("model", f"module {module_name!r} has no {function!r} (its functions and classes: {public[:12]}).",
                          f"name the builder function, defined as {BUILDER_SIGNATURE}.")
    if not callable(builder):
        raise ConfigError("model", f"{spec!r} is a {type(builder).__name__}, not a function.",
                          f"point it at a function {BUILDER_SIGNATURE}.")
    return builder


def build_user_model(spec: str, hp: dict, input_shape: tuple, n_outputs: int, task: str = "classification", *, allowed_modules=None):
    """Call the user's builder and check what it returns (a Keras model taking ``input_shape``
    and giving ``n_outputs`` values per sample)."""
    import keras

    builder = load_builder(spec, allowed_modules=allowed_modules)
    try:
        model = builder(dict(hp), tuple(int(d) for d in input_shape), int(n_outputs), task)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, keep the type and message
        raise ConfigError("model", f"the builder {spec!r} raised {type(exc).__name__}: {exc} (called with hp={dict(hp)}, "
                          f"input_shape={tuple(input_shape)}, n_outputs={n_outputs}, task={task!r}).",
                          "fix the builder or its model_args.") from exc
    if not isinstance(model, keras.Model):
        raise ConfigError("model", f"the builder {spec!r} returned a {type(model).__name__}, not a keras.Model.",
                          "return the model, e.g. keras.Model(inputs, outputs) or keras.Sequential([...]).")
    check_output_shape(model, spec, n_outputs, task)
    return model


def check_output_shape(model, spec: str, n_outputs: int, task: str = "classification") -> None:
    try:
        shape = tuple(model.output_shape)
    except (AttributeError, ValueError) as exc:  # a subclassed model not yet called
        raise ConfigError("model", f"the model of {spec!r} has no defined output shape ({exc}).",
                          "build it with keras.Input(shape=input_shape) so its shapes are known.") from exc
    if isinstance(shape[0], tuple) or len(shape) != 2 or shape[-1] != n_outputs:
        if task == "regression":
            raise ConfigError("model", f"the model of {spec!r} outputs shape {shape}; the data needs (None, {n_outputs}): one "
                              f"predicted value per target for {n_outputs} target(s).",
                              f"end the model with keras.layers.Dense(n_outputs) (linear; n_outputs={n_outputs}).")
        raise ConfigError("model", f"the model of {spec!r} outputs shape {shape}; the data needs (None, {n_outputs}): one "
                          f"probability per class for {n_outputs} classes.",
                          f"end the model with keras.layers.Dense(n_outputs, activation='softmax') (n_outputs={n_outputs}).")


def check_model_on_data(config, x_sample: np.ndarray, n_outputs: int, *, allowed_modules=None, task: str = "classification") -> dict:
    """Build ``config``'s model once on real samples and check it, before any compute is spent.

    For a user builder: it imports, is allowed, returns a Keras model of the right input and
    output shapes, and its outputs are class probabilities on ``x_sample`` (for regression:
    finite numbers). Returns a small
    summary for the log (``model``, ``parameters``).
    """
    from dlagent.ml.models import build_model, check_model_input

    input_shape = tuple(x_sample.shape[1:])
    if config.is_builtin:
        check_model_input(config.model, input_shape)
        return {"model": config.model}
    model = build_model(config, input_shape, n_outputs, allowed_modules=allowed_modules, task=task)
    try:
        outputs = np.asarray(model(np.asarray(x_sample[:4], np.float32), training=False))
    except Exception as exc:  # noqa: BLE001 - the user's layers failed on real data
        raise ConfigError("model", f"the model of {config.model!r} fails on samples of shape {input_shape} "
                          f"({type(exc).__name__}: {exc}).", "make its input keras.Input(shape=input_shape).") from exc
    if task == "regression":
        if not np.isfinite(outputs).all():
            raise ConfigError("model", f"the model of {config.model!r} outputs NaN or inf on real samples.",
                              "check its layers (a regression model ends in a linear Dense(n_outputs)).")
        return {"model": config.model, "parameters": int(model.count_params())}
    sums = outputs.sum(axis=-1)
    if not (np.isfinite(outputs).all() and (outputs >= -1e-6).all() and np.allclose(sums, 1.0, atol=1e-3)):
        raise ConfigError("model", f"the model of {config.model!r} does not output class probabilities (rows sum to "
                          f"{np.round(sums, 3).tolist()}).", "end it with activation='softmax' (logits are not supported).")
    return {"model": config.model, "parameters": int(model.count_params())}


def custom_modules_of(keras_file) -> list[str]:
    """The modules of the custom (non-Keras) classes a ``.keras`` file names in its config.

    Read from the archive's ``config.json`` without loading anything: Keras records each
    object's ``module`` and its registered name.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(keras_file) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []  # not a readable .keras archive: Keras' own loader reports it
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and "class_name" in node and node.get("registered_name") and not _is_keras_module(module):
                found.add(module)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def _is_keras_module(module: str) -> bool:
    # Keras' own packages (safe mode resolves them itself) are not user code.
    return module.split(".")[0] in ("keras", "keras_hub", "keras_cv", "keras_nlp", "tensorflow", "tf_keras", "builtins", "numpy")


def import_custom_modules(folder_or_file, *, field: str = "model_uri", allowed_modules=None) -> list[str]:
    """Import the modules that register a saved model's custom classes (allow-listed), so Keras
    safe mode can rebuild them; returns the modules imported. Run before loading a model."""
    from pathlib import Path

    path = Path(folder_or_file)
    files = [path] if path.is_file() else sorted(path.rglob("*.keras"))
    modules = sorted({m for f in files for m in custom_modules_of(f)})
    for module in modules:
        if module == "dlagent" or module.startswith("dlagent."):  # dlagent's own layers (dlagent.ml.layers)
            importlib.import_module(module)
            continue
        try:
            import_builder_module(f"{module}:_", allowed_modules=allowed_modules)
        except ConfigError as exc:
            raise ConfigError(field, f"the model uses custom classes of module {module!r}, which cannot be imported: {exc.problem}",
                              exc.fix) from exc
    return modules
