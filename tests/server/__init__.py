"""Tests of the job-queue server (API, database, dispatcher, Ray, serve, end to end)."""
