"""Herald's frontend service."""
