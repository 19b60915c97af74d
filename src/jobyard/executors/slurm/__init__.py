"""The Slurm executor: jobs on an existing Slurm cluster (sbatch, squeue, scancel, srun)."""
