"""The Ray executor: jobs on an existing Ray cluster, through Ray's Job Submission API."""
