"""Example python jobs, imported from the folder of jobs.yaml (see pyjob)."""
