"""The agent side of remote execution: what runs on a machine a user brings."""
