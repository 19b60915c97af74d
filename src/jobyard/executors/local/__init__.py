"""The local executor: tasks are processes on this machine."""
