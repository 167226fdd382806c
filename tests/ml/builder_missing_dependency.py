"""A builder module whose own import fails: it needs a package nobody installed."""

import not_an_installed_package_dlagent  # noqa: F401


def build(hp, input_shape, n_outputs, task):
    raise AssertionError("never reached")
