"""Test-owned infrastructure: servers and networks a test starts, breaks and removes."""
