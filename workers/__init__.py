"""Herald's Celery side: the app, the base task class, demo and maintenance tasks."""
