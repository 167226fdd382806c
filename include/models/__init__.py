"""Model builders of this project: name one in the ``model`` setting as ``include.models.<module>:<function>``."""
