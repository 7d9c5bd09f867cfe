"""The liftplace job-queue server: REST API, SQL queue, Ray dispatcher, study aggregation (`create_app`)."""
