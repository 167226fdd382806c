-- The MLflow backend store and the Optuna study storage live on the same PostgreSQL server
-- as the Airflow metadata DB, each in its own database owned by its own role (a task that
-- holds the Optuna password cannot read MLflow's or Airflow's tables).
--
-- Run by docker-compose.yaml's `postgres-init` service on every `docker compose up`, as the
-- server's superuser (`airflow`):
--     psql -v ON_ERROR_STOP=1 -h postgres -U airflow -d airflow -f init-databases.sql
-- Idempotent: roles and databases are created once; the roles' passwords are set from the
-- environment each time, so changing them in .env and re-running `up` applies them.
-- Passwords come from the environment (psql >= 15 `\getenv`), never from this file.

\set ON_ERROR_STOP on
\getenv superuser_password PGPASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv optuna_password OPTUNA_DB_PASSWORD

-- An unset variable would reach the server as the literal text :'name': say which one is missing.
\if :{?mlflow_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'MLFLOW_DB_PASSWORD is not set (see .env.example)'; END $$;
\endif
\if :{?optuna_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'OPTUNA_DB_PASSWORD is not set (see .env.example)'; END $$;
\endif
\if :{?superuser_password}
\else
\set superuser_password ''
\endif

-- Refuse the placeholders of .env.example: a deployment must set its own secrets.
SELECT (:'superuser_password' LIKE 'change-me%'
        OR :'mlflow_password' LIKE 'change-me%'
        OR :'optuna_password' LIKE 'change-me%') AS placeholder_password \gset
\if :placeholder_password
DO $$ BEGIN
  RAISE EXCEPTION 'a database password still holds the change-me placeholder of .env.example: set POSTGRES_PASSWORD, MLFLOW_DB_PASSWORD and OPTUNA_DB_PASSWORD in .env';
END $$;
\endif

-- MLflow backend store (mlflow server --backend-store-uri postgresql+psycopg2://mlflow:...@postgres:5432/mlflow)
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \gexec
ALTER ROLE mlflow WITH LOGIN PASSWORD :'mlflow_password';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;

-- Optuna study storage (Connection optuna_default: postgres://optuna:...@postgres:5432/optuna)
SELECT 'CREATE ROLE optuna LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'optuna') \gexec
ALTER ROLE optuna WITH LOGIN PASSWORD :'optuna_password';
SELECT 'CREATE DATABASE optuna OWNER optuna' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'optuna') \gexec
REVOKE ALL ON DATABASE optuna FROM PUBLIC;

-- The Airflow metadata DB is reached by its owner (the superuser) only.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
