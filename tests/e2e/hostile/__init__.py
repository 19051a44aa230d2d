"""Issue 8's acceptance test: a hostile-input corpus run against a live `fame-node run`."""
