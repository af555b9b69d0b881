-- Runs once, when the postgres volume is first created: MLflow gets its own database beside
-- the Optuna one (POSTGRES_DB=optuna), both owned by the POSTGRES_USER.
CREATE DATABASE mlflow;
