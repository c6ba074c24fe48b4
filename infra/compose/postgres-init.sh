#!/bin/sh
# Run once by the postgres image on an empty data folder: the database of MLflow's basic-auth
# user store (the backend store database, POSTGRES_DB=mlflow, is made by the image itself).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -c "CREATE DATABASE ${MLFLOW_AUTH_DB:-mlflow_auth} OWNER \"$POSTGRES_USER\""
