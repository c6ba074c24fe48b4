#!/bin/sh
# Run once by the postgres image on an empty data folder: the database of MLflow's basic-auth
# user store, and the studies' Optuna storage (STUDY_OPTUNA_STORAGE; its own database: Optuna's
# and MLflow's tables both use `alembic_version`). The backend store database, POSTGRES_DB=mlflow,
# is made by the image itself.
set -eu
for database in "${MLFLOW_AUTH_DB:-mlflow_auth}" optuna; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
         -c "CREATE DATABASE $database OWNER \"$POSTGRES_USER\""
done
