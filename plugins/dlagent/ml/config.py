"""Training settings: one validated dataclass shared by the DAG Params, operators and core.

The field names are the names used everywhere (Params, MLflow params, tuning search spaces,
agent plans): ``learning_rate``, never ``lr``. Each field's limits are declared once, here
(:func:`dlagent.validation.bounded`): the dataclass checks itself with them, the trigger form's
Params are generated from them, and the agent's plan and policies read the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.validation import bounded, check_fields, field_bounds, settings_from_dict

MODELS = ("mlp", "cnn", "resnet")  # the built-in architectures (dlagent.ml.models)
#: The default ``model``: the built-in that suits the data, chosen once its samples' shape is known
#: (:func:`resolve_model`): ``cnn`` for images, ``mlp`` for table rows and any other shape.
AUTO_MODEL = "auto"
#: A built-in name, ``auto``, or ``package.module:function``: a user's builder (dlagent.ml.builders).
MODEL_PATTERN = r"^(auto|mlp|cnn|resnet|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$"
INIT_FROM_PATTERN = r"^(models:/.+|runs:/.+|.+\.keras)$"
MODEL_ARGS_PREFIX = "model_args."  # search spaces and MLflow params name a model argument ``model_args.<key>``
OPTIMIZERS = ("adam", "sgd", "rmsprop")
CLASS_WEIGHTS = ("none", "balanced")
MISSING_POLICIES = ("refuse", "impute")  # the data option "missing" (dlagent.ml.data)
CACHE_MODES = ("auto", "memory", "stream")  # the data option "cache" (dlagent.ml.streaming)
COLOR_MODES = ("auto", "grayscale", "rgb")  # the data option "color_mode" of image folders (auto: rgb unless every image is grayscale)
MAX_IMAGE_SIDE = 4096  # the largest image_size side, in pixels
MAX_EPOCHS = 1_000  # the most epochs any training, trial or plan may ask for
MAX_HIDDEN_LAYERS = 8  # a plain dense stack; any other architecture is a builder of one's own (model: 'package.module:function')
MAX_SEED = 2**31 - 1
#: The L2 penalty of an ``mlp`` classifying a table when ``l2`` is left empty: chosen on tables and seeds for choosing
#: defaults (``bench/table_mlp.py --arms l2``, ``bench/tabular.py --datasets iris linear_noisy scaled_blobs``); not for
#: regression, where ``bench/regression.py`` found it costs the curved Friedman tables (README, "An L2 penalty").
TABLE_MLP_L2 = 0.01
#: Networks averaged by a regression ``mlp`` when ``ensemble`` is left empty (a deep ensemble; Lakshminarayanan et al.
#: 2017 use 5), chosen on tables and seeds for choosing defaults (``bench/table_mlp.py --arms ensemble``, ``bench/tabular.py
#: --datasets linear_noisy``); a classifier and the other built-ins train one: on the dev tables it gained no accuracy.
MLP_ENSEMBLE = 5
MAX_ENSEMBLE = 16


@dataclass(frozen=True)
class TrainConfig:
    model: str = bounded(AUTO_MODEL, "str", pattern=MODEL_PATTERN, examples=(AUTO_MODEL, *MODELS), title="Model",
                         description="'auto' (the default): 'cnn' for images, 'mlp' for a table's rows; or 'cnn' for small "
                                     "images, 'resnet' for larger colour images, 'mlp' for any data, or your own builder "
                                     "'package.module:function' (e.g. 'include.models.example:build'; see DLAGENT_MODEL_MODULES).",
                         fix="give 'auto', 'mlp', 'cnn', 'resnet' or a builder 'package.module:function'.")
    model_args: dict = bounded({}, "object", title="Model arguments (JSON)",
                               description="Arguments of your own model builder (its hp dict), e.g. {\"width\": 64}; a search "
                                           "space tunes one as 'model_args.<key>'. The built-in models ignore it.")
    epochs: int = bounded(20, "int", low=1, high=MAX_EPOCHS, title="Epochs",
                          description="Maximum training epochs; early stopping may end sooner.")
    batch_size: int = bounded(32, "int", low=1, high=65_536, title="Batch size", description="Samples per gradient step.")
    learning_rate: float = bounded(1e-3, "number", low=0.0, high=10.0, low_open=True, title="Learning rate",
                                   description="Optimizer step size, > 0 (Adam's usual 0.001).")
    optimizer: str = bounded("adam", "choice", choices=OPTIMIZERS, title="Optimizer", description="Keras optimizer.")
    momentum: float = bounded(0.0, "number", low=0.0, high=1.0, high_open=True, title="Momentum",
                              description="Momentum of 'sgd' and 'rmsprop', in [0, 1).")
    units: int = bounded(128, "int", low=1, high=65_536, title="Dense units", description="Width of each hidden dense layer.")
    hidden_layers: int = bounded(1, "int", low=0, high=MAX_HIDDEN_LAYERS, title="Hidden dense layers",
                                 description="Hidden dense layers of a built-in model before its output ('mlp': on the "
                                             "standardised columns; 'cnn', 'resnet': on the convolution features). 0 gives a "
                                             "linear model: logistic (softmax) regression, or linear regression.")
    linear_path: bool = bounded(False, "bool", title="Linear path ('mlp')",
                                description="'mlp' only: the output layer also sees the standardised columns themselves, "
                                            "beside the hidden layers' features (a wide-and-deep network), so a linear "
                                            "relation needs no hidden unit to carry it. Ignored with hidden_layers 0.")
    filters: int = bounded(32, "int", low=1, high=4_096, title="Convolution filters",
                           description="Filters of the first convolution of 'cnn' (the second has twice as many).")
    dropout: float = bounded(0.2, "number", low=0.0, high=1.0, high_open=True, title="Dropout",
                             description="Dropout rate, in [0, 1): on the convolution features before the dense layer "
                                         "('cnn', 'resnet'), on the hidden layer ('mlp'; never on the input columns).")
    l2: float | None = bounded(None, "number", low=0.0, high=10.0, optional=True, title="L2 penalty",
                               description="Weight penalty of a built-in model's dense layers (hidden and output): l2 x the "
                                           "sum of their squared kernel weights joins the loss, as ridge regression's alpha and "
                                           "scikit-learn's MLP 'alpha' do; for regression it is scaled to the standardised "
                                           "targets, so one value means the same on any target's units. Empty (the default): "
                                           f"{TABLE_MLP_L2} for the 'mlp' classifying a table, 0 (off) otherwise; 0 turns it off.")
    ensemble: int | None = bounded(None, "int", low=1, high=MAX_ENSEMBLE, optional=True, title="Ensemble members",
                                   description="A built-in model made of this many networks side by side on the same "
                                               "(standardised) input, each trained on its own loss from its own random start, "
                                               "their predictions averaged (a deep ensemble: less variance on small data). Tuning "
                                               "trials train one. Empty (the default): "
                                               f"{MLP_ENSEMBLE} for an 'mlp' regressor, else 1; 1 turns it off.")
    augment: bool = bounded(False, "bool", title="Augment images",
                            description="Random flips, shifted crops, small rotations and contrast changes of training images "
                                        "('cnn' and 'resnet'; Keras preprocessing layers, active only while training).")
    init_from: str | None = bounded(None, "str", optional=True, pattern=INIT_FROM_PATTERN, title="Start from (transfer learning)",
                                    description="Fine-tune another model instead of training from scratch: models:/<name>@<alias> "
                                                "(e.g. models:/dlagent-classifier@champion), models:/<name>/<version>, runs:/<run>/<model>,"
                                                " or a .keras file in the data roots. Empty: from scratch.",
                                    fix="give models:/<name>@<alias>, models:/<name>/<version>, models:/m-<id>, runs:/<run id>/<name> "
                                        "or a path ending in .keras.")
    # Transfer defaults chosen on bench/transfer.py's selection seeds 0-2 (not its reported seeds): with small
    # models and few labels, unfreezing the whole base (as Keras' guide does) at 1e-3 beat freeze 0.25-0.5 and 1e-4-3e-4.
    freeze: float = bounded(0.0, "number", low=0.0, high=1.0, title="Frozen part of the base",
                            description="Transfer learning: the share of the source's layers (from the bottom) that stay frozen "
                                        "in the fine-tuning phase; 0 unfreezes the whole base, 1 trains the head only.")
    fine_tune_learning_rate: float = bounded(1e-3, "number", low=0.0, high=10.0, low_open=True, title="Fine-tuning learning rate",
                                             description="Transfer learning: the learning rate of the fine-tuning phase. 1e-3 suits "
                                                         "small models like dlagent's; large pre-trained ones want ~1e-5.")
    class_weight: str = bounded("none", "choice", choices=CLASS_WEIGHTS, title="Class weights",
                                description="'balanced' weighs each class's loss by n_samples / (n_classes x its count), so "
                                            "rare classes count as much as common ones; 'none' weighs every sample alike.")
    early_stopping_patience: int = bounded(5, "int", low=0, high=10_000, title="Early-stopping patience",
                                           description="Epochs without validation-loss improvement before stopping; 0 turns it off.")
    seed: int = bounded(42, "int", low=0, high=MAX_SEED, title="Seed",
                        description="Seeds the data split and the weights: the same seed gives the same run.")

    def __post_init__(self):
        check_fields(self)
        if self.ensemble is not None and self.ensemble > 1 and (not self.is_builtin or self.init_from):
            why, fix = (("init_from fine-tunes one source model", "leave ensemble empty or 1.") if self.init_from else
                        (f"{self.model!r} is your own builder", "leave ensemble empty or 1, or average several networks inside the builder."))
            raise ConfigError("ensemble", f"is {self.ensemble}, but only a built-in model trained from scratch is averaged, and {why}", fix)
        # a private copy: a frozen config must not change when the caller's dict does
        object.__setattr__(self, "model_args", copy.deepcopy(dict(self.model_args)))

    def __hash__(self):  # model_args is a dict: hash its JSON form with the other fields
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (Params, a plan, best trial params); unknown keys are refused.

        Keys ``model_args.<key>`` (a tuned model argument, an MLflow param) are folded into
        ``model_args``, later ones winning over the ``model_args`` object itself.
        """
        if isinstance(values, dict) and any(isinstance(k, str) and k.startswith(MODEL_ARGS_PREFIX) for k in values):
            values = dict(values)
            base = values.get("model_args")
            folded = {k[len(MODEL_ARGS_PREFIX):]: values.pop(k) for k in list(values) if isinstance(k, str) and k.startswith(MODEL_ARGS_PREFIX)}
            values["model_args"] = {**(base if isinstance(base, dict) else {}), **folded}
        return settings_from_dict(cls, values, section="train", prefix="", what="training setting")

    @classmethod
    def bounds(cls, name: str):
        """The declared limits of one setting (:class:`dlagent.validation.Bounds`)."""
        return field_bounds(cls, name)

    def replace(self, **changes) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_params(self) -> dict:
        """Flat MLflow params: every setting, each model argument as ``model_args.<key>``."""
        flat = {k: v for k, v in self.to_dict().items() if k != "model_args"}
        return {**flat, **{f"{MODEL_ARGS_PREFIX}{k}": model_arg_to_param(v) for k, v in sorted(self.model_args.items())}}

    @property
    def is_builtin(self) -> bool:
        """A built-in architecture, or ``auto`` (which becomes one)."""
        return self.model in MODELS or self.model == AUTO_MODEL

    def for_input(self, input_shape) -> TrainConfig:
        """These settings with ``auto`` replaced by the built-in for samples of ``input_shape``
        (:func:`resolve_model`); any other model unchanged. Called where the settings meet the data,
        so a run's params, its tuning space and its model name the architecture it trained."""
        model = resolve_model(self.model, input_shape)
        return self if model == self.model else self.replace(model=model)

    def members(self, task: str = "classification") -> int:
        """How many networks the model averages for ``task`` (:func:`ensemble_members`)."""
        return ensemble_members(self.model, self.ensemble, self.init_from, task)


