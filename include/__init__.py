"""The project's own code and files beside dags/ and plugins/ (model builders: include.models)."""
