"""The GPU-cloud PaaS job API (/v1/job...): its numeric states, its envelope, its catalogs."""
