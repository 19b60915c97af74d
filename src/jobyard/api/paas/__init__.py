"""Seed 000: the GPU-cloud PaaS job API (/v1/job...)."""
