"""The worker: runs one job (a `worker.spec.JobSpec`) on a Ray worker or in-process.

- `worker.spec`: the JobSpec / JobOutcome contract with the server (standard library only).
- `worker.run`: `run_job(spec, reporter=...) -> JobOutcome` (liftplace + MLflow).
- `worker.tracking`: one MLflow run per job, across retries.
- `worker.ray_tasks`: `init_ray`, the `ProgressStore` actor and the `execute_job` Ray task.

Nothing heavy is imported here, so `import worker.spec` stays cheap for the server.
"""
