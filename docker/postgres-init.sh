#!/bin/sh
# Runs once, when the postgres container starts on an empty volume (docker-entrypoint-initdb.d).
# Optuna and MLflow each get their own database: both keep an `alembic_version` table, and in a
# shared schema one engine's migrations would read the other's version.
set -eu
for db in "${OPTUNA_DB:-optuna}" "${MLFLOW_DB:-mlflow}"; do
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       -c "CREATE DATABASE \"$db\""
done
