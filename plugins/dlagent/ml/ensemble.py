"""Deep ensembles: several networks side by side in one Keras model, their predictions averaged.

On a few hundred rows one network's test error depends on its random start and on the epoch
early stopping keeps; the average of several independently trained networks has the same bias
and less of that variance (Lakshminarayanan et al., 2017). :func:`dlagent.ml.models.build_model`
builds ``config.members(task)`` networks on the shared preprocessing (standardisation and imputation
learn nothing by gradient, so sharing them changes no member) and averages them in one layer
named :data:`ENSEMBLE_LAYER`. That model is what is logged, compressed, converted to TFLite and
served: one input, one output, like any other.

Training must not train the average: a loss on the averaged prediction is one wide network's
loss, and its members co-adapt instead of each fitting the data. :func:`training_view` is a
second model over the same layers whose output stacks the members' predictions, ``(batch,
members, outputs)``, and :func:`member_loss` is the mean of the members' own losses, so each
member's gradient is its own error's, as if trained alone; they differ by their random
starts and dropout. One ``fit`` trains them all at once (one pass over the data, one early
stopping: the members' mean validation loss, or the averaged model's validation score when
the primary metric is not accuracy), and restoring the best epoch restores every member.
"""

from __future__ import annotations

ENSEMBLE_LAYER = "ensemble"


def is_ensemble(model) -> bool:
    """Whether ``model`` averages members in an :data:`ENSEMBLE_LAYER` layer."""
    return any(layer.name == ENSEMBLE_LAYER for layer in getattr(model, "layers", ()))


def members_of(model) -> int:
    """How many networks ``model`` averages (1 for a plain model)."""
    if not is_ensemble(model):
        return 1
    return len(model.get_layer(ENSEMBLE_LAYER).input)


def member_outputs(model) -> list:
    """Each member's prediction (a symbolic tensor of ``model``'s graph) in the averaged model's
    output units: a regressor's target scaling, which follows the average, applied to each."""
    from dlagent.ml.layers import TARGET_SCALE_LAYER

    heads = list(model.get_layer(ENSEMBLE_LAYER).input)
    tail = next((layer for layer in model.layers if layer.name == TARGET_SCALE_LAYER), None)
    return [tail(head) for head in heads] if tail is not None else heads


def first_member(model):
    """The first member of an ensemble alone, as a model over its layers: what transfer learning
    fine-tunes from an ensemble, whose one output layer is not one network's head."""
    import keras

    return keras.Model(model.inputs, member_outputs(model)[0], name=f"{model.name}_member_0")


def training_view(model):
    """A model over ``model``'s own layers whose output is every member's prediction
    (:func:`member_outputs`), stacked to ``(batch, members, outputs)``. Training it trains ``model``."""
    import keras
    from keras import layers

    heads = member_outputs(model)
    outputs = int(heads[0].shape[-1])
    stacked = layers.Concatenate(axis=1, name="members")([layers.Reshape((1, outputs))(head) for head in heads])
    return keras.Model(model.inputs, stacked, name=f"{model.name}_members")


def member_loss(task: str, members: int):
    """The mean over members of each member's own loss (mean squared error, or sparse cross-entropy),
    one value per sample, so Keras' sample and class weights apply as to one network.

    Its gradient is the **sum**'s: each member's gradient is exactly what it would be trained
    alone (a mean would divide it by ``members``, which plain SGD would feel as a smaller
    learning rate), while the value logged and compared is a single network's scale."""
    from keras import losses, ops

    from dlagent.ml.metrics import REGRESSION

    each = losses.mean_squared_error if task == REGRESSION else losses.sparse_categorical_crossentropy

    def loss(y_true, y_pred):
        total = ops.sum(ops.stack([each(y_true, y_pred[:, k]) for k in range(members)], axis=-1), axis=-1)
        return total - ops.stop_gradient(total * (1.0 - 1.0 / members))  # the value of the mean, the gradient of the sum

    loss.__name__ = "member_loss"
    return loss


def averaged_accuracy():
    """Keras' ``accuracy`` of the averaged probabilities, computed from the stacked members' (so the
    epoch logs' ``accuracy`` and ``val_accuracy`` are the ensemble's, as the served model's)."""
    import keras
    from keras import ops

    def accuracy(y_true, y_pred):
        return keras.metrics.sparse_categorical_accuracy(y_true, ops.mean(y_pred, axis=1))

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")
