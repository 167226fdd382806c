"""The scikit-learn baselines the table benchmarks compare the pipeline with, in one place.

Each baseline is what a person would try on a table: standardised features (missing cells
imputed with the training median plus an indicator column), and a few settings, the one with
the best validation score scored on the test rows. Fitted on the pipeline's own split (the
caller passes it), so the pipeline and its baselines see the same rows.
"""

from __future__ import annotations

HIDDEN_SHAPES = ((64,), (128,), (64, 64))
MLP_ALPHAS = (1e-4, 1e-2)


def fit_baselines(splits, seed: int) -> dict:
    """Test scores on ``splits`` (a ``dlagent.ml.data`` split): ``{"ridge", "mlp"}`` RMSE for a
    regression task (the MLP on standardised targets), else ``{"logistic", "mlp"}`` accuracy.
    The linear model's strength (alpha or C in 10^-3 .. 10^3) and the MLP's shape and L2 alpha are
    chosen on the validation split."""
    import numpy as np
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regression = splits.is_regression
    y_train, y_val, y_test = ((s.ravel() for s in (splits.y_train, splits.y_val, splits.y_test)) if regression
                              else (splits.y_train, splits.y_val, splits.y_test))

    def prepared(model):
        return make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler(), model)

    def score(model, x, y):
        if regression:
            return float(np.sqrt(np.mean((model.predict(x) - y) ** 2)))
        return float((model.predict(x) == y).mean())

    def best(candidates):
        fitted = [c.fit(splits.x_train, y_train) for c in candidates]
        chosen = (min if regression else max)(fitted, key=lambda m: score(m, splits.x_val, y_val))
        return score(chosen, splits.x_test, y_test)

    strengths = 10.0 ** np.arange(-3, 4)
    if regression:
        return {"ridge": best([prepared(Ridge(alpha=a)) for a in strengths]),
                "mlp": best([TransformedTargetRegressor(prepared(MLPRegressor(hidden_layer_sizes=h, alpha=a, early_stopping=True,
                                                                             max_iter=2000, random_state=seed)),
                                                        transformer=StandardScaler()) for h in HIDDEN_SHAPES for a in MLP_ALPHAS])}
    return {"logistic": best([prepared(LogisticRegression(C=c, max_iter=5000)) for c in strengths]),
            "mlp": best([prepared(MLPClassifier(hidden_layer_sizes=h, alpha=a, early_stopping=True, max_iter=2000, random_state=seed))
                         for h in HIDDEN_SHAPES for a in MLP_ALPHAS])}