def resolve_model(model: str, input_shape) -> str:
    """The built-in ``auto`` stands for on samples of ``input_shape``; any other model as given.

    ``cnn`` for images, ``(height, width[, channels])`` with both sides at least 2 (what it
    takes: it pools by 2); ``mlp`` for anything else: a table's rows, a vector, a strip one
    pixel high (the ``cnn`` cannot take these). ``resnet`` (deeper, for larger colour images) is never
    chosen for you; give it by name.

    Colour images stored channels first, ``(3, h, w)`` as PyTorch keeps them, would be taken as
    images 3 pixels high with ``w`` channels: refused, naming the fix (a model given by name takes
    the shape as it is).
    """
    if model != AUTO_MODEL:
        return model
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (1, 3, 4) and min(shape[1:]) >= 8:
        raise ConfigError("model", f"'auto' got samples of shape {shape}: colour images with their {shape[0]} channels first "
                          f"(PyTorch's layout), which Keras' layers would read as images {shape[0]} pixels high.",
                          "save the images channels last, x.transpose(0, 2, 3, 1), or name the model to take the shape as it is.")
    return "cnn" if len(shape) in (2, 3) and min(shape[:2]) >= 2 else "mlp"


def ensemble_members(model: str, ensemble: int | None = None, init_from: str | None = None, task: str = "classification") -> int:
    """``ensemble``, or when it is empty :data:`MLP_ENSEMBLE` for the built-in ``mlp`` regressor trained
    from scratch and 1 for anything else (the one rule, read by the model builder and the agent's plan)."""
    if ensemble is not None:
        return int(ensemble)
    return MLP_ENSEMBLE if model == "mlp" and not init_from and task == "regression" else 1


def model_arg_to_param(value) -> str:
    """A model argument as an MLflow param: JSON, so its type survives (``64``, ``"64"``, ``true``)."""
    import json

    return json.dumps(value)


def model_arg_from_param(text: str):
    """The inverse of :func:`model_arg_to_param` (text that is not JSON, e.g. written by hand, stays a string)."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text
