"""The worker side: the Celery app factory, the task adapter, the executor, and worker start-up."""
