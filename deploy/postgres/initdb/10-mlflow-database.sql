-- Run once by the postgres image, on the first start with an empty data volume
-- (docker-entrypoint-initdb.d), as POSTGRES_USER: the MLflow tracking server's own database,
-- beside the job queue's database (POSTGRES_DB). See docs/deploy.md.
CREATE DATABASE mlflow;
